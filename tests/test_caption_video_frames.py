"""Clips with an image-only tagger (wd14, tiny ONNX model with the real contract): tags of sampled
frames, kept when present in most of them."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("av")

from caption_video_util import corrupt_clip, make_clip  # noqa: E402
from captioning.backends.base import CaptionOptions  # noqa: E402
from captioning.frames import FRAMES_FOR_TAGS  # noqa: E402
from captioning.pipeline import caption_folder  # noqa: E402
from wd_tiny import build_tiny_wd14  # noqa: E402

BLUE, RED = (0, 0, 255), (255, 0, 0)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return build_tiny_wd14(tmp_path_factory.mktemp("wd") / "m")


def test_tagger_keeps_tags_of_most_sampled_frames(model, tmp_path):
    d = tmp_path / "data"
    # 24 frames, sampled at 4, 12, 20: blue, blue, red
    make_clip(d / "mostly_blue.mp4", frames=24, block=False, colour=lambda i: BLUE if i < 16 else RED)
    corrupt_clip(d / "broken.mp4")
    rep = caption_folder(d, "wd14", CaptionOptions(trigger="sage", lora_type="character", model=str(model)))
    by = {o.id: o for o in rep.outcomes}
    text = (d / "mostly_blue.txt").read_text()
    assert text.startswith("sage, ") and "blue eyes" in text and "hatsune miku" in text
    assert "red hair" not in text and "kirisame marisa" not in text  # seen in 1 of 3 frames only
    assert by["broken.mp4"].status == "failed" and "broken.mp4" in by["broken.mp4"].reason and not (d / "broken.txt").exists()
    from prep.manifest import Manifest

    rec = Manifest.in_folder(d).get("caption", "mostly_blue.mp4")
    assert rec.status == "ok" and rec.data["from_frames"] is True and rec.data["frames"] == [4, 12, 20] and FRAMES_FOR_TAGS == 3
    again = caption_folder(d, "wd14", CaptionOptions(trigger="sage", lora_type="character", model=str(model)))
    assert {o.id: o.status for o in again.outcomes}["mostly_blue.mp4"] == "resumed"
