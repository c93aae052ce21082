"""What a user's input path really is, decided before anything opens it.

A folder of images a user brings can hold anything a filesystem can: symlink loops, dangling
symlinks, links to devices, FIFOs named `x.jpg` (opening one for reading waits forever for a
writer), folders named `x.txt`, and names that are not valid UTF-8. Every reader of user files
(discovery, the image loader, caption reading) asks here first: `input_problem` looks with
`os.stat` only, and `open_input` opens without blocking and re-checks the opened file, so a
file swapped for a FIFO between the two cannot hang a batch either.

Names are handled as the OS gives them (Python keeps undecodable bytes as surrogate escapes,
which round-trip to the same bytes); `printable` is the one way they are shown and stored in
reports: those bytes become `\\xNN`.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO

_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


class NotRegularFile(OSError):
    """A user's path that is not a regular file we can read; `reason` says what it is and the fix."""

    def __init__(self, path: Path | str, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{printable(path)}: {reason}")


def printable(name: str | os.PathLike[str]) -> str:
    """`name` as text that prints and encodes as UTF-8: bytes that are not UTF-8 shown as `\\xNN`.

    Valid names come back unchanged, so this is safe to apply to every name that is shown.
    """
    s = os.fspath(name)
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        pass
    try:
        raw = s.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that is not an escaped byte
        return s.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def _kind(mode: int) -> str:
    for test, name in _KINDS:
        if test(mode):
            return name
    return "a special file"


def input_problem(path: Path | str, *, what: str = "file") -> str | None:
    """Why `path` cannot be read as a user's regular file, or None when it can. Never opens it."""
    try:
        st = os.stat(path)
    except OSError as exc:
        link = os.path.islink(path)
        if exc.errno == errno.ELOOP:
            return "symlink loop (the link points back at itself): fix the link or remove it"
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            if link:
                try:
                    target = printable(os.readlink(path))
                except OSError:
                    target = "?"
                return f"dangling symlink (its target {target} does not exist): fix the link or remove it"
            return f"{what} not found (moved or deleted during the run)"
        if exc.errno == errno.ENAMETOOLONG:
            return "the path is too long for this filesystem: shorten the name or the folders above it"
        if exc.errno in (errno.EACCES, errno.EPERM):
            return f"permission denied: make the {what} readable"
        return f"cannot read it ({exc.strerror or type(exc).__name__}): check the {what}"
    if stat.S_ISREG(st.st_mode):
        return None
    via = " through a symlink" if os.path.islink(path) else ""
    fix = "rename the folder" if stat.S_ISDIR(st.st_mode) else "remove it or put the real file there"
    return f"not a regular {what} but {_kind(st.st_mode)}{via}; it was not opened: {fix}"


def open_input(path: Path | str, *, what: str = "file") -> BinaryIO:
    """Open a user's regular file for reading; raises NotRegularFile (never blocks, never opens a device)."""
    problem = input_problem(path, what=what)
    if problem is not None:
        raise NotRegularFile(path, problem)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise NotRegularFile(path, input_problem(path, what=what) or f"cannot open it ({exc.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # swapped between the stat and the open
            raise NotRegularFile(path, f"not a regular {what} but {_kind(st.st_mode)}; remove it or put the real file there")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_input_bytes(path: Path | str, *, what: str = "file") -> bytes:
    """All bytes of a user's regular file (NotRegularFile for anything else)."""
    with open_input(path, what=what) as fh:
        return fh.read()
