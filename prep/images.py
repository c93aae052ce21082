"""The one image loader and writer of the project.

Everything that needs pixels calls `load_image`, so every step sees the same upright, flattened
RGB image: EXIF orientation applied to the pixels, alpha composited onto a background, odd
modes (palette, LA, CMYK, 16-bit, I;16, float) converted correctly, decompression bombs
refused. Failures raise one error type, `ImageLoadError`, whose message names the file, the
reason and the fix; the executor records it for that item and the batch goes on.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError, features

from prep.fsutil import atomic_write_with
from prep.inputs import NotRegularFile, open_input, printable

Image.init()
_PILLOW_OPENS = {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}

_OPTIONAL_FORMATS: dict[str, tuple[str, ...]] = {
    "AVIF": (".avif", ".avifs"),
    "HEIF": (".heic", ".heif", ".hif"),
}
"""Formats Pillow reads only when built with (AVIF: Pillow >= 11.3 wheels) or given (HEIF: the
pillow-heif plugin) support; their extensions are read when this Pillow can, else named as
unsupported with the fix (see `unsupported_reason`)."""

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
    | {ext for exts in _OPTIONAL_FORMATS.values() for ext in exts if ext in _PILLOW_OPENS}
)
"""Extensions we read, compared lower-cased (so `.JPG` and `.Png` count). `.jfif`/`.jpe` are
JPEG; AVIF and HEIC join when the installed Pillow can open them."""

_UNSUPPORTED_FIX: dict[str, str] = {
    **{ext: "HEIC/HEIF needs the pillow-heif plugin (`pip install pillow-heif`), or convert it to JPEG or PNG"
       for ext in _OPTIONAL_FORMATS["HEIF"]},
    **{ext: ("this Pillow was built without AVIF: `pip install -U 'pillow>=11.3'` (its wheels read AVIF), "
             "or convert it to JPEG or PNG") for ext in _OPTIONAL_FORMATS["AVIF"]},
    ".jxl": "JPEG XL needs a Pillow plugin (`pip install pillow-jxl-plugin`), or convert it to JPEG or PNG",
    ".svg": "vector images are not read: render it to PNG at the training size",
    ".psd": "convert the layered file to PNG (flattened) first",
    **{ext: "camera RAW is not read: develop it to JPEG or 16-bit TIFF first (darktable, RawTherapee, Lightroom)"
       for ext in (".dng", ".cr2", ".cr3", ".nef", ".arw", ".orf", ".rw2", ".raf", ".srw", ".pef")},
}
"""Image formats users bring that we do not read (our list; .psd is refused on purpose: Pillow
would read only its merged preview), each with the fix. Discovery names them, never ignores them."""


def unsupported_reason(path: Path | str) -> str | None:
    """Why an image of this extension is not read and what to do, or None (not an image we know of, or readable)."""
    ext = Path(path).suffix.lower()
    if ext in IMAGE_EXTENSIONS:
        return None
    fix = _UNSUPPORTED_FIX.get(ext)
    return f"unsupported image format {ext}: {fix}" if fix else None


def avif_supported() -> bool:
    """This Pillow reads AVIF (Pillow >= 11.3 built with libavif)."""
    return ".avif" in _PILLOW_OPENS and bool(features.check("avif"))

DEFAULT_MAX_PIXELS = 178_956_970
"""Same ceiling as Pillow's hard decompression-bomb limit (2 x 89.5 MP)."""

ImageFile.LOAD_TRUNCATED_IMAGES = False
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

Color = tuple[int, int, int]

_NAMED_COLORS: dict[str, Color] = {
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "gray": (128, 128, 128),
    "grey": (128, 128, 128),
}


