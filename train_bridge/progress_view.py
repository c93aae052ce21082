"""The live training display: one rich bar with step/total, epoch, loss, it/s and ETA.

Checkpoints, samples and warnings are printed above the bar as they appear. Without a
terminal (piped output, LORAPREP_NO_PROGRESS) it prints a plain progress line now and then
instead, so Colab cells and log files stay readable.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn

from train_bridge.logparse import Event, LogParser, TrainProgress


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(seconds)
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def fmt_loss(v: float | None) -> str:
    if v is None:
        return "-"
    if math.isnan(v):
        return "nan"
    return f"{v:.4g}"


def progress_line(p: TrainProgress) -> str:
    """One line that says where training is; shared by the live view, plain mode and `status`."""
    total = f"/{p.total}" if p.total else ""
    parts = [f"step {p.global_step}{total}"]
    eta = p.eta_s
    if p.step_offset and p.rate and p.total:
        eta = max(0.0, (p.total - p.global_step) / p.rate)  # tqdm's own ETA counts the skipped epochs
    if p.epoch:
        parts.append(f"epoch {p.epoch}/{p.epochs}" if p.epochs else f"epoch {p.epoch}")
    if p.loss is not None:
        parts.append(f"loss {fmt_loss(p.loss)}")
    parts.append(f"avg loss {fmt_loss(p.avr_loss)}")
    if p.rate:
        parts.append(f"{p.rate:.2f} it/s" if p.rate >= 1 else f"{1 / p.rate:.2f} s/it")
    parts.append(f"ETA {fmt_duration(eta)}")
    return " · ".join(parts)


class LiveView:
    """Observer for `launch_run`: call it with (kind, data)."""

    def __init__(self, console: Console, live: bool | None = None, plain_every_s: float = 30.0):
        self.console = console
        if live is None:
            live = console.is_terminal and not os.environ.get("LORAPREP_NO_PROGRESS")
        self.live = live
        self.plain_every_s = plain_every_s
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._command = ""
        self._last_plain = 0.0

    # observer protocol
    def __call__(self, kind: str, data: dict[str, Any]) -> None:
        handler = getattr(self, f"_on_{kind}", None)
        if handler is not None:
            handler(data)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    # handlers
    def _on_notice(self, data: dict[str, Any]) -> None:
        style = {"warning": "yellow", "error": "red"}.get(data.get("level", ""), "dim")
        self.console.print(f"[{style}]{data['text']}[/{style}]")

    def _on_skip(self, data: dict[str, Any]) -> None:
        self.console.print(f"[dim]skip {data['command']}: {data['why']}[/dim]")

    def _on_command(self, data: dict[str, Any]) -> None:
        self.close()
        self._command = data["command"]
        resume = f" (resuming from {data['resume_from']})" if data.get("resume_from") else ""
        self.console.print(f"[bold]{self._command}[/bold]{resume} · log: {data['log']}")
        if self.live:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TextColumn("{task.fields[info]}"),
                console=self.console,
                transient=False,
                refresh_per_second=4,
            )
            self._progress.start()
            self._task = self._progress.add_task(self._command, total=None, info="starting…")

    def _on_tick(self, data: dict[str, Any]) -> None:
        p: TrainProgress = data["progress"]
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=p.global_step, total=p.total, info=progress_line(p) if p.first_step is not None else "starting…")
        elif not self.live and p.first_step is not None:
            now = time.monotonic()
            if now - self._last_plain >= self.plain_every_s:
                self._last_plain = now
                self.console.print(f"{self._command}: {progress_line(p)}")

    def _on_event(self, data: dict[str, Any]) -> None:
        ev: Event = data["event"]
        p: TrainProgress = data["progress"]
        if ev.kind == "checkpoint":
            self.console.print(f"[green]checkpoint[/green] {ev.data['path']}")
        elif ev.kind == "oom":
            self.console.print("[red]CUDA out of memory[/red]")
        elif ev.kind == "nan":
            self.console.print(f"[red]loss is NaN at step {ev.data['step']}[/red]: training diverged (see docs: precision, learning rate)")
        elif ev.kind == "epoch" and not self.live:
            self.console.print(f"{self._command}: {progress_line(p)}")
        elif ev.kind == "state_loaded":
            self.console.print(f"[dim]trainer loaded state: step {ev.data.get('step')}, epoch {ev.data.get('epoch')}[/dim]")

    def _on_file(self, data: dict[str, Any]) -> None:
        kind = data["kind"]
        color = {"checkpoint": "green", "sample": "cyan", "state": "magenta"}.get(kind, "white")
        self.console.print(f"[{color}]{kind}[/{color}] {data['path']}")

    def _on_resume_check(self, data: dict[str, Any]) -> None:
        if data["verified"]:
            self.console.print(f"[green]{data['message']}[/green]")
        else:
            self.console.print(f"[red]resume problem:[/red] {data['message']}")

    def _on_retry(self, data: dict[str, Any]) -> None:
        self.close()
        changes = ", ".join(f"{k}={v}" for k, v in data["changes"].items())
        to = f" (towards preset {data['to_preset']})" if data.get("to_preset") else ""
        self.console.print(f"[yellow]out of memory: retrying once with {changes}{to}[/yellow]")
        for key in ("train_toml", "dataset_toml"):
            if data.get(key):
                self.console.print(f"[dim]  config copy: {data[key]}[/dim]")


# -- the loss history (the studio's run page) ---------------------------------------------------

SMOOTHING = 0.9
"""EMA weight of the smoothed loss curve (TensorBoard's default slider value; loraprep's choice)."""


def smooth(values: list[float], weight: float = SMOOTHING) -> list[float]:
    """Exponential moving average, debiased like TensorBoard's so the first points are not pulled to 0."""
    out, last, n = [], 0.0, 0
    for v in values:
        if math.isnan(v) or math.isinf(v):
            out.append(v)
            continue
        n += 1
        last = last * weight + (1 - weight) * v
        out.append(last / (1 - weight**n))
    return out


