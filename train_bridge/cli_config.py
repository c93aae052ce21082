"""`train_bridge config | estimate | check | presets | options`: thin CLI over the library."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from prep.cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, console, emit_json, fail, show
from train_bridge.trainers import ARCH_NAMES


def register(app: typer.Typer) -> None:
    app.command("config")(config)
    app.command("estimate")(estimate)
    app.command("check")(check)
    app.command("presets")(presets)
    app.command("options")(options)
    app.command("samples")(samples)


def config(
    arch: str = typer.Argument(..., help=f"Architecture: {', '.join(ARCH_NAMES)}."),
    dataset: Path = typer.Argument(..., exists=True, file_okay=False, help="Dataset folder (from `prep layout`)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder for train.toml, dataset.toml, sample_prompts.txt, run.json."),
    preset: str = typer.Option("16gb", "--preset", "-p", help="VRAM preset: 8gb, 12gb, 16gb, 24gb, 48gb, 80gb."),
    use_case: str = typer.Option(None, "--use-case", "-u", help="What is trained: face, full-body, 3d-to-photo, anime, video-ready (dim/alpha/lr and the step range; docs/train_bridge-presets.md)."),
    set_: list[str] = typer.Option([], "--set", "-s", help="key=value, checked against the trainer's option list (dataset.KEY=V for the dataset TOML). Repeatable."),
    dit: str = typer.Option(None, "--dit", help="DiT / transformer weights (Anima, FLUX, Wan; Wan 2.2: the low-noise expert)."),
    dit_high: str = typer.Option(None, "--dit-high", help="Wan 2.2 high-noise expert DiT."),
    checkpoint: str = typer.Option(None, "--checkpoint", help="SDXL / SD3 checkpoint (file, Diffusers folder or HF id)."),
    qwen3: str = typer.Option(None, "--qwen3", help="Anima: Qwen3-0.6B text encoder."),
    vae: str = typer.Option(None, "--vae", help="VAE (Anima, Wan; optional for SDXL/SD3)."),
    llm_adapter: str = typer.Option(None, "--llm-adapter", help="Anima: LLM adapter (optional)."),
    clip_l: str = typer.Option(None, "--clip-l", help="FLUX / SD3: CLIP-L."),
    clip_g: str = typer.Option(None, "--clip-g", help="SD3: CLIP-G."),
    t5xxl: str = typer.Option(None, "--t5xxl", help="FLUX / SD3: T5-XXL."),
    ae: str = typer.Option(None, "--ae", help="FLUX: autoencoder (ae.safetensors)."),
    t5: str = typer.Option(None, "--t5", help="Wan: umT5 text encoder (.pth)."),
    clip: str = typer.Option(None, "--clip", help="Wan 2.1 I2V: CLIP (.pth)."),
    trigger: str = typer.Option(None, "--trigger", help="Trigger word (default: from the dataset's layout.json)."),
    name: str = typer.Option(None, "--name", help="LoRA output name (default: the trigger)."),
    repeats: int = typer.Option(None, "--repeats", min=1, help="Override the repeats of the training subsets."),
    ignore_crop_record: bool = typer.Option(
        False, "--ignore-crop-record",
        help="Train at the preset's (or --set dataset.resolution=W,H) resolution even though the dataset's buckets.json says its crops were made for another; the trainer then resizes/crops them.",
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would be written; write nothing."),
    as_json: bool = typer.Option(False, "--json", help="run.json content on stdout."),
) -> None:
    """Write trainer configs that sd-scripts / musubi-tuner accept as written, plus run.json.

    Model roles not given are filled from the Hugging Face cache (`train_bridge models get ARCH`); run.json says which.
    """
    from train_bridge.config import ConfigError, write_run_config

    models = {
        "dit": dit, "dit_high": dit_high, "checkpoint": checkpoint, "qwen3": qwen3, "vae": vae, "llm_adapter": llm_adapter,
        "clip_l": clip_l, "clip_g": clip_g, "t5xxl": t5xxl, "ae": ae, "t5": t5, "clip": clip,
    }
    models = {k: v for k, v in models.items() if v is not None}
    try:
        rc = write_run_config(
            arch, dataset, out, models=models, preset=preset, overrides=list(set_), trigger=trigger, output_name=name, repeats=repeats,
            ignore_crop_record=ignore_crop_record, use_case=use_case, dry_run=dry_run,
        )
    except (ConfigError, KeyError, ValueError) as exc:
        issues = getattr(exc, "issues", None)
        if issues:
            for i in issues:
                console.print(f"[red]error:[/red] {show(i)}")  # a trigger or path may hold [brackets]
            raise typer.Exit(EXIT_USAGE) from None
        raise fail(str(exc).strip("'\""), EXIT_USAGE) from None
    except NotADirectoryError as exc:
        raise fail(str(exc), EXIT_USAGE) from None
    if as_json:
        emit_json(rc.run)
    verb = "would write" if dry_run else "wrote"
    for label, p in rc.files.items():
        console.print(f"{verb} {p}")
    est = rc.run["estimate"]
    console.print(f"{rc.arch} @ {rc.run['preset']}: {est['steps_per_epoch']} steps/epoch, {est['total_steps']} steps total")
    for c in rc.run["commands"]:
        console.print(f"  {c['name']}: {c['script']}")
    for w in rc.warnings:
        console.print(f"[yellow]warning:[/yellow] {w}")
    raise typer.Exit(EXIT_OK)


def estimate(
    run: Path = typer.Argument(..., exists=True, file_okay=False, help="Run folder (from `train_bridge config`)."),
    max_steps: int = typer.Option(None, "--max-steps", help="Warn above this many steps (e.g. 1000 for a Colab T4 session; 0 = no ceiling). Default: the step range of the run's architecture and use case."),
    as_json: bool = typer.Option(False, "--json", help="JSON on stdout."),
) -> None:
    """Exact steps per epoch and in total (sd-scripts / musubi bucket rules), and rough time per GPU."""
    from train_bridge.estimate import estimate_run
    from train_bridge.presets import StepTarget, step_target
    from train_bridge.runspec import RunSpec, RunSpecError

    try:
        est = estimate_run(run, budget=max_steps or None)
        if max_steps is None:  # the range `config` checked the run against
            spec = RunSpec.load(run)
            t = spec.derived.get("step_target") or {}
            target = StepTarget(t["low"], t["high"], t.get("source", "")) if {"low", "high"} <= set(t) else step_target(spec.arch_spec(), (spec.raw.get("asked") or {}).get("use_case"))
            est.warnings += target.warnings(est.total_steps, est.steps_per_epoch, spec.arch + (f" {spec.raw['asked']['use_case']}" if (spec.raw.get("asked") or {}).get("use_case") else ""))
    except (RunSpecError, ValueError) as exc:  # run.json / a TOML missing or malformed: named in the message
        raise fail(str(exc), EXIT_USAGE) from None
    if as_json:
        emit_json(est.as_dict())
    else:
        t = Table(title="buckets (images x repeats)", show_edge=False)
        t.add_column("bucket")
        t.add_column("samples", justify="right")
        for b, n in est.buckets.items():
            t.add_row(b, str(n))
        console.print(t)
        console.print(f"images x repeats: {est.images_with_repeats}" + (f" (+ {est.reg_images_with_repeats} regularisation)" if est.reg_images_with_repeats else ""))
        console.print(f"batches per epoch: {est.batches_per_epoch}; steps per epoch: {est.steps_per_epoch}")
        console.print(f"[bold]total steps: {est.total_steps}[/bold]" + (f" ({est.epochs} epochs)" if est.epochs else ""))
        if est.time_hours:
            console.print("approx. time: " + ", ".join(f"{g} ~{h:g} h" for g, h in est.time_hours.items()))
        for w in est.warnings:
            console.print(f"[yellow]warning:[/yellow] {w}")
    raise typer.Exit(EXIT_OK)


def check(
    target: Path = typer.Argument(..., exists=True, help="Run folder, or a training TOML (with --arch)."),
    sd_scripts: Path = typer.Option(None, "--sd-scripts", exists=True, file_okay=False, help="sd-scripts checkout: also run its parser and dataset validator."),
    musubi: Path = typer.Option(None, "--musubi", exists=True, file_okay=False, help="musubi-tuner checkout: also run its parser and dataset validator."),
    python: str = typer.Option(None, "--python", help="The trainer's Python (default: .venv-loraprep, venv or .venv in the checkout, else this one)."),
    arch: str = typer.Option(None, "--arch", help="Architecture, when TARGET is a TOML file."),
    dataset_config: Path = typer.Option(None, "--dataset-config", help="Dataset TOML, when TARGET is a training TOML."),
    as_json: bool = typer.Option(False, "--json", help="JSON report on stdout."),
) -> None:
    """Preflight: model files, dataset, captions, trigger, option names and types; optionally the trainer's own parser."""
    from train_bridge.check import check_config_files, check_run

    try:
        if target.is_dir():
            report = check_run(target, sd_scripts=sd_scripts, musubi=musubi, python=python)
        else:
            if not arch:
                raise fail("checking a TOML file needs --arch", EXIT_USAGE)
            report = check_config_files(arch, target, dataset_config)
    except (FileNotFoundError, KeyError, ValueError) as exc:  # ValueError: run.json or a TOML that does not parse
        raise fail(str(exc).strip("'\""), EXIT_USAGE) from None
    if as_json:
        emit_json(report.as_dict())
    else:
        for i in report.items:
            color = {"ok": "green", "warning": "yellow", "error": "red"}[i.level]
            console.print(f"[{color}]{i.level:7}[/{color}] {i.area:8} {i.message}")
        console.print(f"{len(report.errors)} error(s), {len(report.warnings)} warning(s)")
    raise typer.Exit(EXIT_OK if report.ok else EXIT_FAILED)


