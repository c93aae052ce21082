"""`prep dedupe DIR [--move-to DUPES]`: find near-duplicates (mirrors too); never delete."""

from __future__ import annotations

from pathlib import Path

import typer

from prep.cli.common import EXIT_PARTIAL, RichProgress, console, emit_json
from prep.dedupe import DEFAULT_THRESHOLD, dedupe_folder


def register(app: typer.Typer) -> None:
    app.command("dedupe")(dedupe)


def dedupe(
    folder: Path = typer.Argument(..., exists=True, file_okay=False, help="Dataset folder."),
    move_to: Path = typer.Option(None, "--move-to", help="Move all but the kept image of each group (with captions) here."),
    threshold: int = typer.Option(DEFAULT_THRESHOLD, "--threshold", help="Max differing bits of 64 to count as duplicate."),
    no_mirror: bool = typer.Option(False, "--no-mirror", help="Do not treat mirror images as duplicates."),
    no_verify: bool = typer.Option(False, "--no-verify", help="Trust the hash alone (faster; groups images that differ only in small details, e.g. expressions)."),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Include subfolders."),
    workers: int = typer.Option(None, "--workers", "-j", help="Parallel workers (default: all cores)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Report moves without moving."),
    as_json: bool = typer.Option(False, "--json", help="JSON report on stdout."),
) -> None:
    """Group near-duplicate images by perceptual hash; keep the largest of each group."""
    report = dedupe_folder(
        folder,
        threshold=threshold,
        mirror=not no_mirror,
        move_to=move_to,
        recursive=recursive,
        workers=workers,
        dry_run=dry_run,
        progress=RichProgress(),
        verify=not no_verify,
    )
    if as_json:
        emit_json(report.to_json())
    else:
        n = sum(len(g.others) for g in report.groups)
        console.print(f"{report.images} images, {len(report.groups)} duplicate groups, {n} duplicates (threshold {threshold}/64)")
        for g in report.groups:
            mirrored = f" (mirrored: {', '.join(g.mirrored)})" if g.mirrored else ""
            console.print(f"  keep {g.keep}  <-  {', '.join(f'{o} [{g.distances[o]}]' for o in g.others)}{mirrored}")
        if move_to is not None:
            verb = "would move" if dry_run else "moved"
            console.print(f"{verb} {len(report.moved)} files to {move_to}")
        elif report.groups:
            console.print("nothing moved: pass --move-to DUPES to move duplicates out (nothing is ever deleted)")
        for r in report.failed:
            console.print(f"  [red]unreadable[/red] {r.reason}")
    if report.failed:
        raise typer.Exit(EXIT_PARTIAL)
