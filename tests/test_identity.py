"""prep.identity: SFace alignment and embeddings, CCIP, references, clustering, the embedding cache.

Real faces (scikit-image's astronaut, matplotlib's Grace Hopper), the real YuNet shipped with
the package, and tiny ONNX models with the real SFace / CCIP input-output contracts."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from identity_tiny import astronaut, build_ccip, build_sface, grace_hopper, group_scene
from PIL import Image

from prep.detectors import Box, create_detector
from prep.identity import (
    EmbeddingCache,
    ReferenceError,
    References,
    cluster,
    cosine,
    create_identity_model,
    model_for_detector,
    reference_digest,
)
from prep.identity.ccip import CCIP_DIFFERENCE_THRESHOLD, CCIPModel, preprocess
from prep.identity.sface import (
    REFERENCE_POINTS,
    SFACE_THRESHOLD,
    SFaceModel,
    align_crop,
    similarity_transform,
)
from prep.models import ModelNotAvailable

pytest.importorskip("onnx", reason="the tiny models are built with the onnx package (test extra)")
pytest.importorskip("skimage", reason="scikit-image's astronaut photo (test extra)")
pytest.importorskip("matplotlib", reason="matplotlib's grace_hopper.jpg sample (test extra)")


@pytest.fixture(scope="module")
def sface_path(tmp_path_factory):
    return build_sface(tmp_path_factory.mktemp("sface") / "face_recognition_sface_2021dec.onnx")


@pytest.fixture(scope="module")
def detector():
    return create_detector("photo")  # the YuNet file shipped inside the package


@pytest.fixture(scope="module")
def faces(detector):
    a, g = astronaut(), grace_hopper()
    return {"astronaut": (a, detector.detect(a)[0]), "hopper": (g, detector.detect(g)[0])}


# --- landmarks and alignment ---------------------------------------------------------------


def test_yunet_boxes_carry_five_landmarks_on_the_face(faces):
    for img, box in faces.values():
        assert box.landmarks is not None and len(box.landmarks) == 5
        (rex, rey), (lex, ley), (nx, ny), (rmx, rmy), (lmx, _) = box.landmarks
        assert box.x0 < rex < nx < lex < box.x1  # right eye (image left), nose, left eye
        assert box.y0 < rey < ny < rmy < box.y1 and abs(rey - ley) < box.height * 0.15
        assert rmx < lmx


def test_landmarks_follow_the_box_when_it_is_scaled(faces):
    _, box = faces["astronaut"]
    half = box.scaled(0.5)
    assert half.landmarks is not None
    assert np.allclose(np.array(half.landmarks), np.array(box.landmarks) * 0.5)
    assert Box(0, 0, 1, 1, 0.5).landmarks is None  # other detectors: no landmarks, nothing else changes


def test_alignment_is_opencvs_aligncrop(faces, sface_path):
    cv2 = pytest.importorskip("cv2")
    if not hasattr(cv2, "FaceRecognizerSF"):
        pytest.skip("this OpenCV build has no FaceRecognizerSF")
    rec = cv2.FaceRecognizerSF.create(str(sface_path), "")
    for img, box in faces.values():
        row = np.array([[box.x0, box.y0, box.width, box.height, *np.array(box.landmarks).reshape(-1), box.score]], dtype=np.float32)
        theirs = rec.alignCrop(np.asarray(img), row)
        ours = align_crop(img, np.array(box.landmarks))
        assert ours.shape == theirs.shape == (112, 112, 3)
        assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 1
        # and the embedding is what FaceRecognizerSF.feature gives (it swaps BGR -> RGB itself)
        feat = rec.feature(np.ascontiguousarray(theirs[:, :, ::-1]))
        model = SFaceModel(sface_path)
        assert cosine(feat.reshape(-1), model.embed(img, box)) > 0.9999


def test_similarity_transform_maps_the_reference_points_onto_themselves():
    m = similarity_transform(REFERENCE_POINTS)
    mapped = np.hstack([REFERENCE_POINTS, np.ones((5, 1))]) @ m.T
    assert np.abs(mapped - REFERENCE_POINTS).max() < 0.05
    # a face twice as large, shifted: scale 1/2 back
    m2 = similarity_transform(REFERENCE_POINTS * 2 + 30)
    assert abs(np.linalg.det(m2[:, :2]) - 0.25) < 1e-3


# --- SFace ----------------------------------------------------------------------------------


def test_sface_contract_and_published_threshold(sface_path, faces):
    model = create_identity_model("photo", model_path=sface_path)
    assert model.name == "sface" and model.kind == "photo" and model.threshold == SFACE_THRESHOLD == 0.363
    img, box = faces["astronaut"]
    v = model.embed(img, box)
    assert v.dtype == np.float32 and v.shape == (128,)
    assert abs(float(np.linalg.norm(v)) - 1) < 1e-5
    sess = model._sess()
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    assert inp.shape == [1, 3, 112, 112] and inp.type == "tensor(float)" and out.shape == [1, 128]


def test_the_same_person_scores_higher_than_another(sface_path, faces, detector):
    model = SFaceModel(sface_path)
    a_img, a_box = faces["astronaut"]
    g_img, g_box = faces["hopper"]
    ref = model.embed(a_img, a_box)
    small = a_img.resize((300, 300))
    same = model.embed(small, detector.detect(small)[0])  # another size: alignment brings it back
    other = model.embed(g_img, g_box)
    assert cosine(ref, same) > 0.9 > cosine(ref, other)


def test_a_missing_sface_model_names_the_fix(monkeypatch, tmp_path, faces):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("LORAPREP_SFACE_MODEL", raising=False)
    with pytest.raises(ModelNotAvailable) as err:
        SFaceModel().embed(*faces["astronaut"])
    msg = str(err.value)
    assert "opencv/face_recognition_sface" in msg and "--identity-model-path" in msg and "LORAPREP_SFACE_MODEL" in msg


def test_sface_model_from_the_environment_and_pickled_without_its_session(monkeypatch, sface_path, faces):
    monkeypatch.setenv("LORAPREP_SFACE_MODEL", str(sface_path.parent))  # a folder holding the file
    model = SFaceModel()
    v = model.embed(*faces["astronaut"])
    clone = pickle.loads(pickle.dumps(model))
    assert clone._session is None
    assert np.allclose(clone.embed(*faces["astronaut"]), v)


# --- CCIP -----------------------------------------------------------------------------------


def test_ccip_contract_threshold_and_metric(tmp_path, faces):
    folder = build_ccip(tmp_path / "ccip", threshold=0.25)
    model = create_identity_model("anime", model_path=folder)
    assert isinstance(model, CCIPModel) and model.kind == "anime"
    assert model.threshold == pytest.approx(0.75)  # 1 - metrics.json's difference threshold
    feat, _ = model._sessions()
    assert feat.get_inputs()[0].name == "input" and feat.get_inputs()[0].shape[1:] == [3, 384, 384]
    assert feat.get_outputs()[0].name == "output" and feat.get_outputs()[0].shape[1:] == [768]
    img, box = faces["astronaut"]
    v = model.embed(img, box)
    assert v.shape == (768,) and v.dtype == np.float32
    g_img, g_box = faces["hopper"]
    w = model.embed(g_img, g_box)
    # similarity is 1 - the metric model's difference; the tiny metric is (1 - cos) / 2
    assert model.similarity(v, w) == pytest.approx(1 - (1 - cosine(v, w)) / 2, abs=1e-5)
    assert model.similarity(v, v) == pytest.approx(1.0, abs=1e-5)
    m = model.similarity_matrix(np.stack([v, w]))
    assert m.shape == (2, 2) and m[0, 1] == pytest.approx(model.similarity(v, w), abs=1e-5)


def test_ccip_without_metrics_json_uses_imgutils_documented_threshold(tmp_path):
    folder = build_ccip(tmp_path / "ccip", threshold=None)
    assert CCIPModel(folder).threshold == pytest.approx(1 - CCIP_DIFFERENCE_THRESHOLD)
    assert CCIPModel(folder, threshold=0.9).threshold == 0.9


def test_ccip_preprocessing_is_imgutils(tmp_path):
    img = Image.new("RGB", (100, 50), (255, 0, 128))
    x = preprocess(img)
    assert x.shape == (3, 384, 384) and x.dtype == np.float32  # squashed to 384x384, aspect not kept
    expect = (np.array([1.0, 0.0, 128 / 255]) - np.array([0.48145466, 0.4578275, 0.40821073])) / np.array([0.26862954, 0.26130258, 0.27577711])
    assert np.allclose(x[:, 10, 10], expect, atol=1e-5)


def test_model_for_detector():
    assert model_for_detector("photo") == "sface" and model_for_detector("auto") == "sface"
    assert model_for_detector("anime") == "ccip" and model_for_detector("ccip") == "ccip"
    with pytest.raises(ValueError, match="unknown identity model"):
        model_for_detector("nope")


# --- references -----------------------------------------------------------------------------


def test_references_pick_the_smaller_face_that_matches(tmp_path, sface_path, detector):
    refs_dir = tmp_path / "refs"
    refs_dir.mkdir()
    astronaut().resize((320, 320)).save(refs_dir / "ref.png")
    model = SFaceModel(sface_path, threshold=0.8)
    refs = References.load(refs_dir, model=model, detector=detector)
    assert refs.files == [str(refs_dir / "ref.png")] and len(refs.vectors) == 1
    scene = group_scene(astronaut(), grace_hopper(), small_width=260, large_width=440)
    boxes = detector.detect(scene)
    assert len(boxes) == 2 and boxes[0].area > boxes[1].area  # Grace Hopper's face is the larger
    idx, score = refs.best_match(scene, boxes)
    assert idx == 1 and score >= 0.8
    # another person only: no match, the best score still reported
    g = grace_hopper()
    idx, score = refs.best_match(g, detector.detect(g))
    assert idx is None and 0 < score < 0.8


def test_bad_references_name_the_file_and_the_fix(tmp_path, sface_path, detector):
    model = SFaceModel(sface_path)
    with pytest.raises(ReferenceError, match="no such reference folder"):
        References.load(tmp_path / "missing", model=model, detector=detector)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ReferenceError, match="no images in the reference folder"):
        References.load(empty, model=model, detector=detector)
    faceless = tmp_path / "faceless"
    faceless.mkdir()
    Image.new("RGB", (200, 200), (30, 120, 40)).save(faceless / "field.png")
    with pytest.raises(ReferenceError) as err:
        References.load(faceless, model=model, detector=detector)
    assert str(faceless / "field.png") in str(err.value) and "no face found" in str(err.value)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ReferenceError, match="bad.jpg: reference image cannot be read"):
        References.load(broken, model=model, detector=detector)


def test_reference_digest_follows_the_contents(tmp_path):
    d = tmp_path / "refs"
    d.mkdir()
    astronaut().save(d / "a.png")
    first = reference_digest(d)
    assert reference_digest(d) == first
    grace_hopper().save(d / "a.png")
    assert reference_digest(d) != first


# --- clustering and the cache ---------------------------------------------------------------


def test_cluster_labels_the_dominant_identity_zero_deterministically():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal(64), rng.standard_normal(64)
    vecs = [a + 0.1 * rng.standard_normal(64) for _ in range(2)] + [b + 0.1 * rng.standard_normal(64) for _ in range(3)]
    labels = cluster(vecs, 0.8)
    assert labels == [1, 1, 0, 0, 0]
    assert cluster(vecs, 0.8) == labels
    assert cluster([], 0.5) == [] and cluster(vecs[:1], 0.5) == [0]
    assert cluster(vecs, 1.01) == [0, 1, 2, 3, 4]  # nothing merges: singletons, by index


def test_cluster_with_a_models_own_metric(tmp_path, faces):
    model = CCIPModel(build_ccip(tmp_path / "ccip"))
    (ai, ab), (gi, gb) = faces["astronaut"], faces["hopper"]
    va, vg = model.embed(ai, ab), model.embed(gi, gb)
    labels = cluster([va, vg, va], model.threshold, model=model)
    assert labels[0] == labels[2] == 0 and labels[1] == 1


def test_embedding_cache_hits_skip_inference(tmp_path, sface_path, faces):
    model = SFaceModel(sface_path)
    img, box = faces["astronaut"]
    cache = EmbeddingCache(tmp_path / ".loraprep", model.name)
    v1 = cache.get_or_compute("ab" * 32, box, lambda: model.embed(img, box))
    assert (cache.hits, cache.misses, model.inferences) == (0, 1, 1)
    again = EmbeddingCache(tmp_path / ".loraprep", model.name)  # a new process: read from disk
    v2 = again.get_or_compute("ab" * 32, box, lambda: model.embed(img, box))
    assert (again.hits, again.misses, model.inferences) == (1, 0, 1)
    assert np.allclose(v1, v2)
    files = list((tmp_path / ".loraprep" / "embeddings" / "sface").rglob("*.npy"))
    assert len(files) == 1 and not list(files[0].parent.glob("*.tmp*"))
    # another box, another content hash or another model: computed anew
    other = Box(box.x0 + 20, box.y0, box.x1 + 20, box.y1, box.score, landmarks=box.landmarks)
    again.get_or_compute("ab" * 32, other, lambda: model.embed(img, other))
    again.get_or_compute("cd" * 32, box, lambda: model.embed(img, box))
    EmbeddingCache(tmp_path / ".loraprep", "ccip").get_or_compute("ab" * 32, box, lambda: np.ones(4, np.float32))
    assert model.inferences == 3
    # a torn file is recomputed, not an error
    files[0].write_bytes(b"\x93NUMPY garbage")
    third = EmbeddingCache(tmp_path / ".loraprep", model.name)
    third.get_or_compute("ab" * 32, box, lambda: model.embed(img, box))
    assert third.misses == 1 and model.inferences == 4
    json.dumps(v1.tolist())  # plain floats for reports


def test_a_file_that_is_not_a_model_is_a_clear_error(tmp_path, faces):
    bad = tmp_path / "face_recognition_sface_2021dec.onnx"
    bad.write_bytes(b"not an onnx model")
    with pytest.raises(ModelNotAvailable) as err:
        SFaceModel(bad).embed(*faces["astronaut"])
    assert str(bad) in str(err.value) and "not a loadable SFace ONNX model" in str(err.value)


def test_yunet_landmarks_decode_as_opencvs_face_detector(faces):
    cv2 = pytest.importorskip("cv2")
    if not hasattr(cv2, "FaceDetectorYN"):
        pytest.skip("this OpenCV build has no FaceDetectorYN")
    from prep.detectors import letterbox
    from prep.detectors.yunet import SHIPPED_YUNET, input_geometry

    for img, box in faces.values():
        scale, w, h = input_geometry(img.width, img.height)
        canvas, lb = letterbox(img, (w, h), scale=scale)  # what our YuNet sees
        det = cv2.FaceDetectorYN.create(str(SHIPPED_YUNET), "", (w, h), 0.6, 0.3, 50)
        _, found = det.detect(np.ascontiguousarray(canvas[:, :, ::-1]))
        theirs = found[0, 4:14].reshape(5, 2) / lb.scale
        assert np.abs(np.array(box.landmarks) - theirs).max() < 1.0
