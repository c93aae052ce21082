"""`prep layout SRC -o DATASET --trigger T --repeats N`: the kohya folder layout."""

from __future__ import annotations

from pathlib import Path

import typer

from prep.cli.common import EXIT_USAGE, console, emit_json, exit_code_for, fail
from prep.layout import LayoutOptions, layout_dataset


def register(app: typer.Typer) -> None:
    app.command("layout")(layout)


def layout(
    src: Path = typer.Argument(..., exists=True, file_okay=False, help="Folder of images with .txt captions (read only)."),
    out: Path = typer.Option(..., "--out", "-o", help="Dataset folder to write (img/, reg/, layout.json, manifest.jsonl)."),
    trigger: str = typer.Option(..., "--trigger", "-t", help="Trigger word; first in every caption and in the folder name."),
    repeats: int = typer.Option(10, "--repeats", "-n", min=1, help="Repeats per epoch for the training images."),
    class_token: str = typer.Option(None, "--class-token", "-c", help="Class word (folder '{repeats}_{trigger} {class}'); needed with --reg."),
    reg: Path = typer.Option(None, "--reg", exists=True, file_okay=False, help="Folder of regularisation images (reg/{r}_{class}/)."),
    reg_repeats: int = typer.Option(1, "--reg-repeats", min=1, help="Repeats for regularisation images."),
    names: str = typer.Option("trigger", "--names", help="trigger: {trigger}_{nnnn}.ext; keep: the original names made safe."),
    copy: bool = typer.Option(False, "--copy", help="Always copy (default: hard links where the filesystem allows, else copies)."),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Include subfolders of SRC."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Plan only; write and delete nothing."),
    as_json: bool = typer.Option(False, "--json", help="JSON report on stdout."),
) -> None:
    """Lay images and captions out as dataset/img/{repeats}_{trigger}[ {class}]/ for sd-scripts and musubi-tuner."""
    if names not in ("trigger", "keep"):
        raise fail("--names must be trigger or keep", EXIT_USAGE)
    opts = LayoutOptions(
        trigger=trigger,
        repeats=repeats,
        class_token=class_token,
        reg_dir=reg,
        reg_repeats=reg_repeats,
        names=names,
        link="copy" if copy else "auto",
        recursive=recursive,
        dry_run=dry_run,
    )
    try:
        report = layout_dataset(src, out, opts)
    except ValueError as exc:
        raise fail(str(exc), EXIT_USAGE) from None
    if as_json:
        emit_json(report.as_dict())
    else:
        verb = "would write" if dry_run else "wrote"
        methods = {m: report.count(m) for m in ("hardlink", "copy", "convert", "skipped")}
        console.print(f"{verb} {report.n_images} training image(s) to {report.image_dir}")
        if report.reg_dir:
            console.print(f"{verb} {report.n_reg} regularisation image(s) to {report.reg_dir}")
        console.print("  " + ", ".join(f"{k}: {v}" for k, v in methods.items() if v))
        if report.removed:
            console.print(f"  {'would remove' if dry_run else 'removed'} {len(report.removed)} stale file(s) (trainer caches, earlier layouts)")
        for w in report.warnings:
            console.print(f"[yellow]warning:[/yellow] {w}")
        for it in report.failed:
            console.print(f"[red]failed:[/red] {it.id}: {it.reason}")
    total = len(report.items)
    raise typer.Exit(exit_code_for(len(report.failed), total))
