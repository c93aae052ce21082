"""Video datasets for Wan (musubi-tuner 30c658c4): the dataset TOML and exact step counts.

Every expected count below is worked out by hand from musubi's code (dataset/
image_video_dataset.py `retrieve_latent_cache_batches` + `prepare_for_training`,
media_utils.load_video, bucket.BucketSelector / BucketBatchManager), not from ours.
"""

from __future__ import annotations

import sys
from pathlib import Path

import av
import numpy as np
import pytest
from bridge_helpers import make_models
from PIL import Image

from train_bridge.config import write_run_config
from train_bridge.estimate import estimate_from, estimate_run
from train_bridge.trainers import get_arch
from train_bridge.trainers.musubi import SCHEMA_DATASET, SCHEMA_GENERAL
from train_bridge.video_items import windows
from train_bridge.vram import advice, estimate

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

WAN = get_arch("wan22-t2v")


def clip(path: Path, frames: int, *, fps: int = 16, size: tuple[int, int] = (96, 64), caption: str | None = "sage_walk, a person walking") -> Path:
    """A tiny H.264 clip whose frames differ (a grey ramp), with an optional caption."""
    w, h = size
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"preset": "ultrafast"}
        for i in range(frames):
            a = np.full((h, w, 3), (i * 5) % 255, np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption, encoding="utf-8")
    return path


def doc(d: Path, **keys) -> dict:
    general = {"resolution": [256, 256], "caption_extension": ".txt", "batch_size": keys.pop("batch_size", 1), "enable_bucket": True, "bucket_no_upscale": False}
    return {"general": general, "datasets": [{"video_directory": str(d), "cache_directory": str(d / "cache"), **keys}]}


@pytest.fixture
def three(tmp_path: Path) -> Path:
    """45, 25 and 9 frames at 16 fps; 96x64 (landscape) and 64x96 (portrait)."""
    d = tmp_path / "v"
    d.mkdir()
    clip(d / "a.mp4", 45)
    clip(d / "b.mp4", 25, size=(64, 96))
    clip(d / "c.mp4", 9)
    return d


# musubi BucketSelector((256, 256)): area 65536, w from 128 to 256 step 16 with h = 65536 // w
# floored to 16, both orientations. 96x64 has ratio 1.5; the nearest are 304x208 (1.4615) and
# 336x192 (1.75), so 304x208; the 64x96 clips go to 208x304.
L, P = "304x208", "208x304"


@pytest.mark.parametrize(
    "keys, buckets",
    [
        # head: windows (0, t) for every t <= frames. a: 1, 21; b: 1, 21; c: 1
        ({"frame_extraction": "head", "target_frames": [1, 21]}, {f"{L}x1": 2, f"{L}x21": 1, f"{P}x1": 1, f"{P}x21": 1}),
        # chunk 9: a: 0, 9, 18, 27, 36; b: 0, 9 (18 + 9 > 25); c: 0
        ({"frame_extraction": "chunk", "target_frames": [9]}, {f"{L}x9": 6, f"{P}x9": 2}),
        # slide 21 stride 4: a: range(0, 25, 4) = 7 windows; b: range(0, 5, 4) = 2; c: too short
        ({"frame_extraction": "slide", "target_frames": [21], "frame_stride": 4}, {f"{L}x21": 7, f"{P}x21": 2}),
        # uniform 21 x 3: a: linspace(0, 24, 3) = 0, 12, 24; b: linspace(0, 4, 3) = 0, 2, 4
        ({"frame_extraction": "uniform", "target_frames": [21], "frame_sample": 3}, {f"{L}x21": 3, f"{P}x21": 3}),
        # uniform with frame_sample 1 becomes head
        ({"frame_extraction": "uniform", "target_frames": [21], "frame_sample": 1}, {f"{L}x21": 1, f"{P}x21": 1}),
        # uniform 5 x 4 on c (9 frames): linspace(0, 4, 4) = 0, 1, 2, 4 (1.33 -> 1, 2.67 -> 2)
        ({"frame_extraction": "uniform", "target_frames": [5], "frame_sample": 4}, {f"{L}x5": 8, f"{P}x5": 4}),
        # full, max_frames 33: a: 33; b: 25; c: 9
        ({"frame_extraction": "full", "max_frames": 33}, {f"{L}x33": 1, f"{P}x25": 1, f"{L}x9": 1}),
        # target_frames are rounded down to 4N+1 and deduplicated: 22 -> 21, 23 -> 21
        ({"frame_extraction": "head", "target_frames": [22, 23]}, {f"{L}x21": 1, f"{P}x21": 1}),
    ],
)
def test_video_windows_and_buckets_as_musubi_counts(three: Path, keys: dict, buckets: dict) -> None:
    est = estimate_from(WAN, doc(three, **keys), {"max_train_epochs": 2})
    assert est.buckets == buckets
    assert est.steps_per_epoch == sum(buckets.values())  # batch 1: one batch per item
    assert est.total_steps == 2 * est.steps_per_epoch


