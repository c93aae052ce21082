"""Face and head detectors behind one small protocol, so `prep crop` does not care which runs.

Every detector takes an upright RGB PIL image and returns `Box`es in that image's pixels,
largest first. Models are ONNX files run through onnxruntime (OpenCV 5 has no cascade
classifier), resolved by `prep.models.resolve_model_file`: an explicit path, an environment
variable, or the Hugging Face cache pinned by revision.

Registry names: `photo` (YuNet, photos and 3D renders), `anime` (YOLO head detector for anime
and illustration), `auto` (YuNet first, the anime detector when YuNet is not sure).
"""

from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

REGISTRY: dict[str, str] = {
    "photo": "prep.detectors.yunet:YuNetDetector",
    "anime": "prep.detectors.anime:AnimeDetector",
    "auto": "prep.detectors.auto:AutoDetector",
}
DETECTOR_NAMES = tuple(REGISTRY)


@dataclass(frozen=True)
class Box:
    """A detection in image pixels: corners, confidence, and what it boxes (face or head)."""

    x0: float
    y0: float
    x1: float
    y1: float
    score: float
    kind: str = "face"
    detector: str = ""
    landmarks: tuple[tuple[float, float], ...] | None = None
    """YuNet's five points in image pixels (right eye, left eye, nose tip, right and left mouth
    corner, as OpenCV's FaceDetectorYN orders them); None for detectors without landmarks."""

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    @property
    def area(self) -> float:
        return max(0.0, self.width) * max(0.0, self.height)

    @property
    def center(self) -> tuple[float, float]:
        return ((self.x0 + self.x1) / 2, (self.y0 + self.y1) / 2)

    def scaled(self, factor: float) -> Box:
        """The same box in an image `factor` times as large."""
        lm = tuple((x * factor, y * factor) for x, y in self.landmarks) if self.landmarks is not None else None
        return Box(self.x0 * factor, self.y0 * factor, self.x1 * factor, self.y1 * factor, self.score, self.kind, self.detector, lm)

    def clipped(self, width: float, height: float) -> Box:
        return Box(
            min(max(self.x0, 0.0), width),
            min(max(self.y0, 0.0), height),
            min(max(self.x1, 0.0), width),
            min(max(self.y1, 0.0), height),
            self.score,
            self.kind,
            self.detector,
            self.landmarks,
        )

    def to_list(self, ndigits: int = 1) -> list[float]:
        """`[x0, y0, x1, y1, score]` as written to crops.jsonl."""
        return [round(self.x0, ndigits), round(self.y0, ndigits), round(self.x1, ndigits), round(self.y1, ndigits), round(self.score, 4)]


@runtime_checkable
class Detector(Protocol):
    name: str

    def detect(self, image: Image.Image) -> list[Box]:
        """Boxes in `image` pixels, largest first."""
        ...


def create_detector(name: str, **options: Any) -> Detector:
    """Instantiate the detector registered as `name` (photo | anime | auto) with `options`."""
    try:
        target = REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown detector {name!r}: use {', '.join(DETECTOR_NAMES)}") from None
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)(**options)


def sort_largest_first(boxes: list[Box]) -> list[Box]:
    return sorted(boxes, key=lambda b: (-b.area, -b.score))


# --- helpers shared by the ONNX detectors -------------------------------------------------


@dataclass(frozen=True)
class Letterbox:
    """How an image was fitted into a fixed model input: scaled by `scale`, shifted by the padding."""

    scale: float
    pad_x: float
    pad_y: float

    def to_image(self, xyxy: np.ndarray) -> np.ndarray:
        """Map model-input coordinates (N x 4, x0 y0 x1 y1) back to image pixels."""
        out = xyxy.astype(np.float64).copy()
        out[:, [0, 2]] = (out[:, [0, 2]] - self.pad_x) / self.scale
        out[:, [1, 3]] = (out[:, [1, 3]] - self.pad_y) / self.scale
        return out


