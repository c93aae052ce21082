"""What a run folder says about its training: state, progress, last loss, checkpoints, samples.

Reads run/status.json (kept current by `launch`; for `launch --remote` a copy of the remote's,
paths mapped back, as of the last contact) and re-parses the newest log in run/logs, so
it also works when the launcher died without a last update, or for a run started by hand.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from train_bridge.launch import pid_alive, read_status
from train_bridge.logparse import parse_text
from train_bridge.resume import find_states
from train_bridge.runspec import RunSpec
from train_bridge.watch import list_outputs


def latest_log(run_dir: Path) -> Path | None:
    logs = sorted((Path(run_dir) / "logs").glob("*.log"), key=lambda p: (p.stat().st_mtime, p.name))
    return logs[-1] if logs else None


HEAD_BYTES = 256 * 1024
TAIL_BYTES = 4 * 1024 * 1024


def read_log_text(log: Path) -> str:
    """The log, or for a long run its head (totals, first epoch) and tail (where it is now):
    tqdm redraws make logs of long runs tens of MB."""
    size = log.stat().st_size
    with open(log, "rb") as fh:
        if size <= HEAD_BYTES + TAIL_BYTES:
            data = fh.read()
        else:
            head = fh.read(HEAD_BYTES)
            fh.seek(size - TAIL_BYTES)
            data = head + b"\n" + fh.read()
    return data.decode("utf-8", errors="replace")


def collect_status(run_dir: Path) -> dict[str, Any]:
    """Plain data for the `status` command (and its --json). Raises RunSpecError for a malformed
    run.json (the one error every command gives for it)."""
    run_dir = Path(run_dir).resolve()
    if not (run_dir / "run.json").is_file() and not (run_dir / "status.json").is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder (no run.json): write one with `train_bridge config`.")
    spec = RunSpec.load(run_dir) if (run_dir / "run.json").is_file() else None
    run: dict[str, Any] = spec.raw if spec is not None else {}
    st = read_status(run_dir)
    state = st.get("state", "not started")
    remote = st.get("remote")  # a `launch --remote` run: the launcher lives on the remote, not here
    if state in ("running", "starting") and not remote and not pid_alive(st.get("launcher_pid")):
        state = "stopped (launcher gone)"
    log = Path(st["log"]) if st.get("log") else latest_log(run_dir)
    if log is not None and not log.is_file():
        log = latest_log(run_dir)
    progress = parse_text(read_log_text(log)) if log else None
    snapshot = st.get("progress") or {}
    if progress is not None and st.get("log") == str(log):
        progress.step_offset = int(snapshot.get("step_offset") or 0)  # a resumed run's earlier steps
    out_dir = spec.output_dir if spec is not None else Path(st.get("output_dir") or run_dir / "output")
    files = list_outputs(out_dir)
    states = find_states(out_dir)
    p = progress.as_dict() if progress else {}
    if progress is not None and progress.first_step is None and st.get("progress"):
        p = st["progress"]  # log has no step line yet (or was rotated); fall back to the last snapshot
    return {
        "run_dir": str(run_dir),
        "state": state,
        "exit_code": st.get("exit_code"),
        "message": st.get("message"),
        "command": st.get("command"),
        "log": str(log) if log else None,
        "updated_at": st.get("updated_at"),
        "progress": p,
        "last_loss": p.get("loss") if p.get("loss") is not None else p.get("avr_loss"),
        "checkpoints": [str(x) for x in files["checkpoints"]],
        "samples": [str(x) for x in files["samples"]],
        "states": [{"path": str(s.path), "step": s.step, "epoch": s.epoch} for s in states],
        "commands": st.get("commands", {}),
        "oom_retries": run.get("oom_retries", []),
        "advice": st.get("advice"),
        "estimate": run.get("estimate"),
        "remote": remote,
        "last_contact": st.get("last_contact"),
    }


# --- following a local run (`train_bridge attach RUN` for a `launch --detach`) ---------------

import codecs  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

from train_bridge.logparse import LogParser  # noqa: E402
from train_bridge.watch import OutputWatcher  # noqa: E402

COMMAND_HEADER_RE = re.compile(r"^### loraprep \S+ command (?P<name>\S+?): ", re.M)
FINISHED = ("done", "failed", "oom", "interrupted")


def follow_run(
    run_dir: Path, observer: Callable[[str, dict[str, Any]], None], *, poll_s: float = 0.5, start_timeout_s: float = 60.0
) -> dict[str, Any]:
    """Show a local run's progress as the launch's own view does, from its log and status.json,
    until it ends; return the final status.json. The log is read from its start (so the bar shows
    where the run is) and then followed; a new log (a retry, a later --resume) is followed too.
    Events go to `observer` with the same kinds `launch_run` sends (command, event, file, tick)."""
    run_dir = Path(run_dir).resolve()
    spec = RunSpec.load(run_dir)
    watcher = OutputWatcher(spec.output_dir)
    watcher.seen.clear()  # announce what the run already wrote, once, then what it writes next
    log_path: Path | None = None
    offset = 0
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    parser = LogParser()
    command = "train"
    pending = ""
    started = time.monotonic()
    last_files = 0.0

    def feed(text: str) -> None:
        nonlocal parser, command, pending
        text, pending = pending + text, ""
        pos = 0
        for m in COMMAND_HEADER_RE.finditer(text):
            if m.start() > pos:
                _events(text[pos : m.start()])
            end = text.find("\n", m.end())
            if end < 0:  # header not complete yet
                pending = text[m.start() :]
                return
            parser = LogParser()
            if not m["name"].startswith("cache") and spec.total_steps:
                parser.progress.total = spec.total_steps
            command = m["name"]
            observer("command", {"command": command, "argv": [], "resume_from": read_status(run_dir).get("resume_from"), "log": str(log_path)})
            pos = end + 1
        if pos < len(text):
            _events(text[pos:])

    def _events(text: str) -> None:
        for ev in parser.feed(text):
            observer("event", {"command": command, "event": ev, "progress": parser.progress})

    while True:
        st = read_status(run_dir)
        log = Path(st["log"]) if st.get("log") else None
        if log is not None and log != log_path and log.is_file():
            log_path, offset, pending = log, 0, ""
            decoder = codecs.getincrementaldecoder("utf-8")("replace")
            parser = LogParser()
        if log_path is not None:
            with open(log_path, "rb") as fh:
                fh.seek(offset)
                data = fh.read()
            offset += len(data)
            if data:
                feed(decoder.decode(data))
        now = time.monotonic()
        if now - last_files >= 1.0:
            last_files = now
            for kind, path in watcher.poll():
                observer("file", {"command": command, "kind": kind, "path": str(path)})
        progress = parser.progress
        snapshot = st.get("progress") or {}
        if snapshot.get("step_offset") and not progress.step_offset:
            progress.step_offset = int(snapshot["step_offset"])  # a resumed run's earlier steps
        observer("tick", {"command": command, "progress": progress})
        state = st.get("state")
        if state in FINISHED:
            if log_path is not None:  # the rest of the log, written before the final status
                with open(log_path, "rb") as fh:
                    fh.seek(offset)
                    rest = fh.read()
                offset += len(rest)
                feed(decoder.decode(rest, final=True))
                for ev in parser.close():
                    observer("event", {"command": command, "event": ev, "progress": parser.progress})
            for kind, path in watcher.poll():
                observer("file", {"command": command, "kind": kind, "path": str(path)})
            return st
        if not pid_alive(st.get("launcher_pid")):
            if state in ("running", "starting"):
                st["state"] = "stopped (launcher gone)"
                return st
            if state is None or now - started > start_timeout_s:
                st["state"] = state or "not started"
                return st
        time.sleep(poll_s)