def test_batches_round_up_per_frames_bucket(three: Path) -> None:
    # full: three buckets of 1 item x 3 repeats; batch 2 -> ceil(3/2) = 2 each
    est = estimate_from(WAN, doc(three, frame_extraction="full", max_frames=33, num_repeats=3, batch_size=2), {"max_train_epochs": 1})
    assert est.buckets == {f"{L}x33": 3, f"{P}x25": 3, f"{L}x9": 3}
    assert est.steps_per_epoch == 6
    assert est.images_with_repeats == 9


def test_source_fps_retimes_as_musubi_does(tmp_path: Path) -> None:
    # 33 frames at 32 fps, source_fps 32 -> delta 0.5: frame k maps to int(k / 2): 0..16 = 17 frames
    d = tmp_path / "v"
    d.mkdir()
    clip(d / "fast.mp4", 33, fps=32)
    est = estimate_from(WAN, doc(d, frame_extraction="full", max_frames=81, source_fps=32.0), {"max_train_epochs": 1})
    assert est.buckets == {f"{L}x17": 1}
    # without source_fps every frame is kept (33) and the user is told the motion is off
    est = estimate_from(WAN, doc(d, frame_extraction="full", max_frames=81), {"max_train_epochs": 1})
    assert est.buckets == {f"{L}x33": 1}
    assert any("32 fps and source_fps is not set" in w for w in est.warnings)


def test_head_reads_only_the_first_frames_after_retiming(tmp_path: Path) -> None:
    # head stops at max(target_frames) counted after re-timing: 60 frames at 32 fps -> 30 at 16
    d = tmp_path / "v"
    d.mkdir()
    clip(d / "x.mp4", 60, fps=32)
    est = estimate_from(WAN, doc(d, frame_extraction="head", target_frames=[29, 33], source_fps=32.0), {"max_train_epochs": 1})
    assert est.buckets == {f"{L}x29": 1}
    assert not any("shorter" in w for w in est.warnings)


