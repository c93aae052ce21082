"""`prep trigger DIR --trigger WORD`: put the trigger first in captions a user already has."""

from __future__ import annotations

from pathlib import Path

import typer

from prep.cli.common import EXIT_PARTIAL, console, emit_json
from prep.trigger_step import apply_trigger_to_folder


def register(app: typer.Typer) -> None:
    app.command("trigger")(trigger)


def trigger(
    folder: Path = typer.Argument(..., exists=True, file_okay=False, help="Folder of images with .txt captions."),
    trigger_word: str = typer.Option(..., "--trigger", "-t", help="The trigger word, exact casing."),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Include subfolders."),
    create_missing: bool = typer.Option(False, "--create-missing", help="Write a caption holding only the trigger for images without one."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Report what would change; write nothing."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable report on stdout."),
) -> None:
    """Put TRIGGER first, exactly once, in every caption (idempotent; replaces a \\[trigger] placeholder)."""
    report = apply_trigger_to_folder(folder, trigger_word, recursive=recursive, create_missing=create_missing, dry_run=dry_run)
    if as_json:
        emit_json(report.to_json())
    else:
        verb = "would change" if dry_run else "changed"
        console.print(f"{verb} {len(report.changed)} of {report.total} captions; {len(report.missing)} images have no caption")
        for c in report.changed[:20]:
            console.print(f"  {c}")
        for e in report.errors:
            console.print(f"[red]  {e}[/red]")
        if report.missing and not create_missing:
            console.print("  images without a caption are left alone: pass --create-missing, or caption them first")
    if report.errors:
        raise typer.Exit(EXIT_PARTIAL)