def presets(
    as_json: bool = typer.Option(False, "--json", help="JSON on stdout."),
    use_cases: bool = typer.Option(False, "--use-cases", help="The use-case presets (dim/alpha/lr, step range, source) instead of the VRAM ones."),
) -> None:
    """The VRAM presets per architecture (or, with --use-cases, the use-case presets)."""
    from train_bridge.presets import preset_table, use_case_table

    rows = use_case_table() if use_cases else preset_table()
    if as_json:
        emit_json(rows)
        raise typer.Exit(EXIT_OK)
    t = Table(show_edge=False)
    for k in rows[0]:
        t.add_column(k)
    for r in rows:
        t.add_row(*[str(v) for v in r.values()])
    console.print(t)


def options(
    arch: str = typer.Argument(..., help="Architecture."),
    grep: str = typer.Argument(None, help="Only options containing this text."),
    as_json: bool = typer.Option(False, "--json", help="JSON on stdout."),
) -> None:
    """The trainer's real option list for ARCH (name, type, default, choices)."""
    from train_bridge.options import load_option_list
    from train_bridge.trainers import get_arch

    try:
        spec = get_arch(arch)
    except KeyError as exc:
        raise fail(str(exc).strip("'\""), EXIT_USAGE) from None
    ol = load_option_list(spec.options_key)
    rows = [o for o in ol.options.values() if not grep or grep in o.name]
    if as_json:
        emit_json([o.__dict__ for o in rows])
        raise typer.Exit(EXIT_OK)
    t = Table(title=f"{ol.script} @ {ol.commit[:8]}", show_edge=False)
    for c in ("option", "type", "default", "choices"):
        t.add_column(c)
    for o in rows:
        t.add_row(o.name, o.type + ("[]" if o.is_list else ""), repr(o.default), ", ".join(map(str, o.choices)) if o.choices else "")
    console.print(t)