def test_problem_videos_are_named_not_fatal(tmp_path: Path) -> None:
    d = tmp_path / "v"
    d.mkdir()
    clip(d / "ok.mp4", 17)
    clip(d / "nocap.mp4", 17, caption=None)
    (d / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    (d / "broken.txt").write_text("x")
    clip(d / "short.mp4", 5)
    clip(d / "odd.mp4", 19)
    est = estimate_from(WAN, doc(d, frame_extraction="head", target_frames=[9]), {"max_train_epochs": 1})
    assert est.buckets == {f"{L}x9": 2}  # ok and odd; short has 5 < 9
    text = "\n".join(est.warnings)
    assert "nocap.mp4" in text and "FileNotFoundError" in text
    assert "broken.mp4" in text and "cannot decode" in text
    assert "short.mp4" in text
    est = estimate_from(WAN, doc(d, frame_extraction="full", max_frames=81), {"max_train_epochs": 1})
    assert any("odd.mp4: 19" in w and "4N+1" in w for w in est.warnings)


def test_video_glob_is_musubis(tmp_path: Path) -> None:
    d = tmp_path / "v"
    d.mkdir()
    clip(d / "a.MP4", 9)  # upper case is in musubi's list
    clip(d / "b.mp4", 9)
    clip(d / "b.mov", 9)  # same stem: one cache file overwrites the other
    est = estimate_from(WAN, doc(d, frame_extraction="full", max_frames=9), {"max_train_epochs": 1})
    assert est.images_with_repeats == 3
    assert any("share a name" in w and "b.mov" in w for w in est.warnings)


def test_windows_unit() -> None:
    assert windows(45, "chunk", (9, 21)) == [(0, 9), (9, 9), (18, 9), (27, 9), (36, 9), (0, 21), (21, 21)]
    assert windows(8, "full", (1,), max_frames=129) == [(0, 5)]
    assert windows(10, "uniform", (9,), frame_sample=4) == [(0, 9), (1, 9)]  # linspace(0, 1, 4) -> 0, 0, 0, 1


# -- config -------------------------------------------------------------------------------------


def _schema_ok(ds_doc: dict) -> None:
    """Every key we write is in musubi's ConfigSanitizer schema (dataset/config_utils.py)."""
    assert set(ds_doc["general"]) <= set(SCHEMA_GENERAL)
    video_keys = {"video_directory", "video_jsonl_file", "control_directory", "target_frames", "frame_extraction", "frame_stride", "frame_sample", "max_frames", "cache_directory", "source_fps", "fp_latent_window_size"}
    for ds in ds_doc["datasets"]:
        allowed = set(SCHEMA_GENERAL) | (video_keys if "video_directory" in ds else set(SCHEMA_DATASET) - video_keys | {"cache_directory"})
        assert set(ds) <= allowed, set(ds) - allowed
        if "source_fps" in ds:
            assert isinstance(ds["source_fps"], float)


def test_config_writes_a_full_extraction_video_dataset(tmp_path: Path) -> None:
    d = tmp_path / "clips"
    d.mkdir()
    for i, n in enumerate((81, 49, 81)):
        clip(d / f"c{i}.mp4", n)
    models = make_models(tmp_path / "models")
    rc = write_run_config("wan22-t2v", d, tmp_path / "run", models=models["wan22-t2v"], trigger="sage_walk", preset="48gb")
    written = tomllib.loads((tmp_path / "run" / "dataset.toml").read_text(encoding="utf-8"))
    assert written == rc.dataset
    [ds] = written["datasets"]
    assert ds["video_directory"] == str(d.resolve())
    assert ds["frame_extraction"] == "full" and ds["max_frames"] == 81  # every clip is 4N+1: the longest
    assert "source_fps" not in ds  # already 16 fps: musubi keeps every frame
    assert "target_frames" not in ds  # full does not read it
    _schema_ok(written)
    est = estimate_run(tmp_path / "run", budget=None)
    assert sum(est.buckets.values()) == 3 and est.steps_per_epoch == 3  # two 81-frame + one 49-frame bucket
    assert rc.run["estimate"]["steps_per_epoch"] == 3


def test_config_sets_source_fps_and_caps_raw_footage(tmp_path: Path) -> None:
    d = tmp_path / "raw"
    d.mkdir()
    clip(d / "phone.mp4", 200, fps=32)  # 6.25 s at 32 fps -> 100 frames at 16: not 4N+1
    models = make_models(tmp_path / "models")
    rc = write_run_config("wan21-t2v", d, tmp_path / "run", models=models["wan21-t2v"], trigger="sage_walk", preset="80gb")
    [ds] = rc.dataset["datasets"]
    assert ds["source_fps"] == 32.0
    assert ds["max_frames"] == 81  # not a prep clip: capped at 81 (5 s at 16 fps)
    est = estimate_run(tmp_path / "run", budget=None)
    assert list(est.buckets) == [f"{'x'.join(str(v) for v in _bucket(tuple(rc.dataset['general']['resolution']), (96, 64)))}x81"]
    assert any("longer than max_frames=81" in w for w in est.warnings)


def _bucket(res: tuple[int, int], size: tuple[int, int]) -> tuple[int, int]:
    from prep.buckets import BucketSpec

    return BucketSpec(resolution=res, steps=16, family="musubi").select(*size).bucket


def test_mixed_folder_is_an_image_and_a_video_dataset(tmp_path: Path) -> None:
    d = tmp_path / "mixed"
    d.mkdir()
    clip(d / "walk.mp4", 33)
    for i in range(3):
        Image.new("RGB", (512, 512), (i * 40, 90, 90)).save(d / f"img{i}.png")
        (d / f"img{i}.txt").write_text("sage_walk, standing")
    models = make_models(tmp_path / "models")
    rc = write_run_config("wan22-t2v", d, tmp_path / "run", models=models["wan22-t2v"], trigger="sage_walk", preset="80gb")
    img, vid = rc.dataset["datasets"]
    assert img["image_directory"] == vid["video_directory"] == str(d.resolve())
    assert img["cache_directory"] != vid["cache_directory"]  # musubi raises on a shared cache directory
    _schema_ok(rc.dataset)
    est = estimate_run(tmp_path / "run", budget=None)
    assert est.images_with_repeats == 4  # 3 images + 1 clip window
    assert est.steps_per_epoch == 3  # batch 2 (80gb): the images share one bucket (ceil(3/2) = 2), the clip its own (1)


def test_config_lowers_video_resolution_to_fit_the_preset(tmp_path: Path) -> None:
    d = tmp_path / "clips"
    d.mkdir()
    clip(d / "c.mp4", 81)
    models = make_models(tmp_path / "models")
    rc = write_run_config("wan22-t2v", d, tmp_path / "run", models=models["wan22-t2v"], trigger="sage_walk", preset="24gb")
    [ds] = rc.dataset["datasets"]
    w, h = ds["resolution"]
    assert w * h < 960 * 960
    assert estimate(WAN.dit_shape, 81, w, h, blocks_to_swap=10).total_gib <= 24
    est = estimate_run(tmp_path / "run", budget=None)
    assert est.vram and est.vram[0]["total_gib"] <= 24 and est.vram[0]["budget_gib"] == 24.0


# -- VRAM model ---------------------------------------------------------------------------------


def test_vram_model_fits_lora_gym_24gb_reports() -> None:
    # lora-gym local templates: a 24 GB card with blocks_to_swap 20 trains 21 f @ 1280x720 and 45 f @ 960x544 (fp8)
    assert estimate(WAN.dit_shape, 21, 1280, 720, blocks_to_swap=20).total_gib <= 24
    assert estimate(WAN.dit_shape, 45, 960, 544, blocks_to_swap=20).total_gib <= 24
    # more frames or pixels cost more; swapping blocks costs less
    a = estimate(WAN.dit_shape, 81, 832, 480)
    assert a.total_gib > estimate(WAN.dit_shape, 41, 832, 480).total_gib > estimate(WAN.dit_shape, 41, 640, 368).total_gib
    assert estimate(WAN.dit_shape, 81, 832, 480, blocks_to_swap=20).total_gib < a.total_gib


def test_vram_advice_names_the_levers() -> None:
    tips = advice(WAN, {"fp8_base": True, "blocks_to_swap": 0}, 81, 832, 480, 24.0)
    text = " ".join(tips)
    assert "blocks_to_swap=" in text and "fewer frames" in text and "lower resolution" in text
    assert advice(WAN, {"fp8_base": True}, 17, 512, 288, 24.0) == []
    assert "fp8_base" in " ".join(advice(WAN, {"blocks_to_swap": 0}, 17, 512, 288, 24.0))  # 26 GiB of fp16 weights alone


def test_estimate_warns_when_video_will_not_fit(three: Path) -> None:
    est = estimate_from(WAN, doc(three, frame_extraction="full", max_frames=33), {"max_train_epochs": 1, "fp8_base": True}, preset="8gb")
    assert est.vram[0]["budget_gib"] == 8.0
    assert any("GiB of GPU memory" in w and "try" in w for w in est.warnings) == (est.vram[0]["total_gib"] > 8)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))


