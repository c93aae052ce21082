"""`prep import SRC [-o DIR]`: a zip or a folder into a fresh dataset folder (inside a project: its 01_raw).

The options are `prep.importer.ImportOptions`.
"""

from __future__ import annotations

from pathlib import Path

import typer

from prep.cli.common import EXIT_FAILED, EXIT_PARTIAL, console, emit_json, fail, show
from prep.cli.where import resolve_folders, with_project_options
from prep.importer import DEFAULT_MAX_TOTAL_BYTES, STAGE, ImportOptions, ImportRefused
from prep.options import options_command


def register(app: typer.Typer) -> None:
    app.command("import")(import_cmd)


@options_command(ImportOptions)
def import_cmd(
    src: Path = typer.Argument(..., exists=True, metavar="SRC", help="A .zip archive or a folder of images."),
    out: Path = typer.Option(None, "-o", "--output", "--out", show_default=False, help="Folder to import into (created; existing files are never overwritten). Default inside a loraprep project: its 01_raw."),
    max_total_gb: float = typer.Option(DEFAULT_MAX_TOTAL_BYTES / 1024**3, "--max-total-size", help="Refuse archives larger than this many GiB uncompressed."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable report on stdout."),
    *,
    options: ImportOptions,
) -> None:
    """Import images (and their .txt captions) from a zip or a folder, safely."""
    where = resolve_folders("prep import", src, out, project_src=lambda p: p.raw, project_out=lambda p: p.raw, src_help="a zip or folder of images", out_flag="-o/--output")
    opts = with_project_options(options, where.project, section="import")
    if max_total_gb != DEFAULT_MAX_TOTAL_BYTES / 1024**3:
        opts = opts.changed(max_total_bytes=int(max_total_gb * 1024**3))
    dry_run = opts.dry_run
    out = where.out
    try:
        report = STAGE.run(src, out, opts)
    except ImportRefused as exc:
        raise fail(str(exc)) from None
    if as_json:
        emit_json(report.to_json())
    else:
        verb = "would import" if dry_run else "imported"
        console.print(
            f"{verb} {report.imported} files into {show(out)} "
            f"({report.count('skipped')} already there, {report.count('renamed')} renamed, {report.count('ignored')} ignored)"
        )
        if report.kind_count("video"):
            console.print(f"  {report.kind_count('image')} image(s), {report.kind_count('video')} video(s) (cut them with `prep clips`), "
                          f"{report.kind_count('caption')} caption(s)")
        for e in report.entries:
            if e.status == "renamed":
                console.print(f"  renamed  {show(repr(e.source))} -> {show(e.output)}: {show(e.reason)}")
        for e in report.problems:
            console.print(f"  [red]{e.status:8}[/red] {show(repr(e.source))}: {show(e.reason)}")
    if report.problems:
        raise typer.Exit(EXIT_PARTIAL if report.imported or report.count("skipped") else EXIT_FAILED)
