"""`train_bridge setup | launch | status`: thin commands over setup.py, launch.py and status.py.

Exit codes (issue 7): 0 done, 1 failed, 2 usage, 3 out of memory, 130 interrupted.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from prep.cli.common import console, emit_json, fail, show
from train_bridge.launch import (
    EXIT_DONE,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    LaunchError,
    LaunchOptions,
    LaunchResult,
    launch_run,
)


def _quote(argv: list[str]) -> str:
    import shlex

    return " ".join(shlex.quote(a) for a in argv)


# --- setup -----------------------------------------------------------------------------------


def setup_cmd(
    trainer: str = typer.Argument(..., help="sd-scripts or musubi-tuner"),
    commit: Optional[str] = typer.Option(None, "--commit", help="Commit to check out (default: the pinned, tested one)."),
    path: Optional[Path] = typer.Option(None, "--path", "--sd-scripts", "--musubi", help="Use this existing checkout instead of cloning."),
    venv: Optional[Path] = typer.Option(None, "--venv", help="Where to make the virtual environment (default: <checkout>/.venv-loraprep)."),
    repo_url: Optional[str] = typer.Option(None, "--repo-url", help="Clone from here (default: GitHub; env LORAPREP_SD_SCRIPTS_URL / LORAPREP_MUSUBI_TUNER_URL)."),
    torch: Optional[str] = typer.Option(None, "--torch", help="torch build: cu128, cu126, cu124, cu118, cpu, or a requirement such as 'torch==2.5.1'."),
    skip_torch: bool = typer.Option(False, "--skip-torch", help="Do not install torch (it is already in the environment)."),
    system_site_packages: bool = typer.Option(False, "--system-site-packages", help="Let the venv see the system's packages."),
    force: bool = typer.Option(False, "--force", help="Reinstall even if the marker says it is up to date."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would be downloaded and done; do nothing."),
    as_json: bool = typer.Option(False, "--json", help="Machine output on stdout."),
    check: bool = typer.Option(False, "--check", help="Install nothing: import the installed trainer once with its Python and report what is missing."),
) -> None:
    """Install a trainer at a pinned commit with its own virtual environment (once)."""
    from train_bridge.setup import SetupError, plan_setup, run_setup

    if check:
        _setup_check(trainer, path, venv, as_json)

    try:
        plan = plan_setup(
            trainer, commit=commit, path=path, venv=venv, url=repo_url, torch=torch, skip_torch=skip_torch,
            system_site_packages=system_site_packages, force=force,
        )
    except SetupError as exc:
        console.print("[red]error:[/red] " + show(str(exc)), soft_wrap=True)
        raise typer.Exit(EXIT_USAGE) from None
    for note in plan.notes:
        console.print(f"[yellow]note:[/yellow] {note}")
    if plan.up_to_date:
        console.print(f"{plan.trainer} is set up: {plan.checkout} (python {plan.python}); nothing to do.")
        if as_json:
            emit_json({"status": "up_to_date", **plan.as_dict()})
        return
    if plan.downloads:
        console.print("[bold]setup will download:[/bold]")
        for d in plan.downloads:
            console.print(f"  • {d}")
    console.print("[bold]steps:[/bold]")
    for step in plan.steps:
        console.print(f"  • {step.what}")
    if dry_run:
        if as_json:
            emit_json({"status": "dry_run", **plan.as_dict()})
        return
    try:
        run_setup(plan, on_step=lambda s: console.print(f"[bold]→[/bold] {s.what}"))
    except SetupError as exc:
        console.print("[red]error:[/red] " + show(str(exc)), soft_wrap=True)
        raise typer.Exit(EXIT_FAILED) from None
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]: run the same command again to finish setup.")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    console.print(f"[green]{plan.trainer} ready[/green]: {plan.checkout} · python {plan.python}")
    if as_json:
        emit_json({"status": "done", **plan.as_dict()})


def _setup_check(trainer: str, path: Path | None, venv: Path | None, as_json: bool) -> None:
    from train_bridge.setup import SetupError, check_setup, venv_python

    try:
        rep = check_setup(trainer, path, str(venv_python(venv.expanduser().resolve())) if venv else None)
    except SetupError as exc:
        console.print("[red]error:[/red] " + show(str(exc)), soft_wrap=True)
        raise typer.Exit(EXIT_FAILED) from None
    console.print(f"[bold]{rep.trainer}[/bold] {rep.root} · python {rep.python}")
    v = rep.versions
    t = rep.torch or {}
    console.print(
        f"  torch {v.get('torch') or 'missing'} (CUDA build {t.get('cuda_build') or 'none'}, GPU {'yes' if t.get('gpu') else 'no'}) · "
        f"torchvision {v.get('torchvision') or 'missing'} · accelerate {v.get('accelerate')} · transformers {v.get('transformers')} · diffusers {v.get('diffusers')}"
    )
    console.print(f"  imported {len(rep.ok)} of {len(rep.ok) + len(rep.missing) + len(rep.errors)} modules")
    for m in rep.missing:
        console.print(f"  [red]missing[/red] {m['module']}: no module {m['missing']!r}")
    for e in rep.errors:
        console.print(f"  [red]fails[/red] {e['module']}: {e['error']}")
    for n in rep.notes:
        console.print(f"  [yellow]note:[/yellow] {n}")
    for f in rep.fixes():
        console.print(f"  fix: {f}", soft_wrap=True)
    if rep.passed:
        console.print(f"[green]{rep.trainer} imports cleanly[/green]")
    if as_json:
        emit_json(rep.as_dict())
    raise typer.Exit(0 if rep.passed else EXIT_FAILED)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _sigterm_as_interrupt() -> Any:
    """`kill` / `docker stop` stop the trainer as cleanly as Ctrl-C does."""
    try:
        return signal.signal(signal.SIGTERM, _raise_interrupt)
    except ValueError:  # not the main thread
        return None


# --- launch ----------------------------------------------------------------------------------


def _print_result(res: LaunchResult) -> None:
    for o in res.outcomes:
        if o.resume_check is not None and o.resume_check.verified is False:
            console.print(f"[red]resume problem ({o.name}):[/red] {o.resume_check.message}")
    if res.status == "done":
        console.print(f"[green]{res.message}[/green]")
    elif res.status == "oom" and res.advice is not None:
        console.print(f"[red]{res.advice.headline}[/red]")
        for i, s in enumerate(res.advice.suggestions, 1):
            console.print(f"  {i}. [bold]{s.key}[/bold]: {s.current!r} → {s.proposed!r} — {s.why}")
            console.print(f"     {' '.join(s.set_args())}   (or edit {s.file}: {'; '.join(s.toml_lines())})")
        if not res.advice.suggestions:
            console.print("  this config already uses every memory saving loraprep knows; use a GPU with more memory.")
        if res.retry is None:
            console.print("  --auto-retry-oom relaunches once with the next smaller preset's memory settings applied to a copy of the config.")
    elif res.status == "failed":
        console.print(f"[red]training failed:[/red] {res.message}")
    if res.status in ("interrupted", "failed", "oom"):
        console.print(f"continue later with: [bold]{_quote(res.resume_command)}[/bold]" if res.status == "interrupted" else f"log: {res.log_path}")


_ONE_SHOT_HELP = "the options of `train_bridge config`: --<model> PATH (e.g. --dit --qwen3 --vae), -p/--preset, -s/--set KEY=VALUE, --trigger, --name, --repeats, -o/--out RUN_DIR"


def _parse_one_shot(arch: str, extra: list[str]) -> dict[str, Any]:
    """`--dit x --preset 12gb --set a=b -o run/` -> write_run_config keyword arguments."""
    from train_bridge.trainers import get_arch

    spec = get_arch(arch)
    model_names = {m.name for m in spec.models}
    out: dict[str, Any] = {"models": {}, "overrides": []}
    i = 0
    while i < len(extra):
        tok = extra[i]
        if not tok.startswith("-"):
            raise ValueError(f"unexpected argument {tok!r}")
        name, eq, val = tok.lstrip("-").partition("=")
        name = name.replace("-", "_")
        if not eq:
            if i + 1 >= len(extra):
                raise ValueError(f"{tok} needs a value")
            val = extra[i + 1]
            i += 1
        i += 1
        if name in model_names:
            out["models"][name] = Path(val)
        elif name in ("set", "s"):
            out["overrides"].append(val)
        elif name in ("o", "out", "output"):
            out["run_dir"] = Path(val)
        elif name in ("preset", "p"):
            out["preset"] = val
        elif name in ("name", "output_name"):
            out["output_name"] = val
        elif name == "trigger":
            out["trigger"] = val
        elif name == "repeats":
            out["repeats"] = int(val)
        else:
            raise ValueError(f"unknown option {tok} for {arch}; use {_ONE_SHOT_HELP} (models: {', '.join(sorted(model_names))})")
    return out


def project_config_args(arch: str, dirs: Any) -> tuple[Path, dict[str, Any]]:
    """What a project's loraprep.toml says for `train_bridge config`: its dataset folder, run
    folder, `[train]` models, preset and `set`, `[project]` trigger and resolution (the crops'
    buckets). Read as plain TOML through prep.project: train_bridge does not import loraprep."""
    table = dirs.table()
    project, train = table.get("project") or {}, table.get("train") or {}
    models = train.get("models") or {}
    if not isinstance(models, dict):
        raise ValueError(f"{dirs.file}: [train] models must be a table of role = path (e.g. dit = \"anima.safetensors\")")
    overrides: dict[str, Any] = dict(train.get("set") or {})
    if isinstance(project.get("resolution"), int):  # the crops were made for these buckets: train at them
        overrides.setdefault("dataset.resolution", f"{project['resolution']},{project['resolution']}")
    kw: dict[str, Any] = {"models": {k: (dirs.root / v if not Path(v).is_absolute() else Path(v)) for k, v in models.items()}, "overrides": overrides}
    if project.get("trigger"):
        kw["trigger"] = project["trigger"]
    if train.get("preset"):
        kw["preset"] = train["preset"]
    kw["run_dir"] = dirs.run
    return dirs.dataset, kw


def _no_dataset_message(arch: str) -> str:
    from prep.project import PROJECT_FILE

    return (
        f"`train_bridge launch {arch}` needs the dataset folder to train on (kohya layout, images with .txt captions), "
        f"and there is no loraprep project ({PROJECT_FILE}) here or above {Path.cwd()}. Give it: "
        f"`train_bridge launch {arch} DATASET --dit ... [-o RUN_DIR]`; make one with `prep layout CROPPED -o DATASET --trigger NAME`, "
        f"or run the whole pipeline with `loraprep run RAW -o PROJECT --trainer {arch} ...` and launch inside PROJECT."
    )


def _config_then_launch(arch: str, dataset: Path | None, extra: list[str], resume: bool, dry_run: bool) -> Path | None:
    """The one-shot form: write the run folder with `train_bridge.config`, then launch it.

    Without a dataset, inside a loraprep project: the project's dataset, run folder and models."""
    from train_bridge import config as cfg

    kw = _parse_one_shot(arch, extra)
    if dataset is None:
        from prep.project import find_project

        dirs = find_project()
        if dirs is None:
            raise ValueError(_no_dataset_message(arch))
        if not dirs.dataset.is_dir():
            raise ValueError(f"the project {dirs.root} has no dataset folder yet ({dirs.dataset}): run `loraprep run --config {dirs.file}` first.")
        dataset, base = project_config_args(arch, dirs)
        given_models = kw.pop("models")
        kw = {**base, **kw, "models": {**base["models"], **given_models}, "overrides": {**base["overrides"], **_as_dict(kw.pop("overrides", []))}}
        console.print(f"project {dirs.root}: dataset {dirs.dataset}, run folder {kw['run_dir']}")
    run_dir = kw.pop("run_dir", None) or Path("runs") / f"{arch}-{dataset.resolve().name}"
    if resume and (run_dir / "run.json").is_file():
        console.print(f"resuming the existing run folder {run_dir} (its config is not rewritten)")
        return run_dir
    rc = cfg.write_run_config(arch, dataset, run_dir, dry_run=dry_run, **kw)
    for w in rc.warnings:
        console.print(f"[yellow]warning:[/yellow] {w}")
    if dry_run:
        console.print(f"would write {run_dir}/ (train.toml, dataset.toml, sample_prompts.txt, run.json) and launch:")
        for c in rc.run["commands"]:
            console.print(f"  [bold]{c['name']}[/bold]: {c['script']} {_quote(c['args'])}")
        return None
    console.print(f"wrote {run_dir}/ (train.toml, dataset.toml, sample_prompts.txt, run.json)")
    return run_dir


