"""The one loader: every awkward mode, EXIF, alpha, bombs, and bad files with clear reasons."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from badimages import exif_rotated_jpeg, gradient, png_bomb_header, write_bad_folder
from prep.images import ImageLoadError, load_image, parse_color, probe_image, save_image


def test_exif_orientation_applied_to_pixels(tmp_path):
    p = exif_rotated_jpeg(tmp_path / "r.jpg", orientation=6, size=(120, 80))
    li = load_image(p)
    assert li.size == (80, 120) and li.image.size == (80, 120)
    assert li.exif_orientation == 6 and li.exif_rotated
    # orientation 6 = the stored image's left column becomes the top row
    stored = np.asarray(Image.open(p).convert("RGB")).astype(int)
    shown = np.asarray(li.image).astype(int)
    assert np.abs(shown[0, :, :] - stored[::-1, 0, :]).mean() < 12
    assert probe_image(p)[:2] == (80, 120)


def test_alpha_composited_on_background(tmp_path):
    im = Image.new("RGBA", (10, 10), (255, 0, 0, 0))
    im.putpixel((0, 0), (0, 0, 255, 255))
    p = tmp_path / "a.png"
    im.save(p)
    li = load_image(p)
    assert li.transparent and li.has_alpha
    assert li.image.getpixel((5, 5)) == (255, 255, 255)
    assert li.image.getpixel((0, 0)) == (0, 0, 255)
    assert load_image(p, background="black").image.getpixel((5, 5)) == (0, 0, 0)
    assert load_image(p, background="#00ff00").image.getpixel((5, 5)) == (0, 255, 0)
    assert load_image(p, keep_alpha=True).alpha.getpixel((5, 5)) == 0


def test_opaque_alpha_is_not_transparent(tmp_path):
    p = tmp_path / "o.png"
    gradient().convert("RGBA").save(p)
    li = load_image(p)
    assert li.has_alpha and not li.transparent


def test_sixteen_bit_gray_keeps_its_range(tmp_path):
    arr = np.full((8, 8), 65535, np.uint16)
    arr[:, :4] = 32768
    p = tmp_path / "g16.png"
    Image.fromarray(arr).save(p)
    li = load_image(p)
    px = np.asarray(li.image)
    assert li.image.mode == "RGB"
    assert px[0, 7].tolist() == [255, 255, 255]
    assert abs(int(px[0, 0, 0]) - 128) <= 1  # not clipped to white, as a plain convert("RGB") does


def test_cmyk_palette_la_gif_tiff_bmp(tmp_path):
    kinds = write_bad_folder(tmp_path)
    for name in ("cmyk.jpg", "palette.png", "la.png", "anim.gif", "scan.tiff", "paint.bmp", "UPPER.PNG"):
        li = load_image(tmp_path / name)
        assert li.image.mode == "RGB", name
        assert li.image.size == (96, 64), name
    assert load_image(tmp_path / "anim.gif").n_frames == 3
    assert load_image(tmp_path / "palette.png").has_alpha
    # CMYK stays close to the original colours
    orig = np.asarray(gradient(seed=3)).astype(int)
    got = np.asarray(load_image(tmp_path / "cmyk.jpg").image).astype(int)
    assert np.abs(orig - got).mean() < 10
    assert kinds["cmyk.jpg"] == "cmyk"


@pytest.mark.parametrize(
    "name, words",
    [
        ("empty.jpg", ["empty file", "0 bytes"]),
        ("truncated.jpg", ["truncated"]),
        ("corrupt.png", ["corrupt"]),
        ("notanimage.webp", ["not a readable image"]),
        ("bomb.png", ["decompression bomb", "--max-pixels"]),
    ],
)
def test_bad_files_raise_one_error_naming_file_and_fix(tmp_path, name, words):
    write_bad_folder(tmp_path)
    with pytest.raises(ImageLoadError) as ei:
        load_image(tmp_path / name)
    msg = str(ei.value)
    assert name in msg
    for w in words:
        assert w in msg


def test_bomb_guard_limit_is_configurable(tmp_path):
    p = tmp_path / "big.png"
    gradient(200, 100).save(p)
    with pytest.raises(ImageLoadError, match="above the limit"):
        load_image(p, max_pixels=10_000)
    png_bomb_header(tmp_path / "b.png")
    with pytest.raises(ImageLoadError):
        load_image(tmp_path / "b.png")


def test_draft_decode_is_reduced_but_reports_full_size(tmp_path):
    p = tmp_path / "big.jpg"
    gradient(2400, 1600).save(p, "JPEG", quality=90)
    li = load_image(p, draft_size=(256, 256))
    assert li.size == (2400, 1600)
    assert 256 <= min(li.image.size) < 1600
    assert li.scale < 1


def test_save_is_atomic_and_strips_metadata(tmp_path):
    p = exif_rotated_jpeg(tmp_path / "r.jpg")
    li = load_image(p)
    out = save_image(li.image, tmp_path / "o.jpg")
    with Image.open(out) as im:
        assert im.getexif().get(0x0112) is None
        assert im.size == (80, 120)
    assert not list(tmp_path.glob(".*.tmp"))


def test_parse_color_rejects_nonsense():
    assert parse_color("255,0,10") == (255, 0, 10)
    with pytest.raises(ValueError, match="unknown colour"):
        parse_color("blurple")
