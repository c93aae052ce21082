"""`prep check [DIR]`: a table of what will go wrong in training, or JSON with --json.

The options are `prep.check.CheckOptions`; inside a loraprep project DIR defaults to its raw
folder and the project's resolution and trainer pick the buckets.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from prep.check import STAGE, CheckOptions, CheckReport
from prep.cli.common import (
    EXIT_FAILED,
    EXIT_USAGE,
    RichProgress,
    console,
    emit_json,
    fail,
    show,
)
from prep.cli.where import resolve_folders, with_project_options
from prep.models import ModelNotAvailable
from prep.options import options_command
from prep.project import find_project


def register(app: typer.Typer) -> None:
    app.command("check")(check)


@options_command(CheckOptions)
def check(
    folder: Path = typer.Argument(None, exists=True, file_okay=False, metavar="FOLDER", show_default=False, help="Folder to check (read only). Default inside a loraprep project: its 01_raw."),
    strict: bool = typer.Option(False, "--strict", help="Exit 1 when any file has errors."),
    as_json: bool = typer.Option(False, "--json", help="JSON report on stdout (progress stays on stderr)."),
    *,
    options: CheckOptions,
) -> None:
    """Count, measure and find problems: corrupt files, small, transparent, rotated, captions, duplicates, buckets,
    blur, monochrome, small faces, JPEG artefacts, and (--reference / --identity) images of someone else."""
    project = find_project()
    if folder is None:
        where = resolve_folders("prep check", None, Path("."), project_src=lambda p: p.raw, project_out=lambda p: p.raw, src_help="a folder of images", project=project)
        folder = where.src
    options = with_project_options(options, project, section="check", top=("resolution", "trainer"))
    try:
        report = STAGE.run(folder, None, options, progress=RichProgress(enabled=True))
    except ValueError as exc:  # prep.identity.ReferenceError (a bad reference folder) is one
        raise fail(str(exc), EXIT_USAGE) from None
    except ModelNotAvailable as exc:
        raise fail(str(exc)) from None
    if as_json:
        emit_json(report.to_json(stream=True))
    else:
        render(report)
    if strict and report.has_errors:
        raise typer.Exit(EXIT_FAILED)


def render(report: CheckReport) -> None:
    s = report.summary()
    t = Table(title=f"prep check {show(report.folder)}", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    t.add_row("images", f"{s['images']} ({s['readable']} readable, {s['errors']} errors)")
    t.add_row("formats", ", ".join(f"{k} {v}" for k, v in s["formats"].items()) or "-")
    if s["size"]["min"]:
        t.add_row("size min / median / max", " / ".join("x".join(map(str, s["size"][k])) for k in ("min", "median", "max")))
        t.add_row("megapixels", ", ".join(f"{k}: {v}" for k, v in s["size"]["megapixels"].items() if v))
    c = s["captions"]
    t.add_row("captions", f"{c['ok']} ok, {c['missing']} missing, {c['empty']} empty, {c['orphans']} without an image")
    t.add_row(f"buckets @ {report.options.resolution}" + (f" ({report.options.trainer})" if report.options.trainer else ""), ", ".join(f"{k}: {v}" for k, v in s["buckets"].items()) or "-")
    t.add_row("duplicates", str(s["duplicates"]))
    if report.identity:
        ident = report.identity
        t.add_row("identity", f"{ident['model']} at similarity >= {ident['threshold']:g}"
                  + (f", {len(ident['references'])} references" if ident.get("references") else "")
                  + (f", clusters {ident['clusters']}" if ident.get("clusters") else ""))
    if report.videos:
        v = report.videos["summary"]
        tg = report.videos["target"]
        t.add_row("videos", f"{v['videos']} ({v['ok']} readable, {v['errors']} errors), {v['seconds']:g} s: "
                  f"{v['clips']} clips of {tg['frames']} frames at {tg['fps']:g} fps, {v['dropped_seconds']:g} s dropped")
    console.print(t)
    if report.videos:
        for e in report.videos["errors"]:
            console.print(f"[bold yellow]video unreadable[/bold yellow]: {show(e['file'])}: {show(e['reason'])}")
        for vid in report.videos["videos"]:
            for w in vid["warnings"]:
                console.print(f"[yellow]video[/yellow] {show(vid['file'])}: {show(w)}")
    probs = report.problems()
    labels = {
        "corrupt": "unreadable",
        "small": f"below {report.min_side} px",
        "transparent": "transparent (flattened onto white by prep crop; sd-scripts would train it black)",
        "exif_rotated": "EXIF-rotated (sd-scripts ignores EXIF: would train sideways)",
        "animated": "animated (first frame is used)",
        "caption_missing": "no caption",
        "caption_empty": "empty caption",
        "caption_unreadable": "caption unreadable",
        "caption_orphans": "caption without an image",
        "caption_shared_stem": "two images share one caption name",
        "duplicates": "duplicate groups (kept first)",
        "blurry": "blurry",
        "monochrome": "monochrome (greyscale, sepia or one hue)",
        "face_small": f"face too small for a {report.options.framing} crop",
        "jpeg_artifacts": "heavy JPEG artefacts",
        "no_face": "no face found",
        "off_model": "off-model (no face matches the references)",
        "outside_cluster": "outside the dominant identity cluster",
        "quality_unmeasured": "quality/face measures failed",
    }
    for kind, entries in probs.items():
        if not entries:
            continue
        console.print(f"[bold yellow]{labels[kind]}[/bold yellow]: {len(entries)}")
        for e in entries[:25]:
            if isinstance(e, dict) and "keep" in e:
                console.print(f"  keep {show(e['keep'])}; duplicates: {', '.join(show(o) for o in e['others'])}")
            elif isinstance(e, dict):
                console.print(f"  {show(e['file'])}: {show(e['reason'])}")
            elif isinstance(e, list):
                console.print(f"  {', '.join(show(x) for x in e)}")
            else:
                console.print(f"  {show(e)}")
        if len(entries) > 25:
            console.print(f"  ... and {len(entries) - 25} more (use --json for all)")
