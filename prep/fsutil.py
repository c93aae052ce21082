"""Small filesystem helpers: atomic writes, hashing, safe names.

Every file the project writes goes through `atomic_write_*` so an interrupted run never
leaves a half-written caption, image or config behind.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

_CHUNK = 1 << 20


@contextmanager
def atomic_open(path: Path, mode: str = "wb") -> Iterator[BinaryIO]:
    """Open a temp file beside `path`; on success fsync and rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: Path, text: str, encoding: str = "utf-8") -> None:
    atomic_write_bytes(path, text.encode(encoding))


def atomic_write_with(path: Path, writer: Callable[[BinaryIO], None]) -> None:
    """Let `writer` stream into a temp file that replaces `path` only when it finished."""
    with atomic_open(path, "wb") as fh:
        writer(fh)


def link_or_copy(src: Path, dst: Path, *, link: bool = True) -> str:
    """Put `src` at `dst` atomically: a hard link where possible (no extra disk), else a copy.

    Returns "hardlink" or "copy". Never moves or modifies `src`.
    """
    import shutil

    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    if tmp.exists():
        tmp.unlink()
    method = "copy"
    if link:
        try:
            os.link(src, tmp)
            method = "hardlink"
        except OSError:
            pass
    if method == "copy":
        shutil.copy2(src, tmp)
    os.replace(tmp, dst)
    return method


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
    """
    out = _BAD_CHARS.sub("_", name).strip(" ")
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
