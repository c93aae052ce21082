"""`python -m loraprep.studio FOLDER [options]`: the studio without the loraprep CLI (the benchmark uses it)."""

import typer

from loraprep.studio.cli import register

app = typer.Typer(add_completion=False)
register(app)

if __name__ == "__main__":
    app()
