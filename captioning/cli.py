"""`caption`: placeholder until the wd14 issue lands."""

from __future__ import annotations

from prep.cli.common import make_app, with_default

app = make_app("caption", "Caption a dataset (wd14 tags by default; gemini, replicate, local VLMs).", cls=with_default("run"))


@app.command("run", hidden=True)
def run() -> None:
    """Caption images."""


def main() -> None:
    app()
