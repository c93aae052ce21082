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
