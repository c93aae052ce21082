"""Run a run folder's trainer commands with live progress, OOM diagnosis and honest resume.

`launch_run` reads run/run.json, checks the GPU, runs each command (musubi: caches, then
training; caches already made for the same dataset are skipped), streams the merged output into
run/logs/<timestamp>.log, parses it live, keeps run/status.json current and reports to an
observer callback (the CLI's rich view). It never prints.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prep.fsutil import atomic_write_text
from train_bridge import oom as oom_mod
from train_bridge.gpu import check_gpu
from train_bridge.logparse import Event, LogParser, TrainProgress
from train_bridge.resume import (
    NoStateError,
    ResumeCheck,
    StateDir,
    find_states,
    latest_state,
    record_session_states,
    recorded_config,
    set_aside,
    verify_resumed,
)
from train_bridge.runspec import Command, RunSpec, RunSpecError
from train_bridge.setup import SetupError, TrainerEnv, resolve_trainer
from train_bridge.trainers import trainer_named
from train_bridge.watch import OutputWatcher, list_outputs

# Exit codes of setup / launch / status (issue 7). OOM is 3 here, as the issue says.
EXIT_DONE = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_OOM = 3
EXIT_INTERRUPTED = 130

Observer = Callable[[str, dict[str, Any]], None]


class LaunchError(RuntimeError):
    def __init__(self, message: str, code: int = EXIT_FAILED):
        super().__init__(message)
        self.code = code


@dataclass
class LaunchOptions:
    resume: bool = False
    restart: bool = False
    gpu_check: bool = True
    auto_retry_oom: bool = False
    trainer_dir: Path | None = None
    python: str | None = None
    accelerate: bool | None = None  # None: as run.json says
    grace_s: float = 60.0
    recache: bool = False
    dry_run: bool = False
    preflight: bool = True  # the model and dataset checks of `train_bridge check`, before anything runs


@dataclass
class CommandOutcome:
    name: str
    argv: list[str]
    status: str  # done, failed, oom, host_oom, interrupted, skipped
    returncode: int | None = None
    progress: TrainProgress = field(default_factory=TrainProgress)
    resume_check: ResumeCheck | None = None
    message: str = ""


@dataclass
class LaunchResult:
    status: str  # done, failed, oom, interrupted, dry_run
    exit_code: int
    run_dir: Path
    log_path: Path | None
    outcomes: list[CommandOutcome] = field(default_factory=list)
    advice: oom_mod.OomAdvice | None = None
    retry: dict[str, Any] | None = None
    resume_command: list[str] = field(default_factory=list)
    message: str = ""
    plan: list[dict[str, Any]] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)  # what launch decided before starting (config changes, set-aside outputs)

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "exit_code": self.exit_code,
            "run_dir": str(self.run_dir),
            "log": str(self.log_path) if self.log_path else None,
            "message": self.message,
            "commands": [
                {
                    "name": o.name,
                    "argv": o.argv,
                    "status": o.status,
                    "returncode": o.returncode,
                    "message": o.message,
                    "progress": o.progress.as_dict(),
                    "resume": None if o.resume_check is None else {"verified": o.resume_check.verified, "message": o.resume_check.message},
                }
                for o in self.outcomes
            ],
            "advice": self.advice.as_dict() if self.advice else None,
            "retry": self.retry,
            "resume_command": self.resume_command,
            "plan": self.plan,
            "notices": self.notices,
        }


# --- argv ------------------------------------------------------------------------------------


def build_argv(
    cmd: Command, env: TrainerEnv, accelerate: bool | None = None, resume_from: Path | None = None, initial_step: int | None = None
) -> list[str]:
    """[python, -m, accelerate.commands.launch, <accelerate args>, script, <args>] or [python, script, <args>].

    `python -m accelerate.commands.launch` avoids depending on the `accelerate` script being on PATH.
    Accelerate's own options must come before the script; the trainer's after it.
    """
    script = Path(cmd.script)
    if not script.is_absolute():
        script = env.root / script
    args = list(cmd.args)
    if resume_from is not None:
        args = _without_option(args, "--resume") + ["--resume", str(resume_from)]
    if initial_step is not None:
        args = _without_option(args, "--initial_step") + ["--initial_step", str(initial_step)]
    use_acc = cmd.accelerate if accelerate is None else accelerate
    if use_acc:
        return [env.python, "-m", "accelerate.commands.launch", *cmd.accelerate_args, str(script), *args]
    return [env.python, str(script), *args]


def _without_option(args: list[str], option: str) -> list[str]:
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
            continue
        if a == option:
            skip = True
            continue
        if a.startswith(option + "="):
            continue
        out.append(a)
    return out


def fingerprint(cmd: Command, spec: RunSpec) -> str:
    """What makes a step's result reusable: its script, args, the dataset.toml it reads and, for
    training, its training TOML (more epochs in train.toml make a finished run train on)."""
    h = hashlib.sha256(json.dumps([cmd.script, _without_option(_without_option(cmd.args, "--resume"), "--initial_step")]).encode())
    ds = spec.dataset_toml(cmd)
    if ds is not None and ds.is_file():
        h.update(ds.read_bytes())
    train = spec.train_toml(cmd) if not cmd.is_cache else None
    if train is not None and train.is_file():
        h.update(b"\0train\0" + train.read_bytes())
    return h.hexdigest()


def train_values(spec: RunSpec, cmd: Command) -> dict[str, Any]:
    """The command's training TOML, flattened as sd-scripts reads it."""
    return oom_mod.flatten(oom_mod.load_toml(spec.train_toml(cmd)))


