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

import os
import re
import shutil
import threading
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np
from PIL import Image
from pydantic import Field

from prep.dataset import ImageItem, Skipped, discover
from prep.executor import EngineOptions, Progress, Result, default_workers, run_step
from prep.fsutil import atomic_write_bytes, unique_path
from prep.hamming import HammingIndex
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
    path: Path | str
    size: tuple[int, int]
    file_size: int
    hash: int
    mirror: int
    fine: int | None = None
    fine_mirror: int | None = None
    captioned: bool = False


class HashColumns(Sequence[HashedImage]):
    """`HashedImage`s kept as columns, built on access: about 110 bytes an image (the id and the
    path are the caller's own strings, shared) against ~600 for the objects, which a 100k-image
    `prep check` held until its grouping. `group_duplicates` reads the hash columns as arrays."""

    def __init__(self) -> None:
        self._ids: list[str] = []
        self._paths: list[str] = []
        self._sizes = array("I")  # width, height
        self._file_sizes = array("Q")
        self._hashes = array("Q")  # hash, mirror
        self._fine = bytearray()  # 32 bytes each, fine then mirrored, big-endian (0 when unknown)
        self._bits = bytearray()  # 1: fine known, 2: fine_mirror known, 4: captioned

    def append(self, h: HashedImage) -> None:
        self._ids.append(h.id)
        self._paths.append(h.path if isinstance(h.path, str) else os.fspath(h.path))
        self._sizes.extend(h.size)
        self._file_sizes.append(h.file_size)
        self._hashes.extend((h.hash, h.mirror))
        for v in (h.fine, h.fine_mirror):
            self._fine += (v or 0).to_bytes(32, "big")
        self._bits.append((h.fine is not None) | (h.fine_mirror is not None) << 1 | bool(h.captioned) << 2)

    def __len__(self) -> int:
        return len(self._ids)

    def __getitem__(self, i: int) -> HashedImage:  # type: ignore[override]
        if i < 0:
            i += len(self)
        b, f = self._bits[i], self._fine
        return HashedImage(
            self._ids[i], Path(self._paths[i]), (self._sizes[2 * i], self._sizes[2 * i + 1]), self._file_sizes[i],
            self._hashes[2 * i], self._hashes[2 * i + 1],
            int.from_bytes(f[64 * i:64 * i + 32], "big") if b & 1 else None,
            int.from_bytes(f[64 * i + 32:64 * i + 64], "big") if b & 2 else None,
            bool(b & 4),
        )

    def __iter__(self) -> Iterator[HashedImage]:
        for i in range(len(self)):
            yield self[i]

    def sort_by_id(self) -> None:
        order = sorted(range(len(self)), key=self._ids.__getitem__)
        self._ids = [self._ids[i] for i in order]
        self._paths = [self._paths[i] for i in order]
        self._sizes = array("I", (v for i in order for v in self._sizes[2 * i:2 * i + 2]))
        self._file_sizes = array("Q", (self._file_sizes[i] for i in order))
        self._hashes = array("Q", (v for i in order for v in self._hashes[2 * i:2 * i + 2]))
        self._fine = bytearray(b"".join(self._fine[64 * i:64 * i + 64] for i in order))
        self._bits = bytearray(self._bits[i] for i in order)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(hash, mirror, fine (n, 4), fine mirrored (n, 4), known (2, n)) as `_fine_arrays` gives them."""
        n = len(self)
        hh = np.frombuffer(self._hashes, dtype=np.uint64).reshape(n, 2) if n else np.zeros((0, 2), np.uint64)
        words = np.frombuffer(bytes(self._fine), dtype=">u8").reshape(n, 2, 4)[:, :, ::-1].astype(np.uint64)
        bits = np.frombuffer(bytes(self._bits), dtype=np.uint8)
        known = np.stack([(bits & 1) != 0, (bits & 2) != 0])
        return hh[:, 0].copy(), hh[:, 1].copy(), np.ascontiguousarray(words[:, 0]), np.ascontiguousarray(words[:, 1]), known


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
        self._lock = threading.Lock()  # `group_duplicates(workers=...)` calls it from threads

    def _gray(self, path: Path) -> Image.Image:
        with self._lock:
            hit = self._cache.get(path)
        if hit is not None:
            return hit
        img = load_image(path, draft_size=(self.side, self.side)).image.convert("L")
        with self._lock:
            if len(self._cache) > 256:
                self._cache.clear()
            self._cache[path] = img
        return img

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
    workers: int = 1,
    index: bool | None = True,
) -> list[DuplicateGroup]:
    """Groups of images within `threshold` bits of the group's kept image.

    Greedy, best `keep_rank` first (an underived name, a caption, more pixels): each image not
    yet grouped keeps the hash matches that are still free, so every member was compared with
    the kept image itself. `verify(a, b, mirrored)` may reject a hash match (e.g. `PixelVerifier()`).

    Hash matches come from a `HammingIndex` (`index=None` forces the all-pairs scan; both give
    the same groups). With `workers` > 1, `verify` runs on that many threads a little ahead of
    the greedy walk, on the pairs it will ask about next; answers are used in the walk's order,
    so the groups are the same as with one worker (`verify` must be thread-safe).
    """
    n = len(hashed)
    if n < 2:
        return []
    if isinstance(hashed, HashColumns):
        h, hm, fine, fine_m, has_fine = hashed.arrays()
    else:
        h = np.array([x.hash for x in hashed], dtype=np.uint64)
        hm = np.array([x.mirror for x in hashed], dtype=np.uint64)
        fine, fine_m, has_fine = _fine_arrays(hashed)
    finder = HammingIndex(np.concatenate([h, hm]) if mirror else h, threshold, widths=True if index else None)
    ids = hashed._ids if isinstance(hashed, HashColumns) else [x.id for x in hashed]
    order = sorted(range(n), key=lambda i: keep_rank(hashed[i]))
    taken = np.zeros(n, dtype=bool)
    walk = _Lookahead(verify, workers, taken)
    groups = []
    try:
        for lo in range(0, n, _BLOCK):
            keeps = np.array([k for k in order[lo:lo + _BLOCK] if not taken[k]], dtype=np.int64)
            if not len(keeps):
                continue
            # every hash match of the block's images at once, in numpy; Python sees only the pairs
            # that pass both hashes (a set of generated look-alikes had ~180 matches per image)
            qi, vj = finder.pairs(h[keeps])
            k, j = keeps[qi], vj % n
            d = np.bitwise_count(h[k] ^ h[j]).astype(np.int16)
            dm = np.bitwise_count(h[k] ^ hm[j]).astype(np.int16) if mirror else d
            use = (j != k) & ~taken[j] & ((vj < n) | (d > threshold))  # matched as itself and as its mirror: once
            qi, k, j, d, dm = qi[use], k[use], j[use], d[use], dm[use]
            best = np.minimum(d, dm)
            is_mirror = (dm < d) & (d > threshold) if mirror else np.zeros(len(j), dtype=bool)
            other = np.where(is_mirror[:, None], fine_m[j], fine[j])
            near = np.bitwise_count(fine[k] ^ other).sum(axis=1) <= FINE_THRESHOLD
            near |= ~(has_fine[0, k] & has_fine[0, j] & has_fine[1, j])  # not computed: the coarse match stands (`_fine_match`)
            qi, j, best, is_mirror = qi[near], j[near], best[near], is_mirror[near]
            cut = np.searchsorted(qi, np.arange(len(keeps) + 1))
            jl, bl, ml = j.tolist(), best.tolist(), is_mirror.tolist()
            plans: list[tuple[int, list[tuple[int, int, bool]]]] = []
            for row, keep in enumerate(keeps.tolist()):
                cands = [(jl[x], bl[x], ml[x]) for x in range(cut[row], cut[row + 1])]
                cands.sort(key=lambda c: (c[1], ids[c[0]]))
                plans.append((keep, cands))
            walk.plan(hashed, plans)
            for keep, cands in plans:
                if taken[keep]:
                    continue
                taken[keep] = True
                others, dist, mirrored = [], {}, []
                for j, bj, is_mirror in cands:
                    if taken[j] or not walk.verified(keep, j, is_mirror):
                        continue
                    taken[j] = True
                    others.append(ids[j])
                    dist[ids[j]] = bj
                    if is_mirror:
                        mirrored.append(ids[j])
                if others:
                    groups.append(DuplicateGroup(ids[keep], sorted(others), dist, sorted(mirrored)))
    finally:
        walk.close()  # its threads, also when a check raises
    groups.sort(key=lambda g: g.keep)
    return groups


_BLOCK = 256
"""Images whose hash matches are looked up at once (chosen: with ~180 matches each, as in the
generated benchmark set, the grouping of 100k images peaked 106 MiB over its hashes with 1,024,
67 MiB with 256, in the same time)."""


class _Lookahead:
    """`verify` answers for the greedy walk, computed up to `ahead` pairs before it asks, on
    `workers` threads. The walk asks in the order of its plan; a pair is sent only while its
    candidate is free and its kept image is free or the one being grouped, so the work wasted on
    pairs the walk then skips (grouped meanwhile) is at most `ahead` pairs at a time."""

    def __init__(self, verify: Callable[[HashedImage, HashedImage, bool], bool] | None, workers: int, taken: np.ndarray):
        self.verify = verify
        self.taken = taken
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="verify") if verify is not None and workers > 1 else None
        self.ahead = 4 * workers
        self.pending: deque[tuple[tuple[int, int], Future[bool]]] = deque()
        self.queue: Iterator[tuple[int, int, bool]] = iter(())
        self.hashed: Sequence[HashedImage] = ()
        self.current = -1

    def plan(self, hashed: Sequence[HashedImage], plans: list[tuple[int, list[tuple[int, int, bool]]]]) -> None:
        """The pairs the walk will ask about next, in its order (a new block: the rest are dropped)."""
        for _, fut in self.pending:
            fut.cancel()
        self.pending.clear()
        self.hashed = hashed
        self.queue = ((keep, j, m) for keep, cands in plans for j, _, m in cands)

    def _fill(self) -> None:
        assert self.pool is not None
        while len(self.pending) < self.ahead:
            nxt = next(self.queue, None)
            if nxt is None:
                return
            keep, j, m = nxt
            if self.taken[j] or (self.taken[keep] and keep != self.current):
                continue  # the walk will skip it
            self.pending.append(((keep, j), self.pool.submit(self._call, keep, j, m)))

    def _call(self, keep: int, j: int, m: bool) -> bool:
        assert self.verify is not None
        return self.verify(self.hashed[keep], self.hashed[j], m)

    def verified(self, keep: int, j: int, m: bool) -> bool:
        """The answer for (kept image, candidate), asked in plan order."""
        if self.verify is None:
            return True
        if self.pool is None:
            return self._call(keep, j, m)
        self.current = keep
        self._fill()
        while self.pending and self.pending[0][0] != (keep, j):
            self.pending.popleft()[1].cancel()  # sent ahead, then skipped by the walk
            self._fill()
        if not self.pending:
            return self._call(keep, j, m)
        answer = self.pending.popleft()[1].result()
        self._fill()
        return answer

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def _fine_arrays(hashed: Sequence[HashedImage]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The 256-bit hashes as (n, 4) uint64 arrays (fine, mirrored) and where each is known
    ((2, n) bools), for `_fine_match` on many pairs at once."""
    n = len(hashed)
    out = np.zeros((2, n, 4), dtype=np.uint64)
    known = np.zeros((2, n), dtype=bool)
    for i, x in enumerate(hashed):
        for w, value in enumerate((x.fine, x.fine_mirror)):
            if value is not None:
                known[w, i] = True
                out[w, i] = [(value >> (64 * q)) & 0xFFFFFFFFFFFFFFFF for q in range(4)]
    return out[0], out[1], known


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
    groups = group_duplicates(hashed, threshold, mirror=mirror, verify=PixelVerifier() if verify else None, workers=workers or default_workers())
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
