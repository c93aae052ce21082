"""`loraprep`: `loraprep run ...` (the whole job) and the three tools mounted as subcommands:
`loraprep prep ...`, `loraprep caption ...`, `loraprep train_bridge ...`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from captioning.cli import app as caption_app
from loraprep.project import PROJECT_FILE, Project
from loraprep.run import STAGES, RunReport, run_project
from prep.cli import app as prep_app
from prep.cli.common import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, RichProgress, console, emit_json, fail, make_app
from train_bridge.cli import app as bridge_app

app = make_app("loraprep", "Raw images to a trained LoRA: run (the whole job), prep, caption, train_bridge.")
app.add_typer(prep_app, name="prep")
app.add_typer(caption_app, name="caption")
app.add_typer(bridge_app, name="train_bridge")

MODEL_ROLES = ("dit", "dit_high", "qwen3", "vae", "llm_adapter", "clip_l", "clip_g", "t5xxl", "ae", "checkpoint", "t5", "clip")


def _kv(items: list[str] | None, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for it in items or []:
        if "=" not in it:
            raise fail(f"{what} {it!r}: use KEY=VALUE", EXIT_USAGE)
        k, v = it.split("=", 1)
        out[k.strip().replace("-", "_")] = v.strip()
    return out


def _apply(project: Project, given: dict[str, Any]) -> None:
    """Write the options the user gave on the command line into the project."""
    for dotted, value in given.items():
        if value is None:
            continue
        obj: Any = project
        *path, leaf = dotted.split(".")
        for part in path:
            obj = getattr(obj, part)
        if isinstance(value, dict):
            getattr(obj, leaf).update(value)
        else:
            setattr(obj, leaf, value)


@app.command("run")
def run(
    source: Path = typer.Argument(None, help="Folder or .zip of raw images (omit with --config)."),
    out: Path = typer.Option(None, "-o", "--output", help="Project folder (created). Holds loraprep.toml and every stage's output."),
    config: Path = typer.Option(None, "--config", "-c", help="Rerun a project from its loraprep.toml (other options override it)."),
    trigger: str = typer.Option(None, "--trigger", "-t", help="Trigger word, exact casing."),
    trainer: str = typer.Option(None, "--trainer", help="anima (default), flux, sdxl, sd3, wan21-t2v, wan21-i2v, wan22-t2v, wan22-i2v."),
    resolution: int = typer.Option(None, "--resolution", help="Training resolution (default 1024)."),
    framing: str = typer.Option(None, "--framing", help="face | bust | upper-body | full."),
    detector: str = typer.Option(None, "--detector", help="auto | photo | anime."),
    detector_model: Path = typer.Option(None, "--detector-model", help="YuNet ONNX file for offline use."),
    upscale: bool = typer.Option(None, "--upscale/--no-upscale", help="Upscale crops smaller than their bucket (Lanczos)."),
    backend: str = typer.Option(None, "--backend", help="Caption backend: wd14 (default), gemini, replicate, florence2, joycaption, wd14+gemini."),
    caption_model: str = typer.Option(None, "--caption-model", help="Caption model id or path (for wd14: a folder with model.onnx and selected_tags.csv)."),
    caption_mode: str = typer.Option(None, "--caption-mode", help="Captions you already have: skip (keep; default), overwrite, append, prepend."),
    prune_identity: bool = typer.Option(None, "--prune-identity/--keep-identity", help="Drop tags of the character's fixed look."),
    repeats: int = typer.Option(None, "--repeats", help="Dataset repeats (default 10)."),
    class_token: str = typer.Option(None, "--class-token", help="Class word in the folder name, e.g. woman."),
    preset: str = typer.Option(None, "--preset", help="VRAM preset: 8gb, 12gb, 16gb, 24gb, 48gb, 80gb."),
    model: list[str] = typer.Option(None, "--model", "-m", help="Trainer model file ROLE=PATH, e.g. dit=anima.safetensors (repeat)."),
    dit: Path = typer.Option(None, "--dit", help="DiT weights (Anima, FLUX, Wan)."),
    qwen3: Path = typer.Option(None, "--qwen3", help="Qwen3 text encoder (Anima)."),
    vae: Path = typer.Option(None, "--vae", help="VAE (Anima, Wan, SDXL)."),
    set_: list[str] = typer.Option(None, "--set", help="Trainer option KEY=VALUE, checked against the trainer's option list (repeat)."),
    max_steps: int = typer.Option(None, "--max-steps", help="Warn when the run needs more steps than this (Colab ~1000)."),
    no_dedupe: bool = typer.Option(None, "--no-dedupe", help="Keep near-duplicates."),
    workers: int = typer.Option(None, "--workers", "-j", help="Parallel workers (default: all cores)."),
    redo: list[str] = typer.Option(None, "--redo", help=f"Run these stages even if up to date ({', '.join(STAGES)})."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable report on stdout."),
) -> None:
    """Raw images to a launch-ready run: import, check, dedupe, crop, caption, trigger, lint, layout, config, estimate.

    Each stage is skipped when nothing it depends on changed, so rerunning is instant and an
    edited setting redoes only what it affects. Everything decided goes into
    OUTPUT/loraprep.toml; `loraprep run --config OUTPUT/loraprep.toml` reproduces the run.
    """
    if config is not None:
        project_dir = config.parent if out is None else out
        try:
            project = Project.load(config)
        except (OSError, ValueError) as exc:
            raise fail(str(exc), EXIT_USAGE) from None
        if source is not None:
            project.source = str(source)
    else:
        if out is None:
            raise fail("pass -o PROJECT_FOLDER (or --config PROJECT/loraprep.toml)", EXIT_USAGE)
        project_dir = out
        existing = out / PROJECT_FILE
        if existing.exists():
            try:
                project = Project.load(existing)
            except ValueError as exc:
                raise fail(str(exc), EXIT_USAGE) from None
            if source is not None:
                project.source = str(source)
        else:
            if source is None or not trigger:
                raise fail("pass SOURCE and --trigger WORD (e.g. loraprep run raw/ --trigger my_char -o project/)", EXIT_USAGE)
            project = Project(source=str(source), trigger=trigger)
            project.crop.upscale = True  # the trainer would upscale small images anyway; we do it after a face-aware crop
    for s in redo or []:
        if s not in STAGES:
            raise fail(f"--redo {s!r}: stages are {', '.join(STAGES)}", EXIT_USAGE)
    models = _kv(model, "--model") | {k: str(v) for k, v in {"dit": dit, "qwen3": qwen3, "vae": vae}.items() if v is not None}
    bad_roles = set(models) - set(MODEL_ROLES)
    if bad_roles:
        raise fail(f"--model: unknown role(s) {', '.join(sorted(bad_roles))} (known: {', '.join(MODEL_ROLES)})", EXIT_USAGE)
    _apply(
        project,
        {
            "trigger": trigger,
            "trainer": trainer,
            "resolution": resolution,
            "workers": workers,
            "crop.framing": framing,
            "crop.detector": detector,
            "crop.detector_model": str(detector_model) if detector_model else None,
            "crop.upscale": upscale,
            "caption.backend": backend,
            "caption.model": caption_model,
            "caption.mode": caption_mode,
            "caption.prune_identity": prune_identity,
            "layout.repeats": repeats,
            "layout.class_token": class_token,
            "train.preset": preset,
            "train.models": models or None,
            "train.set": _kv(set_, "--set") or None,
            "train.max_steps": max_steps,
            "dedupe.enabled": (False if no_dedupe else None),
        },
    )
    try:
        report = run_project(project, project_dir, progress_factory=lambda: RichProgress(not as_json), force=set(redo or []))
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]: finished work is kept; run the same command again to resume.")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if as_json:
        emit_json(report.to_json())
    else:
        render(report)
    if not report.ok:
        raise typer.Exit(EXIT_FAILED)


def _fmt(summary: dict[str, Any], keys: tuple[str, ...]) -> str:
    parts = []
    for k in keys:
        v = summary.get(k)
        if v in (None, [], {}, ""):
            continue
        if isinstance(v, list):
            v = f"{len(v)} ({', '.join(map(str, v[:3]))}{', ...' if len(v) > 3 else ''})"
        elif isinstance(v, dict):
            v = ", ".join(f"{a}: {b}" for a, b in list(v.items())[:6])
        parts.append(f"{k.replace('_', ' ')} {v}")
    return "; ".join(parts)


_SHOW = {
    "import": ("imported", "already_there", "renamed", "refused"),
    "check": ("images", "unreadable", "small", "exif_rotated", "transparent"),
    "dedupe": ("groups", "moved_to_dupes", "enabled"),
    "crop": ("outputs", "no_face", "flagged", "failed"),
    "caption": ("backend", "captioned", "reused", "user_captions_kept", "failed"),
    "trigger": ("captions", "trigger_added_or_moved", "without_caption"),
    "lint": ("errors", "issues", "max_tokens", "budget", "skipped"),
    "layout": ("images", "reg_images", "stale_caches_removed"),
    "config": ("arch", "preset"),
    "estimate": ("total_steps", "steps_per_epoch", "epochs", "time_hours"),
}


def render(report: RunReport) -> None:
    t = Table(title=f"loraprep run -> {report.project_dir}", title_justify="left")
    t.add_column("stage", style="bold")
    t.add_column("status")
    t.add_column("result")
    for s in report.stages:
        color = {"done": "green", "up-to-date": "dim", "stopped": "red"}.get(s.status, "")
        text = s.summary.get("reason", "") if s.status == "stopped" else _fmt(s.summary, _SHOW.get(s.name, ()))
        t.add_row(s.name, f"[{color}]{s.status}[/{color}]" if color else s.status, escape(text))
    console.print(t)
    crop = report.stage("crop")
    if crop and crop.summary.get("contact_sheets"):
        console.print(escape(f"contact sheets: {', '.join(crop.summary['contact_sheets'])}"))
    est = report.stage("estimate")
    if est:
        for w in est.summary.get("warnings", []) + est.summary.get("check_warnings", []) + est.summary.get("check_errors", []):
            console.print(f"[yellow]note:[/yellow] {escape(w)}")
        buckets = est.summary.get("buckets") or {}
        if buckets:
            console.print("buckets: " + ", ".join(f"{k}: {v}" for k, v in buckets.items()))
    if report.ok:
        if not report.work_done:
            console.print("everything was up to date: nothing to do.")
        console.print(f"\nnext: [bold]{escape(' '.join(report.next_command or []))}[/bold]")
    else:
        console.print(f"\n[red]stopped at {report.stopped_at}[/red]: {escape(report.stop_reason or '')}")
        console.print(escape(f"fix it, then run the same command again (or: loraprep run --config {report.project_dir / PROJECT_FILE}); finished stages are kept."))


def main() -> None:
    app()
