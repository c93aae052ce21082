"""`prep import SRC -o DIR`: a zip or a folder into a fresh dataset folder."""

from __future__ import annotations

from pathlib import Path

import typer

from prep.cli.common import EXIT_FAILED, EXIT_PARTIAL, console, emit_json, fail
from prep.importer import DEFAULT_MAX_MEMBERS, DEFAULT_MAX_TOTAL_BYTES, ImportOptions, ImportRefused, import_source


def register(app: typer.Typer) -> None:
    app.command("import")(import_cmd)


def import_cmd(
    src: Path = typer.Argument(..., exists=True, help="A .zip archive or a folder of images."),
    out: Path = typer.Option(..., "-o", "--output", help="Folder to import into (created; existing files are never overwritten)."),
    flatten: bool = typer.Option(False, "--flatten", help="Put all files directly in the output folder."),
    no_captions: bool = typer.Option(False, "--no-captions", help="Import images only, not .txt captions."),
    max_files: int = typer.Option(DEFAULT_MAX_MEMBERS, "--max-files", help="Refuse archives with more files than this."),
    max_total_gb: float = typer.Option(DEFAULT_MAX_TOTAL_BYTES / 1024**3, "--max-total-size", help="Refuse archives larger than this many GiB uncompressed."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would be imported; write nothing."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable report on stdout."),
) -> None:
    """Import images (and their .txt captions) from a zip or a folder, safely."""
    opts = ImportOptions(
        max_members=max_files,
        max_total_bytes=int(max_total_gb * 1024**3),
        flatten=flatten,
        include_captions=not no_captions,
        dry_run=dry_run,
    )
    try:
        report = import_source(src, out, opts)
    except ImportRefused as exc:
        raise fail(str(exc)) from None
    if as_json:
        emit_json(report.to_json())
    else:
        verb = "would import" if dry_run else "imported"
        console.print(
            f"{verb} {report.imported} files into {out} "
            f"({report.count('skipped')} already there, {report.count('renamed')} renamed, {report.count('ignored')} ignored)"
        )
        for e in report.entries:
            if e.status == "renamed":
                console.print(f"  renamed  {e.source!r} -> {e.output}: {e.reason}")
        for e in report.problems:
            console.print(f"  [red]{e.status:8}[/red] {e.source!r}: {e.reason}")
    if report.problems:
        raise typer.Exit(EXIT_PARTIAL if report.imported or report.count("skipped") else EXIT_FAILED)
