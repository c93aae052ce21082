"""`loraprep`: `loraprep run ...` (the whole job) and the three tools mounted as subcommands:
`loraprep prep ...`, `loraprep caption ...`, `loraprep train_bridge ...`.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import typer
from pydantic import ValidationError
from rich.markup import escape
from rich.table import Table

from captioning.cli import app as caption_app
from loraprep.project import SECTIONS, Project, _required_stand_ins
from loraprep.run import STAGES, RunReport, check_trainer_option, preflight, run_project
from loraprep.studio.cli import register as studio_register
from prep.cli import app as prep_app
from prep.cli.common import (
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    RichProgress,
    console,
    emit_json,
    fail,
    make_app,
)
from prep.options import OptionsError
from prep.project import PROJECT_FILE, ProjectDirs
from train_bridge.cli import app as bridge_app

app = make_app("loraprep", "Raw images to a trained LoRA: run (the whole job), prep, caption, train_bridge.")
app.add_typer(prep_app, name="prep")
app.add_typer(caption_app, name="caption")
app.add_typer(bridge_app, name="train_bridge")
studio_register(app)

def _fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    """`fail` for messages holding user text and [section] names (not rich markup)."""
    return fail(escape(message.replace("Value error, ", "")), code)


def _kv(items: list[str] | None, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for it in items or []:
        if "=" not in it:
            raise _fail(f"{what} {it!r}: use KEY=VALUE", EXIT_USAGE)
        k, v = it.split("=", 1)
        out[k.strip().replace("-", "_")] = v.strip()
    return out


# flag -> where it lands in the project; the help of each comes from that option's own declaration
FLAGS: dict[str, str] = {
    "trigger": "trigger",
    "trainer": "trainer",
    "resolution": "resolution",
    "workers": "workers",
    "engine": "engine",
    "ray_address": "ray_address",
    "framing": "crop.framing",
    "detector": "crop.detector",
    "detector_model": "crop.detector_model",
    "anime_model": "crop.anime_model",
    "upscale": "crop.upscale",
    "reference": "crop.reference",
    "identity_threshold": "crop.identity_threshold",
    "keep_off_model": "crop.off_model",
    "backend": "caption.backend",
    "caption_model": "caption.model",
    "caption_mode": "caption.mode",
    "lora_type": "caption.lora_type",
    "prune_identity": "caption.prune_identity",
    "repeats": "layout.repeats",
    "class_token": "layout.class_token",
    "preset": "train.preset",
    "max_steps": "train.max_steps",
    "renders": "variations.enabled",
}


def _help(dotted: str, fallback: str = "") -> str:
    """The description declared on the option itself (stage options or the project model)."""
    model: Any = Project
    *path, leaf = dotted.split(".")
    for part in path:
        model = model.model_fields["import_" if part == "import" else part].annotation
    f = model.model_fields.get(leaf) if hasattr(model, "model_fields") else None
    return ((f.description if f is not None else None) or fallback).strip()


def _apply(project: Project, given: dict[str, Any]) -> None:
    """Write the options the user gave on the command line into the project (each validated)."""
    for name, value in given.items():
        if value is None:
            continue
        dotted = FLAGS[name]
        obj: Any = project
        *path, leaf = dotted.split(".")
        for part in path:
            obj = project.section(part)
        flag = f"--{name.replace('_', '-')}"
        try:
            setattr(obj, leaf, value)
        except ValidationError as exc:
            msg = "; ".join(e["msg"] for e in exc.errors())
            raise _fail(f"{flag} {value!r}: {msg}", EXIT_USAGE) from None
        if path and path[0] != "train":  # the stage's own checks, named by the flag
            try:
                project.stage_options(path[0], **_required_stand_ins(next(s for s in SECTIONS if s.name == path[0]), project))
            except OptionsError as exc:
                for key, msg in exc.problems:
                    if key == leaf:
                        raise _fail(f"{flag} {value!r}: {msg}", EXIT_USAGE) from None


def _apply_sets(project: Project, sets: dict[str, str], unset: list[str]) -> None:
    """--set / --unset on [train] set: each --set is checked against the trainer's option list first."""
    for key in unset:
        if key not in project.train.set:
            have = ", ".join(sorted(project.train.set)) or "none"
            raise _fail(f"--unset {key}: not set (set now: {have})", EXIT_USAGE)
        new = dict(project.train.set)
        del new[key]
        project.train.set = new
    typed: dict[str, Any] = {}
    for key, raw in sets.items():
        try:
            typed[key] = check_trainer_option(project.trainer, key, raw)
        except ValueError as exc:
            raise _fail(f"--set {key}={raw}: {exc}\nnothing was run or saved; `train_bridge options {project.trainer}` lists the options", EXIT_USAGE) from None
    if typed:
        project.train.set = {**project.train.set, **typed}