def samples(
    run: Path = typer.Argument(..., exists=True, file_okay=False, help="Run folder (from `train_bridge config`)."),
    checkpoints: bool = typer.Option(False, "--checkpoints", help="One grid image: rows = prompts, columns = the saved checkpoints (same prompts and seed)."),
    all_steps: bool = typer.Option(False, "--all-steps", help="With --checkpoints: a column for every sampled step, checkpoint or not."),
    out: Path = typer.Option(None, "--out", "-o", help="The grid PNG (default: RUN/samples_grid.png)."),
    cell: int = typer.Option(256, "--cell", min=64, max=1024, help="Pixels per sample in the grid."),
    as_json: bool = typer.Option(False, "--json", help="The samples by prompt and step as JSON on stdout."),
) -> None:
    """The run's samples by prompt and step; --checkpoints renders them side by side to pick a checkpoint."""
    from train_bridge.runspec import RunSpecError
    from train_bridge.samples import collect_run_samples, write_checkpoint_grid

    try:
        if checkpoints:
            path, table = write_checkpoint_grid(run, out, all_steps=all_steps, cell=cell)
        else:
            path, table = None, collect_run_samples(run)
    except (RunSpecError, ValueError) as exc:
        raise fail(str(exc), EXIT_USAGE) from None
    if as_json:
        emit_json({**table.as_dict(), "grid": str(path) if path else None})
        raise typer.Exit(EXIT_OK)
    for i in table.rows():
        console.print(f"[bold]{i}[/bold] {show(table.prompt_text(i))}")
        for c in table.columns:
            s = c.samples.get(i)
            ck = f" · checkpoint {c.checkpoint.name}" if c.checkpoint else ""
            console.print(f"  {c.label}{ck}: {show(s.path.name) if s else '-'}")
    if not table.columns:
        console.print("no samples yet (the trainer writes them to OUTPUT/sample every sample_every_n_steps steps)")
    if path is not None:
        console.print(f"wrote {path} ({len(table.rows())} prompts x {len(table.columns)} checkpoints)")
    raise typer.Exit(EXIT_OK)
