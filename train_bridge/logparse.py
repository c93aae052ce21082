"""Parse sd-scripts / musubi-tuner console output into progress events, live.

The trainer's stdout and stderr are merged. tqdm redraws its bar with `\\r` and no `\\n`, the
logging module (through rich) writes whole lines, so the stream is split on both. The last,
unterminated piece is parsed too when it is a step bar: that is the bar being drawn right now.
Formats follow the trainers' code at the pinned commits (see docs/train_bridge-launch.md).
"""

from __future__ import annotations

import math
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any

STEP_RE = re.compile(
    r"^steps:\s+(?P<pct>\d+)%\|[^|]*\|\s*(?P<step>\d+)/(?P<total>\d+)\s*"
    r"\[(?P<elapsed>[\d:]+)<(?P<remaining>[\d:?]+),\s*(?P<rate>[\d.?]+)\s*(?P<unit>s/it|it/s)"
    r"(?:,\s*(?P<postfix>[^\]]*))?\]"
)
EPOCH_RE = re.compile(r"^epoch (?P<epoch>\d+)/(?P<epochs>\d+)\s*$")
TOTAL_RE = re.compile(r"total optimization steps[^:\n]*:\s*(?P<total>\d+)")
BATCHES_RE = re.compile(r"num batches per epoch[^:\n]*:\s*(?P<n>\d+)")
SAVE_RE = re.compile(r"saving checkpoint: (?P<path>\S.*?)\s*$")
STATE_SAVE_RE = re.compile(r"saving (?:last )?state(?: at (?:epoch|step) (?P<n>\d+))?")
LOAD_STATE_RE = re.compile(r"load train state from (?P<path>.+?): \{(?P<body>[^}]*)\}")
RESUME_RE = re.compile(r"resume training from local state: (?P<path>\S+)")
OOM_RE = re.compile(r"CUDA out of memory|OutOfMemoryError|CUDA error: out of memory")
TRIED_RE = re.compile(r"Tried to allocate (?P<amount>[\d.]+ [KMGT]?i?B)")
CAPACITY_RE = re.compile(
    r"GPU (?P<gpu>\d+) has a total capacity of (?P<total>[\d.]+ [KMGT]?i?B) of which (?P<free>[\d.]+ [KMGT]?i?B) is free"
)
# The kernel's OOM killer, seen directly (bash "Killed") or through `accelerate launch`, which
# exits 1 after printing the CalledProcessError of its child.
KILLED_RE = re.compile(r"died with <Signals\.SIGKILL: 9>|returned non-zero exit status (?:137|-9)\b|^Killed$")
# Host RAM refused to a CPU allocation (a memory limit such as ulimit -v / RLIMIT_AS / a cgroup
# without the OOM killer, or a CPU-only run): torch's CPU allocator, Python, C++ and the OS say so.
HOST_ALLOC_RE = re.compile(
    r"DefaultCPUAllocator: (?:can't|not enough memory)|\[enforce fail at alloc_cpu|^MemoryError\b|std::bad_alloc"
    r"|\[Errno 12\] Cannot allocate memory|Cannot allocate memory \(os error 12\)"
)
ERROR_RE = re.compile(r"^(?P<type>[A-Za-z_][\w.]*(?:Error|Exception|Interrupt)): ?(?P<msg>.*)$")
# `accelerate launch` re-raises its child's failure as its own traceback: frames in
# accelerate/commands/launch.py, then `subprocess.CalledProcessError: Command '[...]' returned
# non-zero exit status 1.` That is the wrapper, never the trainer's error.
WRAPPER_FRAME_RE = re.compile(r"accelerate[/\\]commands[/\\]|\bsubprocess\.CalledProcessError\b")
TRACEBACK_START = "Traceback (most recent call last):"
ERROR_CONTEXT_LINES = 6  # the last frames and the exception: where the trainer failed and why
KV_RE = re.compile(r"([A-Za-z_][\w/]*)=([-+\w.]+)")
INT_KEY_RE = re.compile(r"'current_(?P<key>epoch|step)': (?P<n>\d+)")


def parse_clock(text: str) -> float | None:
    """'01:23' or '1:02:03' -> seconds; '?' -> None."""
    if not text or "?" in text:
        return None
    total = 0.0
    for part in text.split(":"):
        if not part.isdigit():
            return None
        total = total * 60 + int(part)
    return total


