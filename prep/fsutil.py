"""Small filesystem helpers: atomic writes, hashing, safe names.

Every file the project writes goes through `atomic_write_*` / `atomic_open` / `link_or_copy`, so
an interrupted run never leaves a half-written caption, image or config behind:

- the bytes go to a temp file beside the target, named `.loraprep-tmp-<pid>-<token>-<name>.tmp`
  (kept within the 255-byte name limit however long the target's name), then are fsynced and
  renamed over the target;
- a temp file left by a killed run is removed the next time any command writes into that folder
  (`sweep_stale_temps`: only files whose writer process is gone);
- the file is created with mode 0666 minus the user's umask, like `open(..., "w")` would;
- a full disk (ENOSPC, EDQUOT) raises `DiskFull`, naming the path, after removing the temp file.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from prep.inputs import printable

_CHUNK = 1 << 20
TEMP_PREFIX = ".loraprep-tmp-"
TEMP_SUFFIX = ".tmp"
NAME_MAX = 255
_TEMP_RE = re.compile(r"^\.loraprep-tmp-(\d+)-[0-9a-f]+-.*\.tmp$", re.DOTALL)
_FULL_ERRNOS = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})


class DiskFull(OSError):
    """No space left (or quota exceeded) while writing `path`; nothing partial was left there."""

    def __init__(self, path: Path | str, cause: OSError | None = None):
        self.path = Path(path)
        code = cause.errno if cause is not None and cause.errno else errno.ENOSPC
        super().__init__(code, f"no space left on {self.path}: free some space (or write to another folder) and run again", str(self.path))

    def __str__(self) -> str:
        return str(self.args[1])


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS


def temp_name(target_name: str, pid: int | None = None) -> str:
    """A temp file name for `target_name` in the same folder, at most NAME_MAX bytes.

    The writer's pid is in the name so a later run can tell a stale temp (writer gone) from one
    being written right now by another process.
    """
    head = f"{TEMP_PREFIX}{os.getpid() if pid is None else pid}-{secrets.token_hex(4)}-"
    room = NAME_MAX - len(head.encode()) - len(TEMP_SUFFIX)
    return head + os.fsdecode(os.fsencode(target_name)[:room]) + TEMP_SUFFIX  # bytes as the OS takes them


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    except OSError:
        return True
    return True


_swept: dict[str, float] = {}
_swept_lock = threading.Lock()
SWEEP_EVERY_S = 60.0
"""A long-lived process (the studio server) sweeps a folder again after this long (our choice)."""


def sweep_stale_temps(folder: Path | str, *, force: bool = False) -> list[Path]:
    """Remove temp files in `folder` left by writers that are no longer running.

    Runs on the first write into a folder, then at most every SWEEP_EVERY_S, unless `force`.
    Returns what it removed. Never touches a file without the temp prefix, nor one whose writer
    is alive.
    """
    folder = Path(folder)
    key = os.path.abspath(folder)
    now = time.monotonic()
    with _swept_lock:
        if not force and key in _swept and now - _swept[key] < SWEEP_EVERY_S:
            return []
        _swept[key] = now
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for e in entries:
        m = _TEMP_RE.match(e.name)
        if not m or not e.is_file(follow_symlinks=False) or _pid_alive(int(m.group(1))):
            continue
        try:
            os.unlink(e.path)
            removed.append(Path(e.path))
        except OSError:
            pass
    return removed


def _new_temp(folder: Path, target_name: str) -> tuple[int, Path]:
    """Create (O_EXCL) a temp file in `folder`: mode 0666 & ~umask, as a plain open() would."""
    sweep_stale_temps(folder)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = folder / temp_name(target_name)
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
        except OSError as exc:
            if is_disk_full(exc):
                raise DiskFull(folder / target_name, exc) from exc
            raise
    raise FileExistsError(f"{folder}: could not create a temp file")


def _unlink_quiet(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError:
        pass


def _mkdir(folder: Path, target: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if is_disk_full(exc):
            raise DiskFull(target, exc) from exc
        raise


@contextmanager
def atomic_open(path: Path, mode: str = "wb") -> Iterator[BinaryIO]:
    """Open a temp file beside `path`; on success fsync and rename it over `path`.

    On any failure the temp file is removed; a full disk raises `DiskFull` naming `path`.
    """
    path = Path(path)
    _mkdir(path.parent, path)
    fd, tmp = _new_temp(path.parent, path.name)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh  # type: ignore[misc]
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        _unlink_quiet(tmp)
        if is_disk_full(exc) and not isinstance(exc, DiskFull):
            raise DiskFull(path, exc) from exc  # type: ignore[arg-type]
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: Path, text: str, encoding: str = "utf-8") -> None:
    atomic_write_bytes(path, text.encode(encoding))


def write_lines_if_changed(path: Path, lines: Callable[[], Iterable[str]]) -> bool:
    """Atomically write the text lines `lines()` yields, unless `path` already holds exactly them
    (an unchanged report keeps its file and mtime). Neither text is ever held whole: both are
    hashed as streams (a 100k-image report held 3 copies, ~290 MiB at peak). True when written."""
    want = hashlib.sha256()
    size = 0
    for line in lines():
        b = line.encode("utf-8")
        want.update(b)
        size += len(b)
    try:
        if os.stat(path).st_size == size:
            have = hashlib.sha256()
            with open(path, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 16), b""):
                    have.update(chunk)
            if have.digest() == want.digest():
                return False
    except OSError:
        pass
    with atomic_open(path, "wb") as fh:
        buf: list[bytes] = []
        for line in lines():
            buf.append(line.encode("utf-8"))
            if len(buf) >= 512:
                fh.write(b"".join(buf))
                buf.clear()
        fh.write(b"".join(buf))
    return True


def atomic_write_with(path: Path, writer: Callable[[BinaryIO], None]) -> None:
    """Let `writer` stream into a temp file that replaces `path` only when it finished."""
    with atomic_open(path, "wb") as fh:
        writer(fh)


def link_or_copy(src: Path, dst: Path, *, link: bool = True) -> str:
    """Put `src` at `dst` atomically: a hard link where possible (no extra disk), else a copy.

    Returns "hardlink" or "copy". Never moves or modifies `src`. A copy gets the user's umask
    (not the source's mode) and the source's times; a full disk raises `DiskFull` naming `dst`.
    """
    src, dst = Path(src), Path(dst)
    _mkdir(dst.parent, dst)
    sweep_stale_temps(dst.parent)
    if link:
        tmp = dst.parent / temp_name(dst.name)
        try:
            os.link(src, tmp)
        except OSError as exc:
            if is_disk_full(exc):  # a link needs a directory entry; the disk may be full
                raise DiskFull(dst, exc) from exc
        else:
            try:
                os.replace(tmp, dst)
            except BaseException:
                _unlink_quiet(tmp)
                raise
            return "hardlink"
    with open(src, "rb") as fin, atomic_open(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout, _CHUNK)
    try:
        st = os.stat(src)
        os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
    except OSError:
        pass
    return "copy"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"} | {
    f"{p}{i}" for p in ("COM", "LPT") for i in list(range(1, 10)) + ["¹", "²", "³"]
}
_BAD_CHARS = re.compile(r'[<>:"/\\|?*\x00-\x1f\x7f]')


def safe_component(name: str) -> str:
    """Make one path component safe on Windows, macOS and Linux.

    Replaces characters Windows forbids (and control characters such as newlines), strips
    trailing spaces and dots (Windows drops them silently, so two names would collide), and
    prefixes reserved device names (CON, NUL, COM1, ...) even when they carry an extension.
    A name that is not valid UTF-8 (bytes Python keeps as surrogate escapes) keeps its readable
    part and gets the other bytes as `_xNN` (`caf\xe9.png` -> `caf_xe9.png`), so it can be
    written, shown and stored in JSON anywhere.
    """
    out = _BAD_CHARS.sub("_", printable(name)).strip(" ")
    out = out.rstrip(" .")
    if not out or out in {".", ".."}:
        out = "unnamed"
    stem = out.split(".", 1)[0]
    if stem.upper() in _WINDOWS_RESERVED:
        out = "_" + out
    if len(out.encode("utf-8")) > 240:
        base, dot, ext = out.rpartition(".")
        if not dot or len(ext) > 10:
            base, ext = out, ""
        keep = 240 - len(ext.encode()) - 1
        base = base.encode("utf-8")[:keep].decode("utf-8", "ignore")
        out = f"{base}.{ext}" if ext else base
    return out


def safe_relpath(parts: list[str]) -> str:
    return "/".join(safe_component(p) for p in parts)


def unique_path(path: Path, taken: set[str] | None = None) -> Path:
    """`path`, or `stem_2.ext`, `stem_3.ext`, ... the first that neither exists nor is taken.

    `taken` holds lower-cased names already claimed in this run, so two names that differ only
    in case do not collide on case-insensitive filesystems.
    """
    taken = taken if taken is not None else set()
    cand = path
    n = 2
    while cand.exists() or str(cand).lower() in taken:
        cand = path.with_name(f"{path.stem}_{n}{path.suffix}")
        n += 1
    return cand
