"""YuNet through onnxruntime with our own decoding, on real photos from scikit-image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from prep.detectors import create_detector, nms
from prep.detectors.yunet import YUNET_REF, YuNetDetector
from prep.models import ModelNotAvailable


def test_astronaut_face_matches_the_reference(yunet_model: Path, astronaut: Image.Image) -> None:
    (face,) = YuNetDetector(yunet_model).detect(astronaut)
    # reference: about [178, 63, 90, 113] (x, y, w, h), score 0.93
    assert face.x0 == pytest.approx(178, abs=4) and face.y0 == pytest.approx(63, abs=4)
    assert face.width == pytest.approx(90, abs=6) and face.height == pytest.approx(113, abs=6)
    assert 0.9 <= face.score <= 1.0


def test_decoding_agrees_with_opencv(yunet_model: Path, astronaut: Image.Image) -> None:
    """cv2.FaceDetectorYN runs the same file with OpenCV's own decoder: our boxes must match it."""
    cv2 = pytest.importorskip("cv2")
    im = astronaut.resize((640, 640))  # the model's own size: no letterbox difference
    fd = cv2.FaceDetectorYN.create(str(yunet_model), "", (640, 640), 0.6, 0.3, 50)
    _, found = fd.detect(np.ascontiguousarray(np.asarray(im)[:, :, ::-1]))
    assert found is not None
    ours = YuNetDetector(yunet_model).detect(im)
    assert len(ours) == len(found)
    x, y, w, h = found[0][:4]
    assert np.allclose([ours[0].x0, ours[0].y0, ours[0].width, ours[0].height], [x, y, w, h], atol=1.0)
    assert ours[0].score == pytest.approx(float(found[0][14]), abs=0.01)


def test_small_face_far_off_centre(yunet_model: Path, lfw_faces: np.ndarray) -> None:
    face = Image.fromarray((lfw_faces[0] * 255).astype(np.uint8)).convert("RGB").resize((300, 300), Image.Resampling.BICUBIC)
    canvas = Image.new("RGB", (4000, 3000), (120, 110, 100))
    canvas.paste(face, (3550, 2550))
    boxes = YuNetDetector(yunet_model).detect(canvas)
    assert len(boxes) == 1
    b = boxes[0]
    cx, cy = b.center
    assert 3550 < cx < 3850 and 2550 < cy < 2850


def test_no_face_in_a_flat_image(yunet_model: Path) -> None:
    assert YuNetDetector(yunet_model).detect(Image.new("RGB", (800, 600), (128, 128, 128))) == []


def test_faces_sorted_largest_first(yunet_model: Path, astronaut: Image.Image) -> None:
    canvas = Image.new("RGB", (1600, 900), (30, 30, 30))
    canvas.paste(astronaut.resize((300, 300)), (50, 50))
    canvas.paste(astronaut.resize((700, 700)), (800, 100))
    boxes = YuNetDetector(yunet_model).detect(canvas)
    assert len(boxes) == 2
    assert boxes[0].area > boxes[1].area
    assert boxes[0].x0 > 800 and boxes[1].x1 < 400


def test_nms_keeps_the_best_of_overlapping_boxes() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], float)
    assert nms(boxes, np.array([0.8, 0.9, 0.7]), 0.3) == [1, 2]


def test_registry_and_pickling(yunet_model: Path, astronaut: Image.Image) -> None:
    import pickle

    det = create_detector("photo", model_path=yunet_model)
    det.detect(astronaut)  # loads the session
    clone = pickle.loads(pickle.dumps(det))  # the session is dropped, reloaded lazily
    assert clone._session is None
    assert len(clone.detect(astronaut)) == 1
    with pytest.raises(ValueError, match="unknown detector"):
        create_detector("haar")


def test_explicit_path_that_is_missing_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ModelNotAvailable, match="face_detection_yunet_2023mar.onnx"):
        YuNetDetector(tmp_path / "nope").resolve()
    assert YUNET_REF.env_var == "LORAPREP_YUNET_MODEL"


# -- the shipped model (no download for photos) -------------------------------------------


def test_yunet_ships_inside_the_package_with_its_licence() -> None:
    from prep.detectors.yunet import SHIPPED_YUNET, YUNET_SHA256
    from prep.fsutil import sha256_file

    assert SHIPPED_YUNET.is_file() and sha256_file(SHIPPED_YUNET) == YUNET_SHA256
    licence = (SHIPPED_YUNET.parent / "LICENSE-yunet.txt").read_text()
    assert "MIT License" in licence and "Permission is hereby granted" in licence


