"""Near-duplicate detection by perceptual hash, mirror-aware, verified on pixels.

64-bit DCT pHash (32x32 greyscale, low 8x8 frequencies against their median). Training with
`flip_aug` makes an image and its mirror the same sample, so each image is also hashed
mirrored and the smaller distance counts. Threshold 8 of 64 bits by default: resizes and
re-encodes land at 0-2, a 90% crop near 10, different photos near 28-32.

Candidates then pass a finer 256-bit pHash (64x64, low 16x16 frequencies, also mirrored)
computed in the same decode: copies stay within 10 bits there, while overlapping crops of
one photo (which the 64-bit hash confuses) land at 22 or more. Threshold 16.

A hash sees only the coarse layout, so two sprites of one character that differ only in
facial expression hash identically (distance 0) although they are exactly the variety a
character LoRA needs. Each candidate pair is therefore verified: both images at the smaller
one's resolution (at most 512 px), and the largest blob-shaped difference that survives a
morphological opening (5 px, 3 px below 400 px) must stay under `PIXEL_THRESHOLD`. Measured on
scikit-image photos and the shared anime sprites: resized and re-encoded copies score 5-21
(a 300x200 JPEG q50 copy the worst), expression changes 30-124. Every member of a group is
verified against the kept image itself, never only through another member.

Which copy is kept (`keep_rank`), in this order: a file whose name does not mark it as derived
(`flip`, `flipped`, `mirror`, `mirrored`, `hflip`, `copy`, a trailing ` (2)`) over one that
does, so the original beats its mirror when the names say which is which (the pixels cannot:
each is the other's mirror); then a captioned image over an uncaptioned one; then more pixels,
then the larger file, then the name. Each group is anchored on its best-ranked image, so the
images that matched it only mirrored are its mirrors (`mirrored`). When the kept image has no
caption but a duplicate being moved has one, the caption is copied beside the kept image
(the duplicate keeps its own copy in the move-to folder): a user's caption is never lost.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np
from PIL import Image
from pydantic import Field

from prep.dataset import ImageItem, Skipped, discover
from prep.executor import EngineOptions, Progress, Result, run_step
from prep.fsutil import atomic_write_bytes, unique_path
from prep.images import ImageLoadError, load_image
from prep.options import StageOptions

DEFAULT_THRESHOLD = 8
FINE_THRESHOLD = 16
HASH_DRAFT = (64, 64)
PIXEL_THRESHOLD = 26.0
VERIFY_SIDE = 512


def phash_pair(image: Image.Image) -> tuple[int, int]:
    """(hash, hash of the mirrored image) as 64-bit ints."""
    g = np.asarray(image.convert("L").resize((32, 32), Image.Resampling.BOX), dtype=np.float32)
    out = []
    for arr in (g, g[:, ::-1]):
        d = cv2.dct(np.ascontiguousarray(arr))[:8, :8].flatten()
        bits = d > np.median(d)
        out.append(int(np.packbits(bits).view(">u8")[0]))
    return out[0], out[1]


def fine_pair(image: Image.Image) -> tuple[int, int]:
    """(256-bit hash, of the mirrored image) from a 64x64 DCT, as ints."""
    g = np.asarray(image.convert("L").resize((64, 64), Image.Resampling.BOX), dtype=np.float32)
    out = []
    for arr in (g, g[:, ::-1]):
        d = cv2.dct(np.ascontiguousarray(arr))[:16, :16].flatten()
        out.append(int.from_bytes(np.packbits(d > np.median(d)).tobytes(), "big"))
    return out[0], out[1]


def image_hashes(image: Image.Image) -> dict[str, int]:
    """Every hash dedupe uses, from one decoded image."""
    h, m = phash_pair(image)
    f, fm = fine_pair(image)
    return {"hash": h, "mirror": m, "fine": f, "fine_mirror": fm}


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


_DERIVED = re.compile(r"(?:^|[^a-z])(?:h?flip(?:ped)?|mirror(?:ed)?|copy)(?:[^a-z]|$)|\(\d+\)$")


def is_derived_name(path: Path | str) -> bool:
    """True when the file name marks a made copy: `x_flipped.png`, `mirror.jpg`, `x copy.png`, `x (2).jpg`."""
    return bool(_DERIVED.search(Path(path).stem.lower().strip()))


@dataclass(slots=True)  # one per image: no __dict__ each (100k-image runs)
class HashedImage:
    id: str
    path: Path
    size: tuple[int, int]
    file_size: int
    hash: int
    mirror: int
    fine: int | None = None
    fine_mirror: int | None = None
    captioned: bool = False


def keep_rank(h: HashedImage) -> tuple[Any, ...]:
    """Sort key of the copy to keep, best first (see the module docstring)."""
    return (is_derived_name(h.path), not h.captioned, -h.size[0] * h.size[1], -h.file_size, h.id)


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
            out.append(Result(it.id, "ok", str(it.path), data={**image_hashes(li.image), "size": list(li.size), "file_size": it.path.stat().st_size}))
        return out


class PixelVerifier:
    """Confirms a hash match by comparing the two images' pixels (see module docstring)."""

    def __init__(self, threshold: float = PIXEL_THRESHOLD, side: int = VERIFY_SIDE):
        self.threshold = threshold
        self.side = side
        self._cache: dict[Path, Image.Image] = {}

    def _gray(self, path: Path) -> Image.Image:
        if path not in self._cache:
            if len(self._cache) > 256:
                self._cache.clear()
            self._cache[path] = load_image(path, draft_size=(self.side, self.side)).image.convert("L")
        return self._cache[path]

    def difference(self, a: HashedImage, b: HashedImage, mirrored: bool = False) -> float:
        ga, gb = self._gray(a.path), self._gray(b.path)
        w, h = min(ga.width, gb.width), min(ga.height, gb.height)
        s = min(1.0, self.side / max(w, h))
        w, h = max(8, int(w * s)), max(8, int(h * s))
        xa = np.asarray(ga.resize((w, h), Image.Resampling.BOX), np.float32)
        xb = np.asarray(gb.resize((w, h), Image.Resampling.BOX), np.float32)
        if mirrored:
            xb = xb[:, ::-1]
        d = cv2.blur(np.abs(xa - xb), (3, 3))
        k = 5 if min(w, h) >= 400 else 3
        return float(cv2.morphologyEx(d, cv2.MORPH_OPEN, np.ones((k, k), np.uint8)).max())

    def __call__(self, a: HashedImage, b: HashedImage, mirrored: bool) -> bool:
        try:
            return self.difference(a, b, mirrored) < self.threshold
        except ImageLoadError:
            return False


