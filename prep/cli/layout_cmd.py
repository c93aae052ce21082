"""`prep layout [SRC] [-o DATASET] --trigger T --repeats N`: the kohya folder layout.

The options are `prep.layout.LayoutOptions`; inside a loraprep project SRC, DATASET and the
trigger default to the project's (04_captioned, dataset/, [project] trigger).
"""

from __future__ import annotations

from pathlib import Path

import typer

from prep.buckets import BUCKET_RECORD
from prep.cli.common import EXIT_USAGE, console, emit_json, exit_code_for, fail, show
from prep.cli.where import resolve_folders, with_project_options
from prep.layout import STAGE, LayoutOptions
from prep.options import options_command


def register(app: typer.Typer) -> None:
    app.command("layout")(layout)


@options_command(LayoutOptions)
def layout(
    src: Path = typer.Argument(None, exists=True, file_okay=False, metavar="SRC", show_default=False, help="Folder of images and/or videos (e.g. prep clips output) with .txt captions (read only). Default inside a loraprep project: its 04_captioned."),
    out: Path = typer.Option(None, "--out", "-o", show_default=False, help="Dataset folder to write (img/, reg/, layout.json, buckets.json, manifest.jsonl). Default inside a project: its dataset/."),
    copy: bool = typer.Option(False, "--copy", help="Always copy (default: hard links where the filesystem allows, else copies)."),
    as_json: bool = typer.Option(False, "--json", help="JSON report on stdout."),
    *,
    options: LayoutOptions,
) -> None:
    """Lay images, videos and captions out as dataset/img/{repeats}_{trigger}[ {class}]/ for sd-scripts and musubi-tuner."""
    where = resolve_folders("prep layout", src, out, project_src=lambda p: p.captioned, project_out=lambda p: p.dataset, src_help="a folder of captioned images")
    opts = with_project_options(options, where.project, section="layout", top=("trigger",), rename={"reg": "reg_dir"})
    if copy:
        opts = opts.changed(link="copy")
    if where.project is not None and opts.buckets_from is None and not (where.src / BUCKET_RECORD).is_file() and (where.project.cropped / BUCKET_RECORD).is_file():
        opts = opts.changed(buckets_from=str(where.project.cropped))  # the project's crops made these images
    dry_run = opts.dry_run
    try:
        report = STAGE.run(where.src, where.out, opts)
    except ValueError as exc:
        raise fail(str(exc), EXIT_USAGE) from None
    if as_json:
        emit_json(report.as_dict())
    else:
        verb = "would write" if dry_run else "wrote"
        methods = {m: report.count(m) for m in ("hardlink", "copy", "convert", "skipped")}
        console.print(f"{verb} {report.n_images} training image(s) to {show(report.image_dir)}")
        if report.n_videos:
            console.print(f"{verb} {report.n_videos} training video(s) beside them (musubi-tuner video dataset)")
        if report.reg_dir:
            console.print(f"{verb} {report.n_reg} regularisation image(s) to {show(report.reg_dir)}")
        console.print("  " + ", ".join(f"{k}: {v}" for k, v in methods.items() if v))
        if report.removed:
            console.print(f"  {'would remove' if dry_run else 'removed'} {len(report.removed)} stale file(s) (trainer caches, earlier layouts)")
        if report.bucket_record:
            console.print(f"  buckets: {show(report.bucket_record)} (train_bridge config trains at the crops' buckets)")
        for w in report.warnings:
            console.print(f"[yellow]warning:[/yellow] {show(w)}")
        for it in report.failed:
            console.print(f"[red]failed:[/red] {show(it.id)}: {show(it.reason)}")
    total = len(report.items)
    raise typer.Exit(exit_code_for(len(report.failed), total))
