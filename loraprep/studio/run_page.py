"""The studio's run page: a training run watched live, its samples by prompt, Stop and Resume.

Everything shown comes from the run folder and the train_bridge library, as the terminal does:
`train_bridge.status.collect_status` (status.json plus the newest log through `LogParser`) for
step, epoch, loss, it/s and ETA; `progress_view.LossHistory` (the same parser over every log of
the run) for the loss curve; `train_bridge.samples` for the samples grouped by prompt and the
checkpoint grid. **Stop** is the launch's own clean stop: SIGTERM to the launcher process named
in status.json, which `train_bridge launch` turns into its Ctrl-C path (SIGINT to the trainer,
wait, status `interrupted`, "continue with: train_bridge launch RUN --resume"). **Resume**
starts that command as its own process (it outlives the page), with the options the studio was
given for it (`--launch-option`). The page polls with htmx; nothing is held in memory that is
not on disk, except the log read position.
"""

from __future__ import annotations

import html
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from train_bridge.launch import pid_alive, read_status, resume_command
from train_bridge.progress_view import (
    LossHistory,
    fmt_duration,
    fmt_loss,
    scheduled_lr,
    smooth,
)
from train_bridge.resume import find_states
from train_bridge.runspec import RunSpec, RunSpecError
from train_bridge.samples import SampleTable, collect_run_samples, collect_samples
from train_bridge.status import collect_status

RUNNING = ("running", "starting")
LIVE_POLL_S = 2
"""Seconds between the page's updates (htmx polling; loraprep's choice: a step of a real run
takes 0.5-60 s, and a poll is one status.json read plus the log bytes appended since)."""


class RunRefused(Exception):
    """Stop/Resume cannot be done now; the message says why and what to do."""


