"""Quality flags of `prep check` on real photos: blurred, greyscale, sepia and re-encoded copies
are flagged, the originals are not (scikit-image's sample photos; no download)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from prep.check import CheckOptions, check_folder
from prep.quality import blockiness, chroma_spread, jpeg_quality, sharpness

data = pytest.importorskip("skimage.data")

PHOTOS = ("astronaut", "coffee", "rocket", "chelsea")


def _sepia(a: np.ndarray) -> np.ndarray:
    g = np.asarray(Image.fromarray(a).convert("L"), dtype=np.float32)
    return np.stack([g, g * 0.85, g * 0.62], -1).clip(0, 255).astype(np.uint8)


def _resaved(im: Image.Image) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=10)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


@pytest.fixture(scope="module")
def photo_set(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for name in PHOTOS:
        a = getattr(data, name)()
        im = Image.fromarray(a)
        im.save(folder / f"{name}.png")
        im.save(folder / f"{name}_q95.jpg", quality=95)
        Image.fromarray(cv2.GaussianBlur(a, (0, 0), 3)).save(folder / f"{name}_blur.png")
        im.convert("L").save(folder / f"{name}_grey.png")
        Image.fromarray(_sepia(a)).save(folder / f"{name}_sepia.jpg", quality=90)
        im.save(folder / f"{name}_q15.jpg", quality=15)
        _resaved(im).save(folder / f"{name}_resaved.jpg", quality=95)
    return folder


@pytest.fixture(scope="module")
def report(photo_set):
    return check_folder(photo_set, CheckOptions(workers=2, resolution=512))


def _flagged(rep, kind: str) -> set[str]:
    return {e["file"] for e in rep.problems()[kind]}


def test_originals_are_not_flagged(report):
    for name in PHOTOS:
        for f in (f"{name}.png", f"{name}_q95.jpg"):
            flags = next(x.flags for x in report.images if x.id == f)
            assert not ({"blurry", "monochrome", "jpeg_artifacts"} & set(flags)), (f, flags)


def test_blurred_copies_are_blurry(report):
    assert {f"{n}_blur.png" for n in PHOTOS} <= _flagged(report, "blurry")
    assert not {f"{n}.png" for n in PHOTOS} & _flagged(report, "blurry")


def test_grey_and_sepia_are_monochrome(report):
    mono = _flagged(report, "monochrome")
    assert {f"{n}_grey.png" for n in PHOTOS} | {f"{n}_sepia.jpg" for n in PHOTOS} <= mono
    assert not {f"{n}.png" for n in PHOTOS} & mono


def test_low_quality_and_resaved_jpegs_have_artefacts(report):
    art = _flagged(report, "jpeg_artifacts")
    assert {f"{n}_q15.jpg" for n in PHOTOS} <= art
    # re-saved at quality 95: the header says 95, only the block grid gives it away
    assert {f"{n}_resaved.jpg" for n in PHOTOS} <= art
    assert not {f"{n}_q95.jpg" for n in PHOTOS} & art


def test_astronaut_face_region_measured_and_small_face_depends_on_resolution(photo_set, report):
    f = next(x for x in report.images if x.id == "astronaut.png")
    assert f.faces and f.quality["sharpness_on"] == "face"
    h = f.faces[0][3] - f.faces[0][1]
    assert 80 < h < 160  # her face in the 512 px photo
    assert "face_small" not in f.flags  # bust at 512: a 90 px floor
    big = check_folder(photo_set, CheckOptions(workers=2, resolution=1024))
    assert "astronaut.png" in _flagged(big, "face_small")  # bust at 1024 needs a 179 px face
    assert "coffee.png" in _flagged(report, "no_face")
    assert "astronaut.png" not in _flagged(report, "no_face")


def test_thresholds_are_options(photo_set):
    rep = check_folder(photo_set, CheckOptions(workers=2, resolution=512, blur_threshold=0, mono_threshold=0, jpeg_min_quality=0,
                                               blockiness_threshold=100, faces=False))
    for kind in ("blurry", "monochrome", "jpeg_artifacts", "no_face", "face_small"):
        assert rep.problems()[kind] == [], kind
    assert all(f.faces is None for f in rep.images)


def test_known_sharp_image_measures(astronaut):
    g = np.asarray(astronaut.convert("L"))
    sharp = sharpness(g)
    blurred = sharpness(cv2.GaussianBlur(g, (0, 0), 2))
    assert sharp > 10 * blurred and sharp > 500
    assert chroma_spread(astronaut) > 5 and chroma_spread(astronaut.convert("L")) < 0.01


def test_jpeg_quality_from_header_and_blockiness(astronaut):
    for q in (10, 50, 90):
        buf = io.BytesIO()
        astronaut.save(buf, "JPEG", quality=q)
        with Image.open(io.BytesIO(buf.getvalue())) as im:
            assert abs(jpeg_quality(im.quantization) - q) <= 2
            g = np.asarray(im.convert("L"))
        assert (blockiness(g, 8) > 1.5) == (q == 10)
    assert jpeg_quality(None) is None and blockiness(np.zeros((8, 8), np.uint8), 8) is None


def test_json_carries_every_flag_and_measure(photo_set, tmp_path):
    few = tmp_path / "few"
    few.mkdir()
    for name in ("coffee_blur.png", "astronaut.png", "astronaut_q15.jpg", "rocket_grey.png"):
        (few / name).write_bytes((photo_set / name).read_bytes())
    r = subprocess.run([sys.executable, "-m", "prep.cli", "check", str(few), "--json", "--resolution", "512", "-j", "2"],
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    for kind in ("blurry", "monochrome", "face_small", "jpeg_artifacts", "no_face", "off_model", "outside_cluster"):
        assert kind in d["problems"]
    img = {i["id"]: i for i in d["images"]}
    assert "blurry" in img["coffee_blur.png"]["flags"] and img["coffee_blur.png"]["quality"]["sharpness"] < 50
    assert img["astronaut.png"]["faces"] and img["astronaut_q15.jpg"]["quality"]["jpeg_quality"] <= 20
    assert {e["file"] for e in d["problems"]["monochrome"]} >= {"rocket_grey.png"}
