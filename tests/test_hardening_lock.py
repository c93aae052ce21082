"""prep.lock: one writer per output folder, with real processes (a live holder, a SIGKILLed one)
and two copies of the same paid command (`caption --backend replicate`) on one folder."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from hardening import figure

from prep.lock import LOCK_NAME, OutputLocked, lock_holder, output_lock

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}

HOLDER = """
import sys, time
from pathlib import Path
from prep.lock import output_lock
with output_lock(Path(sys.argv[1]), sys.argv[2]):
    print("held", flush=True)
    while not Path(sys.argv[3]).exists():
        time.sleep(0.02)
print("released", flush=True)
"""

CONTENDER = """
import sys
from pathlib import Path
from prep.lock import OutputLocked, output_lock
try:
    with output_lock(Path(sys.argv[1]), "second"):
        print("got it")
except OutputLocked as exc:
    print(exc, file=sys.stderr)
    sys.exit(2)
"""


def _start_holder(folder: Path, command: str, release: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), command, str(release)], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held", proc.stderr.read() if proc.stderr else ""
    return proc


def test_second_process_refuses_and_names_the_holder(tmp_path):
    out, release = tmp_path / "out", tmp_path / "release"
    holder = _start_holder(out, "caption --backend replicate", release)
    try:
        info = json.loads((out / LOCK_NAME).read_text())
        assert info["pid"] == holder.pid and info["host"] == socket.gethostname() and info["command"] == "caption --backend replicate"
        assert lock_holder(out).pid == holder.pid
        r = subprocess.run([sys.executable, "-c", CONTENDER, str(out)], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=60)
        assert r.returncode == 2, r.stderr
        assert f"pid {holder.pid}" in r.stderr and "caption --backend replicate" in r.stderr and LOCK_NAME in r.stderr
        with pytest.raises(OutputLocked) as ei:  # in-process too, as a ValueError (CLIs: exit 2)
            with output_lock(out, "third"):
                pass
        assert isinstance(ei.value, ValueError) and ei.value.holder.pid == holder.pid
    finally:
        release.touch()
        holder.wait(timeout=30)
    assert holder.returncode == 0
    assert not (out / LOCK_NAME).exists()  # released on exit
    r = subprocess.run([sys.executable, "-c", CONTENDER, str(out)], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "got it" in r.stdout


def test_stale_lock_of_a_sigkilled_run_is_taken_over_with_a_note(tmp_path):
    out = tmp_path / "out"
    holder = _start_holder(out, "prep render-variations", tmp_path / "never")
    dead = holder.pid
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    assert (out / LOCK_NAME).exists()  # a kill leaves the file behind
    notes: list[str] = []
    with output_lock(out, "prep render-variations", notify=notes.append) as info:
        assert info.pid == os.getpid()
        assert json.loads((out / LOCK_NAME).read_text())["pid"] == os.getpid()
        assert len(notes) == 1 and f"pid {dead}" in notes[0] and "stale" in notes[0]
        assert info.note == notes[0]
    assert not (out / LOCK_NAME).exists()


def test_stale_lock_left_by_a_dead_pid_without_flock(tmp_path):
    # a lock file written by a process that is gone (e.g. copied from a crashed run, or a
    # system without flock): its pid no longer exists on this host
    out = tmp_path / "out"
    out.mkdir()
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    (out / LOCK_NAME).write_text(json.dumps({"pid": p.pid, "host": socket.gethostname(), "command": "caption", "started": "2026-01-01T00:00:00Z"}))
    notes: list[str] = []
    with output_lock(out, "caption", notify=notes.append):
        pass
    assert notes and f"pid {p.pid}" in notes[0]


def test_nested_in_one_process_and_released_on_error(tmp_path):
    out = tmp_path / "out"
    with output_lock(out, "loraprep run"):
        with output_lock(out, "caption"):  # a stage inside `loraprep run`
            assert (out / LOCK_NAME).exists()
        assert (out / LOCK_NAME).exists()
    assert not (out / LOCK_NAME).exists()
    with pytest.raises(RuntimeError):
        with output_lock(out, "x"):
            raise RuntimeError("boom")
    assert not (out / LOCK_NAME).exists()


CAPTION = """
import sys
from captioning.cli import main
sys.argv = ["caption", *sys.argv[1:]]
main()
"""


def test_two_copies_of_a_paid_caption_run_pay_once(tmp_path, monkeypatch):
    pytest.importorskip("replicate")
    from stubs.replicate_stub import ReplicateStub

    src = tmp_path / "raw"
    src.mkdir()
    for i in range(4):
        Image.new("RGB", (64, 64), (i * 50, 40, 90)).save(src / f"k{i}.png")
    out = tmp_path / "caps"
    args = [str(src), "-o", str(out), "--backend", "replicate", "--trigger", "sage_character", "--set", "poll_interval=0.05"]
    with ReplicateStub(polls_before_done=10_000) as stub:  # the first run's predictions stay in flight
        env = {**ENV, "REPLICATE_API_TOKEN": "r8_FAKE_token_abcdef0123456789", "REPLICATE_BASE_URL": stub.url}
        first = subprocess.Popen([sys.executable, "-c", CAPTION, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and stub.create_count() < 4:
                time.sleep(0.05)
            assert stub.create_count() == 4
            second = subprocess.run([sys.executable, "-c", CAPTION, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
            assert second.returncode == 2, second.stdout + second.stderr
            assert f"pid {first.pid}" in " ".join(second.stderr.split()), second.stderr
            assert stub.create_count() == 4  # the second copy paid for nothing
            stub.polls_before_done = 1
            so, se = first.communicate(timeout=120)
        finally:
            if first.poll() is None:
                first.kill()
        assert first.returncode == 0, so + se
    assert sorted(stub.creates.values()) == [1, 1, 1, 1]
    assert not (out / LOCK_NAME).exists()
    figure("paid", 4, sum(1 for v in stub.creates.values() if v == 1), note="two copies of a paid caption run on one folder")
    figure("fault", 1, 1, note="a second concurrent run refused, naming the holder")
