"""Discovering a dataset: images and their same-stem `.txt` captions.

`ImageItem` is plain data (never pixels) so it pickles cheaply to worker processes and can
be a row in a distributed engine later.

Discovery never opens a file and never stops at one: a symlink loop, a dangling symlink, a
FIFO or device named like an image, or an image format we cannot read is left out and listed
in `Discovery.skipped` with its name and the reason, which every command reports. The files a
command writes into its own output folder (contact sheets) are recorded there as reports
(`record_report_files`) and only those are left out, so a user's own `contact_sheet.jpg` is a
training image like any other. Captions are read by one rule (`read_caption`).
"""

from __future__ import annotations

import codecs
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prep.images import is_image_path, unsupported_reason
from prep.inputs import NotRegularFile, input_problem, printable, read_input_bytes
from prep.manifest import MANIFEST_NAME, Manifest, Record

CAPTION_EXTENSION = ".txt"
_SKIP_DIRS = {"__MACOSX", ".git", ".loraprep", "__pycache__"}
_SKIP_FILES = {".DS_Store", "Thumbs.db", "desktop.ini"}
REPORT_STEP = "report"
"""Manifest step under which a command records the report files it wrote into its output folder."""
LEGACY_REPORT_IMAGE = re.compile(r"^contact_sheet(?:[_-]\d+)?\.jpe?g$", re.IGNORECASE)
"""Contact sheets of `prep crop` runs from before reports were recorded: reserved only in a
folder that also holds that run's `crops.jsonl`."""
_LEGACY_REPORT_MARK = "crops.jsonl"


class ImageItem:
    """One image of a dataset. `id` is the path relative to the dataset root (posix form).

    `path` is the name as the OS gives it; `id` is `prep.inputs.printable` of the relative path,
    so a name that is not valid UTF-8 is shown and recorded with `\\xNN` escapes.

    Every command holds one per file for the whole run, so it keeps strings, not `Path`s: a
    `Path` costs ~250 bytes and a listing of 100k files held ~70 MiB of them. `path` and
    `caption_path` are made on access; the caption path is stored only when it is not the
    image's own `.txt`, and `flags` only when set.
    """

    __slots__ = ("_caption", "_flags", "_path", "id")

    def __init__(self, id: str, path: Path | str, caption_path: Path | str | None = None, flags: dict[str, Any] | None = None):
        self.id = id
        self._path = os.fspath(path)
        cap = None if caption_path is None else os.fspath(caption_path)
        self._caption = None if cap is None or cap == os.fspath(caption_path_for(Path(self._path))) else cap
        self._flags = flags or None

    @property
    def path(self) -> Path:
        return Path(self._path)

    @property
    def fspath(self) -> str:
        """The path as the string it is kept as (no `Path` made; shared by whoever keeps it)."""
        return self._path

    @path.setter
    def path(self, value: Path | str) -> None:
        cap = self.caption_path
        self._path = os.fspath(value)
        self.caption_path = cap

    @property
    def caption_path(self) -> Path:
        return caption_path_for(Path(self._path)) if self._caption is None else Path(self._caption)

    @caption_path.setter
    def caption_path(self, value: Path | str) -> None:
        cap = os.fspath(value)
        self._caption = None if cap == os.fspath(caption_path_for(Path(self._path))) else cap

    @property
    def flags(self) -> dict[str, Any]:
        if self._flags is None:
            self._flags = {}
        return self._flags

    @flags.setter
    def flags(self, value: dict[str, Any]) -> None:
        self._flags = value or None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ImageItem):
            return NotImplemented
        return (self.id, self._path, self.caption_path, self._flags or {}) == (other.id, other._path, other.caption_path, other._flags or {})

    __hash__ = None  # type: ignore[assignment]  # mutable, like the dataclass it was

    def __repr__(self) -> str:
        return f"ImageItem(id={self.id!r}, path={self.path!r}, caption_path={self.caption_path!r}, flags={self._flags or {}!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (ImageItem, (self.id, self._path, self._caption, self._flags))

    @property
    def has_caption(self) -> bool:
        return self.caption_path.is_file()

    def read_caption(self) -> str | None:
        """The caption text (stripped), or None when there is no caption file."""
        return read_caption(self.caption_path)