def parse_rate(value: str, unit: str) -> float | None:
    """tqdm prints it/s when fast and s/it when slow; return iterations per second."""
    try:
        v = float(value)
    except ValueError:
        return None
    if unit == "it/s":
        return v
    return 1.0 / v if v > 0 else None


def _float_or_none(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return None


@dataclass
class Event:
    """One thing the log told us. `kind` is one of: step, epoch, total, batches_per_epoch,
    checkpoint, state_saved, state_loaded, resume, oom, host_oom, killed, error, nan."""

    kind: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainProgress:
    """Everything the log has told us so far; what the display and status.json show."""

    step: int = 0
    total: int | None = None
    epoch: int | None = None
    epochs: int | None = None
    avr_loss: float | None = None
    loss: float | None = None
    rate: float | None = None  # iterations per second
    elapsed_s: float | None = None
    eta_s: float | None = None
    batches_per_epoch: int | None = None
    checkpoints: list[str] = field(default_factory=list)
    states_saved: int = 0
    first_step: int | None = None
    first_epoch: int | None = None
    state_loaded_step: int | None = None
    state_loaded_epoch: int | None = None
    resume_path: str | None = None
    oom: bool = False
    killed: bool = False  # a child was SIGKILLed (host out of memory, usually)
    host_oom: bool = False  # a CPU allocation was refused (host RAM, not GPU memory)
    step_offset: int = 0  # steps done before this session (a resumed sd-scripts bar restarts at 0)
    oom_detail: dict[str, str] = field(default_factory=dict)
    nan: bool = False
    last_error: str | None = None  # the trainer's own exception line, never accelerate's wrapper
    error_lines: list[str] = field(default_factory=list)  # the end of the trainer's last traceback
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=60))

    @property
    def global_step(self) -> int:
        return self.step + self.step_offset

    def as_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "total": self.total,
            "global_step": self.global_step,
            "step_offset": self.step_offset,
            "killed": self.killed,
            "host_oom": self.host_oom,
            "epoch": self.epoch,
            "epochs": self.epochs,
            "avr_loss": None if self.avr_loss is None or math.isnan(self.avr_loss) else self.avr_loss,
            "loss": self.loss,
            "rate_it_s": self.rate,
            "elapsed_s": self.elapsed_s,
            "eta_s": self.eta_s,
            "checkpoints": list(self.checkpoints),
            "states_saved": self.states_saved,
            "first_step": self.first_step,
            "first_epoch": self.first_epoch,
            "state_loaded_step": self.state_loaded_step,
            "oom": self.oom,
            "oom_detail": dict(self.oom_detail),
            "nan": self.nan,
            "last_error": self.last_error,
            "error_lines": list(self.error_lines),
        }


