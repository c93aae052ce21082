"""Builders for every kind of awkward input image the loader must handle."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


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