def letterbox(image: Image.Image, size: tuple[int, int], *, fill: tuple[int, int, int] = (0, 0, 0), center: bool = False,
              scale: float | None = None) -> tuple[np.ndarray, Letterbox]:
    """Resize `image` to fit `size` (w, h) keeping its aspect ratio, pad the rest with `fill`.

    Returns the HxWx3 uint8 array and the mapping back to image pixels. `center` pads on both
    sides (Ultralytics style); otherwise the image sits in the top-left corner (YuNet style).
    `scale` resizes by that factor instead of the largest that fits (the caller sized the canvas
    for it: YuNet's canvas is the scaled image rounded up to its stride).
    """
    tw, th = size
    if scale is None:
        scale = min(tw / image.width, th / image.height)
    nw, nh = min(tw, max(1, round(image.width * scale))), min(th, max(1, round(image.height * scale)))
    resized = image.resize((nw, nh), Image.Resampling.BILINEAR, reducing_gap=2.0) if (nw, nh) != image.size else image
    px = (tw - nw) // 2 if center else 0
    py = (th - nh) // 2 if center else 0
    canvas = np.empty((th, tw, 3), dtype=np.uint8)
    canvas[py : py + nh, px : px + nw] = np.asarray(resized.convert("RGB"))
    pad = np.asarray(fill, dtype=np.uint8)
    for region in (canvas[:py], canvas[py + nh :], canvas[py : py + nh, :px], canvas[py : py + nh, px + nw :]):
        region[...] = pad  # only the padding: filling the whole canvas first cost 2 ms per 640x640 image
    return canvas, Letterbox(scale=scale, pad_x=px, pad_y=py)


def nms(xyxy: np.ndarray, scores: np.ndarray, iou_threshold: float, top_k: int = 200) -> list[int]:
    """Greedy non-maximum suppression; indices of the kept boxes, best score first."""
    if len(xyxy) == 0:
        return []
    x0, y0, x1, y1 = xyxy[:, 0], xyxy[:, 1], xyxy[:, 2], xyxy[:, 3]
    areas = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size and len(keep) < top_k:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        iw = np.clip(np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]), 0, None)
        ih = np.clip(np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]), 0, None)
        inter = iw * ih
        iou = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-9)
        order = rest[iou <= iou_threshold]
    return keep


from prep.onnx import onnx_session  # noqa: E402  (re-export: the one place that builds sessions)


class OnnxDetector:
    """Plumbing the ONNX detectors share: the session is created lazily, once, under a lock
    (threads share one detector), and dropped when pickled (process workers reload it).

    Subclasses set `name`, implement `resolve()` and `detect()`, and may override `_loaded`
    to read facts (input size) from a new session."""

    name = ""

    def __init__(self, model_path: str | Path | None, device: str = "cpu", threads: int = 0):
        self.model_path = model_path
        self.device = device
        self.threads = threads
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
        """The model file (raises ModelNotAvailable with the fix)."""
        raise NotImplementedError

    def _model(self) -> str | bytes:
        """What the session loads: the resolved file, or (YuNet) a rewritten copy in memory."""
        return str(self.resolve())

    def _loaded(self, session: Any) -> None:
        """Hook: called once with a new session before other threads can use it."""

    def _sess(self) -> Any:
        if self._session is None:
            with self._lock:
                if self._session is None:
                    sess = onnx_session(self._model(), self.device, self.threads)
                    self._loaded(sess)
                    self._session = sess
        return self._session

    def _boxes(self, xyxy: np.ndarray, scores: np.ndarray, lb: Letterbox, image: Image.Image, kind: str,
               landmarks: np.ndarray | None = None) -> list[Box]:
        """Model-input boxes mapped back to `image`, clipped to it, empty ones dropped, largest first.

        `landmarks` (N x 5 x 2, model-input pixels) are mapped back the same way and kept unclipped."""
        mapped = lb.to_image(xyxy)
        points: list[tuple[tuple[float, float], ...] | None] = [None] * len(mapped)
        if landmarks is not None:
            lm = landmarks.astype(np.float64).reshape(len(mapped), -1, 2)
            lm = np.stack([(lm[..., 0] - lb.pad_x) / lb.scale, (lm[..., 1] - lb.pad_y) / lb.scale], axis=-1)
            points = [tuple((float(x), float(y)) for x, y in row) for row in lm]
        out = [
            Box(float(b[0]), float(b[1]), float(b[2]), float(b[3]), float(s), kind, self.name, p).clipped(image.width, image.height)
            for b, s, p in zip(mapped, scores, points)
        ]
        return sort_largest_first([b for b in out if b.area > 0])
