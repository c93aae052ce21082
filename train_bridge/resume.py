"""Find the training state to resume from, order states by their global step, set old ones aside,
and check that a resumed run really resumed.

Trainers save state folders in output_dir as `<name>-<epoch:06d>-state`, `<name>-step<N:08d>-state`
or `<name>-state` (end of training). sd-scripts writes `train_state.json` ({"current_epoch",
"current_step"}) into each; musubi-tuner does not. After a resume, sd-scripts' step counter
starts again at 0 (train_network.py at 48d368fa: `global_step = 0`, `current_step.value =
global_step`), so the step in a later state's name and train_state.json is session-relative;
only `current_epoch` stays global. So `launch` records each state's global step (the step of
the state that session resumed from + the session's own step) and the training TOML it was
made with in a ledger beside the states, `<output_dir>/.loraprep-states.json`; states it did
not record fall back to their own step.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prep.fsutil import atomic_write_text
from train_bridge.logparse import TrainProgress

_EPOCH = re.compile(r"^(?P<name>.*)-(?P<epoch>\d{6})-state$")
_STEP = re.compile(r"^(?P<name>.*)-step(?P<step>\d{8})-state$")
_LAST = re.compile(r"^(?P<name>.*)-state$")
LEDGER = ".loraprep-states.json"
ASIDE_PREFIX = ".old-"


class NoStateError(RuntimeError):
    """--resume was asked for but there is nothing to resume from."""


@dataclass(frozen=True)
class StateDir:
    path: Path
    name: str
    step: int | None  # the global step: launch's record, else train_state.json, else the folder name
    epoch: int | None
    mtime: float
    final: bool  # the end-of-training state
    own_step: int | None = None  # what the state itself says (session-relative after a resume)
    recorded: bool = False  # step comes from launch's ledger
    config_sha256: str | None = None  # the training TOML it was made with (ledger)

    def sort_key(self) -> tuple[float, float]:
        return (self.step if self.step is not None else -1, self.mtime)


def _read_train_state(path: Path) -> tuple[int | None, int | None]:
    f = path / "train_state.json"
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, None
    if not isinstance(data, dict):
        return None, None
    step = data.get("current_step")
    epoch = data.get("current_epoch")
    return (step if isinstance(step, int) else None, epoch if isinstance(epoch, int) else None)


def stamp(path: Path) -> int:
    """When the state was last written: the newest mtime of its files (a state saved again under
    the same name, `<name>-state` or a session-relative step name, changes it)."""
    try:
        times = [c.stat().st_mtime_ns for c in path.iterdir() if c.is_file()] or [path.stat().st_mtime_ns]
    except OSError:
        return 0
    return max(times)


# --- the ledger ------------------------------------------------------------------------------


def read_ledger(output_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((Path(output_dir) / LEDGER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = {}
    if not isinstance(data, dict):
        data = {}
    data.setdefault("version", 1)
    data.setdefault("states", {})
    data.setdefault("configs", {})
    return data


def write_ledger(output_dir: Path, data: dict[str, Any]) -> None:
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(output_dir) / LEDGER, json.dumps(data, indent=2, sort_keys=True) + "\n")


def config_sha256(values: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()


def record_session_states(
    output_dir: Path, output_name: str, *, since_ns: int, base_step: int, config: dict[str, Any] | None, resumed_from: str | None
) -> list[StateDir]:
    """Record the global step of every state this session wrote (written at or after `since_ns`):
    `base_step` (the step of the state it resumed from, 0 for a fresh start) + the state's own step."""
    ledger = read_ledger(output_dir)
    sha = None
    if config is not None:
        sha = config_sha256(config)
        ledger["configs"][sha] = config
    recorded = []
    for s in find_states(output_dir, output_name):
        st = stamp(s.path)
        if st < since_ns:
            continue
        own = s.own_step
        ledger["states"][s.path.name] = {
            "global_step": None if own is None else base_step + own,
            "own_step": own,
            "epoch": s.epoch,
            "stamp": st,
            "config_sha256": sha,
            "resumed_from": resumed_from,
            "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        recorded.append(s)
    if recorded or config is not None:
        write_ledger(output_dir, ledger)
    return recorded


def recorded_config(output_dir: Path, state: StateDir) -> dict[str, Any] | None:
    """The flattened training TOML the state was made with, if launch recorded it."""
    if state.config_sha256 is None:
        return None
    cfg = read_ledger(output_dir)["configs"].get(state.config_sha256)
    return cfg if isinstance(cfg, dict) else None


# --- finding and ordering --------------------------------------------------------------------


def find_states(output_dir: Path, output_name: str | None = None) -> list[StateDir]:
    """State folders directly under output_dir, oldest first: by global step (launch's record,
    else the state's own step), states without any step by epoch (the final one last), then mtime."""
    out: list[StateDir] = []
    if not Path(output_dir).is_dir():
        return out
    entries = read_ledger(output_dir)["states"]
    for p in Path(output_dir).iterdir():
        if not p.is_dir() or not p.name.endswith("-state"):
            continue
        step, epoch = _read_train_state(p)
        final = False
        if (m := _STEP.match(p.name)) is not None:
            name = m["name"]
            step = step if step is not None else int(m["step"])
        elif (m := _EPOCH.match(p.name)) is not None:
            name = m["name"]
            epoch = epoch if epoch is not None else int(m["epoch"])
        elif (m := _LAST.match(p.name)) is not None:
            name, final = m["name"], True
        else:  # pragma: no cover - the regexes cover every *-state name
            continue
        if output_name and name != output_name:
            continue
        own, recorded, sha = step, False, None
        entry = entries.get(p.name)
        if isinstance(entry, dict) and entry.get("stamp") == stamp(p):  # the record is of this very save
            sha = entry.get("config_sha256")
            if isinstance(entry.get("global_step"), int):
                step, recorded = entry["global_step"], True
        out.append(StateDir(p, name, step, epoch, p.stat().st_mtime, final, own, recorded, sha))
    # Without a step anywhere (musubi epoch states), epoch order is the best ordering we have.
    if out and all(s.step is None for s in out):
        out.sort(key=lambda s: (s.epoch if s.epoch is not None else 10**9 if s.final else -1, s.mtime))
    else:
        out.sort(key=StateDir.sort_key)
    return out


def latest_state(output_dir: Path, output_name: str | None = None) -> StateDir:
    states = find_states(output_dir, output_name)
    if not states:
        raise NoStateError(
            f"nothing to resume: no '*-state' folder for {output_name or 'this run'} in {output_dir}. "
            "The run saved no state (save_state = true in train.toml makes it save one with each checkpoint), "
            "or it stopped before the first save. Launch without --resume to start from step 0 "
            "(with --restart if older checkpoints should be set aside)."
        )
    return states[-1]


# --- setting old outputs aside ---------------------------------------------------------------


def _is_output_of(name: str, file_name: str) -> bool:
    """`<name>.safetensors`, `<name>-000002.safetensors`, `<name>-step00000100.safetensors`, `<name>-state`, ..."""
    stem = file_name if file_name.endswith("-state") else Path(file_name).stem
    return stem == name or stem == f"{name}-state" or bool(re.fullmatch(re.escape(name) + r"-(?:\d{6}|step\d{8})(?:-state)?", stem))


def set_aside(output_dir: Path, output_name: str, *, now: str | None = None) -> tuple[Path | None, list[Path]]:
    """Move this output name's states, checkpoints and samples into `<output_dir>/.old-<time>/`
    (never deleting), so no later --resume or status finds them; (that folder, what moved)."""
    out = Path(output_dir)
    if not out.is_dir():
        return None, []
    moving = [p for p in out.iterdir() if not p.name.startswith(".") and _is_output_of(output_name, p.name)]
    sample_dir = out / "sample"
    samples = [p for p in sample_dir.iterdir() if p.is_file() and p.name.startswith(f"{output_name}_")] if sample_dir.is_dir() else []
    if not moving and not samples:
        return None, []
    stamp_ = now or time.strftime("%Y%m%d-%H%M%S")
    dest = out / f"{ASIDE_PREFIX}{stamp_}"
    n = 1
    while dest.exists():
        n += 1
        dest = out / f"{ASIDE_PREFIX}{stamp_}-{n}"
    dest.mkdir()
    moved = []
    ledger = read_ledger(out)
    aside = {"version": 1, "states": {}, "configs": ledger["configs"]}
    for p in moving:
        os.replace(p, dest / p.name)
        moved.append(dest / p.name)
        if p.name in ledger["states"]:
            aside["states"][p.name] = ledger["states"].pop(p.name)
    if samples:
        (dest / "sample").mkdir()
        for p in samples:
            os.replace(p, dest / "sample" / p.name)
            moved.append(dest / "sample" / p.name)
    if aside["states"]:
        write_ledger(dest, aside)
        write_ledger(out, ledger)
    return dest, moved


@dataclass
class ResumeCheck:
    verified: bool | None  # None: too early to tell
    message: str
    resumed_step: int | None = None


def verify_resumed(progress: TrainProgress, state: StateDir, finished: bool = False) -> ResumeCheck:
    """Did the trainer start after step 0? Evidence: the state it loaded, the first epoch, the first step.

    tqdm draws `0/N` before the first epoch line even on a good resume, so a first step of 0 alone
    proves nothing; the first `epoch K/N` line (or the end of the run) decides.
    """
    if progress.state_loaded_step is not None and progress.state_loaded_step > 0:
        return ResumeCheck(True, f"resumed from step {progress.state_loaded_step}", progress.state_loaded_step)
    if progress.first_epoch is not None and progress.first_epoch > 1:
        return ResumeCheck(True, f"resumed at epoch {progress.first_epoch}", None)
    if progress.first_step is not None and progress.first_step > 0:
        return ResumeCheck(True, f"resumed at step {progress.first_step}", progress.first_step)
    if progress.first_epoch is None and not finished:
        return ResumeCheck(None, "waiting for the first epoch")
    where = f"step {state.step}" if state.step else (f"epoch {state.epoch}" if state.epoch else state.path.name)
    return ResumeCheck(
        False,
        f"the trainer was given {state.path.name} but training started again at step 0 / epoch 1 "
        f"instead of after {where}. The weights and optimizer may be restored but the schedule restarted "
        "(musubi-tuner's --resume is known to do this: musubi-tuner#497, PR #915). "
        "Consider stopping and continuing with network_weights = the last checkpoint instead.",
    )