def resume_initial_step(spec: RunSpec, state: StateDir | None) -> int | None:
    """`--initial_step` for a state whose own step is session-relative (saved after a resume).

    sd-scripts starts the resumed session at epoch `current_step // steps per epoch` of the
    state's train_state.json; for such a state that step is too small and whole epochs would be
    trained again. `--initial_step` wins over the state's step and only sets the starting epoch
    (train_network.py at 48d368fa), so launch passes the global step it recorded.
    """
    if state is None or not trainer_named(spec.trainer).resume_needs_initial_step or not state.recorded or state.own_step is None:
        return None
    return state.step if state.step != state.own_step else None


def output_name_of(cmd: Command, spec: RunSpec) -> str:
    """The name checkpoints and states get: the argument, else the command's training TOML
    (Wan 2.2 experts are `<name>_high` / `<name>_low` there), else run.json's."""
    if (v := cmd.arg_value("--output_name")) is not None:
        return v
    name = oom_mod.flatten(oom_mod.load_toml(spec.train_toml(cmd))).get("output_name")
    return name if isinstance(name, str) and name else spec.output_name


def resume_command(run_dir: Path) -> list[str]:
    return ["train_bridge", "launch", str(run_dir), "--resume"]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8", COLUMNS="200")
    env.setdefault("TERM", "xterm")
    return env


# --- status.json -----------------------------------------------------------------------------


def status_path(run_dir: Path) -> Path:
    return Path(run_dir) / "status.json"


