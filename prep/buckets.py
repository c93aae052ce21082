"""sd-scripts aspect-ratio bucketing, reproduced exactly.

`make_bucket_resolutions` and `BucketSpec.select` follow sd-scripts'
`library/model_util.make_bucket_resolutions` and `library/train_util.BucketManager.select_bucket`
(legacy bucket selection, the default), so `prep check`, `prep crop` and `train_bridge estimate`
agree with what the trainer will do. Every bucket size is a fixed point: an image of exactly
W x H lands in bucket W x H with no resize and no crop, which is why `prep crop` writes exactly
bucket-sized images.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

Size = tuple[int, int]

def make_bucket_resolutions(max_reso: Size, min_size: int = 256, max_size: int = 1024, divisible: int = 64) -> list[Size]:
    """The predefined buckets: same area as `max_reso`, sides in [min_size, max_size], multiples of `divisible`."""
    max_width, max_height = max_reso
    max_area = max_width * max_height
    resos: set[Size] = set()
    width = int(math.sqrt(max_area) // divisible) * divisible
    resos.add((width, width))
    width = min_size
    while width <= max_size:
        height = min(max_size, int((max_area // width) // divisible) * divisible)
        if height >= min_size:
            resos.add((width, height))
            resos.add((height, width))
        width += divisible
    return sorted(resos)


def musubi_bucket_resolutions(resolution: Size, steps: int = 16) -> list[Size]:
    """musubi-tuner's `BucketSelector` list: same area, sides from sqrt(area)/2 to sqrt(area)."""
    area = resolution[0] * resolution[1]
    sqrt_size = int(math.sqrt(area))
    min_size = (sqrt_size // 2) - (sqrt_size // 2) % steps
    out: set[Size] = set()
    for w in range(min_size, sqrt_size + steps, steps):
        h = area // w
        h -= h % steps
        out.add((w, h))
        out.add((h, w))
    return sorted(out)


def adjust_min_max(min_reso: int, max_reso: int, steps: int) -> tuple[int, int]:
    """sd-scripts rounds min down and max up to multiples of the step."""
    if min_reso % steps:
        min_reso -= min_reso % steps
    if max_reso % steps:
        max_reso += steps - max_reso % steps
    return min_reso, max_reso


@dataclass(frozen=True)
class BucketChoice:
    bucket: Size
    """The bucket (width, height) the trainer will put the image in."""
    resized: Size
    """Size the trainer resizes the image to before cropping to `bucket`."""
    ar_error: float
    """Bucket aspect ratio minus image aspect ratio."""

    @property
    def crop_px(self) -> Size:
        return (self.resized[0] - self.bucket[0], self.resized[1] - self.bucket[1])


@dataclass(frozen=True)
class BucketSpec:
    """The bucket settings of one training run (sd-scripts option names in comments)."""

    resolution: Size = (1024, 1024)  # resolution
    min_reso: int = 256  # min_bucket_reso
    max_reso: int = 1024  # max_bucket_reso
    steps: int = 64  # bucket_reso_steps
    no_upscale: bool = False  # bucket_no_upscale
    enabled: bool = True  # enable_bucket
    family: str = "sd-scripts"  # or "musubi" (musubi-tuner's BucketSelector, Wan)

    @classmethod
    def square(cls, resolution: int, **kw: object) -> BucketSpec:
        """The default bucket range for a `resolution` x `resolution` run (see `training_default`)."""
        return cls.training_default((resolution, resolution), **kw)  # type: ignore[arg-type]

    @classmethod
    def training_default(cls, resolution: Size, *, steps: int = 64, **kw: object) -> BucketSpec:
        """The bucket range loraprep writes into dataset configs, and crops for.

        min 256 (or less for tiny runs), max twice the larger side (at least 1024), both
        multiples of `steps`. `prep crop`, `prep check` and `train_bridge config` all use this,
        so a crop is always a fixed point of the buckets the trainer is configured with.
        """
        lo = min(256, min(resolution) - min(resolution) % steps)
        hi = max(max(resolution) * 2, 1024)
        hi += (-hi) % steps
        kw.setdefault("min_reso", lo)
        kw.setdefault("max_reso", hi)
        return cls(resolution=tuple(resolution), steps=steps, **kw)  # type: ignore[arg-type]

    def validate(self) -> None:
        if self.family not in ("sd-scripts", "musubi"):
            raise ValueError(f"unknown bucket family {self.family!r}")
        if self.family == "musubi":
            return
        if self.steps <= 0 or self.steps % 8:
            raise ValueError(f"bucket step {self.steps} must be a positive multiple of 8")
        lo, hi = adjust_min_max(self.min_reso, self.max_reso, self.steps)
        if lo > min(self.resolution):
            raise ValueError(f"min_bucket_reso {lo} is larger than the resolution {self.resolution}")
        if hi < max(self.resolution):
            raise ValueError(f"max_bucket_reso {hi} is smaller than the resolution {self.resolution}")

    @cached_property
    def buckets(self) -> list[Size]:
        if not self.enabled:
            return [self.resolution]
        if self.family == "musubi":
            return musubi_bucket_resolutions(self.resolution, self.steps)
        lo, hi = adjust_min_max(self.min_reso, self.max_reso, self.steps)
        return make_bucket_resolutions(self.resolution, lo, hi, self.steps)

    @cached_property
    def _ars(self) -> list[float]:
        return [w / h for w, h in self.buckets]

    @property
    def max_area(self) -> int:
        return self.resolution[0] * self.resolution[1]

    def _round(self, x: float) -> int:
        v = int(x + 0.5)
        return v - v % self.steps

    def select(self, width: int, height: int) -> BucketChoice:
        """The bucket sd-scripts assigns to a `width` x `height` image."""
        if width <= 0 or height <= 0:
            raise ValueError(f"image size {width}x{height} is empty")
        ar = width / height
        if not self.enabled:
            bw, bh = self.resolution
            scale = max(bw / width, bh / height)
            resized = (int(width * scale + 0.5), int(height * scale + 0.5))
            return BucketChoice((bw, bh), resized, bw / bh - ar)
        if self.family == "musubi":
            if self.no_upscale and width * height <= self.max_area:
                reso = (width - width % self.steps, height - height % self.steps)
                return BucketChoice(reso, (width, height), reso[0] / reso[1] - ar)
            reso = self.nearest_bucket(ar)
            scale = max(reso[0] / width, reso[1] / height)
            resized = (int(width * scale + 0.5), int(height * scale + 0.5))
            return BucketChoice(reso, resized, reso[0] / reso[1] - ar)
        if not self.no_upscale:
            if (width, height) in set(self.buckets):
                reso = (width, height)
            else:
                errs = [abs(a - ar) for a in self._ars]
                reso = self.buckets[errs.index(min(errs))]
            if ar > reso[0] / reso[1]:
                scale = reso[1] / height
            else:
                scale = reso[0] / width
            resized = (int(width * scale + 0.5), int(height * scale + 0.5))
        else:
            if width * height > self.max_area:
                rw = math.sqrt(self.max_area * ar)
                rh = self.max_area / rw
                bw_r = self._round(rw)
                bh_in_wr = self._round(bw_r / ar)
                ar_wr = bw_r / bh_in_wr if bh_in_wr else float("inf")
                bh_r = self._round(rh)
                bw_in_hr = self._round(bh_r * ar)
                ar_hr = bw_in_hr / bh_r if bh_r else float("inf")
                if abs(ar_wr - ar) < abs(ar_hr - ar):
                    resized = (bw_r, int(bw_r / ar + 0.5))
                else:
                    resized = (int(bh_r * ar + 0.5), bh_r)
            else:
                resized = (width, height)
            reso = (resized[0] - resized[0] % self.steps, resized[1] - resized[1] % self.steps)
        return BucketChoice(reso, resized, reso[0] / reso[1] - ar)

    def nearest_bucket(self, aspect_ratio: float) -> Size:
        """The predefined bucket whose aspect ratio is closest (ties: first, as sd-scripts' argmin)."""
        errs = [abs(a - aspect_ratio) for a in self._ars]
        return self.buckets[errs.index(min(errs))]

    def is_fixed_point(self, size: Size) -> bool:
        """True when an image of exactly `size` trains without resize or crop."""
        c = self.select(*size)
        return c.bucket == tuple(size) and c.resized == tuple(size)

    def histogram(self, sizes: Iterable[Size]) -> Counter[Size]:
        return Counter(self.select(w, h).bucket for w, h in sizes)


def bucket_label(size: Size) -> str:
    return f"{size[0]}x{size[1]}"


# -- what a folder of crops was made for -------------------------------------------------------
BUCKET_RECORD = "buckets.json"
"""Written by `prep crop` into its output and carried by `prep layout` into the dataset, so
`train_bridge config` trains at the buckets the crops are fixed points of (and `check` can
tell when it would not)."""


def bucket_spec_for(
    arch: str | None,
    resolution: int | Size,
    *,
    step: int | None = None,
    min_reso: int | None = None,
    max_reso: int | None = None,
    no_upscale: bool = False,
) -> BucketSpec:
    """The bucket settings `arch`'s trainer uses at `resolution` (loraprep's defaults, the arch's step)."""
    from prep.archs import get_arch

    spec_arch = get_arch(arch) if arch else None
    allowed = spec_arch.bucket_steps if spec_arch else None
    chosen = step or (allowed[0] if allowed else 64)
    if allowed and chosen not in allowed:
        raise ValueError(f"bucket step {chosen} is not accepted by {spec_arch.name}: use one of {', '.join(map(str, allowed))}")  # type: ignore[union-attr]
    res = (resolution, resolution) if isinstance(resolution, int) else (int(resolution[0]), int(resolution[1]))
    kw: dict[str, Any] = {"steps": chosen, "no_upscale": no_upscale}
    if spec_arch and spec_arch.bucket_family == "musubi":
        kw["family"] = "musubi"
    else:
        if min_reso is not None:
            kw["min_reso"] = min_reso
        if max_reso is not None:
            kw["max_reso"] = max_reso
    spec = BucketSpec.training_default(res, **kw)
    spec.validate()
    return spec


def bucket_record(spec: BucketSpec, *, arch: str | None, written_by: str) -> dict[str, Any]:
    return {
        "version": 1,
        "arch": arch,
        "family": spec.family,
        "resolution": list(spec.resolution),
        "steps": spec.steps,
        "min_reso": spec.min_reso,
        "max_reso": spec.max_reso,
        "no_upscale": spec.no_upscale,
        "written_by": written_by,
    }


def write_bucket_record(folder: Path, spec: BucketSpec, *, arch: str | None, written_by: str) -> Path:
    from prep.fsutil import atomic_write_text

    path = Path(folder) / BUCKET_RECORD
    atomic_write_text(path, json.dumps(bucket_record(spec, arch=arch, written_by=written_by), indent=2) + "\n")
    return path


@dataclass(frozen=True)
class BucketRecord:
    """A folder's `buckets.json`: the spec its images were made for, and who made them."""

    spec: BucketSpec
    arch: str | None
    written_by: str
    path: Path


def read_bucket_record(folder: Path) -> BucketRecord | None:
    """The record in `folder` (None when there is none); a broken one raises ValueError naming it."""
    path = Path(folder) / BUCKET_RECORD
    if not path.is_file():
        return None
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        spec = BucketSpec(
            resolution=(int(d["resolution"][0]), int(d["resolution"][1])),
            min_reso=int(d["min_reso"]),
            max_reso=int(d["max_reso"]),
            steps=int(d["steps"]),
            no_upscale=bool(d.get("no_upscale", False)),
            family=str(d.get("family", "sd-scripts")),
        )
        spec.validate()
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise ValueError(f"{path}: not a loraprep bucket record ({exc}); delete it or rerun `prep crop`") from None
    return BucketRecord(spec, d.get("arch"), str(d.get("written_by", "")), path)