@app.command("run")
def run(
    source: Path = typer.Argument(None, help="Folder or .zip of raw images (omit with --config)."),
    out: Path = typer.Option(None, "-o", "--output", help="Project folder (created). Holds loraprep.toml and every stage's output."),
    config: Path = typer.Option(None, "--config", "-c", help="Rerun a project from its loraprep.toml (other options override it)."),
    trigger: str = typer.Option(None, "--trigger", "-t", help=_help("trigger")),
    trainer: str = typer.Option(None, "--trainer", help=_help("trainer")),
    resolution: int = typer.Option(None, "--resolution", help=_help("resolution")),
    framing: str = typer.Option(None, "--framing", help=_help("crop.framing")),
    detector: str = typer.Option(None, "--detector", help=_help("crop.detector")),
    detector_model: str = typer.Option(None, "--detector-model", help=_help("crop.detector_model")),
    anime_model: str = typer.Option(None, "--anime-model", help=_help("crop.anime_model")),
    upscale: bool = typer.Option(None, "--upscale/--no-upscale", help=_help("crop.upscale")),
    reference: Path = typer.Option(None, "--reference", help=_help("crop.reference")),
    identity_threshold: float = typer.Option(None, "--identity-threshold", help=_help("crop.identity_threshold")),
    keep_off_model: bool = typer.Option(None, "--keep-off-model/--set-aside-off-model", help="With --reference: keep off-model crops among the crops (default: moved to the project's off_model/, never deleted)."),
    backend: str = typer.Option(None, "--backend", help=_help("caption.backend", "Caption backend.")),
    caption_model: str = typer.Option(None, "--caption-model", help=_help("caption.model", "Caption model id or path.")),
    caption_mode: str = typer.Option(None, "--caption-mode", help=_help("caption.mode", "Captions you already have: skip, overwrite, append, prepend.")),
    lora_type: str = typer.Option(None, "--lora-type", help=_help("caption.lora_type", "What the LoRA learns: character, style, motion, object, concept.")),
    prune_identity: bool = typer.Option(None, "--prune-identity/--keep-identity", help=_help("caption.prune_identity", "Drop tags of the character's fixed look.")),
    repeats: int = typer.Option(None, "--repeats", help=_help("layout.repeats", "Dataset repeats.")),
    class_token: str = typer.Option(None, "--class-token", help=_help("layout.class_token", "Class word in the folder name.")),
    preset: str = typer.Option(None, "--preset", help=_help("train.preset")),
    model: list[str] = typer.Option(None, "--model", "-m", help="Trainer model file ROLE=PATH, e.g. dit=anima.safetensors (repeat)."),
    dit: Path = typer.Option(None, "--dit", help="DiT weights (Anima, FLUX, Wan)."),
    qwen3: Path = typer.Option(None, "--qwen3", help="Qwen3 text encoder (Anima)."),
    vae: Path = typer.Option(None, "--vae", help="VAE (Anima, Wan, SDXL)."),
    set_: list[str] = typer.Option(None, "--set", help="Trainer option KEY=VALUE, checked against the trainer's option list before anything runs (repeat)."),
    unset: list[str] = typer.Option(None, "--unset", help="Remove a trainer option saved by an earlier --set (repeat)."),
    max_steps: int = typer.Option(None, "--max-steps", help=_help("train.max_steps")),
    no_dedupe: bool = typer.Option(None, "--no-dedupe", help="Keep near-duplicates."),
    renders: bool = typer.Option(None, "--renders/--no-renders", help="3D renders: add identity-checked img2img style variations ([variations] in loraprep.toml; docs/render-variations.md)."),
    workers: int = typer.Option(None, "--workers", "-j", help=_help("workers")),
    engine: str = typer.Option(None, "--engine", help=_help("engine")),
    ray_address: str = typer.Option(None, "--ray-address", help=_help("ray_address")),
    redo: list[str] = typer.Option(None, "--redo", help=f"Run these stages even if up to date ({', '.join(STAGES)})."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what each stage would do; write nothing (not even loraprep.toml)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable report on stdout."),
) -> None:
    """Raw images to a launch-ready run: import, check, dedupe, crop, caption, merge, trigger, lint, layout, config, estimate.

    Each stage is skipped when nothing it depends on changed, so rerunning is instant and an
    edited setting redoes only what it affects. Everything decided goes into
    OUTPUT/loraprep.toml; `loraprep run --config OUTPUT/loraprep.toml` reproduces the run.
    """
    try:
        if config is not None:
            project_dir = config.parent if out is None else out
            project = Project.load(config)
        else:
            if out is None:
                raise _fail("pass -o PROJECT_FOLDER (or --config PROJECT/loraprep.toml)", EXIT_USAGE)
            project_dir = out
            existing = ProjectDirs(out).file
            if existing.exists():
                project = Project.load(existing)
            else:
                if source is None or not trigger:
                    raise _fail("pass SOURCE and --trigger WORD (e.g. loraprep run raw/ --trigger my_char -o project/)", EXIT_USAGE)
                project = Project(source=str(source), trigger=trigger)
    except OSError as exc:
        raise _fail(str(exc), EXIT_USAGE) from None
    except OptionsError as exc:
        raise _fail(f"{exc}\nfix the file (or rewrite it by running without --config)", EXIT_USAGE) from None
    if source is not None:
        project.source = str(source)
    for s in redo or []:
        if s not in STAGES:
            close = difflib.get_close_matches(s, STAGES, n=1)
            raise _fail(f"--redo {s!r}: {'did you mean ' + repr(close[0]) + '? ' if close else ''}stages are {', '.join(STAGES)}", EXIT_USAGE)
    _apply(project, {"trainer": trainer})  # first: the roles and --set keys below are checked against it
    _apply(
        project,
        {
            "trigger": trigger, "resolution": resolution, "workers": workers, "engine": engine, "ray_address": ray_address, "framing": framing, "detector": detector,
            "detector_model": detector_model, "anime_model": anime_model, "upscale": upscale, "backend": backend,
            "caption_model": caption_model, "caption_mode": caption_mode, "lora_type": lora_type, "prune_identity": prune_identity,
            "repeats": repeats, "class_token": class_token, "preset": preset, "max_steps": max_steps, "renders": renders,
            # absolute, so `loraprep run --config` finds the references from any folder
            "reference": str(reference.expanduser().resolve()) if reference is not None else None,
            "identity_threshold": identity_threshold, "keep_off_model": None if keep_off_model is None else ("keep" if keep_off_model else "set-aside"),
        },
    )
    if no_dedupe:
        project.dedupe.enabled = False
    models = _kv(model, "--model") | {k: str(v) for k, v in {"dit": dit, "qwen3": qwen3, "vae": vae}.items() if v is not None}
    if models:
        project.train.models = {**project.train.models, **models}
    _apply_sets(project, _kv(set_, "--set"), list(unset or []))
    try:
        project.check_stages(where="command line")
        preflight(project)
    except OptionsError as exc:
        raise _fail(f"{exc}\nnothing was run or saved", EXIT_USAGE) from None
    try:
        report = run_project(project, project_dir, progress_factory=lambda: RichProgress(not as_json), force=set(redo or []), dry_run=dry_run)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]: finished work is kept; run the same command again to resume.")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if as_json:
        emit_json(report.to_json())
        warn_terminal(report)
    else:
        render(report)
    if report.exit_code:
        raise typer.Exit(report.exit_code)


