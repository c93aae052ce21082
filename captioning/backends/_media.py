"""Image preparation for remote captioners: never send the 40 MB original.

Decodes through `prep.images.load_image` (EXIF upright, alpha flattened, JPEG draft decode so a
huge photo is not fully decoded), shrinks to the long side a vision model actually uses and
re-encodes as JPEG without metadata (no EXIF/GPS leaves the machine).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from prep.images import encode_image, load_image

DEFAULT_MAX_SIDE = 1536
"""Gemini tiles images into 768 px squares (258 tokens each); 1536 keeps detail at <= 4 tiles."""


@dataclass(frozen=True)
class PreparedImage:
    data: bytes
    mime_type: str
    size: tuple[int, int]
    """Size sent."""
    original_size: tuple[int, int]


def prepare_image(path: Path | str, *, max_side: int = DEFAULT_MAX_SIDE, quality: int = 90) -> PreparedImage:
    """JPEG bytes of `path`, upright, long side <= `max_side`. Raises prep.images.ImageLoadError."""
    loaded = load_image(path, draft_size=(max_side, max_side))
    im = loaded.image
    if max(im.size) > max_side:
        scale = max_side / max(im.size)
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.Resampling.LANCZOS)
    return PreparedImage(encode_image(im, "jpg", quality), "image/jpeg", im.size, loaded.size)


def file_fingerprint(path: Path | str) -> str:
    """Cheap identity of a source file (size + mtime): a changed image is captioned again."""
    st = Path(path).stat()
    return f"{st.st_size}:{st.st_mtime_ns}"
