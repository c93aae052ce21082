"""`launch --remote` and `attach`: upload, start detached, stream the live view, pull outputs.

The remote runs the same `train_bridge launch` (started by `train_bridge.remote.detach`, so it
outlives the connection); its trainer log is streamed with `tail --pid` into run/logs/ here and
parsed by the same LogParser, so the view is the local one. Outputs (checkpoints, states,
samples) are pulled as they appear, each once. run/remote.json remembers how to reconnect.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import queue
import re
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from prep.fsutil import atomic_write_text
from train_bridge.logparse import LogParser, TrainProgress
from train_bridge.oom import load_toml
from train_bridge.remote.runpod import (
    CONSOLE,
    GONE_STATES,
    PodLease,
    RunPodClient,
    api_key,
    create_lease,
    default_public_key,
)
from train_bridge.remote.ssh import (
    READ_ENV,
    Ssh,
    env_block,
    q,
    secrets_from_env,
)
from train_bridge.remote.sync import (
    PathMap,
    Syncer,
    changed,
    list_local,
    list_remote_many,
    no_space_message,
)
from train_bridge.remote.target import (
    REMOTE_SUBDIR,
    RemoteError,
    RemoteRecord,
    SshTarget,
    parse_ssh_url,
)
from train_bridge.resume import find_states
from train_bridge.runspec import RunSpec
from train_bridge.watch import CHECKPOINT_EXT, SAMPLE_EXT

Observer = Callable[[str, dict[str, Any]], None]

EXIT_CODES = {"done": 0, "failed": 1, "oom": 3, "interrupted": 130, "disconnected": 1, "preempted": 1}
RESERVE_BYTES = 2 * 10**9  # room kept free for checkpoints and states (our choice; docs/remote.md)
RUN_EXCLUDE = ("logs", "status.json", "remote.json", REMOTE_SUBDIR, "output", "run.json")  # run.json and *.toml go rewritten
# `train_bridge` on the remote, without relying on its console script being on PATH there
CLI = "import sys; from train_bridge.cli import main; sys.argv[0] = 'train_bridge'; main()"
HEADER_RE = re.compile(r"^### loraprep \S+ command (?P<name>\S+): (?P<argv>\[.*\])$")


@dataclass
class RemoteOptions:
    remote: str
    identity: Path | None = None
    accept_new_host_key: bool = False
    remote_dir: str = "loraprep-runs"
    remote_python: str = "python3"
    trainer_dir: str | None = None  # a checkout on the remote: skips `setup` there
    trainer_python: str | None = None
    remote_env: dict[str, str] = field(default_factory=dict)
    gpu_check: bool = True
    on_finish: str = "stop"  # stop | terminate | keep
    reconnect: int = 3
    pull_every_s: float = 5.0
    stable_s: float = 2.0
    sync: str = "auto"
    # passed on to the remote `train_bridge launch`
    resume: bool = False
    restart: bool = False
    auto_retry_oom: bool = False
    accelerate: bool | None = None
    recache: bool = False
    grace_s: float = 60.0
    dry_run: bool = False
    # RunPod
    gpu: str | None = None
    image: str | None = None
    disk_gb: int = 50
    ready_timeout_s: float = 900.0
    poll_s: float = 5.0


@dataclass
class RemoteResult:
    status: str
    exit_code: int
    run_dir: Path
    message: str = ""
    pulled: list[str] = field(default_factory=list)
    progress: TrainProgress = field(default_factory=TrainProgress)
    plan: list[str] = field(default_factory=list)
    advice: dict[str, Any] | None = None  # the remote launch's OOM advice (as in status.json)

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status, "exit_code": self.exit_code, "run_dir": str(self.run_dir), "message": self.message,
            "pulled": self.pulled, "progress": self.progress.as_dict(), "plan": self.plan, "advice": self.advice,
        }


def _say(notify: Observer) -> Callable[[str, str], None]:
    return lambda level, text: notify("notice", {"level": level, "text": text})


# --- layout ----------------------------------------------------------------------------------


@dataclass
class Upload:
    local: Path  # a folder
    remote: str
    only: list[str] | None = None  # files of that folder (None: all)
    exclude: tuple[str, ...] = ()


def _abs_strings(data: Any) -> list[str]:
    if isinstance(data, dict):
        return [s for v in data.values() for s in _abs_strings(v)]
    if isinstance(data, list):
        return [s for v in data for s in _abs_strings(v)]
    return [data] if isinstance(data, str) and data.startswith("/") else []


def remote_root_for(base: str, run_dir: Path) -> str:
    tag = hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:8]
    return f"{base.rstrip('/')}/{run_dir.resolve().name}-{tag}"


def plan_layout(spec: RunSpec, root: str, include_output: bool) -> tuple[PathMap, list[Upload], list[str]]:
    """Where each local path of the run goes on the remote, what to upload, and notes."""
    pm = PathMap()
    uploads: list[Upload] = []
    notes: list[str] = []
    run_dir = spec.run_dir.resolve()
    pm.add(run_dir, f"{root}/run")
    pm.add(spec.output_dir.resolve(), f"{root}/output")
    uploads.append(Upload(run_dir, f"{root}/run", exclude=RUN_EXCLUDE + tuple(p.name for p in run_dir.glob("*.toml"))))
    if include_output and spec.output_dir.is_dir():
        uploads.append(Upload(spec.output_dir.resolve(), f"{root}/output"))
    def slot(kind: str, p: Path) -> str:
        return f"{root}/{kind}/{hashlib.sha1(str(p).encode()).hexdigest()[:8]}-{p.name}"

    tomls: list[Path] = []
    for c in spec.commands:
        for t in (spec.dataset_toml(c), spec.train_toml(c)):
            if t is not None and t.is_file() and t.resolve() not in tomls:
                tomls.append(t.resolve())
    dataset_values = [spec.raw.get("dataset")] + [s for t in tomls if "dataset" in t.name for s in _abs_strings(load_toml(t))]
    other_values = [s for t in tomls if "dataset" not in t.name for s in _abs_strings(load_toml(t))]
    other_values += [a for c in spec.commands for a in c.args if a.startswith("/")]
    files_by_dir: dict[Path, list[str]] = {}
    for value in dataset_values:
        if not isinstance(value, str) or pm.to_remote(value) is not None:
            continue
        p = Path(value)
        dest = slot("data", p)
        pm.add(p, dest)
        if p.is_dir():
            uploads.append(Upload(p, dest))
    for value in other_values:
        if pm.to_remote(value) is not None:
            continue
        p = Path(value)
        if p.is_file():  # model files: one remote folder per local folder, only the files named
            dest = slot("models", p.parent)
            pm.add(p, f"{dest}/{p.name}")
            files_by_dir.setdefault(p.parent, []).append(p.name)
        elif p.is_dir():
            dest = slot("models", p)
            pm.add(p, dest)
            uploads.append(Upload(p, dest))
        else:
            notes.append(f"{value} does not exist here; it is passed to the remote unchanged")
    for parent, names in files_by_dir.items():
        uploads.append(Upload(parent, slot("models", parent), only=sorted(set(names))))
    return pm, uploads, notes


def config_files(spec: RunSpec) -> list[Path]:
    """The run's files that hold paths: run.json and the TOMLs in the run folder."""
    return [spec.run_dir / "run.json", *sorted(p for p in spec.run_dir.glob("*.toml"))]


