"""Discovering a dataset: images and their same-stem `.txt` captions.

`ImageItem` is plain data (never pixels) so it pickles cheaply to worker processes and can
be a row in a distributed engine later.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prep.images import is_image_path

CAPTION_EXTENSION = ".txt"
_SKIP_DIRS = {"__MACOSX", ".git", ".loraprep", "__pycache__"}
_SKIP_FILES = {".DS_Store", "Thumbs.db", "desktop.ini"}
REPORT_IMAGE = re.compile(r"^contact_sheet(?:[_-]\d+)?\.jpe?g$", re.IGNORECASE)
"""Contact sheets loraprep writes into its output folders: reports, never training images."""


@dataclass
class ImageItem:
    """One image of a dataset. `id` is the path relative to the dataset root (posix form)."""

    id: str
    path: Path
    caption_path: Path
    flags: dict[str, Any] = field(default_factory=dict)

    @property
    def has_caption(self) -> bool:
        return self.caption_path.is_file()

    def read_caption(self) -> str | None:
        """The caption text (stripped), or None when there is no caption file."""
        return read_caption(self.caption_path)


def caption_path_for(image_path: Path, ext: str = CAPTION_EXTENSION) -> Path:
    return image_path.with_suffix(ext)


def read_caption(path: Path) -> str | None:
    """Read a caption as UTF-8 (BOM tolerated); None if missing. Raises ValueError if undecodable."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        return data.decode("utf-8-sig").strip()
    except UnicodeDecodeError:
        raise ValueError(f"{path}: caption is not UTF-8 text; re-save it as UTF-8") from None


def _walk(root: Path, recursive: bool) -> Iterable[Path]:
    if not recursive:
        for entry in sorted(os.scandir(root), key=lambda e: e.name):
            if entry.is_file() and entry.name not in _SKIP_FILES and not entry.name.startswith("._"):
                yield Path(entry.path)
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        for name in sorted(filenames):
            if name in _SKIP_FILES or name.startswith("._"):
                continue
            yield Path(dirpath) / name


def discover(root: Path | str, *, recursive: bool = False, exclude: Iterable[Path] = ()) -> list[ImageItem]:
    """All images under `root` (sorted by id), each with its caption path.

    Hidden folders, `__MACOSX` and macOS `._*` resource forks are skipped. `exclude` lists
    folders (for example an output folder inside the input) to leave out.
    """
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: not a folder")
    excluded = [Path(e).resolve() for e in exclude]
    items: list[ImageItem] = []
    for p in _walk(root, recursive):
        if not is_image_path(p) or REPORT_IMAGE.match(p.name):
            continue
        if excluded and any(_is_within(p.resolve(), e) for e in excluded):
            continue
        rel = p.relative_to(root).as_posix()
        items.append(ImageItem(id=rel, path=p, caption_path=caption_path_for(p)))
    items.sort(key=lambda it: it.id)
    return items


def orphan_captions(root: Path | str, items: list[ImageItem], *, recursive: bool = False) -> list[Path]:
    """Caption files with no image of the same stem."""
    root = Path(root)
    have = {it.caption_path.resolve() for it in items}
    return [
        p
        for p in _walk(root, recursive)
        if p.suffix.lower() == CAPTION_EXTENSION and p.resolve() not in have and p.name != "sample_prompts.txt"
    ]


def _is_within(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False
