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


# -- video clips -------------------------------------------------------------------------------

VIDEO_MIME: dict[str, str] = {
    # What we send as the clip's MIME type. Gemini lists mp4, mpeg, mov, avi, x-flv, mpg, webm, wmv
    # and 3gpp (ai.google.dev/gemini-api/docs/video-understanding, "Supported video formats");
    # .mkv and .gif are not among them: `prep clips` writes mp4.
    ".mp4": "video/mp4", ".m4v": "video/mp4", ".mov": "video/mov", ".webm": "video/webm",
    ".avi": "video/avi", ".mpeg": "video/mpeg", ".mpg": "video/mpg", ".wmv": "video/wmv",
    ".flv": "video/x-flv", ".3gp": "video/3gpp",
}

DEFAULT_VIDEO_FRAMES = 16
"""Frames a video model should see of one clip (our choice): a Wan clip is 81 frames (~5 s at
16 fps); 16 samples show every phase of a movement while costing 16 frames of tokens, not 81."""


def is_video_item(item: object) -> bool:
    """A clip (flagged by the pipeline, or named like one), not a still image."""
    flags = getattr(item, "flags", None) or {}
    if "video" in flags:
        return bool(flags["video"])
    from prep.video import is_video_path

    return is_video_path(getattr(item, "path", item))  # type: ignore[arg-type]


def video_mime(path: Path | str) -> str | None:
    """The MIME type a video API takes for this file, or None when it takes none of ours."""
    return VIDEO_MIME.get(Path(path).suffix.lower())


def sampling_fps(duration: float, fps: float, frames: int = DEFAULT_VIDEO_FRAMES) -> float:
    """Frames per second to sample so that about `frames` frames cover the clip: at least 1
    (Gemini's default rate), never more than the clip has (a 2 s clip at 16 fps: 8; a 5 s clip: 3.2)."""
    if duration <= 0:
        return 1.0
    want = frames / duration
    top = fps if fps and fps > 0 else want
    return round(max(1.0, min(want, top)), 3)


def sample_indices(n_frames: int, count: int) -> list[int]:
    """`count` frame indices spread evenly over a clip (centres of equal segments), no repeats."""
    if n_frames <= 0 or count <= 0:
        return []
    count = min(count, n_frames)
    return sorted({min(n_frames - 1, int((i + 0.5) * n_frames / count)) for i in range(count)})
