"""`prep check DIR`: everything that will bite at training time, found before it does.

One pass over the folder decodes each image once, at reduced size where the format allows
(JPEG DCT scaling), which is enough to prove it decodes, read its real upright size, see
transparency, and hash it for duplicates. Read-only: nothing in DIR is written.
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from prep.buckets import BucketSpec, bucket_label, bucket_spec_for
from prep.dataset import ImageItem, discover, orphan_captions, read_caption
from prep.dedupe import DEFAULT_THRESHOLD, HashedImage, PixelVerifier, group_duplicates, image_hashes
from prep.executor import Result, run_step
from prep.images import DEFAULT_MAX_PIXELS, ImageLoadError, load_image
from prep.inputs import printable
from prep.options import ArchName, StageOptions

CHECK_DRAFT = (256, 256)
MP_BINS = [(0, 0.25), (0.25, 0.5), (0.5, 1), (1, 2), (2, 4), (4, 12), (12, float("inf"))]


class CheckOptions(StageOptions):
    """The options of `prep check` (its flags and `loraprep.toml`'s [check]), declared once."""

    resolution: int = Field(1024, gt=0, description="Trainer resolution for bucket assignment.")
    trainer: ArchName | None = Field(None, description="Architecture whose bucket rules the bucket column follows (any prep.archs name or alias; default: sd-scripts rules, step 64).")
    min_side: int | None = Field(None, description="Flag images whose short side is below this (default resolution/2: the trainer upscales up to 2x).")
    recursive: bool = Field(False, description="Include subfolders.", json_schema_extra={"cli": ("--recursive", "-r")})
    workers: int | None = Field(None, description="Parallel workers (default: all cores).", json_schema_extra={"cli": ("--workers", "-j")})
    dup_threshold: int = Field(DEFAULT_THRESHOLD, ge=0, le=64, description="Duplicate threshold in bits of 64.")
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, gt=0, description="Refuse images with more pixels than this (decompression-bomb guard).")
    bucket_steps: int | None = Field(None, description="Bucket step (default: the architecture's, else 64; Anima also allows 16, 32 and 48).")
    max_bucket_reso: int | None = Field(None, description="Largest bucket side (default: twice the resolution, at least 1024, as train_bridge config writes it).")

    @model_validator(mode="after")
    def _buckets(self) -> CheckOptions:
        self.spec()
        return self

    def spec(self) -> BucketSpec:
        """The buckets the trainer of `trainer` uses at `resolution` (prep.archs via bucket_spec_for)."""
        return bucket_spec_for(self.trainer, self.resolution, step=self.bucket_steps, max_reso=self.max_bucket_reso)


class CheckStep:
    """Executor step: decode once (draft), collect facts, hash."""

    def __init__(self, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.max_pixels = max_pixels

    def __call__(self, batch: list[ImageItem]) -> list[Result]:
        out = []
        for it in batch:
            try:
                li = load_image(it.path, draft_size=CHECK_DRAFT, max_pixels=self.max_pixels)
            except ImageLoadError as exc:
                out.append(Result(it.id, "failed", str(it.path), reason=exc.reason))
                continue
            out.append(
                Result(
                    it.id,
                    "ok",
                    str(it.path),
                    data={
                        "size": list(li.size),
                        "format": li.format,
                        "mode": li.mode,
                        "alpha": li.has_alpha,
                        "transparent": li.transparent,
                        "exif_orientation": li.exif_orientation,
                        "frames": li.n_frames,
                        **image_hashes(li.image),
                        "file_size": it.path.stat().st_size,
                    },
                )
            )
        return out


@dataclass
class ImageFacts:
    id: str
    size: tuple[int, int]
    format: str
    mode: str
    file_size: int
    transparent: bool
    alpha: bool
    exif_orientation: int
    frames: int
    bucket: tuple[int, int]
    caption: str  # ok | missing | empty | unreadable


@dataclass
class CheckReport:
    folder: str
    options: CheckOptions
    images: list[ImageFacts] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)
    orphan_captions: list[str] = field(default_factory=list)
    caption_errors: list[dict[str, str]] = field(default_factory=list)
    duplicate_groups: list[dict[str, Any]] = field(default_factory=list)
    stem_clashes: list[list[str]] = field(default_factory=list)

    @property
    def spec(self) -> BucketSpec:
        return self.options.spec()

    # derived views -------------------------------------------------------------------
    def ids(self, pred: Any) -> list[str]:
        return [f.id for f in self.images if pred(f)]

    @property
    def min_side(self) -> int:
        return self.options.min_side or self.options.resolution // 2

    def summary(self) -> dict[str, Any]:
        imgs = self.images
        widths = [f.size[0] for f in imgs]
        heights = [f.size[1] for f in imgs]
        mps = [f.size[0] * f.size[1] / 1e6 for f in imgs]
        buckets = Counter(bucket_label(f.bucket) for f in imgs)
        return {
            "images": len(imgs) + len(self.errors),
            "readable": len(imgs),
            "errors": len(self.errors),
            "formats": dict(Counter(f.format for f in imgs).most_common()),
            "modes": dict(Counter(f.mode for f in imgs).most_common()),
            "size": {
                "min": [min(widths), min(heights)] if imgs else None,
                "median": [int(statistics.median(widths)), int(statistics.median(heights))] if imgs else None,
                "max": [max(widths), max(heights)] if imgs else None,
                "megapixels": {self._bin_label(lo, hi): sum(lo <= m < hi for m in mps) for lo, hi in MP_BINS},
            },
            "captions": {
                "ok": sum(f.caption == "ok" for f in imgs),
                "missing": sum(f.caption == "missing" for f in imgs),
                "empty": sum(f.caption == "empty" for f in imgs),
                "orphans": len(self.orphan_captions),
            },
            "buckets": dict(sorted(buckets.items(), key=lambda kv: -kv[1])),
            "duplicates": sum(len(g["others"]) for g in self.duplicate_groups),
        }

    @staticmethod
    def _bin_label(lo: float, hi: float) -> str:
        return f">={lo:g} MP" if hi == float("inf") else f"{lo:g}-{hi:g} MP"

    def problems(self) -> dict[str, list[Any]]:
        """Every finding, by kind; each entry names the file."""
        return {
            "corrupt": self.errors,
            "small": [
                {"file": f.id, "size": list(f.size), "reason": f"short side {min(f.size)} px < {self.min_side} px: the trainer will upscale it"}
                for f in self.images
                if min(f.size) < self.min_side
            ],
            "transparent": self.ids(lambda f: f.transparent),
            "exif_rotated": self.ids(lambda f: f.exif_orientation not in (0, 1)),
            "animated": self.ids(lambda f: f.frames > 1),
            "caption_missing": self.ids(lambda f: f.caption == "missing"),
            "caption_empty": self.ids(lambda f: f.caption == "empty"),
            "caption_unreadable": self.caption_errors,
            "caption_orphans": self.orphan_captions,
            "caption_shared_stem": self.stem_clashes,
            "duplicates": self.duplicate_groups,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "folder": self.folder,
            "resolution": self.options.resolution,
            "trainer": self.options.trainer,
            "bucket_spec": {"family": self.spec.family, "steps": self.spec.steps, "min_reso": self.spec.min_reso, "max_reso": self.spec.max_reso},
            "min_side": self.min_side,
            "summary": self.summary(),
            "problems": self.problems(),
            "images": [
                {
                    "id": f.id,
                    "size": list(f.size),
                    "format": f.format,
                    "mode": f.mode,
                    "bucket": list(f.bucket),
                    "transparent": f.transparent,
                    "exif_orientation": f.exif_orientation,
                    "caption": f.caption,
                }
                for f in self.images
            ],
        }

    @property
    def has_errors(self) -> bool:
        return bool(self.errors or self.caption_errors)

    @property
    def n_failed(self) -> int:
        """Files that could not be read (each named in `errors`)."""
        return len(self.errors)


