"""Issue 17: EXIF orientation is read from headers, never by decoding pixels; one decode per load."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from prep.images import exif_orientation, load_image, probe_image


@pytest.fixture()
def decodes(monkeypatch) -> list[str]:
    """Every real pixel decode (Pillow's ImageFile.load with tiles left to decode), by format."""
    seen: list[str] = []
    original = ImageFile.ImageFile.load

    def counting(self):  # type: ignore[no-untyped-def]
        if self.tile:
            seen.append(self.format or "?")
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counting)
    return seen


def _exif(orientation: int) -> bytes:
    ex = Image.Exif()
    ex[0x0112] = orientation
    return ex.tobytes()


def _marked(w: int = 40, h: int = 20) -> Image.Image:
    """Wide image, red in its left half: where red ends up shows the rotation."""
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:, : w // 2] = (255, 0, 0)
    return Image.fromarray(arr)


def _png_exif_after_idat(path: Path, orientation: int) -> None:
    """A PNG whose eXIf chunk follows the pixel data (allowed by the PNG extensions spec 1.5)."""
    _marked().save(path)
    data = path.read_bytes()
    iend = data.rindex(b"IEND") - 4
    body = _exif(orientation)[6:]  # the eXIf chunk holds the TIFF header onwards, no "Exif\0\0"
    chunk = struct.pack(">I", len(body)) + b"eXIf" + body + struct.pack(">I", zlib.crc32(b"eXIf" + body))
    path.write_bytes(data[:iend] + chunk + data[iend:])


def test_orientation_of_png_and_jpeg_reads_no_pixels(tmp_path, decodes):
    png, jpg, tif, webp = (tmp_path / f"a.{e}" for e in ("png", "jpg", "tif", "webp"))
    _marked().save(png)
    _marked().save(jpg, exif=_exif(6))
    _marked().save(tif, exif=_exif(8))
    _marked().save(webp, exif=_exif(3))
    assert [exif_orientation(p) for p in (png, jpg, tif, webp)] == [1, 6, 8, 3]
    assert [probe_image(p) for p in (png, jpg)] == [(40, 20, "PNG"), (20, 40, "JPEG")]
    assert decodes == []


def test_png_exif_after_idat_found_without_decoding(tmp_path, decodes):
    p = tmp_path / "late.png"
    _png_exif_after_idat(p, 6)
    assert exif_orientation(p) == 6
    assert probe_image(p)[:2] == (20, 40)
    assert decodes == []


def _red_on_top(im: Image.Image) -> bool:
    arr = np.asarray(im)
    return arr[1, arr.shape[1] // 2, 0] > 200 and arr[-2, arr.shape[1] // 2, 0] < 50


@pytest.mark.parametrize("kind", ["jpeg", "png_before_idat", "png_after_idat"])
def test_rotated_images_come_out_upright_with_one_decode(tmp_path, decodes, kind):
    p = tmp_path / ("r.jpg" if kind == "jpeg" else "r.png")
    if kind == "jpeg":
        _marked().save(p, exif=_exif(6), quality=100)
    elif kind == "png_before_idat":
        _marked().save(p, exif=_exif(6))
    else:
        _png_exif_after_idat(p, 6)
    loaded = load_image(p)
    assert loaded.exif_orientation == 6
    assert loaded.image.size == (20, 40) == loaded.size
    assert _red_on_top(loaded.image)  # orientation 6: rotate 90 clockwise, the left half goes on top
    assert len(decodes) == 1
