"""Video clips through ReplicateBackend (real `replicate` client against tests/stubs/replicate_stub.py):
the nemotron-video preset gets the clip itself through the files API; image-only presets caption
sampled frames through the pipeline."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("replicate")
pytest.importorskip("av")

from caption_video_util import make_clip  # noqa: E402
from captioning.backends.base import CaptionOptions, accepts_video  # noqa: E402
from captioning.backends.replicate import PRESETS, ReplicateBackend  # noqa: E402
from captioning.pipeline import caption_folder  # noqa: E402
from prep.dataset import ImageItem  # noqa: E402
from stubs.replicate_stub import ReplicateStub  # noqa: E402

TOKEN = "r8_FAKE_video_token_0123456789"


@pytest.fixture
def env(monkeypatch):
    monkeypatch.setenv("REPLICATE_API_TOKEN", TOKEN)

    def use(stub: ReplicateStub) -> None:
        monkeypatch.setenv("REPLICATE_BASE_URL", stub.url)

    return use


def opts(tmp_path: Path, **kw) -> CaptionOptions:
    extra = {"backoff_base": 0.01, "backoff_max": 0.05, "poll_interval": 0.02, **kw.pop("extra", {})}
    return CaptionOptions(trigger=kw.pop("trigger", "sage_walk"), lora_type=kw.pop("lora_type", "motion"), model=kw.pop("model", "nemotron-video"),
                          state_dir=tmp_path / "out", concurrency=2, extra=extra, **kw)


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_nemotron_preset_uploads_clip_with_fps_and_video_prompt(tmp_path, env):
    clip = make_clip(tmp_path / "c" / "walk.mp4", frames=48, fps=16, size=(320, 240), noise=True)  # 3 s, > 1 MB
    out = lambda inp, media: "The figure strides left to right, arms swinging; the camera stays static."  # noqa: E731
    with ReplicateStub(output=out, polls_before_done=2) as stub:
        env(stub)
        b = ReplicateBackend()
        assert accepts_video(b, opts(tmp_path)) and not accepts_video(b, opts(tmp_path, model="florence-2"))
        [res] = b.caption_batch([ImageItem("walk.mp4", clip, clip.with_suffix(".txt"), flags={"video": True})], opts(tmp_path))
    assert res.status == "ok" and res.text.startswith("sage_walk, The figure strides")
    [p] = stub.preds.values()
    assert p["version"] == PRESETS["nemotron-video"].model.split(":")[1]  # the pinned version
    assert p["input"]["video_fps"] == 5  # 16 frames over 3 s, whole fps for the schema
    assert "This clip shows the motion called sage_walk" in p["input"]["prompt"] and "camera" in p["input"]["prompt"]
    assert stub.creates == {sha(clip): 1}  # the clip itself, as it is, once
    assert clip.stat().st_size > 1_000_000 and p["input"]["video"].startswith(stub.url + "/v1/files/")  # uploaded, not a data URI
    [(name, ctype, data)] = stub.files.values()
    assert name == "walk.mp4" and ctype == "video/mp4" and data == clip.read_bytes()
    assert res.data["video"]["fps"] == 5 and res.data["prediction_id"] == p["id"]


def test_pipeline_resume_creates_no_second_prediction_and_images_need_an_image_model(tmp_path, env):
    d = tmp_path / "data"
    make_clip(d / "a.mp4")
    make_clip(d / "b.mp4", frames=30, colour=lambda i: (200, 50, 90))
    Image.new("RGB", (64, 64), (10, 120, 200)).save(d / "still.png")
    with ReplicateStub(output=lambda inp, media: "A slow turn to the left.") as stub:
        env(stub)
        rep = caption_folder(d, "replicate", opts(tmp_path))
        by = {o.id: o for o in rep.outcomes}
        assert by["a.mp4"].status == by["b.mp4"].status == "ok"
        assert by["still.png"].status == "failed" and "takes video clips only" in by["still.png"].reason and "florence-2" in by["still.png"].reason
        assert (d / "a.txt").read_text() == "sage_walk, A slow turn to the left.\n"
        n = stub.create_count()
        assert n == 2
        again = caption_folder(d, "replicate", opts(tmp_path))
        assert again.count("resumed") == 2 and stub.create_count() == n  # no clip billed twice


def test_image_preset_captions_the_middle_frame_of_a_clip(tmp_path, env):
    d = tmp_path / "data"
    make_clip(d / "pose.mp4", frames=24, block=False, colour=lambda i: (230, 30, 30) if i < 12 else (30, 30, 230))
    seen: list[bytes] = []

    def out(inp, img):
        seen.append(img)
        return {"text": "{'<MORE_DETAILED_CAPTION>': 'A figure stands still.'}"}

    with ReplicateStub(output=out) as stub:
        env(stub)
        rep = caption_folder(d, "replicate", opts(tmp_path, model="florence-2", lora_type="character", trigger="sage"))
        assert rep.count("ok") == 1 and (d / "pose.txt").read_text() == "sage, A figure stands still.\n"
        assert stub.create_count() == 1
        import io

        r, g, b = Image.open(io.BytesIO(seen[0])).convert("RGB").resize((1, 1)).getpixel((0, 0))
        assert b > 150 and r < 100  # frame 12 of 24: the second half's colour
        motion = caption_folder(d, "replicate", opts(tmp_path, model="florence-2", lora_type="motion"), mode="overwrite")
        assert motion.count("failed") == 1 and "still images only" in motion.problems[0].reason
        assert stub.create_count() == 1  # nothing paid for a caption that could not describe motion
