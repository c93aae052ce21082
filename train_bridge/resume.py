"""Find the training state to resume from, and check that a resumed run really resumed.

Trainers save state folders in output_dir as `<name>-<epoch:06d>-state`, `<name>-step<N:08d>-state`
or `<name>-state` (end of training). sd-scripts writes `train_state.json` ({"current_epoch",
"current_step"}) into each; musubi-tuner does not, so there the name and mtime decide.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from train_bridge.logparse import TrainProgress

_EPOCH = re.compile(r"^(?P<name>.*)-(?P<epoch>\d{6})-state$")
_STEP = re.compile(r"^(?P<name>.*)-step(?P<step>\d{8})-state$")
_LAST = re.compile(r"^(?P<name>.*)-state$")


class NoStateError(RuntimeError):
    """--resume was asked for but there is nothing to resume from."""


@dataclass(frozen=True)
class StateDir:
    path: Path
    name: str
    step: int | None  # from train_state.json or the folder name
    epoch: int | None
    mtime: float
    final: bool  # the end-of-training state

    def sort_key(self) -> tuple[float, float]:
        return (self.step if self.step is not None else -1, self.mtime)


def _read_train_state(path: Path) -> tuple[int | None, int | None]:
    f = path / "train_state.json"
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, None
    step = data.get("current_step")
    epoch = data.get("current_epoch")
    return (step if isinstance(step, int) else None, epoch if isinstance(epoch, int) else None)


def find_states(output_dir: Path, output_name: str | None = None) -> list[StateDir]:
    """State folders under output_dir, oldest first (by step, then mtime)."""
    out: list[StateDir] = []
    if not Path(output_dir).is_dir():
        return out
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
        out.append(StateDir(p, name, step, epoch, p.stat().st_mtime, final))
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
            "(pass --restart if older checkpoints should be overwritten)."
        )
    return states[-1]


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