class RunWatch:
    """A run folder as the page sees it."""

    def __init__(self, run_dir: Path, *, launch_args: list[str] | None = None, read_only: bool = False, poll_s: float = LIVE_POLL_S):
        self.run_dir = Path(run_dir).resolve()
        if not (self.run_dir / "run.json").is_file():
            raise FileNotFoundError(f"{self.run_dir}: no run.json; write the run folder with `train_bridge config ... -o {self.run_dir}`")
        self.spec = RunSpec.load(self.run_dir)
        self.launch_args = list(launch_args or [])
        self.read_only = read_only
        self.poll_s = poll_s
        self.history = LossHistory(self.run_dir / "logs", self.spec.steps_per_epoch, self.spec.total_steps)
        self._procs: list[subprocess.Popen[bytes]] = []
        self._lock = threading.Lock()

    # -- what the page shows ------------------------------------------------------------------
    def train_values(self) -> dict[str, Any]:
        cmds = self.spec.train_commands
        try:
            return self.spec.read_train(cmds[0]) if cmds else {}
        except (RunSpecError, OSError, ValueError):
            return {}

    def samples(self) -> SampleTable:
        try:
            return collect_run_samples(self.run_dir)
        except RunSpecError:
            return collect_samples(self.spec.output_dir)

    def snapshot(self) -> dict[str, Any]:
        st = collect_status(self.run_dir)
        p = st.get("progress") or {}
        total = p.get("total") or self.spec.total_steps
        step = p.get("global_step") if p.get("global_step") is not None else p.get("step")
        rate = p.get("rate_it_s")
        eta = p.get("eta_s")
        if p.get("step_offset") and rate and total and step is not None:
            eta = max(0.0, (total - step) / rate)  # tqdm's own ETA counts the skipped epochs (as progress_line does)
        points = self.history.points()
        if points and (step is None or points[-1][0] > step):
            step = points[-1][0]  # a resumed session before launch has recorded its step offset
        train = self.train_values()
        lr = scheduled_lr(train, int(step or 0), total) if train else None
        state = st["state"]
        running = state in RUNNING
        states = find_states(self.spec.output_dir)
        return {
            "run_dir": str(self.run_dir),
            "state": state,
            "running": running,
            "message": st.get("message"),
            "remote": st.get("remote"),
            "step": step,
            "total": total,
            "epoch": p.get("epoch"),
            "epochs": p.get("epochs"),
            "loss": p.get("loss"),
            "avr_loss": p.get("avr_loss"),
            "rate_it_s": rate,
            "eta_s": eta,
            "lr": lr,
            "lr_scheduler": train.get("lr_scheduler"),
            "points": points,
            "checkpoints": st.get("checkpoints", []),
            "states": [s for s in st.get("states", [])],
            "can_stop": running and not st.get("remote") and not self.read_only,
            "can_resume": (not running) and state != "done" and bool(states) and not st.get("remote") and not self.read_only,
            "resume_command": " ".join(resume_command(self.run_dir)),
            "log": st.get("log"),
            "poll_s": self.poll_s,
        }

    # -- Stop / Resume ------------------------------------------------------------------------
    def stop(self) -> str:
        """Ask the launcher to stop the trainer the way Ctrl-C does (it saves nothing extra: the
        last saved state is what Resume continues from)."""
        if self.read_only:
            raise RunRefused("read-only studio: Stop is off")
        st = read_status(self.run_dir)
        if st.get("remote"):
            raise RunRefused("this run trains on a remote machine: stop it from `train_bridge attach` (Ctrl-C there)")
        pid = st.get("launcher_pid")
        if st.get("state") not in RUNNING or not pid_alive(pid):
            raise RunRefused(f"the run is not training (state: {st.get('state', 'not started')}); nothing to stop")
        try:
            os.kill(int(pid), signal.SIGTERM)  # cli_launch: SIGTERM is handled as Ctrl-C
        except (ProcessLookupError, PermissionError) as exc:
            raise RunRefused(f"cannot signal the launcher (pid {pid}): {exc}") from None
        return (f"stopping: the launcher (pid {pid}) asks the trainer to stop cleanly; "
                f"continue later with Resume or `{' '.join(resume_command(self.run_dir))}`")

    def resume_argv(self) -> list[str]:
        return [sys.executable, "-m", "train_bridge.cli", "launch", str(self.run_dir), "--resume", "--plain", *self.launch_args]

    def resume(self) -> str:
        """Start `train_bridge launch RUN --resume` in its own session; its output goes to
        run/logs/studio-launch.out (the trainer's own log is written by launch as always)."""
        if self.read_only:
            raise RunRefused("read-only studio: Resume is off")
        with self._lock:
            st = read_status(self.run_dir)
            if st.get("remote"):
                raise RunRefused("this run trains on a remote machine: resume it with `train_bridge launch RUN --remote ... --resume`")
            if st.get("state") in RUNNING and pid_alive(st.get("launcher_pid")):
                raise RunRefused(f"the run is already training (launcher pid {st.get('launcher_pid')})")
            if st.get("state") == "done":
                raise RunRefused("training finished: nothing to resume (to train longer, raise max_train_epochs and launch with --resume)")
            if not find_states(self.spec.output_dir):
                raise RunRefused(f"no saved state in {self.spec.output_dir} to resume from (save_state writes one at each save)")
            logs = self.run_dir / "logs"
            logs.mkdir(parents=True, exist_ok=True)
            out = open(logs / "studio-launch.out", "ab")  # noqa: SIM115 - handed to the child
            try:
                out.write(f"\n### studio {time.strftime('%Y-%m-%dT%H:%M:%S')}: {' '.join(self.resume_argv())}\n".encode())
                out.flush()
                proc = subprocess.Popen(self.resume_argv(), cwd=self.run_dir, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                        start_new_session=True, env={**os.environ, "LORAPREP_NO_PROGRESS": "1"})
            finally:
                out.close()
            self._procs.append(proc)
            threading.Thread(target=proc.wait, name="studio-resume-reaper", daemon=True).start()  # no zombie
            # until the launcher writes status.json the page would still say 'interrupted'
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline and proc.poll() is None:
                if read_status(self.run_dir).get("launcher_pid") == proc.pid:
                    break
                time.sleep(0.05)
            if proc.poll() not in (None, 0):
                raise RunRefused(f"`{' '.join(resume_command(self.run_dir))}` exited with {proc.returncode}; see {logs / 'studio-launch.out'}")
        return f"resuming: `{' '.join(resume_command(self.run_dir))}` started (pid {proc.pid}); output in {logs / 'studio-launch.out'}"


# -- the chart ------------------------------------------------------------------------------------


