"""Anime head (or face) detector: the YOLOv8/YOLO11 ONNX models of deepghs (MIT licence).

Contract of those models, as used by their authors' `imgutils.generic.yolo`: input `images`
float32 NCHW RGB scaled to 0..1 at the size in the model metadata `imgsz` (640x640 when absent);
output `output0` of shape [1, 4 + classes, N] holding centre x, centre y, width, height in
input pixels followed by one score per class (no objectness), NMS left to the caller (IoU 0.7).
End-to-end exports ([1, N, 6]: x0 y0 x1 y1 score class) are accepted too. We letterbox
(keep the aspect ratio, grey 114 padding, centred: Ultralytics' own inference) and map back.

Default: `deepghs/anime_head_detection`, `head_detect_v2.0_s/model.onnx`; heads include the
hair, which is the better anchor for framing anime characters. Both models are pinned to a
commit of their Hub repository that public pages show holding the file, plus the file's
published sha256, checked after download (a mismatch is an error). Sources: docs/models.md.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from prep.detectors import Box, OnnxDetector, letterbox, nms
from prep.models import ModelRef, resolve_model_file

ANIME_HEAD_REF = ModelRef(
    repo_id="deepghs/anime_head_detection",
    filename="head_detect_v2.0_s/model.onnx",
    revision="06604feee81983792a57c21081e539c0ae229833",
    env_var="LORAPREP_ANIME_MODEL",
    sha256="6679f9b71192298bbf174d82e9e5581c3237b0c3dc67deace7cdbf686b070a00",
    flag="--anime-model",
)
ANIME_FACE_REF = ModelRef(
    repo_id="deepghs/anime_face_detection",
    filename="face_detect_v1.4_s/model.onnx",
    revision="784dc4c0bb692351ddcdbe6131a050b17d3025d5",
    env_var="LORAPREP_ANIME_MODEL",
    sha256="403b5bc93b6ff789b7d183418df4a1364049bac00c24acd927604a7ff6891483",
    flag="--anime-model",
)
DEFAULT_SIZE = 640


class AnimeDetector(OnnxDetector):
    """Heads (default) or faces in anime and illustration; `target="face"` uses the face model."""

    name = "anime"

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        device: str = "cpu",
        threads: int = 0,
        score_threshold: float = 0.4,
        nms_threshold: float = 0.7,
        target: str = "head",
        **_: Any,
    ):
        if target not in ("head", "face"):
            raise ValueError(f"anime detector target {target!r}: use head or face")
        super().__init__(model_path, device, threads)
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.target = target
        self.kind = target
        self._size: tuple[int, int] = (DEFAULT_SIZE, DEFAULT_SIZE)

    @property
    def ref(self) -> ModelRef:
        return ANIME_HEAD_REF if self.target == "head" else ANIME_FACE_REF

    def resolve(self) -> Path:
        return resolve_model_file(self.ref, self.model_path)

    def _loaded(self, session: Any) -> None:
        self._size = _input_size(session)

    def detect(self, image: Image.Image) -> list[Box]:
        sess = self._sess()
        canvas, lb = letterbox(image, self._size, fill=(114, 114, 114), center=True)
        blob = np.ascontiguousarray(canvas.transpose(2, 0, 1)[None], dtype=np.float32) / 255.0
        (raw,) = sess.run([sess.get_outputs()[0].name], {sess.get_inputs()[0].name: blob})
        xyxy, scores = decode_yolo(np.asarray(raw)[0], self.score_threshold)
        keep = nms(xyxy, scores, self.nms_threshold)
        return self._boxes(xyxy[keep], scores[keep], lb, image, self.kind) if keep else []


def decode_yolo(output: np.ndarray, score_threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (x0 y0 x1 y1, input pixels) and best-class scores from one image's YOLO output."""
    if output.ndim != 2:
        raise ValueError(f"unexpected YOLO output shape {output.shape}: expected [4+classes, N] or [N, 6]")
    if output.shape[1] == 6 and output.shape[0] != 6:  # end-to-end export: x0 y0 x1 y1 score class
        sel = output[output[:, 4] >= score_threshold]
        return sel[:, :4].astype(np.float64), sel[:, 4].astype(np.float64)
    if output.shape[0] < 5:
        raise ValueError(f"unexpected YOLO output shape {output.shape}: expected [4+classes, N]")
    scores = output[4:, :].max(axis=0)
    idx = np.nonzero(scores >= score_threshold)[0]
    cx, cy, w, h = (output[i, idx].astype(np.float64) for i in range(4))
    xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    return xyxy, scores[idx].astype(np.float64)


def _input_size(sess: Any) -> tuple[int, int]:
    """(width, height) from the metadata `imgsz` ([h, w]), else a fixed input shape, else 640."""
    meta = sess.get_modelmeta().custom_metadata_map or {}
    if "imgsz" in meta:
        try:
            h, w = (int(v) for v in json.loads(meta["imgsz"]))
            return (w, h)
        except (ValueError, TypeError):
            try:
                h, w = (int(v) for v in ast.literal_eval(meta["imgsz"]))
                return (w, h)
            except (ValueError, SyntaxError, TypeError):
                pass
    shape = sess.get_inputs()[0].shape
    if len(shape) == 4 and isinstance(shape[2], int) and isinstance(shape[3], int):
        return (shape[3], shape[2])
    return (DEFAULT_SIZE, DEFAULT_SIZE)
