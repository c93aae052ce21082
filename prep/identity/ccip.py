"""CCIP (deepghs, trained by 7eu7d7): anime character identity, run by onnxruntime.

Contract, as deepghs/imgutils' `imgutils/metrics/ccip.py` uses the models of
`deepghs/ccip_onnx` (read, not copied):

- `<model>/model_feat.onnx`: input `input`, N x 3 x 384 x 384 float32, the RGB image resized
  to 384x384 (bilinear, aspect ratio NOT kept), scaled to 0..1 and normalised with CLIP's mean
  (0.48145466, 0.4578275, 0.40821073) and std (0.26862954, 0.26130258, 0.27577711); output
  `output`, N x 768 features.
- `<model>/model_metrics.onnx`: input `input`, N x 768 features; output `output`, the N x N
  matrix of differences (0 = same character). imgutils calls two images the same character
  when the difference is <= `threshold` from `<model>/metrics.json` (0.17847511429108218 for
  the default `ccip-caformer-24-randaug-pruned`, as its `ccip_default_threshold` documents).

We express that as a similarity: 1 - difference, same character at >= 1 - threshold. A pair is
compared in a batch of two, as imgutils' `ccip_difference` does; `similarity_matrix` runs one
batch, as its clustering does.

CCIP embeds a character image, not an aligned face: we feed the detector's head box widened
(`context`, default 1.5x, clipped to the image) so hair and collar, which carry much of an
anime character's identity, are in view. imgutils feeds whole single-character images; a
tighter crop is our choice (docs/identity.md).
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from prep.detectors import Box
from prep.identity import normalize
from prep.models import ModelNotAvailable, ModelRef, resolve_model_file

CCIP_MODEL = "ccip-caformer-24-randaug-pruned"
"""imgutils' default CCIP model."""
CCIP_REF = ModelRef(
    repo_id="deepghs/ccip_onnx",
    filename=f"{CCIP_MODEL}/model_feat.onnx",
    revision="3ba23ac72d7d2f381ece6399e2dda0a850d0e089",
    env_var="LORAPREP_CCIP_MODEL",
    flag="--identity-model-path",
)
"""A commit at which the Hub's file listing shows the folder with model_feat.onnx, model_metrics.onnx and metrics.json (docs/identity.md). No sha256 pin: none published that we saw."""
METRICS_FILE = f"{CCIP_MODEL}/model_metrics.onnx"
THRESHOLDS_FILE = f"{CCIP_MODEL}/metrics.json"
CCIP_DIFFERENCE_THRESHOLD = 0.17847511429108218
"""imgutils' documented `ccip_default_threshold()` for the default model; metrics.json wins when present."""

INPUT_SIZE = 384
MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)


def preprocess(crop: Image.Image, size: int = INPUT_SIZE) -> np.ndarray:
    """3 x size x size float32, as imgutils' `_preprocess_image` makes it."""
    arr = np.asarray(crop.convert("RGB").resize((size, size), resample=Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
    return ((arr.transpose(2, 0, 1) - MEAN[:, None, None]) / STD[:, None, None]).astype(np.float32)


def character_region(box: Box, width: int, height: int, context: float) -> tuple[int, int, int, int]:
    """The box grown `context` times about its centre, clipped to the image."""
    cx, cy = box.center
    w, h = box.width * context / 2, box.height * context / 2
    x0, y0 = max(0, round(cx - w)), max(0, round(cy - h))
    x1, y1 = min(width, round(cx + w)), min(height, round(cy + h))
    return (x0, y0, max(x1, x0 + 1), max(y1, y0 + 1))


class CCIPModel:
    """CCIP embeddings of anime heads/characters; sessions built lazily, dropped when pickled."""

    name = "ccip"
    kind = "anime"

    def __init__(self, model_path: str | Path | None = None, *, device: str = "cpu", threads: int = 0,
                 threshold: float | None = None, context: float = 1.5, **_: Any):
        self.model_path = model_path
        self.device = device
        self.threads = threads
        self.context = context
        self._threshold = None if threshold is None else float(threshold)
        self.inferences = 0
        self._feat: Any = None
        self._metric: Any = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_feat"] = state["_metric"] = state["_lock"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # -- files ------------------------------------------------------------------------------
    def _explicit(self, name: str) -> str | Path | None:
        """A given path may be the feature model itself or the folder holding the three files."""
        given = self.model_path
        if given is None and CCIP_REF.env_var and os.environ.get(CCIP_REF.env_var):
            given = os.environ[CCIP_REF.env_var]
        if given is None:
            return None
        p = Path(given).expanduser()
        return p.parent if p.is_file() and name != CCIP_REF.filename else p

    def resolve(self) -> Path:
        """The feature model (raises ModelNotAvailable with the fix)."""
        return resolve_model_file(CCIP_REF, self._explicit(CCIP_REF.filename))

    def resolve_metric(self) -> Path:
        return resolve_model_file(CCIP_REF, self._explicit(METRICS_FILE), filename=METRICS_FILE)

    @property
    def difference_threshold(self) -> float:
        """metrics.json's `threshold` beside the model when there is one, else imgutils' documented default."""
        try:
            path = resolve_model_file(CCIP_REF, self._explicit(THRESHOLDS_FILE), filename=THRESHOLDS_FILE)
            return float(json.loads(Path(path).read_text(encoding="utf-8"))["threshold"])
        except (ModelNotAvailable, OSError, ValueError, KeyError, TypeError):
            return CCIP_DIFFERENCE_THRESHOLD

    @property
    def threshold(self) -> float:
        if self._threshold is None:
            self._threshold = 1.0 - self.difference_threshold
        return self._threshold

    def _sessions(self) -> tuple[Any, Any]:
        if self._feat is None or self._metric is None:
            with self._lock:
                if self._feat is None or self._metric is None:
                    from prep.identity import open_session

                    self._metric = open_session(self.resolve_metric(), "cpu", 1, what="CCIP metric", flag=CCIP_REF.flag)
                    self._feat = open_session(self.resolve(), self.device, self.threads, what="CCIP feature", flag=CCIP_REF.flag)
        return self._feat, self._metric

    # -- the protocol -----------------------------------------------------------------------
    def crop(self, image: Image.Image, box: Box) -> Image.Image:
        return image.convert("RGB").crop(character_region(box, image.width, image.height, self.context))

    def embed(self, image: Image.Image, box: Box) -> np.ndarray:
        feat, _ = self._sessions()
        (out,) = feat.run(None, {feat.get_inputs()[0].name: preprocess(self.crop(image, box))[None]})
        self.inferences += 1
        return normalize(np.asarray(out)[0])

    def similarity_matrix(self, vectors: np.ndarray) -> np.ndarray:
        _, metric = self._sessions()
        batch = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32).reshape(len(vectors), -1))
        if len(batch) == 0:
            return np.zeros((0, 0), np.float32)
        (diff,) = metric.run(None, {metric.get_inputs()[0].name: batch})
        return 1.0 - np.asarray(diff, dtype=np.float64)

    def similarity(self, a: np.ndarray, b: np.ndarray) -> float:
        return float(self.similarity_matrix(np.stack([normalize(a), normalize(b)]))[0, 1])