def group_duplicates(
    hashed: Sequence[HashedImage],
    threshold: int = DEFAULT_THRESHOLD,
    *,
    mirror: bool = True,
    verify: Callable[[HashedImage, HashedImage, bool], bool] | None = None,
) -> list[DuplicateGroup]:
    """Groups of images within `threshold` bits of the group's kept image.

    Greedy, best `keep_rank` first (an underived name, a caption, more pixels): each image not
    yet grouped keeps the hash matches that are still free, so every member was compared with
    the kept image itself. `verify(a, b, mirrored)` may reject a hash match (e.g. `PixelVerifier()`).
    """
    n = len(hashed)
    if n < 2:
        return []
    h = np.array([x.hash for x in hashed], dtype=np.uint64)
    hm = np.array([x.mirror for x in hashed], dtype=np.uint64)
    order = sorted(range(n), key=lambda i: keep_rank(hashed[i]))
    taken = np.zeros(n, dtype=bool)
    groups = []
    for keep in order:
        if taken[keep]:
            continue
        taken[keep] = True
        d = np.bitwise_count(h[keep] ^ h).astype(np.int16)
        dm = np.bitwise_count(h[keep] ^ hm).astype(np.int16) if mirror else d
        best = np.minimum(d, dm)
        cands = [int(j) for j in np.nonzero((best <= threshold) & ~taken)[0]]
        others, dist, mirrored = [], {}, []
        for j in sorted(cands, key=lambda j: (int(best[j]), hashed[j].id)):
            is_mirror = bool(mirror and dm[j] < d[j] and d[j] > threshold)
            if not _fine_match(hashed[keep], hashed[j], is_mirror):
                continue
            if verify is not None and not verify(hashed[keep], hashed[j], is_mirror):
                continue
            taken[j] = True
            others.append(hashed[j].id)
            dist[hashed[j].id] = int(best[j])
            if is_mirror:
                mirrored.append(hashed[j].id)
        if others:
            groups.append(DuplicateGroup(hashed[keep].id, sorted(others), dist, sorted(mirrored)))
    groups.sort(key=lambda g: g.keep)
    return groups


def _fine_match(a: HashedImage, b: HashedImage, mirrored: bool) -> bool:
    """Second-tier filter on the 256-bit hashes (skipped where they were not computed)."""
    if a.fine is None or b.fine is None or b.fine_mirror is None:
        return True
    return hamming(a.fine, b.fine_mirror if mirrored else b.fine) <= FINE_THRESHOLD


def hash_items(items: Iterable[ImageItem], *, workers: int | None = None, progress: Any = None, engine: EngineOptions | None = None) -> tuple[list[HashedImage], list[Result]]:
    """Hash items (in parallel, on the engine asked for); returns (hashed, failures). Grouping
    needs the whole set, so it runs after, in the caller's process (phase two)."""
    items = list(items)
    results = run_step(HashStep(), items, workers=workers, batch_size=8, progress=progress, description="hashing", options=engine)
    by_id = {it.id: it for it in items}
    hashed, failed = [], []
    for r in results:
        if r.status != "ok":
            failed.append(r)
            continue
        d = r.data
        it = by_id[r.id]
        hashed.append(HashedImage(r.id, it.path, tuple(d["size"]), d["file_size"], d["hash"], d["mirror"], d["fine"], d["fine_mirror"], it.has_caption))  # type: ignore[arg-type]
    return hashed, failed