def rewritten(path: Path, pm: PathMap) -> bytes:
    if path.suffix == ".json":
        return (json.dumps(pm.rewrite(json.loads(path.read_text(encoding="utf-8"))), indent=2) + "\n").encode()
    return tomli_w.dumps(pm.rewrite(load_toml(path))).encode()


# --- the session -----------------------------------------------------------------------------


class Session:
    """One connection's worth of work for a run (launch or attach)."""

    def __init__(self, spec: RunSpec, rec: RemoteRecord, ssh: Ssh, notify: Observer, opts: RemoteOptions, lease: PodLease | None = None):
        self.spec, self.rec, self.ssh, self.notify, self.opts, self.lease = spec, rec, ssh, notify, opts, lease
        self.syncer = Syncer(ssh, spec.run_dir / REMOTE_SUBDIR / "transfers.jsonl", opts.sync)
        self.pm = PathMap([(a, b) for a, b in rec.path_map])
        self.parser = LogParser()
        self.pulled: list[str] = []
        self.command = ""
        self.fed = 0  # bytes of the local log copy the parser has seen

    @property
    def py(self) -> str:
        return self.rec.python

    def home_env(self) -> str:
        return f"LORAPREP_HOME={q(self.rec.remote_root.rsplit('/', 1)[0] + '/.loraprep')}"

    def env_stdin(self) -> bytes:
        """Secrets and --remote-env, for READ_ENV: through the ssh channel, never argv."""
        env = {**self.opts.remote_env, **secrets_from_env(), "LORAPREP_NO_PROGRESS": "1", "COLUMNS": "200"}
        return env_block(env)

    # checks -----------------------------------------------------------------------------------

    def check_python(self) -> None:
        r = self.ssh.run(f"{q(self.py)} -c 'import train_bridge, sys; print(sys.version.split()[0])'", check=False)
        if r.returncode != 0:
            raise RemoteError(
                f"loraprep is not importable by {self.py} on {self.ssh.target.display()} ({r.stderr.decode('utf-8', 'replace').strip()[-200:] or 'exit ' + str(r.returncode)}): "
                f"install it there (`pip install loraprep`, or `pip install -e .` in a checkout), or pass --remote-python PATH to a Python that has it."
            )

    def check_gpu(self) -> str:
        code = "import sys; from train_bridge.gpu import check_gpu; c = check_gpu(sys.argv[1] or None); print('ok' if c.ok else 'no'); print(c.message)"
        r = self.ssh.run(READ_ENV + f"{q(self.py)} -c {q(code)} {q(self.spec.preset or '')}", input=self.env_stdin(), check=False)
        lines = r.stdout.decode("utf-8", "replace").splitlines()
        if r.returncode != 0 or not lines or lines[0] != "ok":
            why = " ".join(lines[1:]) if len(lines) > 1 else r.stderr.decode("utf-8", "replace").strip()[-300:]
            raise RemoteError(
                f"GPU not visible on {self.ssh.target.display()}: {why} On a rented machine pick an image with the NVIDIA driver "
                f"and CUDA (nvidia-smi must work in `ssh {self.ssh.target.display()} nvidia-smi`); for a CPU test box, --no-gpu-check skips this check."
            )
        return " ".join(lines[1:])

    # upload -----------------------------------------------------------------------------------

    def stage_configs(self) -> Upload:
        """run.json and the run's TOMLs with remote paths, written under run/remote/staged/
        and uploaded like any file (so an unchanged config is not sent again)."""
        staged = self.spec.run_dir / REMOTE_SUBDIR / "staged"
        names = []
        for path in config_files(self.spec):
            data = rewritten(path, self.pm)
            dest = staged / path.name
            if not dest.is_file() or dest.read_bytes() != data:
                staged.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(data)
            names.append(path.name)
        return Upload(staged, self.rec.remote_run, only=names)

    def upload(self, uploads: list[Upload]) -> int:
        """Send what changed; one listing command for every destination (with free space and
        whether rsync is there), then one transfer per folder that has changes."""
        uploads = [*uploads, self.stage_configs()]
        extra = (
            f'd={q(self.rec.remote_root)}; while [ ! -d "$d" ]; do d=$(dirname "$d"); done; "${{LORAPREP_DF:-df}}" -Pk "$d" | tail -n 1; '
            "command -v rsync >/dev/null 2>&1 && echo rsync=yes || echo rsync=no"
        )
        listings, _, extra_out = list_remote_many(self.ssh, [u.remote for u in uploads], extra, env=self.env_stdin())
        df_line = extra_out.splitlines()[0].split() if extra_out.strip() else []
        free = int(df_line[3]) * 1024 if len(df_line) > 3 and df_line[3].isdigit() else None
        self.syncer.decide("rsync=yes" in extra_out)
        planned: list[tuple[Upload, list[str], int]] = []
        for u, theirs in zip(uploads, listings):
            mine = list_local(u.local, u.exclude)
            files = changed(mine, theirs, u.only)
            planned.append((u, files, sum(mine[f][0] for f in files)))
        total = sum(n for _, _, n in planned)
        if free is not None and total + RESERVE_BYTES > free:
            raise RemoteError(no_space_message(self.ssh.target.display(), self.rec.remote_root, total + RESERVE_BYTES, free))
        sent = 0
        for u, files, nbytes in planned:
            if files:
                self.notify("notice", {"level": "info", "text": f"upload {len(files)} files ({nbytes / 1e6:.1f} MB) → {u.remote}"})
                self.syncer.push(u.local, u.remote, files)
                sent += len(files)
        return sent

    # setup and start ----------------------------------------------------------------------------

    def setup_argv(self) -> list[str]:
        return [self.py, "-c", CLI, "setup", self.spec.trainer]

    def launch_argv(self) -> list[str]:
        o = self.opts
        argv = [self.py, "-c", CLI, "launch", self.rec.remote_run, "--plain", "--no-gpu-check", "--grace", str(o.grace_s)]
        argv += ["--resume"] if o.resume else []
        argv += ["--restart"] if o.restart else []
        argv += ["--auto-retry-oom"] if o.auto_retry_oom else []
        argv += ["--no-accelerate"] if o.accelerate is False else []
        argv += ["--recache"] if o.recache else []
        if o.trainer_dir:
            argv += ["--trainer-dir", o.trainer_dir]
        if o.trainer_python:
            argv += ["--python", o.trainer_python]
        return argv

    def setup(self) -> None:
        if self.opts.trainer_dir:
            return
        self.notify("notice", {"level": "info", "text": f"setting up {self.spec.trainer} on {self.ssh.target.display()} at the pinned commit (once; later runs reuse it)"})
        r = self.ssh.run(READ_ENV + f"export {self.home_env()}; " + q(*self.setup_argv()), input=self.env_stdin(), timeout=3600, check=False)
        if r.returncode != 0:
            out = (r.stdout + r.stderr).decode("utf-8", "replace").strip()
            if any(m in out for m in ("No space left on device", "Disk quota exceeded")):
                raise RemoteError(no_space_message(self.ssh.target.display(), self.rec.remote_root, None, None))
            raise RemoteError(f"`train_bridge setup {self.spec.trainer}` failed on {self.ssh.target.display()}: {out[-600:]}")

    def start(self) -> int:
        out = f"{self.rec.remote_root}/launcher.out"
        detach = [self.py, "-m", "train_bridge.remote.detach", out, "--", *self.launch_argv()]
        cmd = READ_ENV + f"export {self.home_env()}; cd {q(self.rec.remote_run)} && " + q(*detach)
        r = self.ssh.run(cmd, input=self.env_stdin())
        try:
            pid = int(r.stdout.decode().strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise RemoteError(f"the remote launcher did not start: {r.stdout.decode('utf-8', 'replace')[-300:]} {r.stderr.decode('utf-8', 'replace')[-300:]}") from None
        self.rec.pid = pid
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            st, alive = self.probe()
            if st.get("launcher_pid") == pid and st.get("log"):
                self.rec.pid, self.rec.log, self.rec.state = pid, st["log"], "running"
                self.rec.write(self.spec.run_dir)
                self.mirror_status(st)
                return pid
            if not alive:
                tail = self.ssh.text(f"tail -c 2000 {q(out)} 2>/dev/null", check=False)
                raise RemoteError(f"the remote `train_bridge launch` stopped before training started:\n{tail.strip()}")
            time.sleep(0.2)
        raise RemoteError(f"the remote launcher (pid {pid}) wrote no status within 60 s; see {out} on {self.ssh.target.display()}")

    # state ------------------------------------------------------------------------------------

    def probe(self) -> tuple[dict[str, Any], bool]:
        """(remote status.json, whether the remote launcher is alive)."""
        pid = self.rec.pid or 0
        out = self.ssh.text(f"cat {q(self.rec.remote_run + '/status.json')} 2>/dev/null; echo; echo '@@'; kill -0 {int(pid)} 2>/dev/null && echo alive", check=False)
        body, _, tail = out.partition("@@")
        try:
            st = json.loads(body.strip() or "{}")
        except ValueError:
            st = {}
        if not pid and st.get("launcher_pid"):
            return st, True
        return st, "alive" in tail

    def mirror_status(self, st: dict[str, Any]) -> None:
        """run/status.json here: the remote's, paths mapped back, marked remote."""
        local = self.pm.rewrite(st, back=True)
        local["remote"] = {"kind": self.rec.kind, "host": self.ssh.target.display(), "pid": self.rec.pid, "remote_run": self.rec.remote_run, "pod_id": self.rec.pod_id}
        local["last_contact"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        local.pop("launcher_pid", None)
        atomic_write_text(self.spec.run_dir / "status.json", json.dumps(local, indent=2, ensure_ascii=False, default=str) + "\n")

    # follow -----------------------------------------------------------------------------------

    def local_log(self) -> Path:
        assert self.rec.log
        mapped = self.pm.to_local(self.rec.log)
        return Path(mapped) if mapped else self.spec.run_dir / "logs" / Path(self.rec.log).name

    def poll(self, final: bool = False) -> dict[str, Any]:
        """One command: the remote output listing and status.json; pulls what is new."""
        listings, now, extra = list_remote_many(self.ssh, [self.rec.remote_output], f"cat {q(self.rec.remote_run + '/status.json')} 2>/dev/null")
        try:
            st = json.loads(extra.strip() or "{}")
        except ValueError:
            st = {}
        stable = 0.0 if final else min(self.opts.stable_s, self.opts.pull_every_s)
        got = self.syncer.pull(self.rec.remote_output, self.spec.output_dir, stable_s=stable, listing=(listings[0], now))
        for rel in got:
            p = self.spec.output_dir / rel
            kind = "checkpoint" if p.suffix.lower() in CHECKPOINT_EXT and "/" not in rel else "sample" if p.suffix.lower() in SAMPLE_EXT else "state" if "-state/" in rel else None
            if kind is not None and (kind != "state" or rel.endswith("train_state.json")):
                self.notify("file", {"command": self.command, "kind": kind, "path": str(p if kind != "state" else p.parent)})
        self.pulled += got
        if st:
            self.mirror_status(st)
        return st

    def _on_text(self, text: str) -> None:
        for line in text.splitlines():
            m = HEADER_RE.match(line.strip())
            if m:
                self.command = m["name"]
                self.parser = LogParser()
                if self.spec.total_steps:
                    self.parser.progress.total = self.spec.total_steps
                self.notify("command", {"command": self.command, "argv": json.loads(m["argv"]), "resume_from": None, "log": str(self.local_log())})
        for ev in self.parser.feed(text):
            if ev.kind == "checkpoint":
                continue  # announced when it arrives here
            self.notify("event", {"command": self.command, "event": ev, "progress": self.parser.progress})

    def stream_once(self) -> int:
        """Stream the remote log from where the local copy ends until the launcher exits or
        the connection drops; returns tail's exit status (255: connection lost)."""
        log = self.local_log()
        log.parent.mkdir(parents=True, exist_ok=True)
        offset = log.stat().st_size if log.exists() else 0
        if offset > self.fed:  # attach: the view picks up where the local copy ends
            with open(log, "rb") as fh:
                fh.seek(self.fed)
                self._on_text(fh.read().decode("utf-8", errors="replace"))
            self.fed = offset
        proc = self.ssh.popen(
            f"tail -c +{offset + 1} --pid={int(self.rec.pid or 0)} -s 0.3 -F {q(self.rec.log or '')} 2>/dev/null",
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        assert proc.stdout is not None
        chunks: queue.Queue[bytes | None] = queue.Queue()

        def reader() -> None:
            fd = proc.stdout.fileno()  # type: ignore[union-attr]
            while True:
                try:
                    b = __import__("os").read(fd, 65536)
                except OSError:
                    b = b""
                chunks.put(b or None)
                if not b:
                    return

        threading.Thread(target=reader, daemon=True, name="remote-log").start()
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        last_pull = time.monotonic()
        try:
            self._pump(proc, chunks, decoder, log, last_pull)
        finally:
            if proc.poll() is None:  # Ctrl-C here: end this tail, the caller decides what next
                proc.terminate()
        rc = proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
        proc.stdout.close()
        return rc

    def _pump(self, proc: subprocess.Popen[bytes], chunks: queue.Queue[bytes | None], decoder: Any, log: Path, last_pull: float) -> None:
        with open(log, "ab") as fh:
            while True:
                try:
                    item = chunks.get(timeout=0.25)
                except queue.Empty:
                    item = b""
                if item is None:
                    break
                if item:
                    fh.write(item)
                    fh.flush()
                    self.fed += len(item)
                    self._on_text(decoder.decode(item))
                self.notify("tick", {"command": self.command, "progress": self.parser.progress})
                if time.monotonic() - last_pull >= self.opts.pull_every_s:
                    last_pull = time.monotonic()
                    try:
                        self.poll()
                    except RemoteError:
                        pass  # the stream notices a real drop

    def interrupt(self) -> None:
        self.notify("notice", {"level": "warning", "text": f"stopping the remote training (pid {self.rec.pid}); Ctrl-C again to leave it running and detach"})
        self.ssh.run(f"kill -INT {int(self.rec.pid or 0)} 2>/dev/null", check=False)

    def follow(self) -> RemoteResult:
        interrupted = False
        while True:
            try:
                if self.stream_once() == 0:
                    break
                if not self._reconnect():
                    return self._lost()
            except KeyboardInterrupt:
                if interrupted:
                    return self._detached("detached on a second Ctrl-C")
                interrupted = True
                try:
                    self.interrupt()
                except RemoteError:
                    pass
        return self.finish()

    def _reconnect(self) -> bool:
        for i in range(self.opts.reconnect):
            time.sleep(min(2 * (i + 1), 10))
            try:
                self.ssh.run("true", timeout=30)
                self.notify("notice", {"level": "warning", "text": "reconnected"})
                return True
            except RemoteError:
                continue
        return False

    def _lost(self) -> RemoteResult:
        if self.lease is not None and self.lease.status() in GONE_STATES:
            return self._preempted(f"pod {self.lease.pod_id} is {self.lease.status()}")
        self.rec.state = "disconnected"
        self.rec.write(self.spec.run_dir)
        msg = (
            f"the connection to {self.ssh.target.display()} was lost; the training goes on there (pid {self.rec.pid}). "
            f"Reconnect with `train_bridge attach {self.spec.run_dir}` (outputs pulled so far are in {self.spec.output_dir})."
        )
        if self.lease is not None:
            msg += f" Pod {self.lease.pod_id} is STILL RUNNING and billing: attach to finish (it is stopped then), or stop it at {CONSOLE}."
        self._mark_local("disconnected", msg)
        return RemoteResult("disconnected", EXIT_CODES["disconnected"], self.spec.run_dir, msg, self.pulled, self.parser.progress)

    def _detached(self, why: str) -> RemoteResult:
        msg = f"{why}: the remote run goes on; `train_bridge attach {self.spec.run_dir}` reconnects"
        if self.lease is not None:
            msg += f". Pod {self.lease.pod_id} is STILL RUNNING and billing (stop it at {CONSOLE})"
        return RemoteResult("interrupted", EXIT_CODES["interrupted"], self.spec.run_dir, msg, self.pulled, self.parser.progress)

    def _preempted(self, why: str) -> RemoteResult:
        states = find_states(self.spec.output_dir)
        last = f"the last synced state is {states[-1].path} (step {states[-1].step})" if states else "no state was synced yet"
        remote = f"--remote runpod --gpu {q(self.rec.gpu or 'GPU')}" if self.rec.kind == "runpod" else f"--remote ssh://{self.rec.user}@{self.rec.host}:{self.rec.port}"
        msg = (
            f"the remote run stopped without finishing ({why}; preempted or rebooted?): {last}. "
            f"Resume from it with `train_bridge launch {self.spec.run_dir} {remote} --resume` (the state is uploaded again)."
        )
        self.rec.state = "preempted"
        self.rec.write(self.spec.run_dir)
        self._mark_local("preempted", msg)
        return RemoteResult("preempted", EXIT_CODES["preempted"], self.spec.run_dir, msg, self.pulled, self.parser.progress)

    def _mark_local(self, state: str, msg: str) -> None:
        path = self.spec.run_dir / "status.json"
        try:
            st = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            st = {}
        st.update(state=state, message=msg)
        st.setdefault("remote", {"kind": self.rec.kind, "host": self.ssh.target.display(), "pid": self.rec.pid})
        atomic_write_text(path, json.dumps(st, indent=2, default=str) + "\n")

    def finish(self) -> RemoteResult:
        st = self.poll(final=True)
        out_local = self.spec.run_dir / REMOTE_SUBDIR / "launcher.out"
        text = self.ssh.text(f"cat {q(self.rec.remote_root + '/launcher.out')} 2>/dev/null", check=False)
        out_local.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_local, text)
        state = str(st.get("state") or "failed")
        status = state if state in EXIT_CODES else "failed"
        msg = str(st.get("message") or "")
        if any(m in text for m in ("No space left on device", "Disk quota exceeded")):
            status, msg = "failed", no_space_message(self.ssh.target.display(), self.rec.remote_root, None, None)
        elif state in ("running", "starting"):
            return self._preempted("its launcher is gone but it never recorded an end")
        self.rec.state = status
        self.rec.write(self.spec.run_dir)
        return RemoteResult(status, EXIT_CODES.get(status, 1), self.spec.run_dir, msg, self.pulled, self.parser.progress, advice=self.pm.rewrite(st.get("advice"), back=True))


# --- entry points ----------------------------------------------------------------------------


def _ssh_for(rec: RemoteRecord, opts: RemoteOptions, accept_new: bool | None = None) -> Ssh:
    identity = opts.identity or (Path(rec.identity) if rec.identity else None)
    return Ssh(rec.target, identity=identity, accept_new_host_key=opts.accept_new_host_key if accept_new is None else accept_new, known_hosts=Path(rec.known_hosts) if rec.known_hosts else None)


def launch_remote(run_dir: Path, opts: RemoteOptions, notify: Observer) -> RemoteResult:
    """`train_bridge launch RUN --remote ...`."""
    opened: list[Ssh] = []
    try:
        return _launch_remote(run_dir, opts, notify, opened)
    finally:
        for ssh in opened:
            ssh.close()


def _launch_remote(run_dir: Path, opts: RemoteOptions, notify: Observer, opened: list[Ssh]) -> RemoteResult:
    spec = RunSpec.load(Path(run_dir).resolve())
    if opts.on_finish not in ("stop", "terminate", "keep"):
        raise RemoteError(f"--on-finish {opts.on_finish!r}: choose stop, terminate or keep", 2)
    kind = "runpod" if opts.remote == "runpod" else "ssh"
    if kind == "runpod" and not opts.gpu:
        raise RemoteError("--remote runpod needs --gpu, e.g. --gpu \"A100 80GB\" (or a RunPod GPU type id).", 2)
    target = parse_ssh_url(opts.remote) if kind == "ssh" else None
    if opts.dry_run:
        return _dry_run(spec, opts, target)
    _refuse_if_still_running(spec, opts, opened)
    lease: PodLease | None = None
    say = _say(notify)
    if kind == "runpod":
        api_key()  # refuse before anything is made
        lease = create_lease(opts.gpu or "", default_public_key(opts.identity), say, name=f"loraprep-{spec.run_dir.name}", image=opts.image, disk_gb=opts.disk_gb)
    try:
        if lease is not None:
            notify("notice", {"level": "info", "text": f"waiting for pod {lease.pod_id} to accept ssh"})
            target = lease.wait_for_ssh(opts.ready_timeout_s, opts.poll_s)
        assert target is not None
        # a pod made by this command is new: its host key is recorded on first contact
        ssh = Ssh(target, identity=opts.identity, accept_new_host_key=opts.accept_new_host_key or lease is not None)
        opened.append(ssh)
        rd = opts.remote_dir.removeprefix("~/")
        where = q(rd) if rd.startswith("/") else f'"$HOME"/{q(rd)}'  # relative: in the remote home
        base = ssh.text(f"mkdir -p {where} && cd {where} && pwd").strip().splitlines()[-1]
        root = remote_root_for(base, spec.run_dir)
        pm, uploads, notes = plan_layout(spec, root, include_output=opts.resume)
        rec = RemoteRecord(
            kind, target.user, target.host, target.port, root, f"{root}/run", f"{root}/output", opts.remote_python,
            identity=str(opts.identity) if opts.identity else None, known_hosts=str(ssh.known_hosts), on_finish=opts.on_finish,
            pod_id=lease.pod_id if lease else None, gpu=opts.gpu, started_at=time.strftime("%Y-%m-%dT%H:%M:%S"),
            path_map=[[a, b] for a, b in pm.pairs],
        )
        rec.write(spec.run_dir)
        s = Session(spec, rec, ssh, notify, opts, lease)
        for n in notes:
            say("warning", n)
        s.check_python()
        if opts.gpu_check:
            say("info", s.check_gpu())
        sent = s.upload(uploads)
        say("info", f"{sent} files uploaded to {target.display()}:{root}" if sent else f"{target.display()}:{root} is up to date")
        s.setup()
        s.start()
        res = s.follow()
    except KeyboardInterrupt:
        if lease is not None:
            _release(lease, "stop" if opts.on_finish == "keep" else opts.on_finish, say)
        raise
    except RemoteError:
        if lease is not None:
            _release(lease, "terminate" if opts.on_finish == "terminate" else "stop", say)
        raise
    if lease is not None and res.status not in ("disconnected",) and not (res.status == "interrupted" and "detached" in res.message):
        _release(lease, opts.on_finish, say)
    return res


def _refuse_if_still_running(spec: RunSpec, opts: RemoteOptions, opened: list[Ssh]) -> None:
    """A run whose remote training may still go on is followed with `attach`, not started twice."""
    from train_bridge.remote.target import read_record

    rec = read_record(spec.run_dir)
    if rec is None or rec.state not in ("running", "starting", "disconnected") or not rec.pid or rec.kind != "ssh":
        return
    try:
        ssh = _ssh_for(rec, opts)
        opened.append(ssh)
        _, alive = Session(spec, rec, ssh, lambda k, d: None, opts).probe()
    except RemoteError:
        return  # not reachable: nothing to protect there
    if alive:
        raise RemoteError(
            f"this run is still training on {rec.target.display()} (pid {rec.pid}): follow it with `train_bridge attach {spec.run_dir}`, "
            f"or stop it first (Ctrl-C in attach).", 2
        )


def _release(lease: PodLease, how: str, say: Callable[[str, str], None]) -> None:
    try:
        lease.release(how)
    except RemoteError:
        pass  # already said loudly


def attach_remote(run_dir: Path, opts: RemoteOptions, notify: Observer) -> RemoteResult:
    """`train_bridge attach RUN`: reconnect, catch up on the log and outputs, follow to the end."""
    spec = RunSpec.load(Path(run_dir).resolve())
    rec = RemoteRecord.read(spec.run_dir)
    if not rec.pid or not rec.log:
        raise RemoteError(f"{spec.run_dir}/remote.json has no remote process: the launch did not get as far as starting; launch again.", 2)
    lease = None
    if rec.kind == "runpod" and rec.pod_id:
        lease = PodLease(RunPodClient(api_key()), rec.pod_id, rec.gpu or "", _say(notify))
        status = lease.status()
        if status in GONE_STATES:
            ssh = _ssh_for(rec, opts)
            return Session(spec, rec, ssh, notify, opts, lease)._preempted(f"pod {rec.pod_id} is {status}")
    ssh = _ssh_for(rec, opts)
    try:
        return _attach(spec, rec, ssh, notify, opts, lease)
    finally:
        ssh.close()


def _attach(spec: RunSpec, rec: RemoteRecord, ssh: Ssh, notify: Observer, opts: RemoteOptions, lease: PodLease | None) -> RemoteResult:
    s = Session(spec, rec, ssh, notify, opts, lease)
    try:
        ssh.run("true", timeout=30)
    except RemoteError as exc:
        if lease is not None and lease.status() in GONE_STATES:
            return s._preempted(f"pod {rec.pod_id} is gone")
        raise RemoteError(f"{exc} (the run on the remote, if it still runs, is not affected; attach again later)") from None
    st, alive = s.probe()
    if not st:
        return s._preempted(f"its run folder {rec.remote_run} is gone from {ssh.target.display()}")
    notify("notice", {"level": "info", "text": f"attached to {ssh.target.display()} (pid {rec.pid}, {'running' if alive else st.get('state')})"})
    res = s.follow()
    if lease is not None and res.status not in ("disconnected", "preempted") and not (res.status == "interrupted" and "detached" in res.message):
        _release(lease, rec.on_finish, _say(notify))
    return res


def _dry_run(spec: RunSpec, opts: RemoteOptions, target: SshTarget | None) -> RemoteResult:
    root = remote_root_for(opts.remote_dir if opts.remote_dir.startswith("/") else f"~/{opts.remote_dir}", spec.run_dir)
    _pm, uploads, notes = plan_layout(spec, root, include_output=opts.resume)
    where = target.display() if target else f"a new RunPod pod ({opts.gpu})"
    plan = [f"connect to {where}"]
    for u in uploads:
        files = list_local(u.local, u.exclude) if u.only is None else {f: (0, 0) for f in u.only}
        plan.append(f"upload {u.local} ({len(files)} files, only what changed) → {u.remote}")
    plan.append("rewrite paths in " + ", ".join(p.name for p in config_files(spec)))
    rec = RemoteRecord("ssh", "u", "h", 22, root, f"{root}/run", f"{root}/output", opts.remote_python)
    s = Session.__new__(Session)
    s.spec, s.rec, s.opts = spec, rec, opts
    if not opts.trainer_dir:
        plan.append("remote: " + " ".join(s.setup_argv()) + " (pinned commit)")
    plan.append("remote, detached: " + " ".join(s.launch_argv()))
    plan.append(f"stream the log, pull checkpoints/samples into {spec.output_dir}; on finish: {opts.on_finish}")
    return RemoteResult("dry_run", 0, spec.run_dir, "dry run: nothing started", plan=plan + [f"note: {n}" for n in notes])
