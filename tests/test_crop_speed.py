"""`prep crop` near the decode limit: one decode per image (the contact sheet draws from the
step's own thumbnail), detection on a reduced copy of that decode, a lossless PNG whose pixels are
exactly the Lanczos crop of the full decode, a fast lossless WebP choice, and ONNX sessions that
do not spin. Decodes are counted at Pillow's JPEG plugin (not our code): every `load()` of a
JPEG image object is one decode, with the size it decodes at."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps
from PIL.JpegImagePlugin import JpegImageFile

from prep.crop import SHEET_CELL, CropOptions, crop_folder
from prep.detectors.yunet import YuNetDetector
from prep.onnx import SPIN_KEYS, onnx_session


def _photos(folder: Path, astronaut: Image.Image, n: int = 3) -> list[Path]:
    """2400x1800 JPEGs, the astronaut's face at a random place and size on grain; one EXIF-rotated."""
    folder.mkdir()
    rng = random.Random(3)
    grain = np.random.default_rng(3).integers(60, 190, size=(1800, 2400, 3), dtype=np.uint8)
    paths = []
    for i in range(n):
        im = Image.fromarray(grain)
        side = rng.randint(900, 1700)
        im.paste(astronaut.resize((side, side), Image.Resampling.BILINEAR), (rng.randint(0, 2400 - side), rng.randint(0, 1800 - side)))
        p = folder / f"photo_{i}.jpg"
        if i == n - 1:
            exif = Image.Exif()
            exif[0x0112] = 6
            im.rotate(90, expand=True).save(p, quality=90, exif=exif)
        else:
            im.save(p, quality=90)
        paths.append(p)
    return paths


@pytest.fixture
def decodes(monkeypatch) -> Counter:
    """Decoded size -> how many times Pillow decoded a JPEG at that size."""
    seen: Counter = Counter()
    real = JpegImageFile.load

    def load(self, *a, **k):
        if self.tile:  # pixels not read yet: this call decodes
            seen[self.size] += 1  # after draft(): the reduced size
        return real(self, *a, **k)

    monkeypatch.setattr(JpegImageFile, "load", load)
    return seen


def _opts(yunet_model: Path, **kw) -> CropOptions:
    return CropOptions(detector="photo", detector_model=str(yunet_model), resolution=512, workers=1, upscale=True, **kw)


def test_one_full_decode_per_image_sheet_included_and_every_face_found(tmp_path, astronaut, yunet_model, decodes):
    paths = _photos(tmp_path / "raw", astronaut)
    rep = crop_folder(tmp_path / "raw", tmp_path / "out", _opts(yunet_model))
    assert rep.contact_sheets and rep.contact_sheets[0].is_file()
    assert all(r.data.get("faces") for r in rep.results), [(r.id, r.reason) for r in rep.results if not r.data.get("faces")]
    stored: Counter = Counter()
    for p in paths:
        with Image.open(p) as im:
            stored[im.size] += 1
    sources = Counter({size: k for size, k in decodes.items() if max(size) > SHEET_CELL})
    assert sources == stored  # one decode per image, at full size; none reduced, none for the sheet
    thumbs = Counter({size: k for size, k in decodes.items() if max(size) <= SHEET_CELL})
    assert sum(thumbs.values()) == len(paths)  # the sheet read the step's thumbnails instead


def test_default_png_is_exactly_the_lanczos_crop_of_the_full_decode(tmp_path, astronaut, yunet_model):
    _photos(tmp_path / "raw", astronaut)
    rep = crop_folder(tmp_path / "raw", tmp_path / "out", _opts(yunet_model, contact_sheet=False))
    for r in rep.results:
        with Image.open(r.source) as im:
            upright = ImageOps.exif_transpose(im).convert("RGB")
        (box,), (bucket,) = r.data["crop"], r.data["buckets"]
        want = upright.resize(tuple(bucket), Image.Resampling.LANCZOS, box=tuple(box), reducing_gap=3.0)
        with Image.open(tmp_path / "out" / r.outputs[0]) as got:
            assert got.format == "PNG"
            assert np.array_equal(np.asarray(got.convert("RGB")), np.asarray(want)), r.id


def test_webp_lossless_keeps_the_png_pixels(tmp_path, astronaut, yunet_model):
    _photos(tmp_path / "raw", astronaut, n=2)
    png = crop_folder(tmp_path / "raw", tmp_path / "png", _opts(yunet_model, contact_sheet=False))
    webp = crop_folder(tmp_path / "raw", tmp_path / "webp", _opts(yunet_model, contact_sheet=False, format="webp-lossless"))
    for a, b in zip(png.results, webp.results):
        assert b.outputs[0].endswith(".webp")
        with Image.open(tmp_path / "png" / a.outputs[0]) as x, Image.open(tmp_path / "webp" / b.outputs[0]) as y:
            assert y.format == "WEBP"
            assert np.array_equal(np.asarray(x.convert("RGB")), np.asarray(y.convert("RGB")))


def test_sheet_thumbnail_missing_falls_back_to_decoding_the_source(tmp_path, astronaut, yunet_model, decodes):
    _photos(tmp_path / "raw", astronaut, n=2)
    out = tmp_path / "out"
    first = crop_folder(tmp_path / "raw", out, _opts(yunet_model))
    thumbs = sorted((out / ".sheet_thumbs").glob("*.jpg"))
    assert len(thumbs) == 2
    for t in thumbs:
        t.unlink()
    first.contact_sheets[0].unlink()  # the page must be drawn again, without thumbnails
    decodes.clear()
    again = crop_folder(tmp_path / "raw", out, _opts(yunet_model))
    assert again.summary()["resumed"] == 2 and again.contact_sheets[0].is_file()
    assert sum(decodes.values()) == 2  # each source decoded once (reduced) for its tile


def test_every_session_prep_builds_does_not_spin(yunet_model):
    sess = onnx_session(yunet_model)
    so = sess.get_session_options()
    assert [so.get_session_config_entry(k) for k in SPIN_KEYS] == ["0", "0"]
    det = YuNetDetector(yunet_model, threads=2)
    so = det._sess().get_session_options()
    assert [so.get_session_config_entry(k) for k in SPIN_KEYS] == ["0", "0"]
    assert so.intra_op_num_threads == 2
    spinning = onnx_session(yunet_model, allow_spinning=True).get_session_options()
    assert [spinning.get_session_config_entry(k) for k in SPIN_KEYS] == ["1", "1"]
