"""`prep clips`: scene cuts, re-timing, exact 4N+1 clips, upright square bucket-sized frames,
letterbox removal, contact sheets, records, resume without re-encoding, bad videos reported."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import videos as V
from PIL import Image

from prep.buckets import bucket_spec_for, read_bucket_record
from prep.clips import (
    SHEETS_DIR,
    ClipsOptions,
    clips_folder,
    encoder_name,
    letterbox_box,
    read_clips_jsonl,
    retime,
)
from prep.dataset import discover
from prep.options import OptionsError, load_options
from prep.video import VideoError, probe_video, read_frames

RES = "128x96"  # tiny buckets keep encoding to milliseconds


def _opts(**kw) -> ClipsOptions:
    return ClipsOptions(**{"frames": 9, "resolution": RES, **kw})


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def _assert_clips_true_to_records(out: Path, fps: float = 16.0) -> list[dict]:
    """Every clip is probed: the frame count and fps it really has are the recorded ones, 4N+1, bucket-sized."""
    recs = read_clips_jsonl(out)
    assert recs
    spec = bucket_spec_for("wan21-t2v", (128, 96))
    for r in recs:
        info = probe_video(out / r["clip"])
        assert info.frames == r["frames"] and (info.frames - 1) % 4 == 0, r["clip"]
        assert info.fps == pytest.approx(fps), r["clip"]
        assert (info.width, info.height) == (r["width"], r["height"]) and spec.is_fixed_point((info.width, info.height))
        assert info.rotation == 0 and info.sar == (1, 1)
        assert r["end"] - r["start"] == pytest.approx(r["frames"] / fps, abs=1e-3)
        assert (out / SHEETS_DIR / (Path(r["clip"]).stem + ".jpg")).is_file()
        assert not (out / r["clip"]).with_suffix(".txt").exists()  # the caption slot is left for `caption`
    return recs


def _palette(img: Image.Image) -> str:
    """Which of the two palettes of V.cut_video a frame shows (its left bar)."""
    c = np.asarray(img.convert("RGB"))[2, 2].astype(int)
    return "first" if abs(c - np.array(V.RED)).sum() < abs(c - np.array(V.CYAN)).sum() else "second"


def test_30fps_retimed_to_16_and_cut_to_4n1(tmp_path):
    src = tmp_path / "raw"
    src.mkdir()
    V.write_video(src / "walk.mp4", 90, fps=30)  # 3 s -> 48 frames at 16 fps -> 5 clips of 9, 3 dropped
    before = _digest(src)
    report = clips_folder(src, tmp_path / "clips", _opts())
    recs = _assert_clips_true_to_records(tmp_path / "clips")
    assert [r["frames"] for r in recs] == [9] * 5
    assert report.items[0].dropped_frames == 3
    assert [r["start"] for r in recs] == [pytest.approx(i * 9 / 16) for i in range(5)]
    assert recs[0]["source_fps"] == 30.0 and recs[0]["encoder"] == encoder_name()
    assert _digest(src) == before  # originals untouched
    rec = read_bucket_record(tmp_path / "clips")
    assert rec is not None and rec.spec.family == "musubi" and rec.arch == "wan21-t2v"


def test_retime_picks_nearest_frame_by_timestamp():
    times = [i / 30 for i in range(30)]
    got = retime(times, 16, 1.0)
    assert len(got) == 16 and got[:4] == [0, 2, 4, 6] and got == sorted(got) and got[-1] == 28
    vfr = [0.0, 0.1, 0.13, 0.5]
    assert retime(vfr, 10, 0.6) == [0, 1, 2, 2, 3, 3]


def test_split_scenes_never_spans_the_cut(tmp_path):
    src = tmp_path / "raw"
    src.mkdir()
    V.cut_video(src / "cut.mp4", 30, 30)  # 1 s of each palette at 30 fps
    whole = clips_folder(src, tmp_path / "whole", _opts())
    mixed = [r["clip"] for r in whole.clips if len({_palette(f) for f in read_frames(tmp_path / "whole" / r["clip"], range(r["frames"]))}) > 1]
    assert mixed, "without --split-scenes a clip spans the cut (the test video must have one)"
    split = clips_folder(src, tmp_path / "split", _opts(split_scenes=True))
    recs = _assert_clips_true_to_records(tmp_path / "split")
    assert {r["scene"] for r in recs} == {1, 2}
    for r in recs:
        palettes = {_palette(f) for f in read_frames(tmp_path / "split" / r["clip"], range(r["frames"]))}
        assert palettes == {"first" if r["scene"] == 1 else "second"}, r["clip"]
    assert split.n_failed == 0


def test_short_fragments_dropped_below_minimum(tmp_path):
    src = tmp_path / "raw"
    src.mkdir()
    V.cut_video(src / "flash.mp4", 60, 6)  # a 0.2 s flash after 2 s: 3 frames at 16 fps
    r = clips_folder(src, tmp_path / "o", _opts(frames=81, split_scenes=True, min_scene_frames=8))
    recs = read_clips_jsonl(tmp_path / "o")
    assert [x["scene"] for x in recs] == [1] and recs[0]["frames"] == 29  # 32 frames -> one 4N+1 clip of 29
    assert r.items[0].dropped_frames >= 3 + 3
    none = clips_folder(src, tmp_path / "none", _opts(frames=81, min_scene_frames=40))
    assert none.items[0].status == "empty" and "--min-scene-frames" in none.items[0].reason


def test_rotated_phone_clip_is_upright(tmp_path):
    src = tmp_path / "raw"
    src.mkdir()
    V.write_video(src / "phone.mov", 20, size=(96, 64), rotation=-90)
    clips_folder(src, tmp_path / "o", _opts())
    (r,) = _assert_clips_true_to_records(tmp_path / "o")
    assert r["height"] > r["width"] and r["rotation"] == 270
    (f,) = read_frames(tmp_path / "o" / r["clip"], [0])
    a = np.asarray(f).astype(int)
    assert abs(a[1, a.shape[1] // 5] - np.array(V.RED)).sum() < 90  # the stored left bar is on top
    assert abs(a[-2, a.shape[1] // 5] - np.array(V.YELLOW)).sum() < 90


def test_non_square_pixels_fixed(tmp_path):
    src = tmp_path / "raw"
    src.mkdir()
    V.write_video(src / "anamorphic.mkv", 20, size=(64, 48), sar=(2, 1))  # shows as 128x48
    clips_folder(src, tmp_path / "o", _opts())
    (r,) = _assert_clips_true_to_records(tmp_path / "o")
    assert r["width"] / r["height"] > 2.0  # 64x48 read as square pixels would be 1.33


def test_letterbox_removed(tmp_path):
    src = tmp_path / "raw"
    src.mkdir()
    V.letterboxed(src / "film.mp4", 20, size=(128, 96), bar=16)
    clips_folder(src, tmp_path / "o", _opts())
    (r,) = _assert_clips_true_to_records(tmp_path / "o")
    assert r["letterbox"] == [0, 16, 128, 80]
    assert r["width"] / r["height"] == pytest.approx(2.0, rel=0.15)
    (f,) = read_frames(tmp_path / "o" / r["clip"], [0])
    a = np.asarray(f.convert("L"))
    assert a[0].mean() > 60 and a[-1].mean() > 60  # no black rows left
    kept = clips_folder(src, tmp_path / "kept", _opts(crop_bars=False))
    assert kept.clips[0]["letterbox"] is None


def test_letterbox_detection_leaves_dark_and_plain_frames():
    plain = Image.fromarray(V.bars(64, 48, 0))
    assert letterbox_box([plain]) is None
    dark = Image.new("RGB", (64, 48), (5, 5, 5))
    assert letterbox_box([dark]) is None


def test_bad_videos_do_not_abort_the_batch(tmp_path):
    src = tmp_path / "raw"
    src.mkdir()
    V.corrupt(src / "a_broken.mp4")
    V.audio_only(src / "b_memo.mp4")
    V.write_video(src / "c_good.mp4", 40)
    report = clips_folder(src, tmp_path / "o", _opts())
    by = {r.id: r for r in report.items}
    assert by["a_broken.mp4"].status == "failed" and "export or download it again" in by["a_broken.mp4"].reason
    assert by["b_memo.mp4"].status == "failed" and "audio-only" in by["b_memo.mp4"].reason
    assert by["c_good.mp4"].status == "ok" and len(by["c_good.mp4"].clips) == 2
    assert report.n_failed == 2
    _assert_clips_true_to_records(tmp_path / "o")


def test_rerun_resumes_without_reencoding(tmp_path):
    src = tmp_path / "raw"
    src.mkdir()
    V.write_video(src / "a.mp4", 60)
    V.write_video(src / "b.mp4", 40, fps=25)
    out = tmp_path / "o"
    first = clips_folder(src, out, _opts())
    assert first.encoded == len(first.clips) == 5
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.mp4")}
    again = clips_folder(src, out, _opts())
    assert (again.encoded, again.reused) == (0, 5)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.mp4")} == mtimes
    # a lost clip is cut again, and only that one
    lost = sorted(out.glob("*.mp4"))[0]
    lost.unlink()
    third = clips_folder(src, out, _opts())
    assert third.encoded == 1 and lost.is_file()
    sheet = out / SHEETS_DIR / (lost.stem + ".jpg")
    sheet.unlink()
    assert clips_folder(src, out, _opts()).encoded == 1 and sheet.is_file()  # a lost contact sheet is drawn again
    # changed options cut again, and the old clips of that plan are removed
    fewer = clips_folder(src, out, _opts(max_clips_per_video=1))
    assert len(fewer.clips) == 2 and sorted(p.name for p in out.glob("*.mp4")) == sorted(c["clip"] for c in fewer.clips)
    assert len(read_clips_jsonl(out)) == 2


def test_max_clips_spread_over_the_video(tmp_path):
    src = tmp_path / "raw"
    src.mkdir()
    V.write_video(src / "long.mp4", 150)  # 5 s: 80 frames at 16 fps: 8 clips of 9
    r = clips_folder(src, tmp_path / "o", _opts(max_clips_per_video=3))
    starts = [c["start"] for c in r.clips]
    assert len(starts) == 3 and starts[0] == 0 and starts[-1] == pytest.approx(7 * 9 / 16)


def test_clips_folder_for_captioning_and_layout(tmp_path):
    """Contact sheets are reports: an image discovery of the clips folder does not see them."""
    src = tmp_path / "raw"
    src.mkdir()
    V.write_video(src / "a.mp4", 20)
    clips_folder(src, tmp_path / "o", _opts())
    assert list(discover(tmp_path / "o", recursive=True)) == []
    sheet = Image.open(next((tmp_path / "o" / SHEETS_DIR).glob("*.jpg")))
    assert sheet.width > 9 * 96  # nine frames a row: every frame that trains is on it


def test_options_refuse_wrong_frame_counts_and_image_trainers():
    with pytest.raises(ValueError, match="not 4N\\+1.*use 77 or 81"):
        ClipsOptions(frames=80)
    with pytest.raises(ValueError, match="does not train video"):
        ClipsOptions(trainer="anima")
    with pytest.raises(OptionsError, match="frames"):
        load_options(ClipsOptions, {"frames": "81"}, where="loraprep.toml [clips]")
    assert ClipsOptions().target_fps == 16.0 and ClipsOptions(fps=24.0).target_fps == 24.0


def test_cli_json_and_exit_codes(tmp_path):
    from typer.testing import CliRunner

    from prep.cli import app

    src = tmp_path / "raw"
    src.mkdir()
    V.write_video(src / "a.mp4", 20)
    V.corrupt(src / "z.mp4")
    args = ["clips", str(src), "-o", str(tmp_path / "o"), "--frames", "9", "--resolution", RES]
    run = CliRunner().invoke
    p = run(app, [*args, "--json"])
    assert p.exit_code == 3, p.output
    data = json.loads(p.stdout)
    assert data["summary"]["clips"] == 1 and data["summary"]["failed"] == 1 and data["fps"] == 16.0
    bad = run(app, [*args, "--frames", "10"])
    assert bad.exit_code == 2 and "4N+1" in bad.output
    dry = run(app, ["clips", str(src), "-o", str(tmp_path / "dry"), "--frames", "9", "--dry-run", "--json"])
    assert dry.exit_code == 3 and not (tmp_path / "dry").exists()
    assert json.loads(dry.stdout)["videos"][0]["clips"] == ["a_s01_f00000.mp4"]
    human = run(app, args)
    assert human.exit_code == 3 and "kept from an earlier run" in human.output and "z.mp4" in human.output


def test_probe_error_type_is_the_one_reported(tmp_path):
    V.corrupt(tmp_path / "x.mp4")
    with pytest.raises(VideoError):
        probe_video(tmp_path / "x.mp4")