class LogParser:
    """Feed it text as it arrives; it returns events and keeps `progress` current."""

    def __init__(self) -> None:
        self.progress = TrainProgress()
        self._buf = ""
        self._last_partial = ""
        self._traceback: list[str] | None = None  # the traceback being read, until its exception line

    def feed(self, text: str) -> list[Event]:
        self._buf += text
        parts = re.split(r"[\r\n]", self._buf)
        self._buf = parts.pop()
        events: list[Event] = []
        for line in parts:
            if line == self._last_partial:
                # The bar we already parsed while it was still unterminated.
                self._last_partial = ""
                continue
            events.extend(self._line(line))
        pending = self._buf.strip()
        if pending.startswith("steps:") and pending != self._last_partial.strip() and STEP_RE.match(pending):
            events.extend(self._line(self._buf))
            self._last_partial = self._buf
        return events

    def close(self) -> list[Event]:
        rest, self._buf = self._buf, ""
        if rest and rest != self._last_partial:
            return self._line(rest)
        return []

    def _line(self, raw: str) -> list[Event]:
        line = raw.strip()
        if not line:
            return []
        p = self.progress
        m = STEP_RE.match(line)
        if m:
            # An unterminated bar can have the next message glued on (a traceback, accelerate's error).
            rest = line[m.end() :]
            return self._step(m) + (self._line(rest) if rest.strip() else [])
        if not line.startswith(("steps:", "validation steps", "epoch validation")):
            p.tail.append(line)
        if line.startswith(TRACEBACK_START):
            self._traceback = []
        if self._traceback is not None and not ERROR_RE.match(line):
            self._traceback = [*self._traceback[-40:], line]
        if (m := EPOCH_RE.match(line)) is not None:
            p.epoch, p.epochs = int(m["epoch"]), int(m["epochs"])
            if p.first_epoch is None:
                p.first_epoch = p.epoch
            return [Event("epoch", {"epoch": p.epoch, "epochs": p.epochs})]
        if (m := SAVE_RE.search(line)) is not None:
            path = m["path"]
            if path not in p.checkpoints:
                p.checkpoints.append(path)
            return [Event("checkpoint", {"path": path})]
        if (m := TOTAL_RE.search(line)) is not None:
            p.total = int(m["total"])
            return [Event("total", {"total": p.total})]
        if (m := BATCHES_RE.search(line)) is not None:
            p.batches_per_epoch = int(m["n"])
            return [Event("batches_per_epoch", {"n": p.batches_per_epoch})]
        if (m := LOAD_STATE_RE.search(line)) is not None:
            vals = {k: int(n) for k, n in INT_KEY_RE.findall(m["body"])}
            p.state_loaded_step = vals.get("step")
            p.state_loaded_epoch = vals.get("epoch")
            return [Event("state_loaded", {"path": m["path"], "step": p.state_loaded_step, "epoch": p.state_loaded_epoch})]
        if (m := RESUME_RE.search(line)) is not None:
            p.resume_path = m["path"]
            return [Event("resume", {"path": p.resume_path})]
        if "saving" in line and (m := STATE_SAVE_RE.search(line)) is not None:
            p.states_saved += 1
            return [Event("state_saved", {"at": m["n"]})]
        if OOM_RE.search(line):
            first = not p.oom
            p.oom = True
            if (t := TRIED_RE.search(line)) is not None:
                p.oom_detail["tried"] = t["amount"]
            if (c := CAPACITY_RE.search(line)) is not None:
                p.oom_detail.update(gpu=c["gpu"], total=c["total"], free=c["free"])
            p.oom_detail.setdefault("line", line[:300])
            self._traceback = None
            return [Event("oom", {"line": line})] if first else []
        if HOST_ALLOC_RE.search(line) and not WRAPPER_FRAME_RE.search(line):
            first = not p.host_oom
            p.host_oom = True
            p.oom_detail.setdefault("host_line", line[:300])
            if (t := re.search(r"you tried to allocate (\d+) bytes", line)) is not None:
                n = int(t[1])
                p.oom_detail.setdefault("tried", f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB")
            if ERROR_RE.match(line):  # it is also the trainer's own error line
                p.last_error = line[:500]
                p.error_lines = [b[:500] for b in ((self._traceback or []) + [line])[-ERROR_CONTEXT_LINES:]]
                self._traceback = None
            return [Event("host_oom", {"line": line})] if first else []
        if KILLED_RE.search(line):
            self._traceback = None
            p.killed = True
            p.last_error = p.last_error or line[:500]
            return [Event("killed", {"line": line})]
        if (m := ERROR_RE.match(line)) is not None:
            block, self._traceback = (self._traceback or []) + [line], None
            if any(WRAPPER_FRAME_RE.search(b) for b in block) and p.last_error is not None:
                return []  # accelerate repeating that its child failed: keep the child's error
            p.last_error = line[:500]
            p.error_lines = [b[:500] for b in block[-ERROR_CONTEXT_LINES:]]
            return [Event("error", {"type": m["type"], "message": m["msg"]})]
        return []

    def _step(self, m: re.Match[str]) -> list[Event]:
        p = self.progress
        step, total = int(m["step"]), int(m["total"])
        post = dict(KV_RE.findall(m["postfix"] or ""))
        p.step, p.total = step, total
        if p.first_step is None:
            p.first_step = step
        p.elapsed_s = parse_clock(m["elapsed"])
        p.eta_s = parse_clock(m["remaining"])
        p.rate = parse_rate(m["rate"], m["unit"])
        events = []
        avr = post.get("avr_loss")
        if avr is not None:
            p.avr_loss = _float_or_none(avr)
        cur = post.get("loss", post.get("current_loss", post.get("loss/current")))
        if cur is not None:
            p.loss = _float_or_none(cur)
        nan_now = any(v.lower() == "nan" for k, v in post.items() if "loss" in k)
        if nan_now and not p.nan:
            p.nan = True
            events.append(Event("nan", {"step": step}))
        events.insert(0, Event("step", {"step": step, "total": total, "avr_loss": p.avr_loss, "rate": p.rate, "eta_s": p.eta_s}))
        return events


def parse_text(text: str) -> TrainProgress:
    """Parse a whole log (e.g. a finished run's file) and return the final progress."""
    parser = LogParser()
    parser.feed(text)
    parser.close()
    return parser.progress
