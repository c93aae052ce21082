"""Hand edits that outlast reruns: the studio's durable layer, applied by `loraprep run`.

A project's generated folders (02_cropped, 03_captions, 04_captioned, dataset) are rewritten
whenever a stage reruns, so an edit made there would be lost. The studio therefore records
every hand edit in one file, `PROJECT/overrides.json`, and the stages apply it:

- `captions`: the caption text of an image, keyed by its id in 04_captioned (the crop's name,
  which is stable across reruns). The merge stage writes it over the merged caption
  (`apply_captions`), so it wins over both the user's and the generated caption.
- `rejected`: source images (ids in 01_raw) the user set aside. The studio moves the image and
  its caption into `PROJECT/rejected/` (never deletes); `apply_rejects` moves them aside again
  if a re-import brought them back, so a rejected image never reaches the dataset.
- `crops`: a crop box on the source image (source pixels), keyed by the 01_raw id; `prep crop`
  uses it instead of the detected face (`crop_override`), snapped to the trainer's buckets
  (`snap_box`).

The file is read-modify-written under a lock and replaced atomically (`prep.fsutil`), so two
studio tabs or two processes never leave it half-written; the last write of a caption wins and
the writer is told what it replaced. This module imports only from `prep`.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prep.buckets import BucketSpec
from prep.framing import CropPlan
from prep.fsutil import atomic_write_text

OVERRIDES_FILE = "overrides.json"
REJECTED_DIR = "rejected"
VERSION = 1
_LOCK = threading.Lock()


class OverridesError(ValueError):
    """overrides.json cannot be read; the message names the file and the fix."""


@dataclass
class Overrides:
    """The parsed file (plain data). Load with `load_overrides`, change with the `edit_*` functions."""

    path: Path
    captions: dict[str, dict[str, Any]] = field(default_factory=dict)
    rejected: dict[str, dict[str, Any]] = field(default_factory=dict)
    crops: dict[str, dict[str, Any]] = field(default_factory=dict)

    def caption(self, item_id: str) -> str | None:
        rec = self.captions.get(item_id)
        return None if rec is None else str(rec["text"])

    def crop(self, source_id: str) -> list[float] | None:
        rec = self.crops.get(source_id)
        return None if rec is None else [float(v) for v in rec["box"]]

    def to_json(self) -> dict[str, Any]:
        return {"version": VERSION, "captions": self.captions, "rejected": self.rejected, "crops": self.crops}


def overrides_path(project_root: Path | str) -> Path:
    return Path(project_root) / OVERRIDES_FILE


def load_overrides(project_root: Path | str) -> Overrides:
    """The project's overrides (empty when there is no file)."""
    path = overrides_path(project_root)
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Overrides(path)
    except UnicodeDecodeError:
        raise OverridesError(f"{path}: not UTF-8 text; restore it from a backup or delete it to drop the hand edits") from None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise OverridesError(f"{path}: not valid JSON ({exc}); fix it or delete it to drop the hand edits") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k, {}), dict) for k in ("captions", "rejected", "crops")):
        raise OverridesError(f"{path}: expected an object with 'captions', 'rejected' and 'crops' tables")
    return Overrides(path, dict(data.get("captions", {})), dict(data.get("rejected", {})), dict(data.get("crops", {})))


def _save(ov: Overrides) -> None:
    atomic_write_text(ov.path, json.dumps(ov.to_json(), indent=1, sort_keys=True, ensure_ascii=False) + "\n")


@contextmanager
def editing(project_root: Path | str) -> Iterator[Overrides]:
    """Load, let the caller change, save atomically; serialised across threads and processes."""
    path = overrides_path(project_root)
    with _LOCK, _file_lock(path.with_name(f".{path.name}.lock")):
        ov = load_overrides(project_root)
        yield ov
        _save(ov)


@contextmanager
def _file_lock(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover - Windows: the in-process lock only
            pass
        yield
    finally:
        os.close(fd)


def set_caption(project_root: Path | str, item_id: str, text: str | None) -> str | None:
    """Record `text` as the caption of `item_id` (None: drop the hand edit). Returns the previous text."""
    return set_captions(project_root, {item_id: text})[item_id]


def set_captions(project_root: Path | str, texts: dict[str, str | None]) -> dict[str, str | None]:
    """Record many captions in one write (a batch edit of thousands stays one file replace)."""
    before: dict[str, str | None] = {}
    now = round(time.time(), 3)
    with editing(project_root) as ov:
        for item_id, text in texts.items():
            before[item_id] = ov.caption(item_id)
            if text is None:
                ov.captions.pop(item_id, None)
            else:
                ov.captions[item_id] = {"text": text, "at": now}
    return before


def set_crop(project_root: Path | str, source_id: str, box: list[float] | None, bucket: list[int] | None = None) -> None:
    """Record (or with None, drop) a crop box in source pixels for `source_id`."""
    with editing(project_root) as ov:
        if box is None:
            ov.crops.pop(source_id, None)
        else:
            rec: dict[str, Any] = {"box": [round(float(v), 1) for v in box], "at": round(time.time(), 3)}
            if bucket:
                rec["bucket"] = [int(bucket[0]), int(bucket[1])]
            ov.crops[source_id] = rec


# -- moving images aside ---------------------------------------------------------------------


def _companions(image: Path) -> list[Path]:
    """The image and its same-stem caption, where present."""
    return [p for p in (image, image.with_suffix(".txt")) if p.exists()]


def move_aside(folder: Path, item_id: str, aside: Path) -> list[str]:
    """Move `folder/item_id` and its caption into `aside/` (same relative names); never deletes.

    An existing file of the same name in `aside/` is kept: the newcomer gets a numbered name.
    Returns the names written under `aside`.
    """
    src = folder / item_id
    moved = []
    for p in _companions(src):
        rel = p.relative_to(folder)
        dst = aside / rel
        n = 2
        while dst.exists():
            dst = aside / rel.with_name(f"{rel.stem}~{n}{rel.suffix}")
            n += 1
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(p), str(dst))
        moved.append(dst.relative_to(aside).as_posix())
    return moved


