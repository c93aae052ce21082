"""Per-image quality measures for `prep check`: blur, monochrome, small face, JPEG artefacts.

Every measure works on the image `prep check` already decoded (a reduced JPEG decode, see
`prep.check.CHECK_DRAFT`), so quality costs no second decode. Each returns a plain number; the
thresholds that turn numbers into flags are `prep.check.CheckOptions` fields, chosen on real
images (docs/check.md says how).

- sharpness: variance of the Laplacian of the grey image (Pech-Pacheco et al. 2000), on the
  face box when there is one, else on the whole image, measured at a fixed scale (the long
  side of the region brought down to `SHARP_SIDE` px) so that numbers from a 12 MP photo
  decoded at 1/8 and a 600 px PNG compare;
- chroma spread: the spread of the Lab (a, b) chroma across the image in its second principal
  direction. Grey images have none, and sepia, duotone or single-hue images have chroma along
  one line only, so they score near 0 as well, while any two distinct hues score high;
- JPEG quality: the IJG quality that the file's luminance quantisation table corresponds to
  (read from the header by Pillow, free), and, where the decode still shows the 8x8 grid
  (decoded at 1/2 scale or more), a blockiness ratio: gradient across block edges over the
  gradient elsewhere, which also catches a low-quality JPEG re-saved at high quality.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from PIL import Image

SHARP_SIDE = 256
"""Long side (px) of the region the Laplacian variance is measured on (downscaled only, never up)."""
FACE_SIDE = 64
"""Long side (px) a face box is measured at (downscaled only)."""
HALF_SCALE_GAIN = 2.0
"""A JPEG decoded at 1/2 scale (4 px blocks) shows about half the block-edge excess of the full
decode (measured on scikit-image photos at quality 10-95: 0.35-0.5x); blockiness from such a
decode is scaled by this, so one threshold reads as the full-size value."""
CHROMA_SIDE = 256
"""Long side (px) the chroma spread is measured at: colour statistics need few pixels."""

# Annex K luminance table (ITU-T T.81), which the IJG quality setting scales.
_STD_LUMA = np.array(
    [16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
     14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
     49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99],
    dtype=np.float64,
)


def _fit(a: np.ndarray, side: int) -> np.ndarray:
    """`a` with its long side brought down to `side` (INTER_AREA); unchanged when already smaller."""
    h, w = a.shape[:2]
    m = max(h, w)
    if m <= side:
        return a
    f = side / m
    return cv2.resize(a, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)


def grey(image: Image.Image) -> np.ndarray:
    """The image's luma as uint8 (Pillow's ITU-R 601 conversion)."""
    return np.asarray(image.convert("L"))


def sharpness(gray: np.ndarray, box: Sequence[float] | None = None) -> float:
    """Variance of the Laplacian of `gray` (or of the `box` x0,y0,x1,y1 region), at a fixed scale."""
    region = gray
    side = SHARP_SIDE
    if box is not None:
        h, w = gray.shape[:2]
        x0, y0, x1, y1 = (round(v) for v in box[:4])
        x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
        if x1 - x0 >= 8 and y1 - y0 >= 8:
            region = gray[y0:y1, x0:x1]
            side = FACE_SIDE
    region = _fit(np.ascontiguousarray(region), side)
    return float(cv2.Laplacian(region, cv2.CV_64F, ksize=1).var())


def chroma_spread(image: Image.Image) -> float:
    """Lab chroma spread in its second principal direction (0 for grey, sepia and one-hue images)."""
    rgb = _fit(np.asarray(image.convert("RGB")), CHROMA_SIDE)
    lab = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2LAB).reshape(-1, 3).astype(np.float64)
    ab = lab[:, 1:] - 128.0
    if len(ab) < 2:
        return 0.0
    cov = np.cov(ab, rowvar=False)
    return float(np.sqrt(max(0.0, float(np.linalg.eigvalsh(cov)[0]))))


def jpeg_quality(quantization: Mapping[int, Sequence[int]] | None) -> int | None:
    """IJG quality (1-100) of a JPEG's luminance table (`Image.quantization`); None without one."""
    if not quantization or 0 not in quantization:
        return None
    table = np.asarray(list(quantization[0]), dtype=np.float64)
    if table.size != 64:
        return None
    # Pillow gives the tables in natural (row-major) order, as Annex K prints them
    scale = float(np.mean(table / _STD_LUMA)) * 100.0  # IJG: table = std * scale / 100
    if scale <= 1.0:
        return 100
    q = (200.0 - scale) / 2.0 if scale <= 100.0 else 5000.0 / scale
    return round(min(100.0, max(1.0, q)))