def loss_svg(points: list[tuple[int, float]], width: int = 720, height: int = 240) -> str:
    """Inline SVG: the printed loss per step (thin) and its EMA (bold), with step and loss axes."""
    if not points:
        return f'<svg class="loss-chart" id="loss-chart" data-points="0" width="{width}" height="{height}" viewBox="0 0 {width} {height}"><text x="20" y="{height // 2}" fill="#9aa3ad">no loss yet: the chart starts with the first step</text></svg>'
    left, right, top, bottom = 56, 12, 12, 28
    xs = [s for s, _ in points]
    ys = [v for _, v in points]
    finite = [v for v in ys if math.isfinite(v)]
    sm = smooth(ys)
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5 * abs(lo or 1), hi + 0.5 * abs(hi or 1)
    x0, x1 = min(xs), max(xs)
    span = max(1, x1 - x0)

    def px(s: int) -> float:
        return left + (s - x0) / span * (width - left - right)

    def py(v: float) -> float:
        return top + (hi - v) / (hi - lo) * (height - top - bottom)

    def path(vals: list[float]) -> str:
        return " ".join(f"{px(s):.1f},{py(v):.1f}" for s, v in zip(xs, vals) if math.isfinite(v))

    grid = []
    for i in range(5):
        v = lo + (hi - lo) * i / 4
        y = py(v)
        grid.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/><text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{fmt_loss(v)}</text>')
    ticks = sorted({x0, x0 + span // 2, x1})
    for s in ticks:
        grid.append(f'<text x="{px(s):.1f}" y="{height - 8}" text-anchor="middle">{s}</text>')
    return (
        f'<svg class="loss-chart" id="loss-chart" data-points="{len(points)}" data-last-step="{x1}" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="loss by step">'
        + "".join(grid)
        + f'<polyline class="raw" points="{path(ys)}"/><polyline class="smooth" points="{path(sm)}"/>'
        + f'<text x="{width - right}" y="{top + 10}" text-anchor="end" class="legend">thin: printed loss · bold: smoothed (EMA 0.9) · x: step</text></svg>'
    )


def fmt_rate(rate: float | None) -> str:
    if not rate:
        return "-"
    return f"{rate:.2f} it/s" if rate >= 1 else f"{1 / rate:.2f} s/it"


def view_ctx(snap: dict[str, Any]) -> dict[str, Any]:
    """What the templates print, formatted once."""
    return {
        "s": snap,
        "chart": loss_svg(snap["points"]),
        "step_text": f"{snap['step'] if snap['step'] is not None else '-'}" + (f" / {snap['total']}" if snap["total"] else ""),
        "epoch_text": (f"{snap['epoch']} / {snap['epochs']}" if snap["epochs"] else str(snap["epoch"])) if snap["epoch"] else "-",
        "loss_text": fmt_loss(snap["loss"] if snap["loss"] is not None else snap["avr_loss"]),
        "smooth_text": fmt_loss(smooth([v for _, v in snap["points"]])[-1]) if snap["points"] else "-",
        "lr_text": f"{snap['lr']:.3g}" if snap["lr"] is not None else "-",
        "rate_text": fmt_rate(snap["rate_it_s"]),
        "eta_text": fmt_duration(snap["eta_s"]) if snap["running"] else "-",
        "poll_s": f"{snap.get('poll_s', LIVE_POLL_S):g}",
    }


def esc(text: Any) -> str:
    return html.escape(str(text))


# -- routes ---------------------------------------------------------------------------------------


def run_routes(watch: RunWatch, render: Any) -> list[Any]:
    """The run page's routes; `render(template, status=..., headers=..., **ctx)` is the app's."""
    from starlette.responses import (
        FileResponse,
        HTMLResponse,
        JSONResponse,
        RedirectResponse,
        Response,
    )
    from starlette.routing import Route

    def samples_poll() -> str:
        return f"{watch.poll_s * 1.5:g}"  # the gallery changes less often than the numbers

    def page(request: Any) -> Response:
        return render("run.html", **view_ctx(watch.snapshot()), samples=watch.samples(), samples_poll_s=samples_poll(), run_dir=watch.run_dir,
                      read_only=watch.read_only)

    def live(request: Any) -> Response:
        return render("run_live.html", **view_ctx(watch.snapshot()), read_only=watch.read_only)

    def samples(request: Any) -> Response:
        return render("run_samples.html", samples=watch.samples(), samples_poll_s=samples_poll())

    def sample_file(request: Any) -> Response:
        sample_dir = (watch.spec.output_dir / "sample").resolve()
        target = (sample_dir / request.path_params["name"]).resolve()
        if sample_dir not in target.parents or not target.is_file():
            return HTMLResponse(f'<div class="notice error">no such sample in {esc(sample_dir)}</div>', status_code=404)
        return FileResponse(target, headers={"Cache-Control": "max-age=3600"})

    def grid_png(request: Any) -> Response:
        from train_bridge.samples import grid_png as make_png

        table = watch.samples()
        if request.query_params.get("all") != "1":
            picked = table.only_checkpoints()
            table = picked if picked.columns else table
        try:
            return Response(make_png(table, cell=int(request.query_params.get("cell", "192") or 192)), media_type="image/png",
                            headers={"Cache-Control": "no-store"})
        except ValueError as exc:
            return HTMLResponse(f'<div class="notice error">{esc(exc)}</div>', status_code=404)

    def api_run(request: Any) -> Response:
        snap = watch.snapshot()
        snap["samples"] = watch.samples().as_dict()
        return JSONResponse(snap)

    def notice(text: str, error: bool = False, status: int = 200) -> HTMLResponse:
        cls = "notice error" if error else "notice"
        role = "alert" if error else "status"
        return HTMLResponse(f'<div class="{cls}" role="{role}" id="run-action">{esc(text)}</div>', status_code=status,
                            headers={"HX-Trigger": "run-changed"})

    def api_stop(request: Any) -> Response:
        try:
            return notice(watch.stop())
        except RunRefused as exc:
            return notice(str(exc), True, 403 if watch.read_only else 409)

    def api_resume(request: Any) -> Response:
        try:
            return notice(watch.resume())
        except RunRefused as exc:
            return notice(str(exc), True, 403 if watch.read_only else 409)

    return [
        Route("/run", page),
        Route("/run/live", live),
        Route("/run/samples", samples),
        Route("/run/sample/{name:path}", sample_file),
        Route("/run/grid.png", grid_png),
        Route("/api/run", api_run),
        Route("/api/run/stop", api_stop, methods=["POST"]),
        Route("/api/run/resume", api_resume, methods=["POST"]),
        Route("/run/", lambda request: RedirectResponse("/run")),
    ]