@dataclass
class Skipped:
    """A file discovery left out, with the reason and the fix."""

    id: str
    path: Path
    reason: str

    @property
    def message(self) -> str:
        """The file (as shown) and the reason, like every per-item reason of the project."""
        return f"{printable(self.path)}: {self.reason}"

    def to_json(self) -> dict[str, str]:
        return {"file": self.id, "reason": self.reason}


class Discovery(list):  # list[ImageItem]: every caller keeps working on the images
    """The images found (a list, as before) and `skipped`: what was left out, each named with the reason."""

    def __init__(self, items: Iterable[ImageItem] = (), skipped: Iterable[Skipped] = ()):
        super().__init__(items)
        self.skipped: list[Skipped] = list(skipped)


class UnreadableCaption(ValueError):
    """A caption that cannot be read; left untouched. The message names the file, the cause and the fix.

    `encoding` is the guess for a file that is not UTF-8 (None: unknown, or not a decoding problem).
    """

    def __init__(self, path: Path, encoding: str | None = None, *, reason: str | None = None):
        self.path = Path(path)
        self.encoding = encoding
        name = printable(self.path.name)
        if reason is None:
            guess = f"it looks like {encoding}" if encoding else "its encoding is unknown"
            src = encoding.split(" ")[0] if encoding else "ENCODING"
            reason = (
                f"caption is not UTF-8 ({guess}); it was left untouched. Re-save it as UTF-8 "
                f"(e.g. `iconv -f {src} -t UTF-8 '{name}' > fixed.txt` and rename fixed.txt to '{name}'), then run again"
            )
        self.reason = reason
        super().__init__(f"{printable(self.path)}: {reason}")


def guess_encoding(data: bytes) -> str | None:
    """A likely encoding of caption bytes that are not UTF-8 (None when no guess fits).

    Our heuristic: byte-order marks, the NUL pattern of UTF-16, else whether the bytes decode as
    Windows-1252. It names the likely encoding; it does not prove it.
    """
    for bom, name in ((codecs.BOM_UTF32_LE, "UTF-32LE"), (codecs.BOM_UTF32_BE, "UTF-32BE"),
                      (codecs.BOM_UTF16_LE, "UTF-16LE"), (codecs.BOM_UTF16_BE, "UTF-16BE")):
        if data.startswith(bom):
            return f"{name} (byte-order mark)"
    if len(data) >= 4:
        even, odd = data[0::2], data[1::2]
        if odd.count(0) > len(odd) // 2 and even.count(0) < len(even) // 4:
            return "UTF-16LE"
        if even.count(0) > len(even) // 2 and odd.count(0) < len(odd) // 4:
            return "UTF-16BE"
    try:
        data.decode("cp1252")
        return "CP1252 (Windows-1252 / Latin-1)"
    except UnicodeDecodeError:
        return None


def caption_path_for(image_path: Path, ext: str = CAPTION_EXTENSION) -> Path:
    return image_path.with_suffix(ext)


def read_caption(path: Path) -> str | None:
    """The one rule for reading a caption: UTF-8 (BOM tolerated), stripped; None if there is none.

    Raises `UnreadableCaption` (a ValueError) for a file that is not UTF-8 (with its encoding
    guess and the fix) and for a path that is not a regular file (a folder, a FIFO or device,
    which is never opened, a dangling or looping symlink). Every command leaves such a caption
    untouched and reports it.
    """
    path = Path(path)
    if not os.path.lexists(path):
        return None
    try:
        data = read_input_bytes(path, what="caption file")
    except NotRegularFile as exc:
        if not os.path.lexists(path):
            return None  # removed while we looked
        raise UnreadableCaption(path, reason=f"{exc.reason}; it was left untouched") from None
    except OSError as exc:
        raise UnreadableCaption(path, reason=f"cannot read it ({exc.strerror or exc}); it was left untouched") from None
    try:
        return data.decode("utf-8-sig").strip()
    except UnicodeDecodeError:
        raise UnreadableCaption(path, guess_encoding(data)) from None


def record_report_files(folder: Path | str, names: Iterable[str], *, written_by: str) -> None:
    """Record report files (contact sheets, ...) a command wrote into its output `folder`.

    Discovery leaves exactly these out of the folder; a user's file of the same name elsewhere
    is an image like any other.
    """
    folder = Path(folder)
    manifest = Manifest.in_folder(folder)
    known = {rid for rid, status in manifest.statuses(REPORT_STEP).items() if status == "ok"}
    for name in names:
        if name not in known:
            manifest.append(Record(REPORT_STEP, name, "ok", outputs=[name], data={"written_by": written_by}))


