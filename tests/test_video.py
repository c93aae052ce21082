"""prep.video: probing, errors with their fix, upright square frames, discovery, and the check report."""

from __future__ import annotations

import os

import numpy as np
import pytest
import videos as V

from prep.video import (
    VIDEO_SUFFIXES,
    VideoError,
    check_videos,
    discover_videos,
    floor_4n1,
    is_4n1,
    is_video_path,
    probe_video,
    read_frames,
)


def _colour(img, x: float, y: float) -> tuple[int, int, int]:
    a = np.asarray(img.convert("RGB"))
    return tuple(int(v) for v in a[int(y * (a.shape[0] - 1)), int(x * (a.shape[1] - 1))])


def _near(c, want, tol=40) -> bool:
    return all(abs(a - b) <= tol for a, b in zip(c, want))


def test_probe_30fps(tmp_path):
    p = V.write_video(tmp_path / "a.mp4", 45, fps=30, size=(96, 64))
    info = probe_video(p)
    assert (info.frames, info.fps, info.width, info.height) == (45, 30.0, 96, 64)
    assert info.duration == pytest.approx(1.5, abs=1e-3)
    assert info.rotation == 0 and info.sar == (1, 1) and not info.vfr
    assert info.codec == "h264"
    assert info.display_size == (96, 64)


def test_probe_webm_and_animated_gif(tmp_path):
    w = probe_video(V.write_video(tmp_path / "a.webm", 20, codec="libvpx-vp9", size=(64, 48)))
    assert (w.frames, w.codec) == (20, "vp9")
    g = probe_video(V.animated_gif(tmp_path / "a.gif", frames=12, ms=100))
    assert g.frames == 12 and g.fps == pytest.approx(10.0, rel=0.01)


def test_rotated_phone_clip_reads_upright(tmp_path):
    # a phone writes landscape pixels and a display matrix "turn 90 degrees clockwise"
    p = V.write_video(tmp_path / "phone.mov", 10, size=(96, 64), rotation=-90)
    info = probe_video(p)
    assert info.rotation == 270 and info.display_size == (64, 96)
    (frame,) = read_frames(p, [0])
    assert frame.size == (64, 96)
    # bars run red, green, blue, yellow left to right in the stored pixels: turned clockwise, red is on top
    assert _near(_colour(frame, 0.15, 0.02), V.RED) and _near(_colour(frame, 0.15, 0.98), V.YELLOW)


def test_non_square_pixels_made_square(tmp_path):
    p = V.write_video(tmp_path / "anamorphic.mkv", 10, size=(64, 48), sar=(2, 1))
    info = probe_video(p)
    assert info.sar == (2, 1) and info.display_size == (128, 48)
    assert [f.size for f in read_frames(p, [3, 0])] == [(128, 48), (128, 48)]


def test_read_frames_order_and_bounds(tmp_path):
    p = V.write_video(tmp_path / "a.mp4", 12, size=(64, 48))
    a, b = read_frames(p, [7, 2])
    assert a.tobytes() != b.tobytes()
    with pytest.raises(VideoError, match="frame 12 does not exist"):
        read_frames(p, [12])


@pytest.mark.parametrize("kind, match", [
    ("corrupt", "not a readable video.*export or download it again"),
    ("truncated", "truncated: the mp4/mov index"),
    ("audio", "audio-only file.*use the video file itself"),
    ("empty", "not a readable video"),
    ("fifo", "FIFO"),
])
def test_bad_files_name_reason_and_fix(tmp_path, kind, match):
    p = tmp_path / f"{kind}.mp4"
    if kind == "corrupt":
        V.corrupt(p)
    elif kind == "truncated":
        V.truncated(p, V.write_video(tmp_path / "good.mp4", 30))
    elif kind == "audio":
        V.audio_only(p)
    elif kind == "empty":
        p.write_bytes(b"")
    else:
        os.mkfifo(p)
    with pytest.raises(VideoError, match=match) as err:
        probe_video(p)
    assert err.value.path == p and str(p) in str(err.value)


def test_variable_frame_rate_is_named(tmp_path):
    info = probe_video(V.vfr_video(tmp_path / "screen.mp4", 40))
    assert info.vfr
    report = check_videos(tmp_path)
    (v,) = report["videos"]
    assert any("variable" in w and "ffmpeg -i IN -vf fps=30" in w for w in v["warnings"])
    assert not probe_video(V.write_video(tmp_path / "cfr.mp4", 40)).vfr


def test_is_video_path_and_discovery(tmp_path):
    assert {".mp4", ".mov", ".webm", ".mkv", ".gif", ".m4v", ".avi"} <= VIDEO_SUFFIXES
    V.write_video(tmp_path / "B.MP4", 5)
    V.animated_gif(tmp_path / "moving.gif")
    V.still_gif(tmp_path / "still.gif")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "._B.MP4").write_bytes(b"litter")
    sub = tmp_path / "sub"
    sub.mkdir()
    V.write_video(sub / "c.webm", 5, codec="libvpx-vp9")
    assert is_video_path(tmp_path / "moving.gif") and not is_video_path(tmp_path / "still.gif")
    assert not is_video_path(tmp_path / "x.png")
    assert [p.name for p in discover_videos(tmp_path)] == ["B.MP4", "moving.gif"]
    assert [p.name for p in discover_videos(tmp_path, recursive=True)] == ["B.MP4", "moving.gif", "c.webm"]


def test_frame_rule_helpers():
    assert [is_4n1(n) for n in (1, 5, 80, 81)] == [True, True, False, True]
    assert (floor_4n1(80), floor_4n1(81), floor_4n1(4), floor_4n1(0)) == (77, 81, 1, 0)


def test_check_videos_report(tmp_path):
    V.write_video(tmp_path / "long.mp4", 180, fps=30)  # 6 s: 96 frames at 16 fps, one 81-frame clip, 15 dropped
    V.write_video(tmp_path / "short.mp4", 60, fps=30)  # 2 s: 32 frames, no 81-frame clip
    V.write_video(tmp_path / "phone.mov", 30, rotation=-90)
    V.audio_only(tmp_path / "memo.mp4")
    V.corrupt(tmp_path / "broken.mkv")
    r = check_videos(tmp_path, fps=16, frames=81)
    by = {v["file"]: v for v in r["videos"]}
    assert by["long.mp4"]["frames_at_fps"] == 96 and by["long.mp4"]["clips"] == 1 and by["long.mp4"]["dropped_frames"] == 15
    assert any("15 frames" in w and "dropped" in w for w in by["long.mp4"]["warnings"])
    assert by["short.mp4"]["clips"] == 0 and any("--frames 29" in w for w in by["short.mp4"]["warnings"])
    assert by["phone.mov"]["rotation"] == 270 and any("upright" in w for w in by["phone.mov"]["warnings"])
    errors = {e["file"]: e["reason"] for e in r["errors"]}
    assert set(errors) == {"memo.mp4", "broken.mkv"} and "audio-only" in errors["memo.mp4"]
    assert r["summary"]["videos"] == 5 and r["summary"]["ok"] == 3 and r["summary"]["errors"] == 2
    assert r["target"]["warning"] is None
    assert "4N+1" in check_videos(tmp_path, frames=80)["target"]["warning"]


def test_a_video_caption_is_not_an_orphan(tmp_path):
    from prep.dataset import discover, orphan_captions

    V.write_video(tmp_path / "walk.mp4", 5)
    (tmp_path / "walk.txt").write_text("a person walks")
    (tmp_path / "lonely.txt").write_text("no picture")
    assert [p.name for p in orphan_captions(tmp_path, discover(tmp_path))] == ["lonely.txt"]
