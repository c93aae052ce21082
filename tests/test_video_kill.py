"""kill -9 during `prep clips`, then run to the end: no temp file, no torn record, the same clips
as an uninterrupted run, no finished clip encoded twice, originals untouched.

Bounded like tests/test_hardening_kill.py: LORAPREP_KILLS kills (default 3), seed LORAPREP_KILL_SEED.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import videos as V
from hardening import leftovers, records, torn_lines

from prep.video import probe_video, read_frames

BIN = Path(sys.executable).parent
KILLS = int(os.environ.get("LORAPREP_KILLS", "3"))
SEED = int(os.environ.get("LORAPREP_KILL_SEED", "12"))
ENV = {**os.environ, "LORAPREP_NO_PROGRESS": "1"}


def _frames(folder: Path) -> dict[str, np.ndarray]:
    """Each clip's decoded frames. Compared as pixels, not bytes: libx264's bitstream for the same
    frames can differ by a few bytes between runs of one machine (seen with PyAV 18's wheel)."""
    out = {}
    for p in sorted(folder.glob("*.mp4")):
        info = probe_video(p)
        out[p.name] = np.stack([np.asarray(f, dtype=np.int16) for f in read_frames(p, range(info.frames))])
    return out


def _clips_recorded(out: Path) -> int:
    try:
        return (out / "manifest.jsonl").read_bytes().count(b'"step": "clip"')
    except OSError:
        return 0


def test_kill_and_resume_clips(tmp_path):
    prep = BIN / "prep"
    if not prep.exists():
        pytest.skip(f"the prep console script is not installed in {BIN} (pip install -e .)")
    src = tmp_path / "raw"
    src.mkdir()
    for i in range(4):
        V.write_video(src / f"v{i}.mp4", 96, fps=30, size=(160, 96))
    originals = {p.name: p.read_bytes() for p in src.iterdir()}
    args = ["clips", str(src), "--frames", "9", "--resolution", "320x192"]
    ref, out = tmp_path / "ref", tmp_path / "out"
    subprocess.run([str(prep), *args, "-o", str(ref)], env=ENV, capture_output=True, check=True, timeout=300)
    rng = random.Random(f"{SEED}-clips")
    kills = 0
    for _ in range(KILLS):
        # Killed once a new clip is recorded, after a random 0-60 ms more: the kill lands while the
        # command runs (a kill timed from an earlier run's length missed every time on a loaded CI).
        before = _clips_recorded(out)
        p = subprocess.Popen([str(prep), *args, "-o", str(out)], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 120
        while p.poll() is None and _clips_recorded(out) <= before and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.06))
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            kills += 1
        p.wait()
    done = subprocess.run([str(prep), *args, "-o", str(out), "--json"], env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert kills == KILLS, f"only {kills} of {KILLS} kills landed while the command ran"
    assert leftovers(out) == [] and leftovers(out / "contact_sheets") == []
    assert [t for p in out.rglob("*.jsonl") for t in torn_lines(p)] == []
    got, want = _frames(out), _frames(ref)
    assert sorted(got) == sorted(want) and len(want) == 4 * 5
    for name, frames in want.items():
        assert got[name].shape == frames.shape and np.abs(got[name] - frames).mean() < 1.0, name
    ok = Counter(r["id"] for r in records(out / "manifest.jsonl") if r.get("step") == "clip" and r.get("status") == "ok")
    assert [k for k, n in ok.items() if n > 1] == [], "a finished clip was encoded again"
    assert (out / "clips.jsonl").read_text() == (ref / "clips.jsonl").read_text()
    assert {p.name: p.read_bytes() for p in src.iterdir()} == originals