def _as_dict(sets: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in sets:
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        out[key.strip()] = value
    return out


def launch_cmd(
    ctx: typer.Context,
    target: Path = typer.Argument(..., help="The run folder written by `train_bridge config` (holds run.json), or an architecture (anima, flux, ...) to write one first."),
    dataset: Optional[Path] = typer.Argument(None, help="With an architecture: the dataset folder (then " + _ONE_SHOT_HELP + "); inside a loraprep project it defaults to the project's dataset."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the newest saved state; fails if there is none."),
    restart: bool = typer.Option(False, "--restart", help="Start from step 0 even though saved state exists."),
    no_gpu_check: bool = typer.Option(False, "--no-gpu-check", help="Do not ask nvidia-smi for a GPU and free memory first."),
    no_preflight: bool = typer.Option(False, "--no-preflight", help="Do not check model files and dataset folders first (the checks of `train_bridge check`)."),
    auto_retry_oom: bool = typer.Option(False, "--auto-retry-oom", help="On out-of-memory, relaunch once with a smaller-memory copy of the config."),
    trainer_dir: Optional[Path] = typer.Option(None, "--trainer-dir", help="Trainer checkout (default: what `setup` installed)."),
    python: Optional[str] = typer.Option(None, "--python", help="Python that runs the trainer (env LORAPREP_TRAINER_PYTHON)."),
    no_accelerate: bool = typer.Option(False, "--no-accelerate", help="Run `python script.py` instead of `accelerate launch` (single GPU)."),
    grace: float = typer.Option(60.0, "--grace", help="Seconds Ctrl-C waits for the trainer to stop before terminating it."),
    recache: bool = typer.Option(False, "--recache", help="Run cache steps even when they were already made."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the commands that would run; start nothing."),
    plain: bool = typer.Option(False, "--plain", help="Plain progress lines instead of a live bar (notebooks, log files)."),
    as_json: bool = typer.Option(False, "--json", help="Machine output on stdout."),
    remote: Optional[str] = typer.Option(None, "--remote", help="Train on another machine: ssh://USER@HOST[:PORT], or `runpod` (a pod made from RUNPOD_API_KEY; see --gpu). docs/remote.md"),
    gpu: Optional[str] = typer.Option(None, "--gpu", help="With --remote runpod: the GPU type, e.g. \"A100 80GB\" or a RunPod GPU type id."),
    on_finish: str = typer.Option("stop", "--on-finish", help="With --remote: stop (pod stopped), terminate (pod deleted after the last pull) or keep (left running: billed)."),
    identity: Optional[Path] = typer.Option(None, "--identity", "-i", help="With --remote: the ssh private key (default: your ssh agent / ssh's defaults)."),
    accept_new_host_key: bool = typer.Option(False, "--accept-new-host-key", help="With --remote: trust and record a host key seen for the first time (a changed key is always refused)."),
    remote_dir: str = typer.Option("loraprep-runs", "--remote-dir", help="With --remote: the folder on the remote that holds runs (relative to the remote home)."),
    remote_python: str = typer.Option("python3", "--remote-python", help="With --remote: the Python on the remote that has loraprep installed."),
    remote_trainer_dir: Optional[str] = typer.Option(None, "--remote-trainer-dir", help="With --remote: a trainer checkout on the remote (skips `train_bridge setup` there)."),
    remote_trainer_python: Optional[str] = typer.Option(None, "--remote-trainer-python", help="With --remote-trainer-dir: the Python that runs it."),
    remote_env: list[str] = typer.Option([], "--remote-env", help="With --remote: NAME=VALUE set for the remote commands (not for secrets: HF_TOKEN etc. are forwarded from your environment)."),
    reconnect: int = typer.Option(3, "--reconnect", help="With --remote: times to retry a dropped connection before leaving the run to `train_bridge attach`."),
    pull_every: float = typer.Option(5.0, "--pull-every", help="With --remote: seconds between pulls of new checkpoints and samples."),
    disk: int = typer.Option(50, "--disk", help="With --remote runpod: the pod's disk in GB."),
    detach: bool = typer.Option(False, "--detach", help="Train in the background: check, start, write status.json and return; the training survives this terminal. `train_bridge attach RUN` brings the view back."),
) -> None:
    """Run the trainer for a run folder with live progress, OOM advice and resume.

    Also `train_bridge launch ARCH DATASET --<model> PATH ... [-o RUN_DIR]`: write the run folder
    (as `train_bridge config` does) and launch it in one go.
    """
    if resume and restart:
        console.print("[red]error:[/red] --resume and --restart contradict each other; pick one.")
        raise typer.Exit(EXIT_USAGE)
    extra = list(ctx.args)
    from prep.archs import ALIASES, ARCH_NAMES

    is_arch = str(target) in ARCH_NAMES or str(target) in ALIASES
    if dataset is not None or extra or (is_arch and not (target / "run.json").is_file()):
        if not is_arch:
            console.print(
                f"[red]error:[/red] unexpected arguments {_quote([str(dataset)] if dataset else [])} {_quote(extra)}: give a run folder, "
                f"or an architecture ({', '.join(ARCH_NAMES)}) followed by the dataset folder and its options."
            )
            raise typer.Exit(EXIT_USAGE)
        from train_bridge.config import ConfigError

        try:
            written = _config_then_launch(str(target), dataset, extra, resume, dry_run)
        except (ConfigError, ValueError, KeyError, FileNotFoundError, NotADirectoryError) as exc:
            console.print("[red]error:[/red] " + show(str(exc)), soft_wrap=True)
            raise typer.Exit(EXIT_USAGE) from None
        if written is None:
            return
        target = written
    if not (target / "run.json").is_file() and not target.is_dir():
        console.print(
            f"[red]error:[/red] {target} is not a run folder. Write one first with "
            f"`train_bridge config ... -o RUN_DIR`, or use `train_bridge launch ARCH DATASET --<model> PATH ...`."
        )
        raise typer.Exit(EXIT_USAGE)
    if detach and remote is not None:
        console.print("[red]error:[/red] --detach is for local runs; a --remote run already trains on the remote and `train_bridge attach` follows it.")
        raise typer.Exit(EXIT_USAGE)
    if remote is not None:
        from train_bridge.cli_remote import remote_options, run_remote
        from train_bridge.remote.session import launch_remote

        try:
            ropts = remote_options(
                remote, gpu=gpu, on_finish=on_finish, identity=identity, accept_new_host_key=accept_new_host_key, remote_dir=remote_dir,
                remote_python=remote_python, trainer_dir=remote_trainer_dir, trainer_python=remote_trainer_python, remote_env=remote_env,
                reconnect=reconnect, pull_every_s=pull_every, disk_gb=disk, gpu_check=not no_gpu_check, resume=resume, restart=restart,
                auto_retry_oom=auto_retry_oom, accelerate=False if no_accelerate else None, recache=recache, grace_s=grace, dry_run=dry_run,
            )
        except ValueError as exc:
            console.print("[red]error:[/red] " + show(str(exc)), soft_wrap=True)
            raise typer.Exit(EXIT_USAGE) from None
        run_remote(launch_remote, target, ropts, plain, as_json)
    elif gpu is not None:
        console.print("[red]error:[/red] --gpu is for --remote runpod; a local launch uses this machine's GPU.")
        raise typer.Exit(EXIT_USAGE)
    opts = LaunchOptions(
        resume=resume, restart=restart, gpu_check=not no_gpu_check, auto_retry_oom=auto_retry_oom,
        trainer_dir=trainer_dir, python=python, accelerate=False if no_accelerate else None, grace_s=grace,
        recache=recache, dry_run=dry_run, preflight=not no_preflight,
    )
    if detach and not dry_run:
        _detach(target, opts, as_json)
    from train_bridge.progress_view import LiveView

    view = LiveView(console, live=False if plain else None)
    previous = _sigterm_as_interrupt()
    try:
        res = launch_run(target, opts, view)
    except LaunchError as exc:
        view.close()
        if as_json:
            emit_json({"status": "error", "exit_code": exc.code, "message": str(exc)})
        raise fail(str(exc), exc.code) from None
    except KeyboardInterrupt:
        view.close()
        console.print("[yellow]interrupted[/yellow] before training started")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    finally:
        view.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if res.status == "dry_run":
        for note in res.notices:
            console.print(f"[yellow]note:[/yellow] {note}")
        for item in res.plan:
            prefix = "skip " + item["action"][5:] if item["action"].startswith("skip:") else "run"
            console.print(f"[bold]{item['name']}[/bold] ({prefix}): {_quote(item['argv'])}")
    else:
        _print_result(res)
    if as_json:
        emit_json(res.as_dict())
    raise typer.Exit(res.exit_code)


def launch_flags(opts: LaunchOptions) -> list[str]:
    """The `launch` flags that give these options (what a detached launcher is started with)."""
    flags = [
        *(["--resume"] if opts.resume else []), *(["--restart"] if opts.restart else []),
        *([] if opts.gpu_check else ["--no-gpu-check"]), *([] if opts.preflight else ["--no-preflight"]),
        *(["--auto-retry-oom"] if opts.auto_retry_oom else []), *(["--recache"] if opts.recache else []),
        *(["--no-accelerate"] if opts.accelerate is False else []), "--grace", str(opts.grace_s), "--plain",
    ]
    if opts.trainer_dir is not None:
        flags += ["--trainer-dir", str(Path(opts.trainer_dir).resolve())]
    if opts.python is not None:
        flags += ["--python", opts.python]
    return flags


def _detach(target: Path, opts: LaunchOptions, as_json: bool) -> None:
    """Check everything a launch checks before starting (so errors land here, not in a log),
    then start the launcher in the background and return."""
    import dataclasses

    from train_bridge.launch import detach_launch

    try:
        launch_run(target, dataclasses.replace(opts, dry_run=True))
    except LaunchError as exc:
        if as_json:
            emit_json({"status": "error", "exit_code": exc.code, "message": str(exc)})
        raise fail(str(exc), exc.code) from None
    argv = [sys.executable, "-m", "train_bridge.cli", "launch", str(target.resolve()), *launch_flags(opts)]
    info = detach_launch(target, argv)
    console.print(
        f"[green]training in the background[/green] (launcher pid {info['pid']}; its output: {info['launcher_output']}).\n"
        f"  follow it: [bold]train_bridge attach {target}[/bold]   progress: train_bridge status {target}   "
        f"stop it: train_bridge attach {target} --stop"
    )
    if as_json:
        emit_json({"status": "detached", **info})
    raise typer.Exit(EXIT_DONE)


# --- status ----------------------------------------------------------------------------------


def status_cmd(
    run_dir: Path = typer.Argument(..., help="The run folder."),
    as_json: bool = typer.Option(False, "--json", help="Machine output on stdout."),
) -> None:
    """Progress, last loss, checkpoints and samples of a run folder."""
    from train_bridge.logparse import TrainProgress
    from train_bridge.progress_view import progress_line
    from train_bridge.status import collect_status

    from train_bridge.runspec import RunSpecError

    try:
        st = collect_status(run_dir)
    except (FileNotFoundError, RunSpecError) as exc:
        console.print("[red]error:[/red] " + show(str(exc)), soft_wrap=True)
        raise typer.Exit(EXIT_USAGE) from None
    if as_json:
        emit_json(st)
        return
    p: dict[str, Any] = st["progress"] or {}
    tp = TrainProgress(
        step=p.get("step") or 0, step_offset=p.get("step_offset") or 0, total=p.get("total"), epoch=p.get("epoch"), epochs=p.get("epochs"),
        avr_loss=p.get("avr_loss"), loss=p.get("loss"), rate=p.get("rate_it_s"), eta_s=p.get("eta_s"),
    )
    console.print(f"[bold]{st['run_dir']}[/bold]: {st['state']}" + (f" (exit {st['exit_code']})" if st.get("exit_code") is not None else ""))
    if st.get("message"):
        console.print(f"  {st['message']}")
    if st.get("remote"):
        r = st["remote"]
        console.print(f"  remote: {r.get('host')} (pid {r.get('pid')}) · as of {st.get('last_contact') or '?'} · follow it with `train_bridge attach {run_dir}`")
    console.print(f"  {progress_line(tp)}")
    console.print(f"  last loss: {st['last_loss'] if st['last_loss'] is not None else '-'}")
    console.print(f"  checkpoints ({len(st['checkpoints'])}):")
    for c in st["checkpoints"][-10:]:
        console.print(f"    {c}")
    console.print(f"  samples ({len(st['samples'])}):")
    for s in st["samples"][-6:]:
        console.print(f"    {s}")
    if st["states"]:
        last = st["states"][-1]
        console.print(f"  resumable from: {last['path']} (step {last['step']}, epoch {last['epoch']})")
    if st.get("log"):
        console.print(f"  log: {st['log']}")
    if st.get("oom_retries"):
        console.print(f"  oom retries: {json.dumps([r.get('changes') for r in st['oom_retries']])}")


def register(app: typer.Typer) -> None:
    app.command("setup")(setup_cmd)
    app.command("launch", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(launch_cmd)
    app.command("status")(status_cmd)
    from train_bridge import cli_remote  # `attach` (remote runs)

    cli_remote.register(app)