def scheduled_lr(train: dict[str, Any], step: int, total: int | None) -> float | None:
    """The learning rate the scheduler gives at `step` (diffusers' get_scheduler formulas, which
    sd-scripts uses): the trainer prints it only to TensorBoard, so the page computes it from
    train.toml. None for a scheduler this does not model (the value is then not guessed)."""
    lr = train.get("learning_rate")
    if not isinstance(lr, (int, float)):
        return None
    kind = str(train.get("lr_scheduler") or "constant")
    warm = train.get("lr_warmup_steps") or 0
    if isinstance(warm, float) and warm < 1 and total:
        warm = int(warm * total)  # sd-scripts: a float below 1 is a fraction of the steps
    warm = int(warm)
    if warm and step < warm and kind != "constant":
        return lr * step / max(1, warm)
    if kind in ("constant", "constant_with_warmup"):
        return float(lr)
    if not total:
        return None
    progress = min(1.0, max(0.0, (step - warm) / max(1, total - warm)))
    if kind == "linear":
        return lr * (1.0 - progress)
    if kind == "cosine":
        return lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    return None


class LossHistory:
    """(global step, loss) for every step line of a run's logs, read with the terminal view's
    parser (`LogParser`) and kept current by reading only what was appended since the last call.

    Each launch writes its own log; a resumed session's bar counts from 0 again, so its steps
    are shifted by the launch's own rule (`launch._set_step_offset`) to the run's global step.
    The value is the trainer's printed loss: sd-scripts prints `avr_loss`, its average over the
    last epoch's worth of steps (train_util.LossRecorder), musubi-tuner the same; only a trainer
    that prints no average gives its current loss."""

    def __init__(self, log_dir: Path, steps_per_epoch: int | None = None, total_steps: int | None = None):
        self.log_dir = Path(log_dir)
        self.spe = steps_per_epoch
        self.total_steps = total_steps
        self._logs: dict[Path, dict[str, Any]] = {}

    def _read(self, log: Path) -> list[tuple[int, float]]:
        import codecs

        from train_bridge.launch import _set_step_offset

        size = log.stat().st_size
        st = self._logs.get(log)
        if st is None or size < st["pos"]:  # new, or truncated/replaced: start again
            st = {"pos": 0, "parser": LogParser(), "points": [], "resumed": False, "dec": codecs.getincrementaldecoder("utf-8")("replace")}
        if size > st["pos"]:
            with open(log, "rb") as fh:
                fh.seek(st["pos"])
                data = fh.read(size - st["pos"])
            st["pos"] += len(data)
            text = st["dec"].decode(data)
            st["resumed"] = st["resumed"] or "--resume" in text or "resume training from local state" in text
            parser: LogParser = st["parser"]
            events = parser.feed(text)
            p = parser.progress
            if st["resumed"] and not p.step_offset:
                _set_step_offset(p, self.spe, self.total_steps)
            points: list[tuple[int, float]] = st["points"]
            for ev in events:
                if ev.kind != "step" or not ev.data.get("step"):
                    continue
                loss = ev.data.get("avr_loss") if ev.data.get("avr_loss") is not None else p.loss
                if loss is None:
                    continue
                gs = int(ev.data["step"]) + p.step_offset
                if points and points[-1][0] == gs:
                    points[-1] = (gs, float(loss))
                else:
                    points.append((gs, float(loss)))
        self._logs[log] = st
        return st["points"]

    def points(self) -> list[tuple[int, float]]:
        """All logs oldest first; where sessions overlap (a resume redoing steps), the later wins."""
        logs = sorted(self.log_dir.glob("*.log"), key=lambda p: (p.stat().st_mtime, p.name)) if self.log_dir.is_dir() else []
        merged: dict[int, float] = {}
        for log in logs:
            try:
                pts = self._read(log)
            except OSError:
                continue
            if pts:
                first = pts[0][0]
                for k in [k for k in merged if k >= first]:
                    del merged[k]
                merged.update(dict(pts))
        return sorted(merged.items())
