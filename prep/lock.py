"""One writer per output folder: `with output_lock(folder, "caption --backend replicate"): ...`.

Two copies of a paid command writing one folder would both see an image as not done yet and
both pay for it (their resume state is only read at the start). The lock file
`<folder>/.loraprep.lock` holds the holder's pid, host, command and start time. It is created
with O_EXCL and held with `fcntl.flock` while the command runs, so the kernel releases it when
the holder dies, even by SIGKILL: a lock whose flock is free and whose pid is gone on this
host is stale, and the next run takes it over with a note. A live holder makes the second run
refuse with `OutputLocked` (a ValueError, so every CLI reports it as a usage error, exit 2),
naming the process.

Re-entrant within one process (`loraprep run` locks the project; the stages it calls lock
their own folders, or the same one, without deadlocking themselves).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: O_EXCL and the pid check only
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".loraprep.lock"
CREATING_GRACE_S = 5.0
"""A lock file still empty after this long was left by a process killed while creating it
(the creator writes it within microseconds; chosen value, generous for slow disks)."""

_held: dict[str, list[Any]] = {}  # realpath of the folder -> [fd, count, LockInfo]
_held_mu = threading.Lock()


@dataclass(frozen=True)
class LockInfo:
    pid: int
    host: str
    command: str
    started: str
    """UTC, ISO 8601."""
    note: str | None = None
    """Set when this lock was taken over from a killed run."""

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host} (`{self.command}`, started {self.started})"


class OutputLocked(ValueError):
    """Another live process holds the folder. A ValueError so CLIs exit 2 (usage) with it."""

    def __init__(self, folder: Path, holder: LockInfo | None, lock_file: Path, detail: str = ""):
        self.folder, self.holder, self.lock_file = folder, holder, lock_file
        who = holder.describe() if holder else "another process"
        super().__init__(
            f"{folder} is in use by {who}{detail}: wait for it to finish or stop it, then run again "
            f"(two runs on one folder would do and pay for the same work twice). If that run is gone, delete {lock_file}"
        )


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


def _read_info(fd: int) -> LockInfo | None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        raw = os.read(fd, 65536)
        d = json.loads(raw.decode("utf-8"))
        return LockInfo(int(d["pid"]), str(d["host"]), str(d["command"]), str(d["started"]))
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None


def _write_info(fd: int, info: LockInfo) -> None:
    data = json.dumps({k: v for k, v in asdict(info).items() if v is not None}, ensure_ascii=False).encode("utf-8") + b"\n"
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, data)
    os.fsync(fd)


def _flock(fd: int, blocking: bool) -> bool:
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        return True
    except BlockingIOError:
        return False


def _is_current(path: Path, fd: int) -> bool:
    """The fd is still the file at `path` (not one another process replaced or deleted)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    fs = os.fstat(fd)
    return (st.st_ino, st.st_dev) == (fs.st_ino, fs.st_dev)


def _new_info(command: str, note: str | None = None) -> LockInfo:
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return LockInfo(os.getpid(), socket.gethostname(), command, started, note)


def _acquire(folder: Path, command: str) -> tuple[int, LockInfo]:
    path = folder / LOCK_NAME
    host = socket.gethostname()
    deadline = time.monotonic() + CREATING_GRACE_S + 2
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            fd = None
        if fd is not None:
            _flock(fd, blocking=True)  # a contender may hold it for a moment while it looks
            if _is_current(path, fd):
                info = _new_info(command)
                _write_info(fd, info)
                return fd, info
            os.close(fd)
            continue
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            continue  # released between our two opens: try to create it again
        if not _flock(fd, blocking=False):
            holder = _read_info(fd)
            os.close(fd)
            raise OutputLocked(folder, holder, path)
        if not _is_current(path, fd):
            os.close(fd)
            continue
        holder = _read_info(fd)
        if holder is None:
            age = time.time() - os.fstat(fd).st_mtime
            if age < CREATING_GRACE_S and time.monotonic() < deadline:
                os.close(fd)  # its creator is writing it: look again shortly
                time.sleep(0.05)
                continue
            note = f"took over {path}: an empty lock file left by a run killed while starting"
        elif holder.host != host:
            os.close(fd)
            raise OutputLocked(folder, holder, path, " (another host: cannot check whether it still runs)")
        elif holder.pid != os.getpid() and _pid_alive(holder.pid) and fcntl is None:
            os.close(fd)
            raise OutputLocked(folder, holder, path)
        else:
            # flock was free: the holder is gone (the kernel drops flock when a process dies,
            # SIGKILL included; a live pid here is a reused one).
            gone = "is gone" if not _pid_alive(holder.pid) else "no longer holds it"
            note = f"took over a stale lock on {folder}: {holder.describe()} {gone} (killed?); its finished work is kept"
        info = _new_info(command, note)
        _write_info(fd, info)  # we hold its flock: nobody else can be taking it over now
        return fd, info


@contextmanager
def output_lock(folder: Path | str, command: str, *, notify: Callable[[str], None] | None = None) -> Iterator[LockInfo]:
    """Hold `folder` (created if missing) for `command` until the block ends.

    Raises OutputLocked naming the holder when a live process has it. A stale lock (its
    process killed) is taken over; `notify` (default: stderr) gets the note, also on
    `LockInfo.note`. Nested use in one process is allowed.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(folder)
    with _held_mu:
        entry = _held.get(key)
        if entry is not None:
            entry[1] += 1
    if entry is not None:
        try:
            yield entry[2]
        finally:
            with _held_mu:
                entry[1] -= 1
        return
    fd, info = _acquire(folder, command)
    entry = [fd, 1, info]
    with _held_mu:
        _held[key] = entry
    if info.note:
        (notify or (lambda m: print(f"note: {m}", file=sys.stderr)))(info.note)
    try:
        yield info
    finally:
        with _held_mu:
            entry[1] -= 1
            last = entry[1] == 0
            if last:
                _held.pop(key, None)
        if last:
            path = folder / LOCK_NAME
            try:
                if _is_current(path, fd):
                    os.unlink(path)  # while still holding flock, so nobody takes a file being removed
            except OSError:
                pass
            os.close(fd)


def lock_holder(folder: Path | str) -> LockInfo | None:
    """Who holds `folder` now (None when free or stale); for status displays."""
    path = Path(folder) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        info = _read_info(fd)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                return None  # nobody holds it
            except BlockingIOError:
                return info
        return info if info and _pid_alive(info.pid) else None
    finally:
        os.close(fd)
