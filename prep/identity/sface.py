"""SFace (OpenCV Zoo, Apache-2.0): face identity for photos and 3D renders, run by onnxruntime.

Contract of `face_recognition_sface_2021dec.onnx`, as OpenCV's `FaceRecognizerSF` feeds it
(modules/objdetect/src/face_recognize.cpp): one 1x3x112x112 float32 NCHW blob of the aligned
face, RGB (blobFromImage with swapRB on OpenCV's BGR), 0..255, no mean, no scaling; one 1x128
feature out. Two faces are the same person at cosine >= 0.363 (OpenCV's documented threshold
for FR_COSINE; L2 <= 1.128 is the equivalent for FR_NORM_L2).

Alignment is alignCrop's: a similarity transform (Umeyama, with OpenCV's reflection and rank
rules) from YuNet's five landmarks to fixed 112x112 reference points, then a bilinear
warpAffine with a black border. A box without landmarks (another detector) falls back to a
square crop around the box, which is far weaker: SFace is meant to see aligned faces.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from prep.detectors import Box
from prep.identity import CosineSimilarity, normalize
from prep.models import ModelRef, resolve_model_file

SFACE_REF = ModelRef(
    repo_id="opencv/face_recognition_sface",
    filename="face_recognition_sface_2021dec.onnx",
    revision="3d7082438a6e4551e840c9b2bb60b71e8da4b524",
    env_var="LORAPREP_SFACE_MODEL",
    sha256="0ba9fbfa01b5270c96627c4ef784da859931e02f04419c829e83484087c34e79",
    flag="--identity-model-path",
)
"""Pins and where they were seen: docs/identity.md."""

SFACE_THRESHOLD = 0.363
"""OpenCV's published cosine threshold for SFace (FaceRecognizerSF docs / the Zoo demo)."""

INPUT_SIZE = 112
REFERENCE_POINTS = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)
"""alignCrop's destination points (right eye, left eye, nose tip, right and left mouth corner) in the 112x112 crop."""
REFERENCE_MEAN = np.array([56.0262, 71.9008], dtype=np.float32)
"""alignCrop uses this rounded mean of REFERENCE_POINTS, not the exact one; so do we."""


def similarity_transform(landmarks: np.ndarray) -> np.ndarray:
    """The 2x3 matrix alignCrop computes: Umeyama's similarity from `landmarks` (5 x 2) to REFERENCE_POINTS.

    Same arithmetic as OpenCV's getSimilarityTransformMatrix: float32 demeaning, the 2x2
    covariance in float64, SVD, a reflection fix when det < 0, a rank test, scale from the
    source variance and the hard-coded destination mean."""
    src = np.asarray(landmarks, dtype=np.float32).reshape(5, 2)
    src_mean = src.mean(axis=0, dtype=np.float32)
    src_d = (src - src_mean).astype(np.float32)
    dst_d = (REFERENCE_POINTS - REFERENCE_MEAN).astype(np.float32)
    a = (dst_d.astype(np.float64).T @ src_d.astype(np.float64)) / 5.0  # A[i][j] = mean(dst_i * src_j)
    d = np.array([1.0, 1.0])
    if np.linalg.det(a) < 0:
        d[1] = -1.0
    u, s, vt = np.linalg.svd(a)
    tol = s.max() * 2 * np.finfo(np.float32).tiny
    rank = int((s > tol).sum())
    if rank == 1:
        if np.linalg.det(u) * np.linalg.det(vt) > 0:
            t = u @ vt
        else:
            t = u @ np.diag([d[0], -1.0]) @ vt
    else:
        t = u @ np.diag(d) @ vt
    var = float((src_d.astype(np.float64) ** 2).sum(axis=0).sum() / 5.0)
    scale = (s[0] * d[0] + s[1] * d[1]) / var if var > 0 else 1.0
    shift = REFERENCE_MEAN.astype(np.float64) - scale * (t @ src_mean.astype(np.float64))
    return np.hstack([t * scale, shift[:, None]])


def align_crop(image: Image.Image | np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """The 112x112x3 uint8 face alignCrop would cut from `image` (channel order kept)."""
    import cv2

    arr = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    m = similarity_transform(landmarks)
    return cv2.warpAffine(arr, m, (INPUT_SIZE, INPUT_SIZE), flags=cv2.INTER_LINEAR)


def box_crop(image: Image.Image, box: Box) -> np.ndarray:
    """A 112x112 square crop around `box` (no landmarks: a weak stand-in for alignment)."""
    cx, cy = box.center
    side = max(box.width, box.height) * 1.1
    region = (round(cx - side / 2), round(cy - side / 2), round(cx + side / 2), round(cy + side / 2))
    return np.asarray(image.convert("RGB").crop(region).resize((INPUT_SIZE, INPUT_SIZE), Image.Resampling.BILINEAR))


def to_blob(face_rgb: np.ndarray) -> np.ndarray:
    """1x3x112x112 float32 RGB 0..255: what blobFromImage(aligned, 1, (112,112), 0, swapRB=true) gives from BGR."""
    return np.ascontiguousarray(face_rgb.astype(np.float32).transpose(2, 0, 1)[None])


class SFaceModel(CosineSimilarity):
    """SFace embeddings of YuNet faces; sessions built lazily (once, under a lock), dropped when pickled."""

    name = "sface"
    kind = "photo"

    def __init__(self, model_path: str | Path | None = None, *, device: str = "cpu", threads: int = 0,
                 threshold: float | None = None, **_: Any):
        self.model_path = model_path
        self.device = device
        self.threads = threads
        self.threshold = SFACE_THRESHOLD if threshold is None else float(threshold)
        self.inferences = 0
        self._session: Any = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_session"] = None
        state["_lock"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def resolve(self) -> Path:
        """The model file: the given path, $LORAPREP_SFACE_MODEL, else the HF cache (raises ModelNotAvailable with the fix)."""
        return resolve_model_file(SFACE_REF, self.model_path)

    def _sess(self) -> Any:
        if self._session is None:
            with self._lock:
                if self._session is None:
                    from prep.identity import open_session

                    self._session = open_session(self.resolve(), self.device, self.threads, what="SFace", flag=SFACE_REF.flag)
        return self._session

    def face(self, image: Image.Image, box: Box) -> np.ndarray:
        """The 112x112 RGB face the model sees for `box`."""
        if box.landmarks is not None and len(box.landmarks) == 5:
            return align_crop(image, np.asarray(box.landmarks, dtype=np.float32))
        return box_crop(image, box)

    def embed(self, image: Image.Image, box: Box) -> np.ndarray:
        sess = self._sess()
        (out,) = sess.run(None, {sess.get_inputs()[0].name: to_blob(self.face(image, box))})
        self.inferences += 1
        return normalize(np.asarray(out)[0])
