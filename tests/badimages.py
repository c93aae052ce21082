"""Builders for every kind of awkward input image the loader must handle."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, features


def gradient(w: int = 96, h: int = 64, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None, None]
    base = np.concatenate([x.repeat(h, 0), y.repeat(w, 1), np.full((h, w, 1), 128, np.float32)], axis=2)
    base += rng.normal(0, 4, base.shape)
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")


def exif_rotated_jpeg(path: Path, orientation: int = 6, size: tuple[int, int] = (120, 80)) -> Path:
    """A JPEG stored landscape with an Orientation tag (6 = rotate 90 CW to view)."""
    im = gradient(*size)
    exif = Image.Exif()
    exif[0x0112] = orientation
    im.save(path, "JPEG", quality=90, exif=exif.tobytes())
    return path


def png_bomb_header(path: Path, w: int = 60000, h: int = 60000) -> Path:
    """A tiny PNG whose header claims w x h pixels (a decompression bomb's calling card)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    path.write_bytes(data)
    return path


def write_bad_folder(folder: Path) -> dict[str, str]:
    """Every bad-input kind in one folder. Returns {file name: kind}."""
    folder.mkdir(parents=True, exist_ok=True)
    kinds: dict[str, str] = {}

    def add(name: str, kind: str) -> Path:
        kinds[name] = kind
        return folder / name

    gradient().save(add("good.jpg", "ok"), "JPEG", quality=92)
    gradient(seed=1).save(add("UPPER.PNG", "ok"), "PNG")
    add("empty.jpg", "zero-byte").write_bytes(b"")
    buf = io.BytesIO()
    gradient(400, 300, seed=2).save(buf, "JPEG", quality=95)
    add("truncated.jpg", "truncated").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    add("corrupt.png", "corrupt").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 50)
    add("notanimage.webp", "corrupt").write_bytes(b"hello, I am text")
    gradient(seed=3).convert("CMYK").save(add("cmyk.jpg", "cmyk"), "JPEG", quality=95)
    arr16 = (np.linspace(0, 65535, 64 * 96).reshape(64, 96)).astype(np.uint16)
    Image.fromarray(arr16).save(add("gray16.png", "16-bit"), "PNG")
    exif_rotated_jpeg(add("rotated.jpg", "exif-rotated"))
    rgba = gradient(seed=4).convert("RGBA")
    a = np.array(rgba)
    a[:, :48, 3] = 0
    Image.fromarray(a, "RGBA").save(add("alpha.png", "alpha"), "PNG")
    pal = gradient(seed=5).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.info["transparency"] = 0
    pal.save(add("palette.png", "palette"), "PNG", transparency=0)
    gradient(seed=6).convert("LA").save(add("la.png", "LA"), "PNG")
    frames = [gradient(seed=s).convert("P") for s in (7, 8, 9)]
    frames[0].save(add("anim.gif", "animated"), save_all=True, append_images=frames[1:], duration=100, loop=0)
    gradient(seed=10).save(add("scan.tiff", "tiff"), "TIFF")
    gradient(seed=11).save(add("paint.bmp", "bmp"), "BMP")
    png_bomb_header(add("bomb.png", "bomb"))
    (folder / "good.txt").write_text("1girl, solo\n", encoding="utf-8")
    (folder / "cmyk.txt").write_text("", encoding="utf-8")
    (folder / "orphan.txt").write_text("no image for me", encoding="utf-8")
    (folder / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    gradient(seed=12).save(add("latin1.png", "caption-not-utf8"), "PNG")
    return kinds


# --- hostile folders: what a user's disk can hold besides images (issue 12) ----------------

NON_UTF8_NAME = os.fsdecode(b"caf\xe9_photo.png")
"""A name whose bytes are Latin-1, not UTF-8: the OS gives it with a surrogate escape."""
NON_UTF8_SHOWN = "caf\\xe9_photo.png"
"""How every report shows it."""
LONG_NAME = "n" * 246 + ".png"
"""250 bytes: near the 255-byte limit of one name (its caption name is as long)."""
MARKUP_NAME = "[bold]loud[/bold].png".replace("/", "")  # '[bold]loud[bold].png': rich would eat '[bold]'
BIG_CAPTION_BYTES = 5 * 1024 * 1024


def _solid(path: Path, rgb: tuple[int, int, int], fmt: str | None = None) -> None:
    Image.new("RGB", (64, 64), rgb).save(path, fmt)


def write_hostile_folder(folder: Path) -> dict[str, str]:
    """Good images beside every special file and awkward name a folder can hold.

    Returns {name: kind}; kind "ok" marks images that must reach a dataset, every other kind
    must be named in each command's report. Device nodes need CAP_MKNOD: made where allowed.
    """
    folder.mkdir(parents=True, exist_ok=True)
    kinds: dict[str, str] = {}

    def add(name: str, kind: str) -> Path:
        kinds[name] = kind
        return folder / name

    _solid(add("red.png", "ok"), (255, 0, 0))
    _solid(add("blue.jpg", "ok"), (0, 0, 255), "JPEG")
    (folder / "blue.txt").write_text("1girl, solo\n", encoding="utf-8")
    _solid(add("contact_sheet.jpg", "ok"), (0, 128, 0), "JPEG")  # the user's own image of that name
    _solid(add("photo.jfif", "ok"), (10, 20, 200), "JPEG")
    _solid(add(NON_UTF8_NAME, "ok"), (200, 100, 0))
    _solid(add(LONG_NAME, "ok"), (0, 200, 200))
    _solid(add(MARKUP_NAME, "ok"), (120, 0, 120))
    _solid(add("big.png", "ok"), (250, 250, 0))
    tags = "".join(f"tag{i % 997}, " for i in range(BIG_CAPTION_BYTES // 8))
    (folder / "big.txt").write_text(tags[:BIG_CAPTION_BYTES], encoding="utf-8")

    os.symlink("loop.jpg", add("loop.jpg", "symlink loop"))
    os.symlink("missing-target.png", add("dangling.png", "dangling symlink"))
    os.symlink("/dev/zero", add("devzero.jpg", "symlink to a device"))
    os.mkfifo(add("pipe.jpg", "FIFO"))
    try:
        os.mknod(add("node.png", "device"), 0o644 | stat.S_IFCHR, os.makedev(1, 5))
    except (PermissionError, OSError):
        del kinds["node.png"]
    # captions that must never be opened or overwritten
    _solid(add("capfifo.png", "caption is a FIFO"), (1, 2, 3))
    os.mkfifo(folder / "capfifo.txt")
    _solid(add("capdir.png", "caption is a folder"), (4, 5, 6))
    (folder / "capdir.txt").mkdir()
    (folder / "capdir.txt" / "inner.txt").write_text("not a caption")
    _solid(add("latin1.png", "caption not UTF-8"), (7, 8, 9))
    (folder / "latin1.txt").write_bytes("caf\xe9, 1girl".encode("latin-1"))
    # images that do not decode
    add("empty.jpg", "zero-byte").write_bytes(b"")
    buf = io.BytesIO()
    gradient(400, 300, seed=2).save(buf, "JPEG", quality=95)
    add("truncated.jpg", "truncated").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    add("corrupt.png", "corrupt").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 50)
    # formats users bring: AVIF reads where this Pillow can (>= 11.3 wheels), else it is named with the fix
    if features.check("avif"):
        _solid(add("modern.avif", "ok"), (90, 180, 30), "AVIF")
    else:
        add("modern.avif", "unsupported").write_bytes(b"\x00\x00\x00\x1cftypavif" + b"\x00" * 64)
    add("phone.heic", "unsupported").write_bytes(b"\x00\x00\x00\x18ftypheic" + b"\x00" * 64)
    return kinds


def hostile_digest(folder: Path) -> dict[str, str]:
    """sha256 of every regular file under `folder` and the kind of everything else, never opening a special file."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            rel = os.fsencode(p.relative_to(folder)).hex()
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = "link:" + os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                out[rel] = f"mode:{stat.S_IFMT(st.st_mode):o}"
    return out