class ImageLoadError(Exception):
    """An image could not be used. `str()` names the file, the reason and what to do."""

    def __init__(self, path: Path | str, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{printable(self.path)}: {reason}")


@dataclass
class LoadedImage:
    """An upright RGB image and what we learned while loading it."""

    path: Path
    image: Image.Image
    """RGB pixels, EXIF orientation applied, alpha flattened. May be reduced (see `scale`)."""
    size: tuple[int, int]
    """Full-resolution upright size (width, height), whatever `image` was decoded at."""
    format: str
    mode: str
    """The file's own mode before conversion (RGBA, P, CMYK, I;16, ...)."""
    has_alpha: bool = False
    """The file has an alpha channel (or palette transparency)."""
    transparent: bool = False
    """Some pixel is not fully opaque: the background colour shows in `image`."""
    exif_orientation: int = 1
    n_frames: int = 1
    alpha: Image.Image | None = field(default=None, repr=False)
    """The alpha channel (mode L, same size as `image`) when `keep_alpha` was asked for."""

    @property
    def scale(self) -> float:
        """Decoded width over full width (1.0 unless a draft decode was used)."""
        return self.image.width / self.size[0] if self.size[0] else 1.0

    @property
    def exif_rotated(self) -> bool:
        return self.exif_orientation not in (0, 1)


def parse_color(value: str | Color) -> Color:
    """'white', '#RRGGBB' or 'R,G,B' to an RGB tuple; raises ValueError with the accepted forms."""
    if isinstance(value, tuple):
        return value
    v = value.strip().lower()
    if v in _NAMED_COLORS:
        return _NAMED_COLORS[v]
    if v.startswith("#") and len(v) == 7:
        try:
            return tuple(int(v[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]
        except ValueError:
            pass
    parts = v.split(",")
    if len(parts) == 3 and all(p.strip().isdigit() and 0 <= int(p) <= 255 for p in parts):
        return tuple(int(p) for p in parts)  # type: ignore[return-value]
    raise ValueError(f"unknown colour {value!r}: use white, black, gray, '#RRGGBB' or 'R,G,B'")


def is_image_path(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


_PNG_CHUNK_SCAN_LIMIT = 100_000
"""Chunks walked looking for a late eXIf before giving up (our bound: a real PNG has tens)."""


def _png_late_exif(im: Image.Image) -> bytes | None:
    """A PNG's eXIf chunk found after the pixel data, by seeking over the chunks (nothing inflated).

    Pillow reads chunks before IDAT at open; for one after IDAT its `getexif()` decodes every
    pixel first (27 ms for a 12 MP PNG, against a header read's 0.03 ms). Returns the bytes as
    Pillow stores them in `info["exif"]`, or None.
    """
    fp = im.fp
    if fp is None:
        return None
    pos = fp.tell()
    try:
        fp.seek(8)  # after the signature
        for _ in range(_PNG_CHUNK_SCAN_LIMIT):
            head = fp.read(8)
            if len(head) < 8:
                return None
            length, kind = int.from_bytes(head[:4], "big"), head[4:]
            if kind == b"eXIf":
                body = fp.read(length)
                return b"Exif\x00\x00" + body if len(body) == length else None
            if kind == b"IEND":
                return None
            fp.seek(length + 4, 1)  # data and CRC
        return None
    finally:
        fp.seek(pos)


def _exif_orientation(im: Image.Image) -> int:
    """The EXIF orientation from what the header holds, never by decoding pixels.

    JPEG, WebP and TIFF carry EXIF in headers Pillow parses at open; a PNG's eXIf chunk is
    usually before the pixels (then in `info`), else found by `_png_late_exif`.
    """
    try:
        if im.format == "PNG" and "exif" not in im.info and im.tile:
            late = _png_late_exif(im)
            if late is None:
                # Base getexif: XMP before IDAT still counts; PngImageFile's would decode.
                return int(Image.Image.getexif(im).get(0x0112, 1) or 1)
            im.info["exif"] = late
        return int(im.getexif().get(0x0112, 1) or 1)
    except Exception:  # malformed EXIF must not cost the image
        return 1


def _to_8bit(im: Image.Image) -> Image.Image:
    """Convert 16/32-bit integer and float single-channel images to 8-bit L, keeping range."""
    arr = np.asarray(im)
    if arr.dtype.kind == "f":
        hi = float(np.nanmax(arr)) if arr.size else 1.0
        arr = np.nan_to_num(arr)
        arr = arr * 255.0 if hi <= 1.0 else arr
    elif arr.dtype.itemsize > 1 or im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        hi = int(arr.max()) if arr.size else 0
        # 16-bit data stored in a 32-bit container ("I") is still 0..65535.
        arr = arr / 257.0 if hi > 255 else arr
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L")


def _flatten(im: Image.Image, background: Color, keep_alpha: bool) -> tuple[Image.Image, bool, bool, Image.Image | None]:
    """Return (RGB image, has_alpha, transparent, alpha or None)."""
    mode = im.mode
    if mode == "P":
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
    elif mode == "PA":
        im = im.convert("RGBA")
    elif mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        im = _to_8bit(im)
    elif mode == "1":
        im = im.convert("L")
    elif mode == "RGBa":
        im = im.convert("RGBA")
    elif mode == "La":
        im = im.convert("LA")

    if im.mode == "LA":
        im = im.convert("RGBA")
    if im.mode == "RGBA":
        alpha = im.getchannel("A")
        lo, _ = alpha.getextrema()
        transparent = lo < 255
        if transparent:
            base = Image.new("RGBA", im.size, background + (255,))
            rgb = Image.alpha_composite(base, im).convert("RGB")
        else:
            rgb = im.convert("RGB")
        return rgb, True, transparent, (alpha if keep_alpha else None)
    if im.mode != "RGB":
        im = im.convert("RGB")  # L, CMYK, YCbCr, LAB, HSV ...
    return im, False, False, None


def _reason_for(exc: BaseException, path: Path) -> str:
    msg = str(exc)
    if isinstance(exc, UnidentifiedImageError):
        try:
            if path.stat().st_size == 0:
                return "empty file (0 bytes): the copy or download did not finish; copy it again or remove it"
        except OSError:
            pass
        return "not a readable image (unknown or corrupt format): re-export it as PNG or JPEG, or remove it"
    if "truncated" in msg.lower():
        return "file is truncated (incomplete download or copy): copy it again from the original"
    if isinstance(exc, Image.DecompressionBombError):
        return f"refused as a decompression bomb ({msg}); if the file is trusted, raise --max-pixels"
    if isinstance(exc, (SyntaxError, ValueError, OSError, EOFError)):
        return f"corrupt image data ({msg or type(exc).__name__}): re-export it or remove it"
    return f"cannot decode ({type(exc).__name__}: {msg}): re-export it as PNG or JPEG"


def load_image(
    path: Path | str,
    *,
    background: Color | str = (255, 255, 255),
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: tuple[int, int] | None = None,
    keep_alpha: bool = False,
    data: bytes | None = None,
) -> LoadedImage:
    """Open `path` as an upright RGB image.

    `data`: decode these bytes (e.g. a model's output) instead of reading `path`, which then
    only names them in messages.

    `draft_size` asks for a fast reduced decode when only a small version is needed (JPEG DCT
    scaling: a 12 MP photo decodes at 1/2, 1/4 or 1/8 size, never smaller than `draft_size` on
    either side). `LoadedImage.size` is always the full upright size.
    """
    path = Path(path)
    bg = parse_color(background)
    if Image.MAX_IMAGE_PIXELS is not None and max_pixels > 2 * Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = max_pixels  # let a raised --max-pixels through Pillow's own guard
    try:
        with (io.BytesIO(data) if data is not None else open_input(path)) as fh, Image.open(fh) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise ImageLoadError(
                    path,
                    f"{w}x{h} = {w * h / 1e6:.0f} MP is above the limit of {max_pixels / 1e6:.0f} MP "
                    "(decompression-bomb guard); if the file is trusted, raise --max-pixels",
                )
            fmt = im.format or path.suffix.lstrip(".").upper()
            mode = im.mode
            n_frames = getattr(im, "n_frames", 1)
            orientation = _exif_orientation(im)
            if draft_size and fmt == "JPEG":
                side = max(draft_size)
                im.draft("RGB" if mode not in ("CMYK", "L") else mode, (side, side))
            if n_frames > 1:
                im.seek(0)
            im.load()
            if orientation not in (0, 1):
                im = ImageOps.exif_transpose(im)
            full = (h, w) if orientation in (5, 6, 7, 8) else (w, h)
            rgb, has_alpha, transparent, alpha = _flatten(im, bg, keep_alpha)
            if "transparency" in im.info and mode == "P":
                has_alpha = True
    except ImageLoadError:
        raise
    except NotRegularFile as exc:
        raise ImageLoadError(path, exc.reason) from None
    except FileNotFoundError:
        raise ImageLoadError(path, "file not found (moved or deleted during the run)") from None
    except PermissionError:
        raise ImageLoadError(path, "permission denied: make the file readable") from None
    except Exception as exc:  # Pillow raises many types for bad data
        raise ImageLoadError(path, _reason_for(exc, path)) from exc
    if draft_size and rgb.width > full[0]:
        full = rgb.size
    return LoadedImage(
        path=path,
        image=rgb,
        size=full,
        format=fmt,
        mode=mode,
        has_alpha=has_alpha,
        transparent=transparent,
        exif_orientation=orientation,
        n_frames=n_frames,
        alpha=alpha,
    )


VERIFY_DRAFT = (64, 64)


def verify_image(path: Path | str, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Prove `path` decodes (what may reach a dataset): the one loader, at a reduced JPEG decode.

    A header check alone passes truncated files; decoding every pixel row (JPEG at 1/8 scale)
    catches truncation and corrupt data for a fraction of a full decode. Raises ImageLoadError.
    """
    return load_image(path, draft_size=VERIFY_DRAFT, max_pixels=max_pixels)


def probe_image(path: Path | str) -> tuple[int, int, str]:
    """Upright (width, height, format) from the header only; raises ImageLoadError."""
    path = Path(path)
    try:
        with open_input(path) as fh, Image.open(fh) as im:
            w, h = im.size
            o = _exif_orientation(im)
            fmt = im.format or ""
    except NotRegularFile as exc:
        raise ImageLoadError(path, exc.reason) from None
    except Exception as exc:
        raise ImageLoadError(path, _reason_for(exc, path)) from exc
    return (h, w, fmt) if o in (5, 6, 7, 8) else (w, h, fmt)


SAVE_FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP", "webp-lossless": "WEBP"}
"""Output formats by name. `webp-lossless` writes `.webp` files (lossless WebP); `webp` is lossy."""
FORMAT_EXTENSIONS = {"png": ".png", "jpg": ".jpg", "jpeg": ".jpg", "webp": ".webp", "webp-lossless": ".webp"}

PNG_COMPRESS_LEVEL = 1
PNG_COMPRESS_TYPE = 3
"""zlib level 1 with the Z_RLE strategy (Pillow passes `compress_type` to zlib as the strategy):
lossless like every PNG, 35 % less encode time than level 2 with the default strategy and
slightly smaller files on photos (a 896x1152 crop: 65-73 ms vs 101 ms; docs/crop.md). zlib's
manual: Z_RLE "is designed to be almost as fast as Z_HUFFMAN_ONLY, but give better compression
for PNG image data"."""


def stored_size(path: Path | str) -> tuple[int, int]:
    """(width, height) as stored in the header, before EXIF rotation.

    sd-scripts (imagesize) and musubi-tuner (PIL) ignore EXIF orientation, so bucket maths
    that must match the trainer uses this, not the upright size.
    """
    path = Path(path)
    try:
        with open_input(path) as fh, Image.open(fh) as im:
            return im.size
    except NotRegularFile as exc:
        raise ImageLoadError(path, exc.reason) from None
    except Exception as exc:
        raise ImageLoadError(path, _reason_for(exc, path)) from exc


def exif_orientation(path: Path | str) -> int:
    """The EXIF orientation tag (1 when absent); trainers do not apply it."""
    path = Path(path)
    try:
        with open_input(path) as fh, Image.open(fh) as im:
            return _exif_orientation(im)
    except NotRegularFile as exc:
        raise ImageLoadError(path, exc.reason) from None
    except Exception as exc:
        raise ImageLoadError(path, _reason_for(exc, path)) from exc


def encode_image(image: Image.Image, fmt: str = "png", quality: int = 95) -> bytes:
    """Encode without any metadata (no EXIF, no GPS), JPEG at 4:4:4 chroma."""
    fmt = fmt.lower().lstrip(".")
    kind = SAVE_FORMATS.get(fmt)
    if kind is None:
        raise ValueError(f"unknown output format {fmt!r}: use png, jpg, webp or webp-lossless")
    buf = io.BytesIO()
    if kind == "JPEG":
        image.convert("RGB").save(buf, "JPEG", quality=quality, subsampling=0, optimize=False)
    elif kind == "WEBP" and fmt.lower() == "webp-lossless":
        # lossless; quality 0 / method 0 is libwebp's fastest effort (44 ms for a 896x1152
        # crop, 20 % smaller than our PNG); the pixels are the same whatever the effort
        image.save(buf, "WEBP", lossless=True, quality=0, method=0)
    elif kind == "WEBP":
        image.save(buf, "WEBP", quality=quality, method=4)
    else:
        image.save(buf, "PNG", compress_level=PNG_COMPRESS_LEVEL, compress_type=PNG_COMPRESS_TYPE)
    return buf.getvalue()


def save_image(image: Image.Image, path: Path | str, *, fmt: str | None = None, quality: int = 95) -> Path:
    """Write `image` atomically (temp file + rename) with no metadata; returns the path."""
    path = Path(path)
    data = encode_image(image, fmt or path.suffix or "png", quality)
    atomic_write_with(path, lambda fh: fh.write(data))
    return path
