"""The anime detector path with a tiny ONNX model of the real models' contract, built here.

deepghs' YOLO models take `images` float32 [1, 3, 640, 640] RGB 0..1 and return `output0`
[1, 4 + classes, N] (cx, cy, w, h in input pixels, then class scores). The tiny model below
ignores its input and returns boxes we choose, so the test controls what is "detected" and
checks the letterbox mapping back to image pixels, thresholds and NMS.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from prep.detectors import create_detector  # noqa: E402
from prep.detectors.anime import AnimeDetector  # noqa: E402
from prep.models import ModelNotAvailable  # noqa: E402

SIZE = 640
N_ANCHORS = 8400


def model_boxes_for(image_size: tuple[int, int], boxes: list[tuple[float, float, float, float]]) -> list[tuple[float, float, float, float]]:
    """Image-pixel boxes (x0, y0, x1, y1) -> model-input (cx, cy, w, h) under a centred letterbox."""
    w, h = image_size
    s = min(SIZE / w, SIZE / h)
    px = (SIZE - round(w * s)) // 2
    py = (SIZE - round(h * s)) // 2
    out = []
    for x0, y0, x1, y1 in boxes:
        out.append(((x0 + x1) / 2 * s + px, (y0 + y1) / 2 * s + py, (x1 - x0) * s, (y1 - y0) * s))
    return out


def build_yolo_model(path: Path, detections: list[tuple[float, float, float, float, float]], *, end2end: bool = False) -> Path:
    """A YOLO-contract ONNX file whose `output0` is constant: `detections` = (cx, cy, w, h, score)."""
    if end2end:
        const = np.zeros((1, 300, 6), np.float32)
        for i, (cx, cy, w, h, s) in enumerate(detections):
            const[0, i] = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, s, 0)
    else:
        const = np.zeros((1, 5, N_ANCHORS), np.float32)
        for i, d in enumerate(detections):
            const[0, :, i] = d
    nodes = [
        helper.make_node("ReduceSum", ["images"], ["total"], keepdims=0),
        helper.make_node("Mul", ["total", "zero"], ["nothing"]),
        helper.make_node("Add", ["boxes", "nothing"], ["output0"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_yolo",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(const.shape))],
        initializer=[numpy_helper.from_array(const, "boxes"), numpy_helper.from_array(np.zeros((), np.float32), "zero")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for k, v in {"imgsz": "[640, 640]", "names": "{0: 'head'}", "task": "detect"}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_anime_boxes_map_back_through_the_letterbox(tmp_path: Path) -> None:
    size = (334, 700)
    want = [(90.0, 30.0, 250.0, 210.0), (20.0, 400.0, 60.0, 440.0)]
    (a, b) = model_boxes_for(size, want)
    model = build_yolo_model(tmp_path / "m.onnx", [(*a, 0.91), (*b, 0.55), (a[0] + 2, a[1] + 1, a[2], a[3], 0.80), (300, 300, 40, 40, 0.2)])
    det = AnimeDetector(model)
    boxes = det.detect(Image.new("RGB", size, "white"))
    # the 0.80 duplicate is suppressed by NMS, the 0.2 one is under the 0.4 threshold
    assert len(boxes) == 2
    big, small = boxes
    assert big.kind == "head" and big.detector == "anime"
    assert np.allclose([big.x0, big.y0, big.x1, big.y1], want[0], atol=1.5)
    assert np.allclose([small.x0, small.y0, small.x1, small.y1], want[1], atol=1.5)
    assert big.score == pytest.approx(0.91, abs=1e-5)


def test_end_to_end_export_is_understood(tmp_path: Path) -> None:
    size = (1200, 800)
    (a,) = model_boxes_for(size, [(500.0, 100.0, 700.0, 330.0)])
    det = AnimeDetector(build_yolo_model(tmp_path / "e2e.onnx", [(*a, 0.7)], end2end=True))
    (box,) = det.detect(Image.new("RGB", size))
    assert np.allclose([box.x0, box.y0, box.x1, box.y1], [500, 100, 700, 330], atol=2)


def test_threshold_option_drops_weak_heads(tmp_path: Path) -> None:
    model = build_yolo_model(tmp_path / "m.onnx", [(320, 320, 100, 100, 0.5)])
    assert len(AnimeDetector(model).detect(Image.new("RGB", (640, 640)))) == 1
    assert AnimeDetector(model, score_threshold=0.6).detect(Image.new("RGB", (640, 640))) == []


def test_model_from_environment_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a folder laid out like the Hub repo works, as does the file itself
    (tmp_path / "head_detect_v2.0_s").mkdir()
    model = build_yolo_model(tmp_path / "head_detect_v2.0_s" / "model.onnx", [(320, 320, 100, 100, 0.9)])
    monkeypatch.setenv("LORAPREP_ANIME_MODEL", str(tmp_path))
    assert create_detector("anime").resolve() == model
    flat = tmp_path / "flat"
    flat.mkdir()
    bare = build_yolo_model(flat / "model.onnx", [(320, 320, 100, 100, 0.9)])
    monkeypatch.setenv("LORAPREP_ANIME_MODEL", str(flat))  # a folder holding the bare model.onnx
    assert create_detector("anime").resolve() == bare
    monkeypatch.setenv("LORAPREP_ANIME_MODEL", str(model))
    det = create_detector("anime")
    assert det.resolve() == model
    assert len(det.detect(Image.new("RGB", (640, 640)))) == 1


def test_offline_without_a_model_says_how_to_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LORAPREP_ANIME_MODEL", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ModelNotAvailable) as err:
        AnimeDetector().resolve()
    assert "LORAPREP_ANIME_MODEL" in str(err.value)


def test_auto_prefers_anime_when_yunet_is_unsure(tmp_path: Path, yunet_model: Path) -> None:
    model = build_yolo_model(tmp_path / "m.onnx", [(320, 200, 120, 150, 0.8)])
    det = create_detector("auto", model_path=yunet_model, anime_model_path=model)
    (box,) = det.detect(Image.new("RGB", (640, 640), (200, 200, 200)))  # no real face: YuNet finds nothing
    assert box.detector == "anime" and box.kind == "head"


def test_auto_keeps_a_confident_photo_face(tmp_path: Path, yunet_model: Path, astronaut: Image.Image) -> None:
    model = build_yolo_model(tmp_path / "m.onnx", [(100, 500, 50, 50, 0.99)])
    det = create_detector("auto", model_path=yunet_model, anime_model_path=model)
    boxes = det.detect(astronaut)
    assert boxes[0].detector == "photo"
    assert 170 < boxes[0].x0 < 190


def test_auto_works_with_only_one_model_and_warns(tmp_path: Path, yunet_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAPREP_ANIME_MODEL", str(tmp_path / "missing.onnx"))
    det = create_detector("auto", model_path=yunet_model)
    det.check()
    assert any("anime detector unavailable" in w for w in det.warnings)
    assert det.detect(Image.new("RGB", (320, 320))) == []