def _caption_state(item: ImageItem) -> tuple[str, str | None]:
    try:
        text = read_caption(item.caption_path)
    except ValueError as exc:
        return "unreadable", str(exc)
    if text is None:
        return "missing", None
    return ("empty" if not text else "ok"), None


def check_folder(folder: Path | str, options: CheckOptions | None = None, *, progress: Any = None) -> CheckReport:
    """Inspect `folder` (read-only) and return a report of facts and problems."""
    opts = options or CheckOptions()
    folder = Path(folder)
    spec = opts.spec()
    items = discover(folder, recursive=opts.recursive)
    results = run_step(CheckStep(opts.max_pixels), items, workers=opts.workers, batch_size=4, progress=progress, description="checking")
    by_id = {it.id: it for it in items}
    report = CheckReport(printable(folder), opts)
    # never opened: symlink loops, dangling links, FIFOs and devices, formats we cannot read
    report.errors.extend({"file": s.id, "reason": s.reason} for s in items.skipped)
    hashed: list[HashedImage] = []
    for r in results:
        item = by_id[r.id]
        if r.status != "ok":
            report.errors.append({"file": r.id, "reason": r.reason or "unreadable"})
            continue
        d = r.data
        cap, cap_err = _caption_state(item)
        if cap_err:
            report.caption_errors.append({"file": printable(item.caption_path.relative_to(folder).as_posix()), "reason": cap_err})
        size = (d["size"][0], d["size"][1])
        report.images.append(
            ImageFacts(
                id=r.id,
                size=size,
                format=d["format"],
                mode=d["mode"],
                file_size=d["file_size"],
                transparent=d["transparent"],
                alpha=d["alpha"],
                exif_orientation=d["exif_orientation"],
                frames=d["frames"],
                bucket=spec.select(*size).bucket,
                caption=cap,
            )
        )
        hashed.append(HashedImage(r.id, item.path, size, d["file_size"], d["hash"], d["mirror"], d["fine"], d["fine_mirror"]))
    report.duplicate_groups = [g.to_json() for g in group_duplicates(hashed, opts.dup_threshold, verify=PixelVerifier())]
    report.orphan_captions = [printable(p.relative_to(folder).as_posix()) for p in orphan_captions(folder, items, recursive=opts.recursive)]
    stems: dict[str, list[str]] = {}
    for it in items:
        stems.setdefault(it.caption_path.as_posix().lower(), []).append(it.id)
    report.stem_clashes = [ids for ids in stems.values() if len(ids) > 1]
    return report


class CheckStage:
    """`prep check` as a stage (it writes nothing, so `out` is unused)."""

    name = "check"
    Options = CheckOptions

    def run(self, src: Path, out: Path | None, options: CheckOptions, *, progress: Any = None) -> CheckReport:
        return check_folder(src, options, progress=progress)


STAGE = CheckStage()