def report_files(folder: Path | str) -> set[str]:
    """Names (relative to `folder`) of the report files recorded there; see `record_report_files`."""
    folder = Path(folder)
    names: set[str] = set()
    if (folder / MANIFEST_NAME).is_file():
        names |= {rid for rid, status in Manifest.in_folder(folder).statuses(REPORT_STEP).items() if status == "ok"}
    if (folder / _LEGACY_REPORT_MARK).is_file():
        try:
            names |= {e.name for e in os.scandir(folder) if LEGACY_REPORT_IMAGE.match(e.name)}
        except OSError:
            pass
    return names


def _walk(root: Path, recursive: bool) -> Iterable[Path]:
    """Every non-folder entry (files, symlinks of any kind, FIFOs, devices) under `root`; links to folders are not followed."""
    if not recursive:
        entries = []
        for entry in os.scandir(root):
            try:
                is_dir = entry.is_dir()  # follows a symlink; a loop or dangling link is not a folder
            except OSError:
                is_dir = False
            if not is_dir:
                entries.append(entry)
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.name not in _SKIP_FILES and not entry.name.startswith("._"):
                yield Path(entry.path)
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        for name in sorted(filenames):
            if name in _SKIP_FILES or name.startswith("._"):
                continue
            yield Path(dirpath) / name


def _real(p: Path, folders: dict[Path, Path] | None = None) -> Path:
    """Where `p` is, without following `p` itself (a looping link must not raise). `folders`
    caches each folder's realpath: resolving it per file was 13 % of a 100k-image rerun."""
    if folders is None:
        return Path(os.path.realpath(p.parent)) / p.name
    real = folders.get(p.parent)
    if real is None:
        real = folders[p.parent] = Path(os.path.realpath(p.parent))
    return real / p.name


def discover(root: Path | str, *, recursive: bool = False, exclude: Iterable[Path] = ()) -> Discovery:
    """All images under `root` (sorted by id), each with its caption path; `skipped` names the rest.

    Hidden folders, `__MACOSX` and macOS `._*` resource forks are left out silently, and so are
    the report files recorded in a folder (`record_report_files`). `exclude` lists folders (for
    example an output folder inside the input) to leave out.
    """
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"{printable(root)}: not a folder")
    excluded = [Path(os.path.realpath(e)) for e in exclude]
    found = Discovery()
    reports: dict[Path, set[str]] = {}
    folders: dict[Path, Path] = {}
    for p in _walk(root, recursive):
        supported = is_image_path(p)
        unsupported = None if supported else unsupported_reason(p)
        if not supported and unsupported is None:
            continue
        if excluded and any(_is_within(_real(p, folders), e) for e in excluded):
            continue
        names = reports.get(p.parent)
        if names is None:  # once per folder: it reads that folder's manifest
            names = reports[p.parent] = report_files(p.parent)
        if p.name in names:
            continue
        rel = printable(p.relative_to(root).as_posix())
        problem = unsupported or input_problem(p, what="image file")
        if problem is not None:
            found.skipped.append(Skipped(rel, p, problem))
            continue
        found.append(ImageItem(rel, p))
    found.sort(key=lambda it: it.id)
    found.skipped.sort(key=lambda s: s.id)
    return found


def orphan_captions(root: Path | str, items: list[ImageItem], *, recursive: bool = False) -> list[Path]:
    """Caption files with no image of the same stem."""
    from prep.video import VIDEO_SUFFIXES

    root = Path(root)
    folders: dict[Path, Path] = {}
    have = {_real(it.caption_path, folders) for it in items}
    have |= {_real(caption_path_for(s.path), folders) for s in getattr(items, "skipped", [])}
    files = list(_walk(root, recursive))
    have |= {_real(caption_path_for(p), folders) for p in files if p.suffix.lower() in VIDEO_SUFFIXES}  # a video's caption
    return [
        p
        for p in files
        if p.suffix.lower() == CAPTION_EXTENSION and _real(p, folders) not in have and p.name != "sample_prompts.txt"
    ]


def _is_within(path: Path, folder: Path) -> bool:
    """`path` is `folder` or under it (both absolute and resolved; compared as text, per file)."""
    p, f = str(path), str(folder)
    return p == f or p.startswith(f.rstrip(os.sep) + os.sep)