def test_default_yunet_works_offline_with_an_empty_cache(tmp_path: Path, astronaut: Image.Image, monkeypatch: pytest.MonkeyPatch) -> None:
    from prep.detectors.yunet import SHIPPED_YUNET

    monkeypatch.delenv("LORAPREP_YUNET_MODEL", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    det = create_detector("photo")
    assert det.resolve() == SHIPPED_YUNET
    (face,) = det.detect(astronaut)
    assert face.x0 == pytest.approx(178, abs=4) and 0.9 <= face.score <= 1.0


def test_a_given_path_or_variable_wins_over_the_shipped_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mine = tmp_path / "my_yunet.onnx"
    mine.write_bytes(b"a user's own copy")  # not checked against the pin: the user chose it
    monkeypatch.setenv("LORAPREP_YUNET_MODEL", str(mine))
    assert YuNetDetector().resolve() == mine
    other = tmp_path / "other.onnx"
    other.write_bytes(b"x")
    assert YuNetDetector(other).resolve() == other


def test_photo_cropping_never_contacts_the_hub(tmp_path: Path) -> None:
    """Online, empty cache, a Hub that counts connections: the shipped YuNet is used, no connection."""
    import os
    import subprocess
    import sys

    from test_models_hub import ROOT, CountingServer

    srv = CountingServer()
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "LORAPREP_"))}
        env.update(HF_ENDPOINT=f"http://127.0.0.1:{srv.port}", HF_HUB_OFFLINE="0", HF_HUB_CACHE=str(tmp_path / "c"), HF_HOME=str(tmp_path / "h"), PYTHONPATH=str(ROOT))
        code = "from prep.detectors import create_detector\nfrom PIL import Image\nprint(create_detector('photo').detect(Image.new('RGB', (320, 240))))"
        res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        assert res.stdout.strip() == "[]" and srv.connections == 0
    finally:
        srv.close()


# -- detection at the image's own size (symbolic H and W) ----------------------------------


def test_input_geometry_reduces_large_keeps_mid_and_lifts_small_images() -> None:
    from prep.detectors.yunet import input_geometry

    assert input_geometry(4000, 3000) == (pytest.approx(0.16), 640, 480)  # 4:3 photo: 640x480, not 640x640
    assert input_geometry(1920, 1080) == (pytest.approx(1 / 3), 640, 384)  # 360 rounded up to the stride
    assert input_geometry(320, 320) == (1.0, 320, 320)  # its own size: no upscale to 640
    assert input_geometry(500, 333) == (1.0, 512, 352)
    assert input_geometry(100, 80) == (pytest.approx(3.2), 320, 256)  # tiny: lifted to 320 on the long side


def test_the_session_runs_the_file_with_free_height_and_width(yunet_model: Path) -> None:
    import onnx
    import onnxruntime as ort

    from prep.onnx import with_free_dims

    data = with_free_dims(yunet_model, {2: "height", 3: "width"}, {1: "anchors"})
    m = onnx.load_from_string(data)
    assert [d.dim_param or d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim] == [1, 3, "height", "width"]
    assert [d.dim_param or d.dim_value for d in m.graph.output[0].type.tensor_type.shape.dim] == [1, "anchors", 1]
    assert onnx.load(str(yunet_model)).graph.input[0].type.tensor_type.shape.dim[2].dim_value == 640  # the file is untouched
    rng = np.random.default_rng(0)
    blob = rng.uniform(0, 255, (1, 3, 640, 640)).astype(np.float32)
    fixed = ort.InferenceSession(str(yunet_model), providers=["CPUExecutionProvider"]).run(None, {"input": blob})
    free = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    for a, b in zip(fixed, free.run(None, {"input": blob})):  # at 640x640 the same network, the same numbers
        assert np.array_equal(a, b)
    small = free.run(None, {"input": blob[:, :, :256, :320]})
    assert [o.shape[1] for o in small[:3]] == [40 * 32, 20 * 16, 10 * 8]  # cls_8/16/32 anchors of a 320x256 input


def test_boxes_at_the_images_own_size_match_opencvs_variable_size_detector(yunet_model: Path, astronaut: Image.Image) -> None:
    """FaceDetectorYN.setInputSize runs the same file at any size: ours must agree at 640x480 and 320x240."""
    cv2 = pytest.importorskip("cv2")
    for size in ((640, 480), (320, 240)):
        canvas = Image.new("RGB", size, (40, 40, 40))
        face = astronaut.resize((size[1], size[1]))
        canvas.paste(face, (size[0] - size[1], 0))
        fd = cv2.FaceDetectorYN.create(str(yunet_model), "", size, 0.6, 0.3, 50)
        _, found = fd.detect(np.ascontiguousarray(np.asarray(canvas)[:, :, ::-1]))
        assert found is not None and len(found) == 1
        (ours,) = YuNetDetector(yunet_model).detect(canvas)
        x, y, w, h = found[0][:4]
        assert np.allclose([ours.x0, ours.y0, ours.width, ours.height], [x, y, w, h], atol=1.0), size
        assert ours.score == pytest.approx(float(found[0][14]), abs=0.01)


def test_a_file_that_is_not_onnx_names_itself_and_the_fix(tmp_path: Path) -> None:
    bad = tmp_path / "yunet.onnx"
    bad.write_bytes(b"\x00not a model at all" * 10)
    with pytest.raises(ModelNotAvailable) as err:
        YuNetDetector(bad).detect(Image.new("RGB", (64, 64)))
    assert str(bad) in str(err.value) and "--detector-model" in str(err.value)