LIST_SHOWN = 3
DICT_SHOWN = 6


def _fmt(summary: dict[str, Any], keys: tuple[str, ...]) -> str:
    parts = []
    for k in keys:
        v = summary.get(k)
        if v in (None, [], {}, ""):
            continue
        total = summary.get(f"{k}_total")  # a list cut short in the summary (loraprep.stages.SUMMARY_NAMES)
        if isinstance(v, list):
            n = total or len(v)
            more = f", +{n - LIST_SHOWN} more" if n > LIST_SHOWN else ""
            v = f"{n} ({', '.join(map(str, v[:LIST_SHOWN]))}{more})"
        elif isinstance(v, dict):
            items = list(v.items())
            n = total or len(items)
            more = f", +{n - DICT_SHOWN} more" if n > DICT_SHOWN else ""
            v = ", ".join(f"{a}: {b}" for a, b in items[:DICT_SHOWN]) + more
        parts.append(f"{k.replace('_', ' ')} {v}")
    return "; ".join(parts)


_SHOW = {
    "import": ("imported", "already_there", "renamed", "refused"),
    "check": ("images", "unreadable", "small", "exif_rotated", "transparent"),
    "dedupe": ("groups", "moved_to_dupes", "enabled"),
    "crop": ("outputs", "no_face", "off_model", "set_aside", "flagged", "failed", "enabled"),
    "caption": ("backend", "captioned", "reused", "user_captions_kept", "failed"),
    "merge": ("captions", "without_caption", "failed"),
    "trigger": ("total", "changed", "missing", "errors"),
    "variations": ("generated", "resumed", "drifted", "set_aside", "unchecked", "failed", "enabled"),
    "lint": ("errors", "issues", "max_tokens", "budget", "skipped"),
    "layout": ("images", "reg_images", "stale_caches_removed"),
    "config": ("arch", "preset"),
    "estimate": ("total_steps", "steps_per_epoch", "epochs", "time_hours"),
}
_PLAN_SHOW = ("reads", "writes", "note")


