"""`train_bridge launch --detach` and `train_bridge attach RUN` for a local run, with the fake trainer.

The launch runs as a real console command in its own session (standing in for a terminal);
that session is then hung up (SIGHUP to its whole process group, as closing a terminal does)
while the detached launcher must keep training.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_trainer.helpers import cli_env, make_run, make_trainer_root, run_cli

pytestmark = pytest.mark.skipif(os.name != "posix", reason="sessions and SIGHUP are POSIX")


def _launch_detached(run: Path, root: Path, tmp: Path, *more: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "train_bridge.cli", "launch", str(run), "--trainer-dir", str(root), "--python", sys.executable, "--no-gpu-check", "--detach", *more]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(tmp), start_new_session=True)
    out, err = proc.communicate(timeout=60)
    try:
        os.killpg(proc.pid, signal.SIGHUP)  # the terminal goes away (its group: nothing should be left in it)
    except ProcessLookupError:
        pass
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def _wait_state(run: Path, states: tuple[str, ...], timeout: float = 60) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            st = json.loads((run / "status.json").read_text())
        except (OSError, ValueError):
            st = {}
        if st.get("state") in states:
            return st
        time.sleep(0.1)
    raise AssertionError(f"status.json never reached {states}: {st}")


def test_detach_returns_at_once_and_the_training_survives_the_terminal(tmp_path: Path) -> None:
    root = make_trainer_root(tmp_path)
    run = make_run(tmp_path, fake_args=["--sleep", "1.0"], epochs=2, steps_per_epoch=3)  # ~6 s of training: still going when detach returns
    t0 = time.monotonic()
    r = _launch_detached(run, root, tmp_path)
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - t0 < 30
    assert "training in the background" in r.stdout + r.stderr and f"train_bridge attach {run}" in (r.stdout + r.stderr).replace("\n", "")
    st = json.loads((run / "status.json").read_text())
    pid = st["launcher_pid"]
    assert st["state"] in ("starting", "running") and st.get("exit_code") is None
    assert os.getsid(pid) != os.getsid(0) and os.getsid(pid) == pid  # its own session: no SIGHUP from the terminal
    final = _wait_state(run, ("done", "failed", "oom", "interrupted"))
    assert final["state"] == "done" and final["exit_code"] == 0, final
    assert final["progress"]["step"] == 6
    assert sorted(p.name for p in (tmp_path / "output").glob("*.safetensors")) == ["lora-000001.safetensors", "lora.safetensors"]
    launcher_out = Path(st["launcher_output"]).read_text()
    assert "training finished" in launcher_out  # the launcher's own console output, kept


def test_attach_brings_the_view_back_and_exits_with_the_runs_code(tmp_path: Path) -> None:
    root = make_trainer_root(tmp_path)
    run = make_run(tmp_path, fake_args=["--sleep", "0.3"], epochs=2, steps_per_epoch=4)  # ~2.4 s
    assert _launch_detached(run, root, tmp_path).returncode == 0
    _wait_state(run, ("running",))
    a = run_cli(["attach", str(run), "--plain"], tmp_path)
    assert a.returncode == 0, a.stdout + a.stderr
    out = a.stdout + a.stderr
    assert "training finished" in out
    assert "step 8/8" in out  # the same progress line as the launch's view
    assert "checkpoint" in out and "lora.safetensors" in out
    assert json.loads((run / "status.json").read_text())["state"] == "done"
    # attaching to a finished run replays it and returns its exit code at once
    again = run_cli(["attach", str(run), "--plain", "--json"], tmp_path)
    assert again.returncode == 0 and json.loads(again.stdout)["state"] == "done"


def test_attach_follows_an_oom_to_exit_3(tmp_path: Path) -> None:
    root = make_trainer_root(tmp_path)
    run = make_run(tmp_path, fake_args=["--mode", "oom", "--fail_at", "3", "--sleep", "0.2"])
    assert _launch_detached(run, root, tmp_path).returncode == 0
    a = run_cli(["attach", str(run), "--plain"], tmp_path)
    assert a.returncode == 3, a.stdout + a.stderr
    assert "oom" in (a.stdout + a.stderr).lower()


def test_attach_stop_stops_the_trainer_cleanly_and_it_resumes(tmp_path: Path) -> None:
    root = make_trainer_root(tmp_path)
    run = make_run(tmp_path, fake_args=["--sleep", "0.5"], epochs=3, steps_per_epoch=4)  # ~6 s: stopped in the middle
    assert _launch_detached(run, root, tmp_path, "--grace", "10").returncode == 0
    end = time.monotonic() + 60
    while time.monotonic() < end and not list((tmp_path / "output").glob("lora-000001-state")):
        time.sleep(0.1)
    a = run_cli(["attach", str(run), "--stop", "--plain"], tmp_path)
    assert a.returncode == 130, a.stdout + a.stderr
    assert "--resume" in a.stdout + a.stderr
    st = json.loads((run / "status.json").read_text())
    assert st["state"] == "interrupted"
    end = time.monotonic() + 15
    while _alive(st["launcher_pid"]) and time.monotonic() < end:  # it exits right after its last status write
        time.sleep(0.1)
    assert not _alive(st["launcher_pid"])
    r = run_cli(["launch", str(run), "--trainer-dir", str(root), "--python", sys.executable, "--no-gpu-check", "--resume"], tmp_path)
    assert r.returncode == 0, r.stderr


def test_detach_reports_what_would_stop_the_launch_before_starting(tmp_path: Path) -> None:
    root = make_trainer_root(tmp_path)
    run = make_run(tmp_path)
    (tmp_path / "output").mkdir()
    (tmp_path / "output" / "lora-000001-state").mkdir()  # saved state, and neither --resume nor --restart
    r = _launch_detached(run, root, tmp_path)
    assert r.returncode == 2
    assert "--resume" in r.stdout + r.stderr
    assert not (run / "status.json").exists()  # nothing was started


def test_attach_on_a_never_launched_folder_says_so(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    r = run_cli(["attach", str(run)], tmp_path)
    assert r.returncode == 2 and "never launched" in r.stdout + r.stderr


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except OSError:
        return False
