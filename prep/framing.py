"""Crop geometry: from a face (or head) box to a crop rectangle of an exact bucket aspect.

Pure arithmetic, no pixels, so every rule is unit-testable:
- a preset fixes the share of the crop height the face box takes and where the face sits
  (head-room above), plus a preferred aspect ratio;
- the crop is widened or narrowed to the nearest bucket aspect ratio of the trainer, picking
  the next-nearest bucket when the face would not fit inside the image at that ratio;
- a crop that runs past an edge is shifted inside first; only with `pad` may it stay outside
  (the caller fills that part with the background colour);
- the face box always lies wholly inside the crop.
The crop is later resized to exactly the bucket size, a fixed point of sd-scripts' bucketing,
so the trainer neither resizes nor crops it again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from prep.buckets import BucketSpec, Size, bucket_spec_for

Rect = tuple[float, float, float, float]


@dataclass(frozen=True)
class Framing:
    """`share`: face-box height / crop height. `center_y`: face centre from the crop top (0..1)."""

    name: str
    share: float
    center_y: float
    aspect: float
    """Preferred width / height before snapping to a bucket."""


PRESETS: dict[str, Framing] = {
    "face": Framing("face", share=0.60, center_y=0.45, aspect=1.0),
    "bust": Framing("bust", share=0.35, center_y=0.33, aspect=0.8),
    "upper-body": Framing("upper-body", share=0.20, center_y=0.22, aspect=0.75),
}
FRAMINGS = (*PRESETS, "full")
SHARE_RANGES: dict[str, tuple[float, float]] = {"face": (0.55, 0.65), "bust": (0.30, 0.40), "upper-body": (0.15, 0.25)}
"""The documented share of each preset; a crop limited by the image edge can exceed it."""


@dataclass(frozen=True)
class CropPlan:
    """One output: `box` in source pixels (may extend past the image only when padding)."""

    box: tuple[int, int, int, int]
    bucket: Size
    share: float | None
    """Face-box height / crop height, None without a face."""
    padded: bool

    @property
    def width(self) -> int:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> int:
        return self.box[3] - self.box[1]

    @property
    def scale(self) -> float:
        """Output pixels per source pixel (> 1 means upscaling)."""
        return max(self.bucket[0] / self.width, self.bucket[1] / self.height)


def bucket_spec(
    resolution: int,
    *,
    trainer: str | None = None,
    step: int | None = None,
    min_reso: int | None = None,
    max_reso: int | None = None,
    no_upscale: bool = False,
) -> BucketSpec:
    """The bucket settings the trainer will use at `resolution` (see `prep.buckets.bucket_spec_for`).

    `trainer` is any `prep.archs` name or alias (anima, flux, sdxl, sd3, wan, wan21-t2v, ...).
    """
    try:
        return bucket_spec_for(trainer, resolution, step=step, min_reso=min_reso, max_reso=max_reso, no_upscale=no_upscale)
    except KeyError as exc:
        raise ValueError(str(exc).strip('"')) from None


def _candidates(spec: BucketSpec, ar: float) -> list[Size]:
    """Buckets by closeness of aspect ratio to `ar` (ties: sd-scripts' order)."""
    return sorted(spec.buckets, key=lambda b: abs(b[0] / b[1] - ar))


def _place(start: float, length: float, limit: float, lo_must: float, hi_must: float, pad: bool) -> float:
    """Start of a span of `length` near `start` holding [lo_must, hi_must], shifted inside [0, limit]."""
    start = min(start, lo_must)
    start = max(start, hi_must - length)
    if length <= limit:
        return min(max(start, 0.0), limit - length)
    if pad:  # larger than the image: overflow as evenly as the must-box allows
        return min(max(start, limit - length), 0.0)
    return 0.0


def _to_int_box(x0: float, y0: float, cw: float, ch: float, width: int, height: int, pad: bool) -> tuple[int, int, int, int]:
    iw, ih = max(1, round(cw)), max(1, round(ch))
    if not pad:
        iw, ih = min(iw, width), min(ih, height)
    ix, iy = round(x0), round(y0)
    if not pad or iw <= width:
        ix = min(max(ix, 0), width - iw) if iw <= width else ix
    if not pad or ih <= height:
        iy = min(max(iy, 0), height - ih) if ih <= height else iy
    return (ix, iy, ix + iw, iy + ih)


def plan_face_crop(size: Size, face: Rect, framing: Framing, spec: BucketSpec, *, pad: bool = False, aspect: float | None = None) -> CropPlan:
    """Crop around `face` (x0, y0, x1, y1) in an image of `size` for a framing preset."""
    width, height = size
    fx0, fy0, fx1, fy1 = face
    fw, fh = max(fx1 - fx0, 1.0), max(fy1 - fy0, 1.0)
    ar_pref = aspect or framing.aspect
    ch_t = fh / framing.share
    cw_t = ch_t * ar_pref
    if not pad:
        cw_t, ch_t = min(cw_t, width), min(ch_t, height)
    chosen: tuple[Size, float, float] | None = None
    for bucket in _candidates(spec, cw_t / ch_t):
        bar = bucket[0] / bucket[1]
        ch, cw = ch_t, ch_t * bar
        if not pad and cw > width:
            cw, ch = width, width / bar
        if ch + 1e-6 >= fh and cw + 1e-6 >= fw:
            chosen = (bucket, cw, ch)
            break
    if chosen is None:  # face as large as the image: the whole-image bucket crop holds most of it
        return plan_full_crop(size, None, spec, face=None, pad=pad)
    bucket, cw, ch = chosen
    cx = (fx0 + fx1) / 2
    cy = (fy0 + fy1) / 2
    x0 = _place(cx - cw / 2, cw, width, fx0, fx1, pad)
    y0 = _place(cy - framing.center_y * ch, ch, height, fy0, fy1, pad)
    box = _to_int_box(x0, y0, cw, ch, width, height, pad)
    padded = box[0] < 0 or box[1] < 0 or box[2] > width or box[3] > height
    return CropPlan(box, bucket, fh / (box[3] - box[1]), padded)


def plan_full_crop(size: Size, subject: Rect | None, spec: BucketSpec, *, face: Rect | None = None, pad: bool = False) -> CropPlan:
    """The largest bucket-shaped crop holding `subject` (default: the whole image), and `face` if given.

    Used for `--framing full` and as the no-face fallback (a bucket crop around the centre).
    """
    width, height = size
    sx0, sy0, sx1, sy1 = subject or (0.0, 0.0, float(width), float(height))
    sw, sh = max(sx1 - sx0, 1.0), max(sy1 - sy0, 1.0)
    best: tuple[Size, float, float] | None = None
    for require_subject in (True, False):
        for bucket in _candidates(spec, sw / sh):
            bar = bucket[0] / bucket[1]
            cw = max(sw, sh * bar)
            ch = cw / bar
            if not pad and (cw > width or ch > height):
                f = min(width / cw, height / ch)
                cw, ch = cw * f, ch * f
            holds_subject = cw + 1e-6 >= sw and ch + 1e-6 >= sh
            holds_face = face is None or (cw + 1e-6 >= face[2] - face[0] and ch + 1e-6 >= face[3] - face[1])
            if holds_face and (holds_subject or not require_subject):
                best = (bucket, cw, ch)
                break
        if best:
            break
    assert best is not None  # the nearest bucket always passes the second round without a face
    bucket, cw, ch = best
    mx0, my0, mx1, my1 = face if face else (sx0 + sw / 2, sy0, sx0 + sw / 2, sy0)
    x0 = _place((sx0 + sx1) / 2 - cw / 2, cw, width, mx0, mx1, pad)
    # Taller subject than crop: keep its top (the head), else centre it.
    y0 = sy0 if ch < sh else (sy0 + sy1) / 2 - ch / 2
    y0 = _place(y0, ch, height, my0, my1 if face else my0, pad)
    box = _to_int_box(x0, y0, cw, ch, width, height, pad)
    padded = box[0] < 0 or box[1] < 0 or box[2] > width or box[3] > height
    share = ((face[3] - face[1]) / (box[3] - box[1])) if face else None
    return CropPlan(box, bucket, share, padded)


def fit_without_upscale(plan: CropPlan, spec: BucketSpec, *, keep: Rect | None = None) -> CropPlan | None:
    """`plan` at the largest bucket its box fills without upscaling; None when not one bucket step fits.

    The bucket is the one the trainer gives the box's own pixels under `bucket_no_upscale`
    (`spec` has `no_upscale=True`): each side floored to a multiple of the step. The box is
    trimmed to that aspect (at most one step less than a side, at native size): the width
    evenly, the height from the bottom so the head-room stays, both moved to hold `keep`
    (the face) where they can. The result is a fixed point of `spec`, and a downscale by
    less than one step per side.
    """
    if not spec.no_upscale:
        raise ValueError("fit_without_upscale needs a bucket spec with no_upscale=True")
    w, h = plan.width, plan.height
    bw, bh = spec.select(w, h).bucket
    if bw <= 0 or bh <= 0:
        return None
    s = max(bw / w, bh / h)
    cw, ch = max(bw, round(bw / s)), max(bh, round(bh / s))
    x0, y0, x1, y1 = plan.box

    def place(start: int, length: int, lo: int, hi: int, must: tuple[float, float] | None) -> int:
        if must is not None:
            start = max(start, math.ceil(must[1]) - length)
            start = min(start, math.floor(must[0]))
        return min(max(start, lo), hi - length)

    kx = (keep[0], keep[2]) if keep else None
    ky = (keep[1], keep[3]) if keep else None
    nx = place(x0 + (w - cw) // 2, cw, x0, x1, kx)
    ny = place(y0, ch, y0, y1, ky)
    box = (nx, ny, nx + cw, ny + ch)
    share = plan.share * plan.height / ch if plan.share is not None else None
    return CropPlan(box, (bw, bh), share, plan.padded)


def parse_aspect(value: str | float | None) -> float | None:
    """'4:5', '0.8' or None."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)):
        ar = float(value)
    elif ":" in value:
        a, _, b = value.partition(":")
        ar = float(a) / float(b)
    else:
        ar = float(value)
    if not (0.1 <= ar <= 10) or math.isnan(ar):
        raise ValueError(f"aspect {value!r} out of range: use W:H such as 4:5 or 1:1")
    return ar
