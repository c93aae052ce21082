"""WD14 backend against a tiny model with the real WD contract (built by wd_tiny)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from captioning.backends import backend_class
from captioning.backends.base import CaptionBackend, CaptionOptions
from captioning.backends.wd14 import Labels, WD14Backend, WD14Model, draft_request, model_files, pad_resize, prepare
from prep.dataset import discover
from prep.models import ModelNotAvailable
from wd_tiny import build_tiny_wd14, expected, score, solid

COLORS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "white": (255, 255, 255)}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("wd")
    return {
        "dynamic": build_tiny_wd14(root / "dynamic"),
        "fixed4": build_tiny_wd14(root / "fixed4", batch=4),
        "fixed1_v2": build_tiny_wd14(root / "fixed1", batch=1, input_name="input_1:0"),
    }


@pytest.fixture()
def colour_dir(tmp_path) -> Path:
    d = tmp_path / "imgs"
    d.mkdir()
    for name, rgb in COLORS.items():
        solid(rgb, (96, 96)).save(d / f"{name}.png")
    solid((0, 0, 255), (80, 80)).save(d / "blue2.jpg", quality=100)
    return d


def _by_id(results):
    return {r.id: r for r in results}


def test_registry_and_protocol():
    cls = backend_class("wd14")
    assert cls is WD14Backend
    assert isinstance(WD14Backend(), CaptionBackend)
    assert WD14Backend.kind == "tags" and WD14Backend.needs_key is None


def test_labels_read_with_csv_module_keeps_quotes(models):
    labels = Labels.read(models["dynamic"] / "selected_tags.csv")
    assert 'don\'t_say_"lazy"' in labels.names
    raw = (models["dynamic"] / "selected_tags.csv").read_text()
    assert '"don\'t_say_""lazy"""' in raw  # really quoted in the file
    assert list(labels.categories[:4]) == [9, 9, 9, 9]
    assert labels.names[-3:] == ["hatsune_miku", "kirisame_marisa", "sage_(loraprep)"]


@pytest.mark.parametrize("variant", ["dynamic", "fixed4", "fixed1_v2"])
def test_exact_tags_per_colour(models, colour_dir, variant):
    model = WD14Model(models[variant] / "model.onnx", models[variant] / "selected_tags.csv")
    assert model.size == 448
    assert model.fixed_batch == {"dynamic": None, "fixed4": 4, "fixed1_v2": 1}[variant]
    items = discover(colour_dir)
    res = _by_id(WD14Backend().caption_batch(items, CaptionOptions(model=str(models[variant]), batch_size=3)))
    assert len(res) == 5
    for name, rgb in COLORS.items():
        r = res[f"{name}.png"]
        assert r.status == "ok", r.reason
        got_general = [t.name for t in r.tags if t.category == "general"]
        got_char = [t.name for t in r.tags if t.category == "character"]
        want = expected(rgb)
        assert got_general == want["general"], (name, got_general)
        assert got_char == want["character"], (name, got_char)
        assert sorted(t.name for t in r.tags if t.category == "rating") == ["explicit", "general", "questionable", "sensitive"]
        miku = next((t for t in r.tags if t.name == "1girl"), None)
        assert miku is not None and miku.score == pytest.approx(score("1girl", rgb), abs=1e-4)
    # character tags pass without any crash (the sd-scripts UnboundLocalError case)
    assert [t.name for t in res["blue.png"].tags if t.category == "character"] == ["hatsune_miku"]
    assert [t.name for t in res["red.png"].tags if t.category == "character"] == ["kirisame_marisa"]
    assert [t.name for t in res["blue2.jpg"].tags if t.category == "character"] == ["hatsune_miku"]


def test_fixed_batch_pads_last_batch_and_matches_dynamic(models, tmp_path):
    d = tmp_path / "many"
    d.mkdir()
    rng = np.random.default_rng(1)
    for i in range(7):  # 7 = one full batch of 4 + a padded batch of 3
        rgb = tuple(int(v) for v in rng.integers(0, 256, 3))
        solid(rgb, (64, 64)).save(d / f"{i}.png")
    items = discover(d)
    dyn = _by_id(WD14Backend().caption_batch(items, CaptionOptions(model=str(models["dynamic"]), batch_size=8)))
    fix = _by_id(WD14Backend().caption_batch(items, CaptionOptions(model=str(models["fixed4"]), batch_size=8)))
    for i in dyn:
        assert [(t.name, round(t.score, 5)) for t in dyn[i].tags] == [(t.name, round(t.score, 5)) for t in fix[i].tags]


def test_thresholds_from_options_extra(models, colour_dir):
    items = [i for i in discover(colour_dir) if i.id == "red.png"]
    opts = CaptionOptions(model=str(models["dynamic"]), extra={"general_threshold": 0.8, "character_threshold": 0.99})
    r = WD14Backend().caption_batch(items, opts)[0]
    names = [t.name for t in r.tags if t.category != "rating"]
    assert "closed_eyes" not in names and "long_hair" not in names  # 0.45 and 0.73 < 0.8
    assert "kirisame_marisa" not in names  # 0.953 < 0.99
    assert "1girl" in names and "red_hair" in names