def warnings_of(report: RunReport) -> list[str]:
    """What the user must see on the terminal, from any stage (not only in summary.json)."""
    out: list[str] = []
    for s in report.stages:
        if s.status not in ("done", "partial", "up-to-date"):
            continue
        for w in s.summary.get("warnings", []) or []:
            out.append(f"{s.name}: {w}")
        if s.name == "estimate":
            out += [f"estimate: {w}" for w in s.summary.get("check_warnings", []) + s.summary.get("check_errors", [])]
        if s.status == "partial":
            out.append(f"{s.name}: {s.summary.get('n_failed')} item(s) failed; the stage runs again next time (see reports/)")
    crop = report.stage("crop")
    suggested = crop.summary.get("suggested_resolution") if crop else None
    if suggested and not any("--resolution" in w for w in out):
        out.append(f"crop: most sources are smaller than the resolution; try --resolution {suggested}")
    return out


def warn_terminal(report: RunReport) -> None:
    for w in warnings_of(report):
        console.print(f"[yellow]note:[/yellow] {escape(w)}")


def render(report: RunReport) -> None:
    title = f"loraprep run --dry-run -> {report.project_dir} (nothing written)" if report.dry_run else f"loraprep run -> {report.project_dir}"
    t = Table(title=title, title_justify="left")
    t.add_column("stage", style="bold")
    t.add_column("status")
    t.add_column("result")
    for s in report.stages:
        color = {"done": "green", "up-to-date": "dim", "stopped": "red", "partial": "yellow", "would-run": "cyan"}.get(s.status, "")
        if s.status == "stopped":
            text = s.summary.get("reason", "")
        elif report.dry_run:
            text = _fmt(s.summary, _PLAN_SHOW) + (f"; options: {_fmt(s.summary['options'], tuple(s.summary['options']))}" if s.summary.get("options") else "")
        else:
            text = _fmt(s.summary, (*_SHOW.get(s.name, ()), "n_failed"))
        t.add_row(s.name, f"[{color}]{s.status}[/{color}]" if color else s.status, escape(text))
    console.print(t)
    if report.dry_run:
        if report.ok:
            console.print("dry run: nothing was written; run without --dry-run to do it.")
        else:
            console.print(f"\n[red]would stop at {report.stopped_at}[/red]: {escape(report.stop_reason or '')}")
        return
    crop = report.stage("crop")
    if crop and crop.summary.get("contact_sheets"):
        console.print(escape(f"contact sheets: {', '.join(crop.summary['contact_sheets'])}"))
    warn_terminal(report)
    est = report.stage("estimate")
    if est:
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
