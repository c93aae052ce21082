"""Issue 17: the WD tagger's memory — model batch per device, bounded decode-ahead."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import ImageFile
from wd_tiny import build_tiny_wd14, solid

from captioning.backends.base import CaptionOptions
from captioning.backends.wd14 import DECODE_AHEAD_BATCHES, WD14Backend
from captioning.pipeline import CaptionStageOptions, caption_folder


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return build_tiny_wd14(tmp_path_factory.mktemp("wd") / "dynamic")


@pytest.fixture()
def images(tmp_path) -> Path:
    d = tmp_path / "imgs"
    d.mkdir()
    rng = np.random.default_rng(3)
    for i in range(10):
        solid(tuple(int(v) for v in rng.integers(0, 256, 3)), (48, 40)).save(d / f"{i:02d}.png")
    return d


@pytest.fixture()
def runs(monkeypatch) -> list[int]:
    """Batch size of every onnxruntime session.run (onnxruntime's method, observed, not replaced)."""
    seen: list[int] = []
    original = ort.InferenceSession.run

    def recording(self, output_names, input_feed, run_options=None):  # type: ignore[no-untyped-def]
        seen.append(int(next(iter(input_feed.values())).shape[0]))
        return original(self, output_names, input_feed, run_options)

    monkeypatch.setattr(ort.InferenceSession, "run", recording)
    return seen


def _caption(images: Path, out: Path, stage: CaptionStageOptions) -> dict[str, str]:
    caption_folder(images, "wd14", stage.caption_options(), output=out, mode="overwrite", rules=stage.tag_rules(), resume=False)
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(out.glob("*.txt"))}


def test_cpu_runs_one_image_at_a_time_unless_the_user_gives_a_batch(model, images, tmp_path, runs):
    default = CaptionStageOptions.model_validate({"backend": "wd14", "model": str(model), "device": "cpu"})
    tags_default = _caption(images, tmp_path / "a", default)
    assert runs and set(runs) == {1}

    runs.clear()
    given = CaptionStageOptions.model_validate({"backend": "wd14", "model": str(model), "device": "cpu", "batch_size": 4})
    tags_given = _caption(images, tmp_path / "b", given)
    assert runs == [4, 4, 2]  # the user's --batch-size wins
    assert tags_given == tags_default and len(tags_default) == 10

    runs.clear()
    forced = CaptionStageOptions.model_validate({"backend": "wd14", "model": str(model), "device": "cpu", "settings": ["batch=3"]})
    _caption(images, tmp_path / "c", forced)
    assert runs == [3, 3, 2, 2]  # executor batches of 8 (the default), 3 at a time through the model


def test_bad_batch_setting_is_a_clear_error(model, images, tmp_path):
    stage = CaptionStageOptions.model_validate({"backend": "wd14", "model": str(model), "device": "cpu", "settings": ["batch=0"]})
    with pytest.raises(ValueError, match="batch=.*whole number"):
        _caption(images, tmp_path / "x", stage)


def test_decode_ahead_holds_at_most_its_bound(model, tmp_path, monkeypatch):
    """Decodes started minus images already through the model, seen at each session.run."""
    d = tmp_path / "many"
    d.mkdir()
    for i in range(24):
        solid((i * 10 % 256, 80, 160), (40, 40)).save(d / f"{i:02d}.png")
    lock = threading.Lock()
    decoded, inferred, held = [0], [0], []
    load = ImageFile.ImageFile.load
    run = ort.InferenceSession.run

    def counting_load(self):  # type: ignore[no-untyped-def]
        if self.tile:
            with lock:
                decoded[0] += 1
        return load(self)

    def slow_run(self, output_names, input_feed, run_options=None):  # type: ignore[no-untyped-def]
        time.sleep(0.03)  # a slow model: decoding races ahead as far as the queue lets it
        with lock:
            held.append(decoded[0] - inferred[0])
        n = int(next(iter(input_feed.values())).shape[0])
        out = run(self, output_names, input_feed, run_options)
        with lock:
            inferred[0] += n
        return out

    monkeypatch.setattr(ImageFile.ImageFile, "load", counting_load)
    monkeypatch.setattr(ort.InferenceSession, "run", slow_run)
    bs = 2
    options = CaptionOptions(model=str(model), device="cpu", batch_size=bs, workers=2)
    report = caption_folder(d, "wd14", options, output=tmp_path / "out", backend=WD14Backend(), resume=False)
    assert sum(o.status == "ok" for o in report.outcomes) == 24
    assert inferred[0] == 24
    assert max(held) <= (DECODE_AHEAD_BATCHES + 1) * bs  # the batch being tagged plus the ones waiting
    assert max(held) > bs  # and it does decode ahead