# -- check ----------------------------------------------------------------------------------------


def test_check_names_uncaptioned_videos_and_vram(tmp_path: Path) -> None:
    from train_bridge.check import check_run

    d = tmp_path / "clips"
    d.mkdir()
    clip(d / "a.mp4", 81)
    clip(d / "b.mp4", 81)
    models = make_models(tmp_path / "models")
    write_run_config("wan21-t2v", d, tmp_path / "run", models=models["wan21-t2v"], trigger="sage_walk", preset="8gb", overrides=["dataset.resolution=960,544"])
    (d / "b.txt").unlink()  # after config: musubi would stop on it
    rep = check_run(tmp_path / "run")
    errs = [i.message for i in rep.errors if i.area == "captions"]
    assert any("b.mp4" in m and "FileNotFoundError" in m for m in errs), errs
    vram = [i for i in rep.items if i.area == "vram"]
    assert vram and vram[0].level == "warning" and "8 GiB" in vram[0].message and "try" in vram[0].message
    est = estimate_run(tmp_path / "run", budget=None)
    assert est.vram[0]["frames"] == 81 and est.vram[0]["total_gib"] > 8


def test_check_ok_when_video_fits(tmp_path: Path) -> None:
    from train_bridge.check import check_run

    d = tmp_path / "clips"
    d.mkdir()
    clip(d / "a.mp4", 17)
    models = make_models(tmp_path / "models")
    write_run_config("wan21-t2v", d, tmp_path / "run", models=models["wan21-t2v"], trigger="sage_walk", preset="80gb")
    rep = check_run(tmp_path / "run")
    assert [i.level for i in rep.items if i.area == "vram"] == ["ok"]
    assert not [i for i in rep.errors if i.area in ("captions", "dataset")]


def test_every_musubi_video_suffix_is_a_dataset(tmp_path: Path) -> None:
    d = tmp_path / "clips"
    d.mkdir()
    clip(d / "a.mp4", 17)
    (d / "a.mp4").rename(d / "a.m4v")  # musubi globs .m4v too
    models = make_models(tmp_path / "models")
    rc = write_run_config("wan21-t2v", d, tmp_path / "run", models=models["wan21-t2v"], trigger="sage_walk", preset="80gb")
    assert rc.dataset["datasets"][0]["video_directory"] == str(d.resolve())
    assert estimate_run(tmp_path / "run", budget=None).steps_per_epoch == 1
