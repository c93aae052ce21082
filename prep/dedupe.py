"""Near-duplicate detection by perceptual hash, mirror-aware.

64-bit DCT pHash (32x32 greyscale, low 8x8 frequencies against their median). Training with
`flip_aug` makes an image and its mirror the same sample, so each image is also hashed
mirrored and the smaller distance counts. Threshold 8 of 64 bits by default: resizes and
re-encodes land at 0-2, a 90% crop near 10, different photos near 28-32.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from prep.dataset import ImageItem, discover
from prep.executor import Result, run_step
from prep.fsutil import unique_path
from prep.images import ImageLoadError, load_image

DEFAULT_THRESHOLD = 8
HASH_DRAFT = (64, 64)


def phash_pair(image: Image.Image) -> tuple[int, int]:
    """(hash, hash of the mirrored image) as 64-bit ints."""
    g = np.asarray(image.convert("L").resize((32, 32), Image.Resampling.BOX), dtype=np.float32)
    out = []
    for arr in (g, g[:, ::-1]):
        d = cv2.dct(np.ascontiguousarray(arr))[:8, :8].flatten()
        bits = d > np.median(d)
        out.append(int(np.packbits(bits).view(">u8")[0]))
    return out[0], out[1]


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


@dataclass
class HashedImage:
    id: str
    path: Path
    size: tuple[int, int]
    file_size: int
    hash: int
    mirror: int


@dataclass
class DuplicateGroup:
    keep: str
    others: list[str]
    distances: dict[str, int] = field(default_factory=dict)
    mirrored: list[str] = field(default_factory=list)
    """Members that matched only as mirror images."""

    def to_json(self) -> dict[str, Any]:
        return {"keep": self.keep, "others": self.others, "distances": self.distances, "mirrored": self.mirrored}


class HashStep:
    """Executor step: hash each image from a small draft decode."""

    def __call__(self, batch: list[ImageItem]) -> list[Result]:
        out = []
        for it in batch:
            try:
                li = load_image(it.path, draft_size=HASH_DRAFT)
            except ImageLoadError as exc:
                out.append(Result(it.id, "failed", str(it.path), reason=str(exc)))
                continue
            h, m = phash_pair(li.image)
            out.append(
                Result(it.id, "ok", str(it.path), data={"hash": h, "mirror": m, "size": list(li.size), "file_size": it.path.stat().st_size})
            )
        return out


def group_duplicates(hashed: Sequence[HashedImage], threshold: int = DEFAULT_THRESHOLD, *, mirror: bool = True) -> list[DuplicateGroup]:
    """Connected components of images within `threshold` bits; keep the largest in each."""
    n = len(hashed)
    if n < 2:
        return []
    h = np.array([x.hash for x in hashed], dtype=np.uint64)
    hm = np.array([x.mirror for x in hashed], dtype=np.uint64)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    dist_direct: dict[tuple[int, int], int] = {}
    mirror_only: set[tuple[int, int]] = set()
    block = 2048
    for s in range(0, n, block):
        rows = h[s : s + block, None]
        d = np.bitwise_count(rows ^ h[None, :]).astype(np.int16)
        if mirror:
            dm = np.bitwise_count(rows ^ hm[None, :]).astype(np.int16)
            best = np.minimum(d, dm)
        else:
            dm, best = d, d
        ii, jj = np.nonzero(best <= threshold)
        for a, b in zip(ii.tolist(), jj.tolist()):
            i = s + a
            if b <= i:
                continue
            dist_direct[(i, b)] = int(best[a, b])
            if mirror and dm[a, b] < d[a, b] and d[a, b] > threshold:
                mirror_only.add((i, b))
            ri, rb = find(i), find(b)
            if ri != rb:
                parent[rb] = ri
    comps: dict[int, list[int]] = {}
    for i in range(n):
        comps.setdefault(find(i), []).append(i)
    groups = []
    for members in comps.values():
        if len(members) < 2:
            continue
        keep = max(members, key=lambda i: (hashed[i].size[0] * hashed[i].size[1], hashed[i].file_size, -i))
        others = sorted((i for i in members if i != keep), key=lambda i: hashed[i].id)
        dist = {}
        mirrored = []
        for o in others:
            key = (min(keep, o), max(keep, o))
            if key in dist_direct:
                dist[hashed[o].id] = dist_direct[key]
            else:
                dist[hashed[o].id] = min(hamming(hashed[keep].hash, hashed[o].hash), hamming(hashed[keep].hash, hashed[o].mirror))
            if key in mirror_only:
                mirrored.append(hashed[o].id)
        groups.append(DuplicateGroup(hashed[keep].id, [hashed[o].id for o in others], dist, mirrored))
    groups.sort(key=lambda g: g.keep)
    return groups


def hash_items(items: Iterable[ImageItem], *, workers: int | None = None, progress: Any = None) -> tuple[list[HashedImage], list[Result]]:
    """Hash items; returns (hashed, failures)."""
    items = list(items)
    results = run_step(HashStep(), items, workers=workers, batch_size=8, progress=progress, description="hashing")
    by_id = {it.id: it for it in items}
    hashed, failed = [], []
    for r in results:
        if r.status != "ok":
            failed.append(r)
            continue
        d = r.data
        hashed.append(HashedImage(r.id, by_id[r.id].path, tuple(d["size"]), d["file_size"], d["hash"], d["mirror"]))  # type: ignore[arg-type]
    return hashed, failed


@dataclass
class DedupeReport:
    folder: str
    groups: list[DuplicateGroup]
    failed: list[Result]
    moved: list[tuple[str, str]] = field(default_factory=list)
    threshold: int = DEFAULT_THRESHOLD
    images: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "folder": self.folder,
            "images": self.images,
            "threshold": self.threshold,
            "groups": [g.to_json() for g in self.groups],
            "duplicates": sum(len(g.others) for g in self.groups),
            "moved": [{"from": a, "to": b} for a, b in self.moved],
            "errors": [{"file": r.source, "reason": r.reason} for r in self.failed],
        }


def dedupe_folder(
    folder: Path | str,
    *,
    threshold: int = DEFAULT_THRESHOLD,
    mirror: bool = True,
    move_to: Path | str | None = None,
    recursive: bool = False,
    workers: int | None = None,
    dry_run: bool = False,
    progress: Any = None,
) -> DedupeReport:
    """Find duplicate groups; with `move_to`, move all but the kept image (and captions) there.

    Never deletes. Moves keep the relative path and never overwrite (a free name is chosen).
    """
    folder = Path(folder)
    exclude = [Path(move_to)] if move_to else []
    items = discover(folder, recursive=recursive, exclude=exclude)
    hashed, failed = hash_items(items, workers=workers, progress=progress)
    groups = group_duplicates(hashed, threshold, mirror=mirror)
    report = DedupeReport(str(folder), groups, failed, threshold=threshold, images=len(items))
    if move_to is None:
        return report
    dest_root = Path(move_to)
    by_id = {it.id: it for it in items}
    for g in groups:
        for oid in g.others:
            it = by_id[oid]
            for src in (it.path, it.caption_path):
                if not src.exists():
                    continue
                dst = unique_path(dest_root / src.relative_to(folder))
                report.moved.append((str(src), str(dst)))
                if not dry_run:
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.move(str(src), str(dst))
    return report
