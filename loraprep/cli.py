"""`loraprep`: `loraprep prep ...`, `loraprep caption ...`, `loraprep train_bridge ...`."""

from __future__ import annotations

from captioning.cli import app as caption_app
from prep.cli import app as prep_app
from prep.cli.common import make_app
from train_bridge.cli import app as bridge_app

app = make_app("loraprep", "Raw images to a trained LoRA: prep, caption, train_bridge.")
app.add_typer(prep_app, name="prep")
app.add_typer(caption_app, name="caption")
app.add_typer(bridge_app, name="train_bridge")
app.add_typer(bridge_app, name="train", hidden=True)


def main() -> None:
    app()
