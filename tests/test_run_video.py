"""`loraprep run` with a video trainer: import, check, clips, caption, layout, config, estimate.

Tiny phone-like clips made here with PyAV (30 fps, one of them rotated); the captions are the
user's own (`walk.txt` beside `walk.mp4`): the offline WD tagger reads stills only, and a motion
caption must describe movement, so a clip with no caption is named and left out, never trained
uncaptioned (musubi-tuner stops on one).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from typer.testing import CliRunner

from loraprep.cli import app
from train_bridge.estimate import estimate_run

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

runner = CliRunner()
TRIGGER = "sage_walk"


def phone_clip(path: Path, frames: int, *, fps: int = 30, size: tuple[int, int] = (64, 48), rotation: int | None = None) -> Path:
    w, h = size
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"preset": "ultrafast"}
        if rotation is not None:
            s.set_display_rotation(rotation)
        for i in range(frames):
            a = np.zeros((h, w, 3), np.uint8)
            a[:, : w // 2] = (200, 60, 60)
            a[:, w // 2 :] = (60, 60, 200)
            x = (i * 2) % (w - 8)
            a[h // 2 - 4 : h // 2 + 4, x : x + 8] = 255  # a block that moves
            for p in s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def _run(args: list[str]) -> tuple[int, dict]:
    res = runner.invoke(app, ["run", *args, "--json"], catch_exceptions=False)
    try:
        return res.exit_code, json.loads(res.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"no JSON on stdout (exit {res.exit_code}):\n{res.output}")


def _base(raw: Path, project: Path) -> list[str]:
    return [
        str(raw), "-o", str(project), "--trainer", "wan22-t2v", "--trigger", TRIGGER, "--lora-type", "motion", "--repeats", "1",
        "--dit", "low.safetensors", "--model", "dit_high=high.safetensors", "--vae", "vae.safetensors", "--model", "t5=t5.pth",
        "--workers", "2",
    ]


def _frames_and_fps(path: Path) -> tuple[int, float]:
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return sum(1 for _ in c.decode(video=0)), float(s.average_rate)


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    raw = tmp_path / "raw_videos"
    raw.mkdir()
    phone_clip(raw / "walk.mp4", 170)  # 5.7 s at 30 fps -> 90 frames at 16: one 81-frame clip
    (raw / "walk.txt").write_text("a person walks from left to right at an even pace\n")
    phone_clip(raw / "turn.mp4", 160, rotation=90)  # a portrait phone clip
    (raw / "turn.txt").write_text("sage_walk, the person turns around\n")
    return raw


def test_video_run_end_to_end_then_up_to_date(raw: Path, tmp_path: Path, digest) -> None:
    project = tmp_path / "project"
    before = digest(raw)
    code, rep = _run(_base(raw, project))
    assert code == 0, rep
    names = [s["name"] for s in rep["stages"]]
    assert names == ["import", "check", "clips", "caption", "layout", "config", "estimate"]
    assert digest(raw) == before  # originals untouched

    clips = sorted((project / "02_clips").glob("*.mp4"))
    assert len(clips) == 2
    for c in clips:
        n, fps = _frames_and_fps(c)
        assert n == 81 and abs(fps - 16.0) < 1e-6  # 4N+1 frames at Wan's 16 fps

    # the dataset: clips with the user's captions, trigger first
    ds_dir = project / "dataset" / "img" / f"1_{TRIGGER}"
    caps = {p.stem: p.read_text().strip() for p in ds_dir.glob("*.txt")}
    assert len(caps) == 2 and all(t.startswith(f"{TRIGGER}, ") for t in caps.values()), caps
    assert sum(t.count(TRIGGER) for t in caps.values()) == 2  # exactly once each
    chk = {s["name"]: s for s in rep["stages"]}["check"]["summary"]
    assert chk["videos"] == 2 and any("rotated 90" in w for w in chk["warnings"]["turn.mp4"])

    # a musubi video dataset TOML whose every clip trains whole: full extraction, 81 frames
    ds = tomllib.loads((project / "run" / "dataset.toml").read_text())
    [entry] = ds["datasets"]
    assert entry["video_directory"] == str(ds_dir.resolve()) and entry["frame_extraction"] == "full" and entry["max_frames"] == 81
    assert "source_fps" not in entry  # the clips are 16 fps already

    # the exact step count: one 81-frame item per clip, batch 1, one bucket per (size, frames)
    est = {s["name"]: s for s in rep["stages"]}["estimate"]["summary"]
    again = estimate_run(project / "run", budget=None)
    assert est["steps_per_epoch"] == again.steps_per_epoch == 2
    assert all(k.endswith("x81") for k in est["buckets"]) and sum(est["buckets"].values()) == 2

    # nothing changed: every stage is up to date
    code, rep2 = _run(_base(raw, project))
    assert code == 0 and all(s["status"] == "up-to-date" for s in rep2["stages"]), rep2["stages"]


def test_a_clip_without_any_caption_is_named_not_trained(raw: Path, tmp_path: Path) -> None:
    (raw / "turn.txt").unlink()
    (raw / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 truncated")
    project = tmp_path / "project"
    code, rep = _run(_base(raw, project))
    stages = {s["name"]: s for s in rep["stages"]}
    chk = stages["check"]["summary"]
    assert chk["videos"] == 3 and chk["ok"] == 2 and "broken.mp4" in chk["errors"]
    assert "broken.mp4" in stages["clips"]["summary"]["failed"]  # named, and the batch went on
    assert [f for f in stages["caption"]["summary"]["failed"] if f.startswith("turn")]
    assert "a motion caption must describe the movement" in (project / "reports" / "caption.json").read_text()
    lay = stages["layout"]["summary"]
    assert lay["videos"] == 1 and any(w.startswith("turn") for w in lay["without_caption"]), lay
    caps = list((project / "dataset" / "img" / f"1_{TRIGGER}").glob("*.txt"))
    assert [c.stem for c in caps] == [p.stem for p in (project / "dataset" / "img" / f"1_{TRIGGER}").glob("*.mp4")]
    assert code != 0  # a partial run says so


def test_image_trainer_chain_is_unchanged(tmp_path: Path) -> None:
    from loraprep.project import Project
    from loraprep.stages import STEPS, steps_for

    raw = tmp_path / "raw"
    raw.mkdir()
    phone_clip(raw / "walk.mp4", 20)
    assert steps_for(Project(source=str(raw), trigger="x", trainer="anima")) is STEPS  # anima trains images
    assert [s.name for s in steps_for(Project(source=str(raw), trigger="x", trainer="wan21-t2v"))][2] == "clips"
    (raw / "walk.mp4").unlink()
    assert steps_for(Project(source=str(raw), trigger="x", trainer="wan21-t2v")) is STEPS  # Wan on images: the image chain


def test_every_video_step_is_a_stage_with_the_shared_protocol() -> None:
    from loraprep.stages import STAGES, VIDEO_STEPS

    assert [s.name for s in VIDEO_STEPS] == ["import", "check", "clips", "caption", "layout", "config", "estimate"]
    assert "clips" in STAGES  # --redo clips
    for step in VIDEO_STEPS:
        stage = step.stage()
        assert stage.name == step.name
        assert callable(stage.run) and hasattr(stage.Options, "model_validate")


def test_import_takes_videos_from_a_zip(tmp_path: Path) -> None:
    import zipfile

    from loraprep.stages import ImportKeepingRejects, ImportWithVideos, _stage

    phone_clip(tmp_path / "walk.mp4", 20)
    src = tmp_path / "clips.zip"
    with zipfile.ZipFile(src, "w") as z:
        z.write(tmp_path / "walk.mp4", "top/walk.mp4")
        z.writestr("top/walk.txt", "a person walks\n")
    stage = ImportWithVideos(ImportKeepingRejects(_stage("prep.importer")))
    out = tmp_path / "project" / "01_raw"
    rep = stage.run(src, out, stage.Options(flatten=True))
    assert rep.videos == ["walk.mp4"] and rep.n_failed == 0  # beside its caption: the clips inherit it
    assert (out / "walk.mp4").read_bytes() == (tmp_path / "walk.mp4").read_bytes()
    assert (out / "walk.txt").is_file()


def test_one_command_with_gemini_motion_captions(tmp_path: Path, monkeypatch) -> None:
    """The issue's new user: phone clips without captions, one `loraprep run ... --backend gemini
    --lora-type motion` (Gemini is the real google-genai SDK against a stub on 127.0.0.1): 16 fps
    4N+1 clips, motion captions with the trigger first, a musubi video TOML, exact steps."""
    pytest.importorskip("google.genai")
    from stubs.gemini_stub import GeminiStub

    raw = tmp_path / "phone"
    raw.mkdir()
    phone_clip(raw / "walk.mp4", 170)
    phone_clip(raw / "turn.mp4", 160, rotation=90)
    monkeypatch.setenv("GEMINI_API_KEY", "AIzaFAKE-run-video-0123456789")
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    with GeminiStub(reply=lambda media, prompt: "a figure walks steadily left to right, the camera holds still") as stub:
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", stub.url)
        project = tmp_path / "project"
        code, rep = _run([*_base(raw, project), "--backend", "gemini"])
        asked = [r for r in stub.requests if r["path"].endswith(":generateContent")]
    assert code == 0, rep
    assert len(asked) == 2  # one request per clip
    ds_dir = project / "dataset" / "img" / f"1_{TRIGGER}"
    clips = sorted(ds_dir.glob("*.mp4"))
    assert len(clips) == 2 and all(_frames_and_fps(c) == (81, 16.0) for c in clips)
    caps = [p.read_text().strip() for p in sorted(ds_dir.glob("*.txt"))]
    assert len(caps) == 2 and all(c.startswith(f"{TRIGGER}, ") and "walks steadily" in c for c in caps), caps
    entry = tomllib.loads((project / "run" / "dataset.toml").read_text())["datasets"][0]
    assert entry["frame_extraction"] == "full" and entry["max_frames"] == 81
    assert estimate_run(project / "run").steps_per_epoch == 2
    assert "AIzaFAKE-run-video" not in json.dumps(rep) and "AIzaFAKE-run-video" not in (project / "loraprep.toml").read_text()