def test_bad_image_fails_alone_with_file_named(models, colour_dir):
    (colour_dir / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    res = _by_id(WD14Backend().caption_batch(discover(colour_dir), CaptionOptions(model=str(models["dynamic"]), batch_size=8)))
    assert res["broken.jpg"].status == "failed"
    assert "broken.jpg" in res["broken.jpg"].reason
    assert all(r.status == "ok" for k, r in res.items() if k != "broken.jpg")


def test_missing_model_folder_says_what_to_pass(tmp_path):
    with pytest.raises(ModelNotAvailable, match="model.onnx"):
        model_files(str(tmp_path))  # exists but holds nothing
    with pytest.raises(ModelNotAvailable, match="no such folder"):
        model_files(str(tmp_path / "nope"))


def test_hub_repo_offline_without_cache_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("LORAPREP_WD14_MODEL", raising=False)
    with pytest.raises(ModelNotAvailable, match="SmilingWolf/wd-swinv2-tagger-v3"):
        model_files(None)


# ---- preprocessing: golden comparison with the reference procedure ----

def reference_prepare(path: Path, size: int = 448) -> np.ndarray:
    """SmilingWolf wd-tagger Space procedure, written out independently for the comparison."""
    img = Image.open(path).convert("RGBA")
    canvas = Image.new("RGBA", img.size, (255, 255, 255, 255))
    canvas.alpha_composite(img)
    img = canvas.convert("RGB")
    m = max(img.size)
    sq = Image.new("RGB", (m, m), (255, 255, 255))
    sq.paste(img, ((m - img.width) // 2, (m - img.height) // 2))
    if m != size:
        sq = sq.resize((size, size), Image.BICUBIC)
    return np.asarray(sq, dtype=np.float32)[:, :, ::-1]


def _photo(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 // w, y * 255 // h, (x + y) * 255 // (w + h)], -1)
    noise = rng.integers(0, 40, (h, w, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def test_golden_png_with_alpha_is_exact(tmp_path):
    img = _photo(300, 200).convert("RGBA")
    a = np.array(img)
    a[:50, :, 3] = 0  # a transparent band: must become white
    a[50:80, :, 3] = 128
    Image.fromarray(a).save(tmp_path / "a.png")
    ours = prepare(tmp_path / "a.png", 448)
    ref = reference_prepare(tmp_path / "a.png")
    assert ours.shape == (448, 448, 3) and ours.dtype == np.float32
    assert np.abs(ours - ref).max() <= 1.0  # same ops; at most a rounding step
    assert ours[0, 0].tolist() == [255.0, 255.0, 255.0]  # pad is white


def test_golden_large_jpeg_draft_path_close_to_reference(tmp_path):
    p = tmp_path / "big.jpg"
    _photo(1900, 1250, seed=3).save(p, quality=92)
    ours = prepare(p, 448)  # draft decode (1900 > 4 x 448)
    exact = prepare(p, 448, draft=False)
    ref = reference_prepare(p)
    assert np.abs(exact - ref).max() <= 1.0
    d = np.abs(ours - ref)
    assert d.mean() < 1.5, d.mean()
    # BGR order: the x-gradient lives in R (index 2 in BGR) and grows to the right
    assert ours[224, 400, 2] > ours[224, 50, 2]


def test_draft_request_keeps_long_side_twice_model_size():
    assert draft_request(4032, 3024, 448) == (672, 672)
    assert draft_request(3024, 4032, 448) == (672, 672)
    assert draft_request(1000, 1000, 448) == (896, 896)


def test_pad_resize_centres_non_square():
    img = Image.new("RGB", (448, 224), (0, 0, 0))
    arr = pad_resize(img, 448)
    assert arr[:112].min() == 255 and arr[336:].min() == 255 and arr[112:336].max() == 0


def test_csv_header_checked(tmp_path):
    p = tmp_path / "selected_tags.csv"
    with open(p, "w", newline="") as fh:
        csv.writer(fh).writerows([["id", "tag"], [1, "x"]])
    with pytest.raises(ModelNotAvailable, match="tag_id,name,category"):
        Labels.read(p)


def sd_scripts_style(path: Path, size: int = 448) -> np.ndarray:
    """sd-scripts' tagger preprocessing written out independently (BGR, np.pad 255, AREA / LANCZOS)."""
    import cv2

    img = np.array(Image.open(path).convert("RGB"))[:, :, ::-1]
    m = max(img.shape[:2])
    py, px = m - img.shape[0], m - img.shape[1]
    img = np.pad(img, ((py // 2, py - py // 2), (px // 2, px - px // 2), (0, 0)), mode="constant", constant_values=255)
    if m >= size:
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    else:
        rgb = Image.fromarray(np.ascontiguousarray(img[:, :, ::-1])).resize((size, size), Image.LANCZOS)
        img = np.asarray(rgb)[:, :, ::-1]
    return img.astype(np.float32)


@pytest.mark.parametrize("size", [(1000, 700), (300, 200)])
def test_sd_scripts_preprocess_is_bit_identical(tmp_path, size):
    from captioning.backends.wd14 import prepare_sd_scripts

    p = tmp_path / "x.jpg"
    _photo(*size, seed=5).save(p, quality=90)
    assert np.array_equal(prepare_sd_scripts(p, 448), sd_scripts_style(p))


def test_preprocess_option_switches_path(models, tmp_path):
    p = tmp_path / "d"
    p.mkdir()
    _photo(900, 500, seed=2).save(p / "a.jpg", quality=90)
    items = discover(p)
    ref = WD14Backend().caption_batch(items, CaptionOptions(model=str(models["dynamic"])))[0]
    sd = WD14Backend().caption_batch(items, CaptionOptions(model=str(models["dynamic"]), extra={"preprocess": "sd-scripts"}))[0]
    s_ref = {t.name: t.score for t in ref.tags}
    s_sd = {t.name: t.score for t in sd.tags}
    assert s_ref.keys() == s_sd.keys()
    assert max(abs(s_ref[k] - s_sd[k]) for k in s_ref) > 0  # really a different resize
    with pytest.raises(ValueError, match="reference or sd-scripts"):
        WD14Backend().caption_batch(items, CaptionOptions(model=str(models["dynamic"]), extra={"preprocess": "nope"}))
