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
