"""`prep crop [SRC] [-o OUT]`: face-centred crops sized exactly to the trainer's buckets.

The options are `prep.crop.CropOptions` (declared once there); this module only adds SRC,
OUT and --json, works out the folders (the project's inside a loraprep project, else
`./cropped`), and calls the same `STAGE.run` as `loraprep run`.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import typer
from rich.table import Table

from prep.cli.common import EXIT_INTERRUPTED, EXIT_USAGE, RichProgress, console, emit_json, exit_code_for, fail, show
from prep.cli.where import resolve_folders, with_project_options
from prep.crop import STAGE, CropOptions, CropReport
from prep.models import ModelNotAvailable
from prep.options import options_command

DEFAULT_OUT = "cropped"


def register(app: typer.Typer) -> None:
    app.command("crop")(crop)


@options_command(CropOptions)
def crop(
    src: Path = typer.Argument(None, exists=True, file_okay=False, metavar="SRC", show_default=False, help="Folder of source images (read only). Default inside a loraprep project: its 01_raw."),
    out: Path = typer.Option(None, "--out", "-o", show_default=False, help="Output folder for the crops, crops.jsonl, buckets.json and contact_sheet.jpg. Default: the project's 02_cropped, else ./cropped."),
    as_json: bool = typer.Option(False, "--json", help="JSON report on stdout."),
    *,
    options: CropOptions,
) -> None:
    """Face-centred crops for photos, 3D renders and anime, resized to exact trainer bucket sizes."""
    where = resolve_folders(
        "prep crop", src, out, project_src=lambda p: p.raw, project_out=lambda p: p.cropped, src_help="a folder of images", default_out=DEFAULT_OUT
    )
    options = with_project_options(options, where.project, section="crop", top=("resolution", "trainer"))
    if where.project is not None and options.off_model == "set-aside" and not options.set_aside:
        options = options.changed(set_aside=str(where.project.off_model))  # where loraprep run sets them aside
    try:
        report = STAGE.run(where.src, where.out, options, progress=RichProgress(enabled=not as_json))
    except ValueError as exc:
        raise fail(str(exc), EXIT_USAGE) from None
    except ModelNotAvailable as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]: finished images are kept; run the same command again to resume.")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if as_json:
        emit_json(report.to_json(stream=True))
    else:
        render(report)
    code = exit_code_for(report.n_failed, len(report.results))
    if code:
        raise typer.Exit(code)


def render(report: CropReport) -> None:
    s = report.summary()
    verb = "would write" if report.dry_run else "wrote"
    console.print(
        f"{verb} {s['outputs']} crops from {s['total']} images into {show(report.out)}: {s['ok']} ok, {s['flagged']} flagged, "
        f"{s['skipped']} skipped, {s['failed']} failed" + (f" ({s['resumed']} done earlier)" if s["resumed"] else "")
    )
    for w in report.warnings:
        console.print(f"[yellow]warning:[/yellow] {show(w)}")
    if report.off_model:
        where = f"; their crops were moved to {show(report.set_aside_folder)}" if report.set_aside and report.set_aside_folder else ""
        console.print(f"[yellow]off-model:[/yellow] {len(report.off_model)} images have no face matching the references{where} (crops.jsonl: flag off_model, identity scores)")
    n_problems = s["flagged"] + s["skipped"] + s["failed"]
    if n_problems:  # the first 40, read as they come (a 100k-image report is not held twice)
        t = Table(show_header=True, title_justify="left")
        t.add_column("image")
        t.add_column("status")
        t.add_column("why")
        problems = (r for r in report.results if r.status in ("flagged", "skipped", "failed"))
        for r in itertools.islice(problems, 40):
            t.add_row(show(r.id), r.status, show(r.reason or ""))
        console.print(t)
        if n_problems > 40:
            console.print(f"... and {n_problems - 40} more in crops.jsonl")
    if report.report_path:
        console.print(f"report: {show(report.report_path)}")
    if report.bucket_record:
        console.print(f"buckets: {show(report.bucket_record)}" + (" (bucket_no_upscale: small sources kept their size)" if report.no_upscale else ""))
    for p in report.contact_sheets:
        console.print(f"contact sheet: {show(p)}")
