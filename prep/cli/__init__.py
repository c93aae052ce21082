"""`prep`: import, check, dedupe, crop, render-variations, trigger, layout.

Each command lives in its own module with a `register(app)` function; this is the one place
they are mounted.
"""

from __future__ import annotations

from prep.cli.common import make_app

app = make_app("prep", "Prepare a folder of raw images as a LoRA training dataset.")


def _register() -> None:
    from prep.cli import check_cmd, clips_cmd, crop_cmd, dedupe_cmd, import_cmd, layout_cmd, trigger_cmd, variations_cmd

    for mod in (import_cmd, check_cmd, dedupe_cmd, crop_cmd, clips_cmd, variations_cmd, trigger_cmd, layout_cmd):
        mod.register(app)


_register()


def main() -> None:
    app()
