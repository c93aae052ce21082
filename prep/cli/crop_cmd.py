"""`prep crop SRC -o OUT`: face-centred crops sized exactly to the trainer's buckets."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from prep.cli.common import EXIT_INTERRUPTED, EXIT_USAGE, RichProgress, console, emit_json, exit_code_for, fail
from prep.crop import CropOptions, CropReport, crop_folder
from prep.models import ModelNotAvailable


def register(app: typer.Typer) -> None:
    app.command("crop")(crop)


def crop(
    src: Path = typer.Argument(..., exists=True, file_okay=False, help="Folder of source images (read only)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder for the crops, crops.jsonl and contact_sheet.jpg."),
    framing: str = typer.Option("bust", "--framing", "-f", help="face | bust | upper-body | full."),
    resolution: int = typer.Option(1024, "--resolution", help="Training resolution (buckets of the same area)."),
    trainer: str = typer.Option(None, "--trainer", help="anima | flux | sdxl | sd3 | sd15 | wan: picks the legal bucket steps."),
    bucket_step: int = typer.Option(None, "--bucket-step", help="Bucket step (default 64; Anima also allows 16 and 32)."),
    min_bucket_reso: int = typer.Option(None, "--min-bucket-reso", help="Smallest bucket side (sd-scripts default 256)."),
    max_bucket_reso: int = typer.Option(None, "--max-bucket-reso", help="Largest bucket side (sd-scripts default 1024)."),
    detector: str = typer.Option("auto", "--detector", "-d", help="auto | photo (YuNet) | anime (YOLO head detector)."),
    detector_model: str = typer.Option(None, "--detector-model", help="Path to the detector's ONNX file (photo/auto: YuNet; anime: the YOLO model). Env: LORAPREP_YUNET_MODEL / LORAPREP_ANIME_MODEL."),
    anime_model: str = typer.Option(None, "--anime-model", help="Path to the anime YOLO ONNX file for --detector auto."),
    anime_target: str = typer.Option("head", "--anime-target", help="head (deepghs/anime_head_detection) or face (deepghs/anime_face_detection)."),
    threshold: float = typer.Option(None, "--threshold", help="Detector score threshold (photo 0.6, anime 0.4)."),
    device: str = typer.Option("cpu", "--device", help="onnxruntime device: cpu | cuda | auto."),
    no_face: str = typer.Option("center", "--no-face", help="center: bucket crop around the centre; skip: write nothing. Listed in the report either way."),
    all_faces: bool = typer.Option(False, "--all-faces", help="One crop per face (name_f01, name_f02, ...) instead of the largest."),
    upscale: bool = typer.Option(False, "--upscale", help="Upscale crops smaller than the bucket (Lanczos). Without it they are flagged and not written."),
    pad: bool = typer.Option(False, "--pad", help="Keep the framing at the image edge by padding with --background instead of tightening."),
    background: str = typer.Option("white", "--background", help="Colour for transparent areas and padding: white, black, '#RRGGBB' or 'R,G,B'."),
    fmt: str = typer.Option("png", "--format", help="png | webp | jpg (quality --quality)."),
    quality: int = typer.Option(95, "--quality", help="JPEG/WebP quality."),
    aspect: str = typer.Option(None, "--aspect", help="Preferred aspect before bucket snapping, e.g. 1:1 or 2:3 (default per framing)."),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Include subfolders (mirrored in the output)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo images a previous run finished."),
    workers: int = typer.Option(None, "--workers", "-j", help="Parallel workers (default: all cores)."),
    no_sheet: bool = typer.Option(False, "--no-sheet", help="Do not write contact_sheet.jpg."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Detect and plan, write nothing."),
    as_json: bool = typer.Option(False, "--json", help="JSON report on stdout."),
) -> None:
    """Face-centred crops for photos, 3D renders and anime, resized to exact trainer bucket sizes."""
    options = CropOptions(
        framing=framing,
        resolution=resolution,
        trainer=trainer,
        bucket_step=bucket_step,
        min_bucket_reso=min_bucket_reso,
        max_bucket_reso=max_bucket_reso,
        detector=detector,
        detector_model=detector_model,
        anime_model=anime_model,
        anime_target=anime_target,
        score_threshold=threshold,
        device=device,
        no_face=no_face,
        all_faces=all_faces,
        upscale=upscale,
        pad=pad,
        background=background,
        format=fmt,
        quality=quality,
        aspect=aspect,
        recursive=recursive,
        overwrite=overwrite,
        dry_run=dry_run,
        workers=workers or 0,
        contact_sheet=not no_sheet,
    )
    try:
        report = crop_folder(src, out, options, progress=RichProgress(enabled=not as_json))
    except ValueError as exc:
        raise fail(str(exc), EXIT_USAGE) from None
    except ModelNotAvailable as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]: finished images are kept; run the same command again to resume.")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if as_json:
        emit_json(report.to_json())
    else:
        render(report)
    code = exit_code_for(report.n_failed, len(report.results))
    if code:
        raise typer.Exit(code)


def render(report: CropReport) -> None:
    s = report.summary()
    verb = "would write" if report.dry_run else "wrote"
    console.print(
        f"{verb} {s['outputs']} crops from {s['total']} images: {s['ok']} ok, {s['flagged']} flagged, "
        f"{s['skipped']} skipped, {s['failed']} failed" + (f" ({s['resumed']} done earlier)" if s["resumed"] else "")
    )
    for w in report.warnings:
        console.print(f"[yellow]warning:[/yellow] {w}")
    problems = [r for r in report.results if r.status in ("flagged", "skipped", "failed")]
    if problems:
        t = Table(show_header=True, title_justify="left")
        t.add_column("image")
        t.add_column("status")
        t.add_column("why")
        for r in problems[:40]:
            t.add_row(r.id, r.status, r.reason or "")
        console.print(t)
        if len(problems) > 40:
            console.print(f"... and {len(problems) - 40} more in crops.jsonl")
    if report.report_path:
        console.print(f"report: {report.report_path}")
    for p in report.contact_sheets:
        console.print(f"contact sheet: {p}")