BLOCK_FLOOR = 1.0
"""Grey levels added to both sides of the blockiness ratio (see `blockiness`)."""


def blockiness(gray: np.ndarray, period: int) -> float | None:
    """Gradient across `period`-px block edges over the gradient elsewhere (about 1.0 clean, >1 blocky).

    The grid phase is found, not assumed (an EXIF flip or odd crop shifts it). None when the
    period is below 4 px (a decode at 1/4 scale or less no longer shows the grid) or the image
    is too small to say.
    """
    if period < 4 or min(gray.shape[:2]) < 4 * period:
        return None
    g = gray.astype(np.float32)
    ratios = []
    for prof in (np.abs(np.diff(g, axis=1)).mean(axis=0), np.abs(np.diff(g, axis=0)).mean(axis=1)):
        n = len(prof) // period * period
        folded = prof[:n].reshape(-1, period).mean(axis=0)
        edge = int(np.argmax(folded))
        rest = np.delete(folded, edge)
        # + BLOCK_FLOOR on both sides: in flat artwork the gradient off the edges is ~0, and
        # ringing along a drawn edge would otherwise read as a huge ratio
        ratios.append(float((folded[edge] + BLOCK_FLOOR) / (float(rest.mean()) + BLOCK_FLOOR)))
    return float(np.mean(ratios))


@dataclass(frozen=True)
class Quality:
    """The measures of one image (JSON-ready; None where a measure does not apply)."""

    sharpness: float
    sharpness_on: str  # "face" | "image"
    chroma: float
    jpeg_quality: int | None = None
    blockiness: float | None = None
    face_height: float | None = None
    """Largest face's height in full-image pixels (None: no face looked for, or none found)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "sharpness": round(self.sharpness, 1),
            "sharpness_on": self.sharpness_on,
            "chroma": round(self.chroma, 2),
            "jpeg_quality": self.jpeg_quality,
            "blockiness": None if self.blockiness is None else round(self.blockiness, 3),
            "face_height": None if self.face_height is None else round(self.face_height, 1),
        }


def measure(image: Image.Image, *, scale: float = 1.0, fmt: str = "", quantization: Mapping[int, Sequence[int]] | None = None,
            face: Sequence[float] | None = None) -> Quality:
    """Every measure of one decoded image.

    `scale`: decoded width over full width (a draft decode); `face`: the largest face box in
    `image` pixels, when one was looked for and found.
    """
    gray = grey(image)
    jq = jpeg_quality(quantization) if fmt == "JPEG" else None
    period = round(8 * scale)
    blk = blockiness(gray, period) if fmt == "JPEG" else None
    if blk is not None and period < 8:
        blk = 1.0 + (blk - 1.0) * HALF_SCALE_GAIN
    return Quality(
        sharpness=sharpness(gray, face),
        sharpness_on="face" if face is not None else "image",
        chroma=chroma_spread(image),
        jpeg_quality=jq,
        blockiness=blk,
        face_height=None if face is None else (face[3] - face[1]) / max(scale, 1e-9),
    )


# Default thresholds (prep.check.CheckOptions fields), chosen on real images: docs/check.md.
BLUR_THRESHOLD = 100.0
FACE_BLUR_THRESHOLD = 300.0
MONO_THRESHOLD = 1.5
JPEG_MIN_QUALITY = 50
BLOCKINESS_THRESHOLD = 1.5
BLOCKINESS_MIN_HEADER = 90
"""Blockiness is consulted only for JPEGs whose header says quality >= this: below it the header
already tells the compression, and drawn shapes in a quality-85 JPEG can read blocky (1.1-2.3
on the studio's demo drawings) while being fine."""