def move_back(folder: Path, item_id: str, aside: Path) -> list[str]:
    """Undo `move_aside`: bring `aside/item_id` and its caption back unless the place is taken."""
    src = aside / item_id
    moved = []
    for p in _companions(src):
        dst = folder / p.relative_to(aside)
        if dst.exists():
            raise FileExistsError(f"{dst}: already exists; move it away before restoring {p}")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(p), str(dst))
        moved.append(dst.relative_to(folder).as_posix())
    return moved


def reject(project_root: Path | str, source_folder: Path, source_id: str, *, reason: str = "") -> list[str]:
    """Set `source_id` (an image in `source_folder`) aside into PROJECT/rejected and record it."""
    root = Path(project_root)
    moved = move_aside(source_folder, source_id, root / REJECTED_DIR)
    with editing(root) as ov:
        ov.rejected[source_id] = {"at": round(time.time(), 3), "reason": reason, "files": moved}
    return moved


def restore(project_root: Path | str, source_folder: Path, source_id: str) -> list[str]:
    """Bring a rejected image back into `source_folder` and forget the reject."""
    root = Path(project_root)
    moved = move_back(source_folder, source_id, root / REJECTED_DIR)
    with editing(root) as ov:
        ov.rejected.pop(source_id, None)
    return moved


# -- what the stages call ------------------------------------------------------------------------


def apply_rejects(project_root: Path | str, source_folder: Path) -> list[str]:
    """Move rejected images that are back in `source_folder` (a re-import) aside again.

    Called after the import stage, so a rejected image never reaches crop, caption or the dataset.
    """
    root = Path(project_root)
    ov = load_overrides(root)
    out = []
    for sid in sorted(ov.rejected):
        if (source_folder / sid).exists():
            aside = root / REJECTED_DIR
            if (aside / sid).exists():  # the copy set aside is already there: drop the re-imported one
                for p in _companions(source_folder / sid):
                    move_aside(source_folder, p.relative_to(source_folder).as_posix(), root / REJECTED_DIR / ".reimported")
            else:
                move_aside(source_folder, sid, aside)
            out.append(sid)
    return out


def apply_captions(project_root: Path | str, folder: Path) -> list[str]:
    """Write every hand-edited caption whose image is in `folder` over the caption there.

    Called by the merge stage after it wrote 04_captioned. Returns the ids it wrote.
    """
    ov = load_overrides(project_root)
    out = []
    for item_id, rec in sorted(ov.captions.items()):
        image = folder / item_id
        if not image.is_file():
            continue
        cap = image.with_suffix(".txt")
        text = str(rec["text"]).strip() + "\n"
        try:
            if cap.read_text(encoding="utf-8") == text:
                continue
        except (FileNotFoundError, UnicodeDecodeError):
            pass
        atomic_write_text(cap, text)
        out.append(item_id)
    return out


def snap_box(box: list[float] | tuple[float, ...], size: tuple[int, int], buckets: list[tuple[int, int]]) -> tuple[list[float], tuple[int, int]]:
    """The box grown to the aspect ratio of its nearest bucket, kept inside the image.

    `buckets` is the trainer's bucket list (`prep.buckets.BucketSpec.buckets`). The box keeps
    its centre and grows (never shrinks) on one side to reach the bucket's aspect; where that
    would leave the image it is shifted back, and if it cannot fit it shrinks to the image.
    """
    w_img, h_img = size
    x0, y0, x1, y1 = (float(v) for v in box)
    x0, x1 = sorted((max(0.0, min(w_img, x0)), max(0.0, min(w_img, x1))))
    y0, y1 = sorted((max(0.0, min(h_img, y0)), max(0.0, min(h_img, y1))))
    bw, bh = max(1.0, x1 - x0), max(1.0, y1 - y0)
    ar = bw / bh
    bucket = min(buckets, key=lambda b: abs(b[0] / b[1] - ar))
    target = bucket[0] / bucket[1]
    if target > ar:
        bw = bh * target
    else:
        bh = bw / target
    if bw > w_img:
        bw, bh = w_img, w_img / target
    if bh > h_img:
        bh, bw = h_img, h_img * target
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    nx0 = min(max(0.0, cx - bw / 2), w_img - bw)
    ny0 = min(max(0.0, cy - bh / 2), h_img - bh)
    return [round(nx0, 1), round(ny0, 1), round(nx0 + bw, 1), round(ny0 + bh, 1)], (int(bucket[0]), int(bucket[1]))


def crop_override(project_root: Path | str | None, source_id: str) -> list[float] | None:
    """The hand-drawn crop box of `source_id`, or None (also outside a project)."""
    if project_root is None:
        return None
    return load_overrides(project_root).crop(source_id)


def override_plan(box: list[float], size: tuple[int, int], spec: BucketSpec) -> CropPlan:
    """The crop `prep crop` writes for a hand-drawn box: snapped to `spec`'s nearest bucket."""
    snapped, bucket = snap_box(box, size, spec.buckets)
    x0, y0, x1, y1 = (round(v) for v in snapped)
    return CropPlan((x0, y0, max(x0 + 1, x1), max(y0 + 1, y1)), bucket, None, False)
