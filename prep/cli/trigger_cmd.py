"""`prep trigger [DIR] --trigger WORD`: put the trigger first in captions a user already has.

The options are `prep.trigger_step.TriggerOptions`; inside a loraprep project the trigger
defaults to its [project] trigger. DIR is always given: the command edits captions in place.
"""

from __future__ import annotations

from pathlib import Path

import typer

from prep.cli.common import EXIT_PARTIAL, EXIT_USAGE, console, emit_json, fail, show
from prep.cli.where import with_project_options
from prep.options import options_command
from prep.project import find_project
from prep.trigger_step import STAGE, TriggerOptions


def register(app: typer.Typer) -> None:
    app.command("trigger")(trigger)


@options_command(TriggerOptions)
def trigger(
    folder: Path = typer.Argument(..., exists=True, file_okay=False, metavar="DIR", help="Folder of images with .txt captions (edited in place)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable report on stdout."),
    *,
    options: TriggerOptions,
) -> None:
    """Put TRIGGER first, exactly once, in every caption (idempotent; replaces a \\[trigger] placeholder)."""
    options = with_project_options(options, find_project(), section=None, top=("trigger",))
    try:
        report = STAGE.run(folder, folder, options)
    except ValueError as exc:
        raise fail(str(exc), EXIT_USAGE) from None
    if as_json:
        emit_json(report.to_json())
    else:
        verb = "would change" if options.dry_run else "changed"
        console.print(f"{verb} {len(report.changed)} of {report.total} captions; {len(report.missing)} images have no caption")
        for c in report.changed[:20]:
            console.print(f"  {show(c)}")
        for e in report.errors:
            console.print(f"[red]  {show(e)}[/red]")
        if report.missing and not options.create_missing:
            console.print("  images without a caption are left alone: pass --create-missing, or caption them first")
    if report.errors:
        raise typer.Exit(EXIT_PARTIAL)