class DedupeOptions(EngineOptions):
    """Options of `prep dedupe` and `[dedupe]` of loraprep.toml (declared once, here)."""

    threshold: int = Field(DEFAULT_THRESHOLD, ge=0, le=64, description="Max differing bits of 64 to count as duplicate.")
    mirror: bool = Field(True, description="Treat mirror images as duplicates (training with flip_aug makes them the same sample).")
    verify: bool = Field(True, description="Confirm hash matches on pixels (--no-verify: the hash alone; faster, but groups images that differ only in small details such as expressions).")
    recursive: bool = Field(False, description="Include subfolders.", json_schema_extra={"cli": ("--recursive", "-r")})
    move_to: str | None = Field(None, description="Move all but the kept image of each group (with captions) here; nothing is ever deleted.")
    workers: int | None = Field(None, ge=1, description="Parallel workers (default: all cores).", json_schema_extra={"cli": ("--workers", "-j")})
    dry_run: bool = Field(False, description="Report moves without moving.")


@dataclass
class DedupeReport:
    folder: str
    groups: list[DuplicateGroup]
    failed: list[Result]
    moved: list[tuple[str, str]] = field(default_factory=list)
    threshold: int = DEFAULT_THRESHOLD
    images: int = 0
    captions_copied: list[tuple[str, str]] = field(default_factory=list)
    """(duplicate's caption, kept image's new caption) where the kept image had none."""
    skipped: list[Skipped] = field(default_factory=list)
    """What discovery left out (symlink loops, FIFOs, formats Pillow cannot read), each with the reason: never hashed."""

    @property
    def n_failed(self) -> int:
        return len(self.failed) + len(self.skipped)

    def to_json(self) -> dict[str, Any]:
        return {
            "folder": self.folder,
            "images": self.images,
            "threshold": self.threshold,
            "groups": [g.to_json() for g in self.groups],
            "duplicates": sum(len(g.others) for g in self.groups),
            "moved": [{"from": a, "to": b} for a, b in self.moved],
            "captions_copied": [{"from": a, "to": b} for a, b in self.captions_copied],
            "errors": [{"file": r.source, "reason": r.reason} for r in self.failed],
            "skipped": [sk.to_json() for sk in self.skipped],
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
    verify: bool = True,
    engine: EngineOptions | None = None,
) -> DedupeReport:
    """Find duplicate groups; with `move_to`, move all but the kept image (and captions) there.

    Never deletes. Moves keep the relative path and never overwrite (a free name is chosen).
    A caption that only a moved duplicate has is first copied beside the kept image.
    """
    folder = Path(folder)
    exclude = [Path(move_to)] if move_to else []
    items = discover(folder, recursive=recursive, exclude=exclude)
    hashed, failed = hash_items(items, workers=workers, progress=progress, engine=engine)
    groups = group_duplicates(hashed, threshold, mirror=mirror, verify=PixelVerifier() if verify else None)
    report = DedupeReport(str(folder), groups, failed, threshold=threshold, images=len(items), skipped=list(getattr(items, "skipped", [])))
    if move_to is None:
        return report
    dest_root = Path(move_to)
    by_id = {it.id: it for it in items}
    rank = {h.id: keep_rank(h) for h in hashed}
    for g in groups:
        kept = by_id[g.keep]
        if not kept.caption_path.exists():
            donors = sorted((o for o in g.others if by_id[o].caption_path.is_file()), key=lambda o: rank[o])
            if donors:
                src = by_id[donors[0]].caption_path
                report.captions_copied.append((str(src), str(kept.caption_path)))
                if not dry_run:
                    atomic_write_bytes(kept.caption_path, src.read_bytes())
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


def dedupe_with(src: Path | str, options: DedupeOptions, *, move_to: Path | str | None = None, progress: Any = None) -> DedupeReport:
    """`dedupe_folder` driven by a `DedupeOptions` (`move_to` overrides `options.move_to`)."""
    dest = move_to if move_to is not None else options.move_to
    return dedupe_folder(
        src,
        threshold=options.threshold,
        mirror=options.mirror,
        move_to=dest,
        recursive=options.recursive,
        workers=options.workers,
        dry_run=options.dry_run,
        progress=progress,
        verify=options.verify,
        engine=options,
    )


class DedupeStage:
    """The dedupe stage (prep.stage.Stage): `out` is the folder duplicates move to, or None to only report."""

    name: ClassVar[str] = "dedupe"
    Options: ClassVar[type[StageOptions]] = DedupeOptions

    def run(self, src: Path, out: Path | None, options: DedupeOptions, *, progress: Progress | None = None) -> DedupeReport:
        return dedupe_with(src, options, move_to=out, progress=progress)


STAGE = DedupeStage()
