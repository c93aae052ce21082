"""Helpers for the hardening tests (issue 12): a small tmpfs, temp-file and torn-record probes,
and the figures the tests count for docs/reliability.md.

    from hardening import tmpfs, fill, leftovers, torn_lines, figure

`figure(kind, tried, held)` appends one line to the file named by $LORAPREP_TALLY (nothing
when unset); `bench/reliability_tally.py` runs the hardening tests with it set and sums them.
Kinds: "bad_input" (bad inputs tried / handled), "fault" (faults injected / survived),
"originals_changed", "paid_twice", "lost" (counts that must stay 0).
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from prep.fsutil import TEMP_PREFIX


def figure(kind: str, tried: int, held: int, *, test: str = "", note: str = "") -> None:
    """Count `tried` cases of `kind`, `held` of which behaved (for the reliability figures)."""
    path = os.environ.get("LORAPREP_TALLY")
    if not path:
        return
    test = test or os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0]
    line = json.dumps({"kind": kind, "tried": tried, "held": held, "test": test, "note": note}) + "\n"
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line)


def _mount(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=False)


@contextmanager
def tmpfs(path: Path, size: str = "2m") -> Iterator[Path]:
    """A tmpfs of `size` mounted at `path` (skips the test, with the reason, where not allowed)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.name != "posix" or not Path("/proc/mounts").exists():
        pytest.skip("a full-disk test needs Linux tmpfs")
    res = _mount(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)])
    if res.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root or CAP_SYS_ADMIN): {res.stderr.strip() or res.returncode}")
    try:
        yield path
    finally:
        _mount(["umount", "-l", str(path)])


def resize(path: Path, size: str) -> None:
    """Free space on the tmpfs at `path` (remount it bigger)."""
    res = _mount(["mount", "-o", f"remount,size={size}", str(path)])
    assert res.returncode == 0, res.stderr


def fill(disk: Path, leave: int = 0) -> Path:
    """Fill the tmpfs at `disk` until at most `leave` bytes are free; returns the filler file."""
    filler = disk / "filler.bin"
    with open(filler, "wb") as fh:
        while True:
            st = os.statvfs(disk)
            free = st.f_bavail * st.f_frsize
            if free <= leave:
                break
            try:
                fh.write(b"\0" * min(1 << 20, max(4096, free - leave)))
                fh.flush()
            except OSError:
                break
    return filler


def leftovers(folder: Path) -> list[Path]:
    """Temp files (ours, or any `*.tmp`) anywhere under `folder`."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and (p.name.startswith(TEMP_PREFIX) or p.name.endswith(".tmp")))


def torn_lines(path: Path) -> list[str]:
    """Lines of a JSON Lines file that do not parse (a torn record)."""
    if not path.exists():
        return []
    bad = []
    for line in path.read_bytes().split(b"\n"):
        if not line.strip():
            continue
        try:
            json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            bad.append(line[:80].decode("utf-8", "replace"))
    return bad


def records(path: Path) -> list[dict]:
    out = []
    if path.exists():
        for line in path.read_bytes().split(b"\n"):
            try:
                out.append(json.loads(line))
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
    return out


def within(seconds: float, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run `fn` in a daemon thread: a call that blocks (a FIFO opened for reading) fails the test instead of hanging it."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"{getattr(fn, '__name__', fn)} blocked for {seconds} s"
    if "error" in box:
        raise box["error"]
    return box.get("value")