def read_status(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads(status_path(run_dir).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def pid_alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    try:  # an exited child not yet reaped (a detached launcher's parent may live on) is a zombie
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class StatusWriter:
    """Keeps run/status.json current (atomic rename, at most every `interval` seconds)."""

    def __init__(self, spec: RunSpec, interval: float = 2.0):
        self.spec = spec
        self.interval = interval
        self.data = read_status(spec.run_dir)
        self.data.setdefault("commands", {})
        self.data["version"] = 1
        self._last = 0.0

    def update(self, force: bool = False, **fields: Any) -> None:
        self.data.update(fields)
        now = time.monotonic()
        if force or now - self._last >= self.interval:
            self._last = now
            self.data["updated_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
            outs = list_outputs(self.spec.output_dir)
            self.data["files"] = {k: [str(p) for p in v] for k, v in outs.items()}
            atomic_write_text(status_path(self.spec.run_dir), json.dumps(self.data, indent=2, ensure_ascii=False, default=str) + "\n")

    def mark_command(self, name: str, **fields: Any) -> None:
        self.data["commands"].setdefault(name, {}).update(fields)
        self.update(force=True)


# --- running one process ---------------------------------------------------------------------


@dataclass
class _Proc:
    returncode: int | None
    interrupted: bool
    killed_by_us: bool


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        if os.name == "posix":
            os.killpg(proc.pid, sig)
        elif sig == signal.SIGINT:
            proc.send_signal(signal.CTRL_BREAK_EVENT)  # type: ignore[attr-defined]
        else:
            proc.kill()
    except (ProcessLookupError, PermissionError, OSError):
        pass


def stream_process(
    argv: list[str],
    *,
    cwd: Path,
    env: dict[str, str],
    log_fh: Any,
    parser: LogParser,
    on_events: Callable[[list[Event]], None],
    on_tick: Callable[[], None],
    grace_s: float = 60.0,
    on_interrupt: Callable[[str], None] | None = None,
) -> _Proc:
    """Run argv in its own process group; copy its output to log_fh and the parser as it comes.

    Ctrl-C (KeyboardInterrupt here) sends SIGINT to the trainer's group so it can stop cleanly;
    after `grace_s` it gets SIGTERM, ten seconds later SIGKILL. A second Ctrl-C kills at once.
    """
    popen_kw: dict[str, Any] = {}
    if os.name == "posix":
        popen_kw["start_new_session"] = True
    else:  # pragma: no cover - Windows
        popen_kw["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore[attr-defined]
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **popen_kw)
    assert proc.stdout is not None
    chunks: queue.Queue[bytes | None] = queue.Queue()
    fd = proc.stdout.fileno()

    def reader() -> None:
        while True:
            try:
                b = os.read(fd, 65536)
            except OSError:
                b = b""
            if not b:
                chunks.put(None)
                return
            chunks.put(b)

    threading.Thread(target=reader, name="trainer-output", daemon=True).start()
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    interrupted = killed = False
    stage, deadline = 0, float("inf")
    eof = False

    def escalate() -> None:
        nonlocal stage, deadline, killed
        stage += 1
        killed = True
        if stage == 1:
            _signal_group(proc, signal.SIGTERM)
            deadline = time.monotonic() + 10.0
        else:
            _signal_group(proc, signal.SIGKILL)
            deadline = float("inf")

    while not eof:
        try:
            try:
                item = chunks.get(timeout=0.25)
            except queue.Empty:
                item = b""
            if item is None:
                eof = True
            elif item:
                log_fh.write(item)
                log_fh.flush()
                on_events(parser.feed(decoder.decode(item)))
            on_tick()
            if interrupted and time.monotonic() > deadline:
                if on_interrupt:
                    on_interrupt("the trainer did not stop in time; terminating it")
                escalate()
        except KeyboardInterrupt:
            if not interrupted:
                interrupted = True
                if on_interrupt:
                    on_interrupt(f"stopping the trainer (up to {grace_s:.0f} s; Ctrl-C again to kill it now)")
                _signal_group(proc, signal.SIGINT)
                deadline = time.monotonic() + grace_s
            else:
                stage = max(stage, 1)
                escalate()
    on_events(parser.feed(decoder.decode(b"", final=True)) + parser.close())
    while True:
        try:
            rc = proc.wait(timeout=1.0)
            break
        except subprocess.TimeoutExpired:
            if interrupted and time.monotonic() > deadline:
                escalate()
        except KeyboardInterrupt:
            interrupted = True
            stage = max(stage, 1)
            escalate()
    proc.stdout.close()
    return _Proc(rc, interrupted, killed)


# --- the launch ------------------------------------------------------------------------------


def classify(proc: _Proc, progress: TrainProgress) -> str:
    if proc.interrupted:
        return "interrupted"
    if progress.oom:
        return "oom"
    if (proc.returncode in (137, -9) or progress.killed or (progress.host_oom and proc.returncode != 0)) and not proc.killed_by_us:
        return "host_oom"
    if proc.returncode == 0:
        return "done"
    return "failed"


# Training-TOML keys whose change a resume cannot honour, and why (sd-scripts restores the
# network, optimizer and LR scheduler from the state with accelerate's load_state).
RESUME_REFUSES: dict[str, str] = {
    "network_module": "the saved network is another module; the state cannot be loaded into it",
    "network_dim": "the saved LoRA weights have the old rank; loading them into the new shape fails",
    "network_args": "the network's shape (conv_dim, algo, ...) changed; the saved weights do not fit it",
    "network_alpha": "alpha is saved with the LoRA weights; the state's value would silently replace the new one",
    "network_train_unet_only": "the set of trained parameters changed; the optimizer state does not match it",
    "network_train_text_encoder_only": "the set of trained parameters changed; the optimizer state does not match it",
    "optimizer_type": "the optimizer state saved is another optimizer's",
    "optimizer_args": "the optimizer state is restored from the state, so the new arguments would not be used as expected",
    "learning_rate": "the optimizer and LR scheduler restore the old learning rate from the state; the new one would not take effect",
    "unet_lr": "the optimizer restores the old learning rate from the state; the new one would not take effect",
    "text_encoder_lr": "the optimizer restores the old learning rate from the state; the new one would not take effect",
    "lr_scheduler": "the LR scheduler is restored from the state; the new one would not take effect",
    "lr_warmup_steps": "the LR scheduler is restored from the state; the new warm-up would not take effect",
    "output_name": "the saved states carry the old name; a resume looks for the new one",
    "output_dir": "the saved states are in the old output folder",
}
# Keys that are read from the config again on every start, so a resume honours them.
RESUME_TAKES_EFFECT = (
    "max_train_epochs", "max_train_steps", "save_every_n_epochs", "save_every_n_steps", "save_last_n_epochs",
    "save_last_n_steps", "save_last_n_epochs_state", "save_last_n_steps_state", "sample_every_n_epochs",
    "sample_every_n_steps", "sample_prompts", "sample_sampler", "max_data_loader_n_workers", "persistent_data_loader_workers",
    "logging_dir", "log_with", "log_prefix", "save_model_as", "save_precision",
)


@dataclass
class ConfigChange:
    """How the training TOML differs from the one the resumed state was made with."""

    takes_effect: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    unsure: list[str] = field(default_factory=list)


def _show(v: Any) -> str:
    return "(unset)" if v is None else json.dumps(v, default=str)


def config_change(spec: RunSpec, cmd: Command, state: StateDir) -> ConfigChange | None:
    """None when launch did not record the TOML the state was made with (or nothing changed)."""
    old = recorded_config(spec.output_dir, state)
    if old is None:
        return None
    new = train_values(spec, cmd)
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if not keys:
        return None
    ch = ConfigChange()
    for k in keys:
        what = f"{k} {_show(old.get(k))} -> {_show(new.get(k))}"
        if k in RESUME_REFUSES:
            ch.refused.append(f"{what}: {RESUME_REFUSES[k]}")
        elif k in RESUME_TAKES_EFFECT:
            ch.takes_effect.append(what)
        else:
            ch.unsure.append(what)
    return ch


def planned_total_steps(spec: RunSpec, cmd: Command) -> int | None:
    """What sd-scripts will compute: max_train_epochs x steps per epoch, else max_train_steps."""
    v = train_values(spec, cmd)
    epochs, steps = v.get("max_train_epochs"), v.get("max_train_steps")
    if isinstance(epochs, int) and epochs > 0 and spec.steps_per_epoch:
        return epochs * spec.steps_per_epoch
    return steps if isinstance(steps, int) and steps > 0 else None


def check_resume_config(spec: RunSpec, cmd: Command, state: StateDir) -> list[str]:
    """Refuse a resume that cannot honour the edited train.toml; else say what changed and what it does."""
    toml = spec.train_toml(cmd)
    ch = config_change(spec, cmd, state)
    if ch is not None and ch.refused:
        raise LaunchError(
            f"cannot resume {state.path.name}: {toml} changed since that state was saved: " + "; ".join(ch.refused)
            + ". Put the old value back to continue, or start again from step 0 with --restart "
            "(the old states and checkpoints are moved aside, not deleted).",
            EXIT_USAGE,
        )
    total = planned_total_steps(spec, cmd)
    if state.step is not None and total is not None and total <= state.step:
        raise LaunchError(
            f"nothing left to train: {state.path.name} is at step {state.step} and {toml} asks for {total} steps in all "
            f"(sd-scripts refuses: 'max_train_steps should be greater than initial step'). Raise max_train_epochs "
            "(or max_train_steps) in it to train on.",
            EXIT_USAGE,
        )
    notes = []
    if ch is not None and ch.takes_effect:
        notes.append(
            f"{toml} changed since {state.path.name} was saved: " + "; ".join(ch.takes_effect)
            + ". The resume uses it: sd-scripts reads these from the config on every start"
            + (f" (now {total} steps in all)." if total else ".")
        )
    if ch is not None and ch.unsure:
        notes.append(f"{toml} also changed: " + "; ".join(ch.unsure) + "; loraprep does not know whether a resume honours these.")
    return notes


def _check_existing_state(spec: RunSpec, cmd: Command, opts: LaunchOptions) -> StateDir | None:
    """The state to resume from, or None for a fresh start; refuses both silent restarts."""
    name = output_name_of(cmd, spec)
    if opts.resume:
        try:
            state = latest_state(spec.output_dir, name)
        except NoStateError as exc:
            raise LaunchError(str(exc), EXIT_USAGE) from None
        check_resume_config(spec, cmd, state)
        return state
    states = find_states(spec.output_dir, name)
    if states and not opts.restart:
        last = states[-1]
        where = f" (step {last.step})" if last.step else (f" (epoch {last.epoch})" if last.epoch else "")
        raise LaunchError(
            f"{spec.output_dir} already holds saved training state {last.path.name}{where}. "
            f"Continue it with `train_bridge launch {spec.run_dir} --resume`, or start again from step 0 "
            f"with --restart (the old states and checkpoints are moved to {spec.output_dir}/.old-<time>/).",
            EXIT_USAGE,
        )
    return None


def preflight_run(spec: RunSpec) -> None:
    """Refuse to start (exit 2) when `train_bridge check` finds what makes the trainer fail at load:
    a missing or wrong model file, an empty dataset. Before any step runs, cache steps included."""
    try:
        from train_bridge.check import preflight
    except ImportError:  # TRANSITION: check.preflight arrives with the trainer-seam work
        return
    try:
        found = preflight(spec.run_dir)
    except RunSpecError as exc:
        raise LaunchError(str(exc), EXIT_USAGE) from None
    errors = [i for i in found if getattr(i, "level", "error") == "error"]
    if not errors:
        return
    from prep.archs import get_arch

    try:
        roles = {m.name for m in get_arch(spec.arch).models}
    except KeyError:
        roles = set()
    lines = []
    for issue in errors:
        text = str(getattr(issue, "message", issue))
        role = text.split(":", 1)[0].strip()
        flag = f" (the --{role.replace('_', '-')} file of `train_bridge config`)" if role in roles else ""
        lines.append(f"  {text}{flag}")
    raise LaunchError(
        f"{spec.run_dir} cannot train yet; nothing was started:\n" + "\n".join(lines)
        + f"\nFix the path in {spec.run_dir / 'train.toml'} or write the run folder again with `train_bridge config` "
        f"and the right files; `train_bridge check {spec.run_dir}` lists every problem.",
        EXIT_USAGE,
    )


def plan_commands(spec: RunSpec, opts: LaunchOptions, env: TrainerEnv) -> list[tuple[Command, str, StateDir | None]]:
    """(command, action, resume state) in order; action is 'run' or 'skip:<why>'."""
    status = read_status(spec.run_dir).get("commands", {})
    plan = []
    for cmd in spec.commands:
        rec = status.get(cmd.name, {})
        done_same = rec.get("status") == "done" and rec.get("fingerprint") == fingerprint(cmd, spec)
        if cmd.is_cache:
            if done_same and not opts.recache:
                plan.append((cmd, "skip:cache already made for this dataset.toml", None))
            else:
                plan.append((cmd, "run", None))
            continue
        if opts.resume and done_same:
            plan.append((cmd, "skip:already finished", None))
            continue
        state = _check_existing_state(spec, cmd, opts)
        plan.append((cmd, "run", state))
    return plan


def launch_run(run_dir: Path, opts: LaunchOptions, observer: Observer | None = None) -> LaunchResult:
    """Run the run folder's commands. Raises LaunchError for problems found before starting."""
    notify: Observer = observer or (lambda kind, data: None)
    if opts.resume and opts.restart:
        raise LaunchError("--resume and --restart contradict each other; pick one.", EXIT_USAGE)
    try:
        spec = RunSpec.load(Path(run_dir))
    except RunSpecError as exc:
        raise LaunchError(str(exc), EXIT_USAGE) from None
    if opts.preflight:
        preflight_run(spec)
    try:
        env = resolve_trainer(spec.trainer, opts.trainer_dir, opts.python)
    except SetupError as exc:
        raise LaunchError(str(exc), EXIT_FAILED) from None
    plan = plan_commands(spec, opts, env)
    notices = [n for c, action, st in plan if st is not None and action == "run" for n in check_resume_config(spec, c, st)]
    plan_view = [
        {
            "name": c.name,
            "action": action,
            "argv": build_argv(c, env, opts.accelerate, st.path if st else None, resume_initial_step(spec, st)),
            "resume_from": str(st.path) if st else None,
            "resume_step": st.step if st else None,
        }
        for c, action, st in plan
    ]
    prev = read_status(spec.run_dir)
    pid = prev.get("launcher_pid")
    if prev.get("state") in ("running", "starting") and pid != os.getpid() and pid_alive(pid):
        raise LaunchError(
            f"this run is already being trained by process {pid} (started {prev.get('started_at')}); "
            f"follow it with `train_bridge status {spec.run_dir}`, or stop that process first.",
            EXIT_USAGE,
        )
    if opts.dry_run:
        return LaunchResult("dry_run", EXIT_DONE, spec.run_dir, None, plan=plan_view, message="dry run: nothing started", notices=notices)
    if opts.gpu_check:
        check = check_gpu(spec.preset)
        if not check.ok:
            raise LaunchError(check.message, EXIT_FAILED)
        notify("notice", {"level": "info", "text": check.message})
    if opts.restart:
        for c, action, st in plan:
            if action == "run" and st is None and not c.is_cache:
                dest, moved = set_aside(spec.output_dir, output_name_of(c, spec))
                if dest is not None:
                    notices.append(f"--restart: moved {len(moved)} old states, checkpoints and samples of {output_name_of(c, spec)} to {dest}")
    for n in notices:
        notify("notice", {"level": "warning", "text": n})

    log_dir = spec.run_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{time.strftime('%Y%m%d-%H%M%S')}.log"
    n = 1
    while log_path.exists():
        n += 1
        log_path = log_dir / f"{time.strftime('%Y%m%d-%H%M%S')}-{n}.log"
    status = StatusWriter(spec)
    status.update(
        force=True, state="starting", log=str(log_path), started_at=time.strftime("%Y-%m-%dT%H:%M:%S"),
        resume=opts.resume, run_dir=str(spec.run_dir), output_dir=str(spec.output_dir), launcher_pid=os.getpid(),
        exit_code=None, message=None, advice=None, finished_at=None,
        progress=None, command=None, argv=None,  # the previous session's, until this one reports (seen on a real --resume)
    )
    result = LaunchResult("done", EXIT_DONE, spec.run_dir, log_path, plan=plan_view, notices=notices)
    try:
        _run_queue(spec, env, opts, list(plan), log_path, status, notify, result)
    except KeyboardInterrupt:  # between commands (inside one, stream_process handles it)
        result.outcomes.append(CommandOutcome("launch", [], "interrupted", message="interrupted between steps"))
    return _finish(spec, result, status)


def _run_queue(
    spec: RunSpec, env: TrainerEnv, opts: LaunchOptions, queue_: list[tuple[Command, str, StateDir | None]],
    log_path: Path, status: StatusWriter, notify: Observer, result: LaunchResult,
) -> None:
    retried = False
    with open(log_path, "ab") as log_fh:
        while queue_:
            cmd, action, state = queue_.pop(0)
            if action.startswith("skip:"):
                result.outcomes.append(CommandOutcome(cmd.name, [], "skipped", message=action[5:]))
                notify("skip", {"command": cmd.name, "why": action[5:]})
                continue
            outcome = _run_command(spec, cmd, env, opts, state, log_fh, status, notify)
            result.outcomes.append(outcome)
            if outcome.status == "done":
                status.mark_command(cmd.name, status="done", fingerprint=fingerprint(cmd, spec), finished_at=time.strftime("%Y-%m-%dT%H:%M:%S"))
                continue
            status.mark_command(cmd.name, status=outcome.status, returncode=outcome.returncode)
            if outcome.status in ("oom", "host_oom"):
                kind = "host" if outcome.status == "host_oom" else "cuda"
                result.advice = oom_mod.advise(spec.arch, spec.trainer, spec.train_toml(cmd), spec.dataset_toml(cmd), kind, outcome.progress.oom_detail)
                if opts.auto_retry_oom and not retried and not cmd.is_cache:
                    retry = _prepare_oom_retry(spec, cmd, result.advice, state, opts)
                    if retry is not None:
                        retried = True
                        result.retry = retry
                        notify("retry", retry)
                        # caches rerun only if the retry changed the dataset (their fingerprint changed);
                        # only this command resumes: a later one (Wan 2.2's other expert) has no state yet
                        caches = [item for item in plan_commands(spec, LaunchOptions(restart=True), env) if item[0].is_cache]
                        again = latest_state(spec.output_dir, output_name_of(cmd, spec)) if retry["resume"] else None
                        queue_ = [*caches, (cmd, "run", again), *queue_]
                        continue
            break


def _finish(spec: RunSpec, result: LaunchResult, status: StatusWriter) -> LaunchResult:
    final = result.outcomes[-1] if result.outcomes else None
    statuses = [o.status for o in result.outcomes]
    if "interrupted" in statuses:
        result.status, result.exit_code = "interrupted", EXIT_INTERRUPTED
        result.message = "stopped; continue with: " + " ".join(resume_command(spec.run_dir))
    elif final is not None and final.status in ("oom", "host_oom"):
        result.status, result.exit_code = "oom", EXIT_OOM
        result.message = result.advice.headline if result.advice else "out of memory"
    elif final is not None and final.status == "failed":
        result.status, result.exit_code = "failed", EXIT_FAILED
        result.message = final.message
    else:
        result.status, result.exit_code = "done", EXIT_DONE
        unverified = [o for o in result.outcomes if o.resume_check and o.resume_check.verified is False]
        result.message = "training finished" if not unverified else "finished, but: " + unverified[0].resume_check.message  # type: ignore[union-attr]
    result.resume_command = resume_command(spec.run_dir)
    status.update(
        force=True, state=result.status, exit_code=result.exit_code, message=result.message,
        advice=result.advice.as_dict() if result.advice else None, finished_at=time.strftime("%Y-%m-%dT%H:%M:%S"),
    )
    return result


def _run_command(
    spec: RunSpec, cmd: Command, env: TrainerEnv, opts: LaunchOptions, state: StateDir | None, log_fh: Any, status: StatusWriter, notify: Observer
) -> CommandOutcome:
    argv = build_argv(cmd, env, opts.accelerate, state.path if state else None, resume_initial_step(spec, state))
    parser = LogParser()
    spe = spec.steps_per_epoch
    if not cmd.is_cache and spec.total_steps:
        parser.progress.total = spec.total_steps
    watcher = OutputWatcher(spec.output_dir)
    outcome = CommandOutcome(cmd.name, argv, "failed", progress=parser.progress)
    header = f"\n### loraprep {time.strftime('%Y-%m-%dT%H:%M:%S')} command {cmd.name}: {json.dumps(argv)}\n"
    log_fh.write(header.encode())
    log_fh.flush()
    notify("command", {"command": cmd.name, "argv": argv, "resume_from": str(state.path) if state else None, "log": log_fh.name})
    status.update(force=True, state="running", command=cmd.name, argv=argv, resume_from=str(state.path) if state else None)
    announced: set[str] = set()
    last_poll = 0.0

    def on_events(events: list[Event]) -> None:
        for ev in events:
            if ev.kind == "checkpoint":
                key = str(Path(ev.data["path"]).name)
                if key in announced:
                    continue
                announced.add(key)
            notify("event", {"command": cmd.name, "event": ev, "progress": parser.progress})
        pending = outcome.resume_check is None or outcome.resume_check.verified is None
        if state is not None and not cmd.is_cache and pending:
            check = verify_resumed(parser.progress, state)
            if check.verified is not None:
                outcome.resume_check = check
                notify("resume_check", {"command": cmd.name, "verified": check.verified, "message": check.message})
        if state is not None and not parser.progress.step_offset:
            _set_step_offset(parser.progress, spe, spec.total_steps)

    def on_tick() -> None:
        nonlocal last_poll
        now = time.monotonic()
        if now - last_poll >= 1.0:
            last_poll = now
            for kind, path in watcher.poll():
                if kind == "checkpoint" and path.name in announced:
                    continue
                announced.add(path.name)
                notify("file", {"command": cmd.name, "kind": kind, "path": str(path)})
        status.update(progress=parser.progress.as_dict())
        notify("tick", {"command": cmd.name, "progress": parser.progress})

    def on_interrupt(text: str) -> None:
        notify("notice", {"level": "warning", "text": text})

    since_ns = time.time_ns()
    values = None if cmd.is_cache else train_values(spec, cmd)
    try:
        proc = stream_process(
            argv, cwd=spec.run_dir, env=child_env(), log_fh=log_fh, parser=parser, on_events=on_events,
            on_tick=on_tick, grace_s=opts.grace_s, on_interrupt=on_interrupt,
        )
    except OSError as exc:
        outcome.message = f"could not start {argv[0]}: {exc}"
        return outcome
    if not cmd.is_cache:
        resumed = state is not None and not (outcome.resume_check is not None and outcome.resume_check.verified is False)
        record_session_states(
            spec.output_dir, output_name_of(cmd, spec), since_ns=since_ns, base_step=(state.step or 0) if resumed and state else 0,
            config=values, resumed_from=state.path.name if state else None,
        )
    for kind, path in watcher.poll():
        if path.name not in announced:
            notify("file", {"command": cmd.name, "kind": kind, "path": str(path)})
    outcome.returncode = proc.returncode
    outcome.status = classify(proc, parser.progress)
    if state is not None and not cmd.is_cache and outcome.status == "done":
        check = verify_resumed(parser.progress, state, finished=True)
        if outcome.resume_check is None or outcome.resume_check.verified is None:
            outcome.resume_check = check
            notify("resume_check", {"command": cmd.name, "verified": check.verified, "message": check.message})
    if outcome.status == "failed":
        outcome.message = failure_message(cmd.name, proc.returncode, parser.progress, log_fh.name)
    elif outcome.status == "host_oom" and parser.progress.host_oom:
        outcome.message = f"{cmd.name} ran out of host memory (exit {proc.returncode}): {parser.progress.oom_detail.get('host_line', '')}"
    elif outcome.status == "host_oom":
        outcome.message = f"{cmd.name} was killed (exit {proc.returncode}), most likely by the kernel's out-of-memory killer"
    elif outcome.status == "oom":
        outcome.message = f"{cmd.name} ran out of GPU memory"
    elif outcome.status == "interrupted":
        outcome.message = f"{cmd.name} stopped by Ctrl-C"
    log_fh.write(f"\n### loraprep command {cmd.name} ended: {outcome.status} (exit {proc.returncode})\n".encode())
    log_fh.flush()
    return outcome


def failure_message(name: str, returncode: int | None, p: TrainProgress, log: str) -> str:
    """The trainer's own error (its exception line and the frames above it), not the
    CalledProcessError that `accelerate launch` raises after its child failed."""
    last = p.last_error or (p.tail[-1] if p.tail else "")
    msg = f"{name} exited with {returncode}" + (f": {last}" if last else "")
    context = [line for line in p.error_lines if line != last]
    if context:
        msg += "\n" + "\n".join("    " + line for line in context)
    return msg + f"\n(full log: {log})"


def _set_step_offset(p: TrainProgress, steps_per_epoch: int | None, total_steps: int | None) -> None:
    """sd-scripts resumes at the saved epoch but its bar counts from 0 over the whole schedule:
    show the overall step. (With --skip_until_initial_step the bar is shorter; leave it alone.)"""
    if not steps_per_epoch or not p.first_epoch or p.first_epoch <= 1:
        return
    if total_steps and p.total and p.total < total_steps:
        return
    p.step_offset = (p.first_epoch - 1) * steps_per_epoch


def _prepare_oom_retry(
    spec: RunSpec, cmd: Command, advice: oom_mod.OomAdvice, state: StateDir | None, opts: LaunchOptions
) -> dict[str, Any] | None:
    """Write smaller-memory copies of the configs, point run.json at them, say what changed."""
    resume = state is not None or bool(find_states(spec.output_dir, output_name_of(cmd, spec)))
    train_src, ds_src = spec.train_toml(cmd), spec.dataset_toml(cmd)
    step = oom_mod.preset_step_down(spec.arch, spec.preset, train_src, ds_src) if advice.kind == "cuda" else None
    to_preset, chosen = step if step else (None, [])
    if resume:  # a different network shape cannot load the saved state
        chosen = [s for s in chosen if s.key != "network_dim"]
    if not chosen:  # preset unknown, already the smallest, or no leaner: the advice's first two
        usable = [s for s in advice.suggestions if not (resume and s.key == "network_dim")]
        chosen = oom_mod.retry_suggestions(oom_mod.OomAdvice(advice.kind, advice.headline, usable))
        to_preset = None
    if not chosen:
        return None
    n = len(spec.raw.get("oom_retries") or []) + 1
    tag = f"oom-retry{n}"
    new_train, new_ds, applied = oom_mod.write_retry_configs(train_src, ds_src, chosen, spec.run_dir, tag)
    original = [dict(name=c.name, script=c.script, args=list(c.args)) for c in spec.commands]
    for c in spec.commands:
        # only commands that read the same TOML: Wan 2.2's other expert keeps its own DiT and output_name
        same_toml = c.name == cmd.name or (c.arg_value("--config_file") is not None and spec.train_toml(c) == train_src)
        if new_train is not None and same_toml and not c.replace_arg_value("--config_file", str(new_train)):
            c.args += ["--config_file", str(new_train)]
        if new_ds is not None:
            c.replace_arg_value("--dataset_config", str(new_ds))
    record = {
        "at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "command": cmd.name,
        "kind": advice.kind,
        "from_preset": spec.preset,
        "to_preset": to_preset,
        "how": f"memory settings of preset {to_preset}" if to_preset else "the first changes the OOM advice lists",
        "changes": applied,
        "train_toml": str(new_train) if new_train else None,
        "dataset_toml": str(new_ds) if new_ds else None,
        "resume": resume,
        "original_commands": original,
    }
    raw_cmds = spec.raw.get("commands") or []
    by_name = {c.name: c for c in spec.commands}
    for rc in raw_cmds:
        if isinstance(rc, dict) and rc.get("name", "train") in by_name:
            rc["args"] = list(by_name[rc.get("name", "train")].args)
    spec.update_raw(oom_retries=[*(spec.raw.get("oom_retries") or []), record], commands=raw_cmds)
    return record


# --- detached launches -----------------------------------------------------------------------


def detach_launch(run_dir: Path, argv: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Start `argv` (a `train_bridge launch RUN ...` without --detach) as a launcher that outlives
    this terminal: its own session (no SIGHUP when the terminal closes, no Ctrl-C from it), stdin
    closed, its console output in run/logs/launcher-<time>.txt. status.json names its pid at once,
    so `status` and `attach` see the run as starting before the launcher has written anything."""
    run_dir = Path(run_dir).resolve()
    log_dir = run_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    out_path = log_dir / f"launcher-{time.strftime('%Y%m%d-%H%M%S')}.txt"
    child_env = dict(env if env is not None else os.environ)
    child_env["LORAPREP_NO_PROGRESS"] = "1"  # no terminal: plain progress lines
    popen_kw: dict[str, Any] = {"start_new_session": True} if os.name == "posix" else {
        "creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "DETACHED_PROCESS", 0)  # type: ignore[attr-defined]
    }
    with open(out_path, "ab") as out:
        proc = subprocess.Popen(argv, cwd=os.getcwd(), env=child_env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, **popen_kw)
    data = read_status(run_dir)
    if data.get("launcher_pid") != proc.pid:  # the launcher has not written yet (it always has by now, or not at all)
        data.update(state="starting", launcher_pid=proc.pid, exit_code=None, message=None, finished_at=None)
    data.update(detached=True, launcher_output=str(out_path), updated_at=time.strftime("%Y-%m-%dT%H:%M:%S"))
    atomic_write_text(status_path(run_dir), json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")
    return {"pid": proc.pid, "launcher_output": str(out_path), "argv": argv, "run_dir": str(run_dir)}
