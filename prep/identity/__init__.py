"""Identity embeddings: is this face (or anime character) the one the LoRA is about?

Two models behind one small protocol, registered like `prep.detectors`:

- `sface` (kind `photo`): OpenCV Zoo's SFace face recogniser (Apache-2.0) on a 112x112 crop
  aligned with YuNet's five landmarks exactly as OpenCV's `FaceRecognizerSF.alignCrop` does;
  same identity at cosine >= 0.363 (OpenCV's published threshold).
- `ccip` (kind `anime`): deepghs' CCIP character embedder on the detector's head box (widened
  to take in hair and shoulders); same character when CCIP's own metric model says the
  difference is <= the threshold published with the model, i.e. similarity >= 1 - that.

Every model returns L2-normalised float32 vectors and says how two of them compare
(`similarity`, `similarity_matrix`); `References`, `cluster` and `EmbeddingCache` work with
either. Model files are resolved by `prep.models.resolve_model_file` (explicit path,
environment variable, Hugging Face cache at a pinned revision; offline works from the cache or
a path). Sources, licences and pins: docs/identity.md.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from prep.detectors import Box

REGISTRY: dict[str, str] = {
    "sface": "prep.identity.sface:SFaceModel",
    "ccip": "prep.identity.ccip:CCIPModel",
}
IDENTITY_MODELS = tuple(REGISTRY)
KIND_TO_MODEL = {"photo": "sface", "anime": "ccip"}
"""Which model embeds what a detector of that name finds (`auto` counts as photo: YuNet first)."""


@runtime_checkable
class IdentityModel(Protocol):
    name: str
    """Registry name: "sface" | "ccip"."""
    kind: str
    """"photo" | "anime"."""
    threshold: float
    """Similarity at/above which two embeddings are the same identity (the model's published value)."""

    def embed(self, image: Image.Image, box: Box) -> np.ndarray:
        """Upright RGB image + a detector box -> L2-normalised float32 1-D vector."""
        ...

    def similarity(self, a: np.ndarray, b: np.ndarray) -> float:
        """How alike two embeddings are, on the scale of `threshold` (higher = more alike)."""
        ...

    def similarity_matrix(self, vectors: np.ndarray) -> np.ndarray:
        """N x N similarities of the rows of `vectors` (N x D)."""
        ...


class ReferenceError(ValueError):  # the name the API promises; shadows a builtin nothing here uses
    """A reference folder or image that cannot be used; the message names the file and the fix."""


def create_identity_model(name_or_kind: str = "auto", *, model_path: str | Path | None = None, **options: Any) -> IdentityModel:
    """The model registered as `name_or_kind` ("sface" | "ccip"), or for a detector kind ("photo" | "anime" | "auto")."""
    name = name_or_kind if name_or_kind in REGISTRY else model_for_detector(name_or_kind)
    module, _, cls = REGISTRY[name].partition(":")
    return getattr(importlib.import_module(module), cls)(model_path, **options)


def model_for_detector(detector_name: str) -> str:
    """The identity model that embeds what `detector_name` finds: photo -> sface, anime -> ccip, auto -> sface."""
    if detector_name in REGISTRY:
        return detector_name
    if detector_name == "auto":
        return "sface"
    try:
        return KIND_TO_MODEL[detector_name]
    except KeyError:
        raise ValueError(f"unknown identity model or detector {detector_name!r}: use {', '.join((*IDENTITY_MODELS, 'photo', 'anime', 'auto'))}") from None


def open_session(path: Path, device: str, threads: int, *, what: str, flag: str | None) -> Any:
    """An onnxruntime session for an identity model; a file onnxruntime cannot load is
    `ModelNotAvailable` naming the file and the fix (not a traceback)."""
    from prep.models import ModelNotAvailable
    from prep.onnx import onnx_session

    try:
        return onnx_session(path, device, threads)
    except ModelNotAvailable:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ModelNotAvailable(f"{path}: not a loadable {what} ONNX model ({first}); pass the real file with {flag or 'its path'} (docs/identity.md)") from None


def normalize(v: np.ndarray) -> np.ndarray:
    """`v` as a float32 unit vector (a zero vector stays zero)."""
    v = np.asarray(v, dtype=np.float32).reshape(-1)
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two vectors (normalised here, as OpenCV's FaceRecognizerSF.match does)."""
    return float(np.dot(normalize(a), normalize(b)))


class CosineSimilarity:
    """Mixin: cosine on unit vectors (SFace's metric)."""

    def similarity(self, a: np.ndarray, b: np.ndarray) -> float:
        return cosine(a, b)

    def similarity_matrix(self, vectors: np.ndarray) -> np.ndarray:
        m = np.stack([normalize(v) for v in vectors]) if len(vectors) else np.zeros((0, 0), np.float32)
        return m @ m.T if len(vectors) else m


def _similarity_matrix(vectors: list[np.ndarray], model: IdentityModel | None) -> np.ndarray:
    if not vectors:
        return np.zeros((0, 0), np.float32)
    if model is not None:
        return np.asarray(model.similarity_matrix(np.stack([normalize(v) for v in vectors])), dtype=np.float64)
    m = np.stack([normalize(v) for v in vectors]).astype(np.float64)
    return m @ m.T


def reference_files(folder: str | Path) -> list[Path]:
    """The reference images: `folder` itself when it is a file, else its images (not recursive), sorted."""
    from prep.images import is_image_path

    root = Path(folder).expanduser()
    if root.is_file():
        return [root]
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith(".") and is_image_path(p))


def reference_digest(folder: str | Path) -> str:
    """A fingerprint of the reference images' contents: changed references redo what they decided."""
    from prep.fsutil import sha256_bytes, sha256_file

    rows = []
    for p in reference_files(folder):
        try:
            rows.append([p.name, sha256_file(p)])
        except OSError:
            rows.append([p.name, None])
    return sha256_bytes(json.dumps(rows).encode())[:16]


@dataclass
class References:
    """Embeddings of the character's reference images (one face each: the largest)."""

    model: IdentityModel
    vectors: list[np.ndarray]
    files: list[str]
    boxes: list[Box] = field(default_factory=list)

    @classmethod
    def load(cls, folder: str | Path, *, model: IdentityModel, detector: Any, cache: EmbeddingCache | None = None) -> References:
        """Embed the largest face of every image in `folder` (or a single image file).

        An unreadable reference, one with no face, or a folder with no images is a
        `ReferenceError` naming the file and the fix: a wrong reference would silently
        filter the whole set."""
        from prep.fsutil import sha256_file
        from prep.images import ImageLoadError, load_image

        root = Path(folder).expanduser()
        if not root.exists():
            raise ReferenceError(f"{root}: no such reference folder; pass --reference a folder holding 1-5 images of the character")
        paths = reference_files(root)
        if not paths:
            raise ReferenceError(f"{root}: no images in the reference folder; put 1-5 clear images of the character there (jpg, png, webp)")
        vectors, files, boxes = [], [], []
        for p in paths:
            try:
                loaded = load_image(p)
            except ImageLoadError as exc:
                raise ReferenceError(f"{p}: reference image cannot be read ({exc.reason}); replace or remove it from {root}") from None
            found = detector.detect(loaded.image)
            if not found:
                raise ReferenceError(
                    f"{p}: no face found in this reference image; use a reference where the character's face is clearly visible, or remove it from {root}"
                )
            box = max(found, key=lambda b: (b.area, b.score))
            if cache is not None:
                vec = cache.get_or_compute(sha256_file(p), box, lambda im=loaded.image, b=box: model.embed(im, b))
            else:
                vec = model.embed(loaded.image, box)
            vectors.append(normalize(vec))
            files.append(str(p))
            boxes.append(box)
        return cls(model=model, vectors=vectors, files=files, boxes=boxes)

    def score(self, vector: np.ndarray) -> float:
        """Best similarity of `vector` to any reference (the model's metric; cosine for SFace)."""
        return max(self.model.similarity(vector, r) for r in self.vectors) if self.vectors else float("-inf")

    def best_match(self, image: Image.Image, boxes: list[Box], *, vectors: list[np.ndarray] | None = None) -> tuple[int | None, float]:
        """Index into `boxes` of the face most like the references, or None when none reaches the
        model's threshold; and that best score (reported even when below the threshold).

        `vectors` (one per box, e.g. from an `EmbeddingCache`) skips the embedding here."""
        if not boxes:
            return None, float("-inf")
        vecs = vectors if vectors is not None else [self.model.embed(image, b) for b in boxes]
        scores = [self.score(v) for v in vecs]
        best = int(np.argmax(scores))
        return (best if scores[best] >= self.model.threshold else None), float(scores[best])


def cluster(vectors: list[np.ndarray], threshold: float, *, model: IdentityModel | None = None) -> list[int]:
    """Cluster labels, one per vector: 0 for the largest (dominant) cluster, then by size.

    Average-linkage agglomerative clustering: two clusters merge while the mean similarity
    between their members is >= `threshold` (cosine, or `model`'s own metric when given:
    pass it for CCIP). Deterministic: ties break by the lowest member index."""
    n = len(vectors)
    if n == 0:
        return []
    sim = _similarity_matrix(vectors, model)
    groups: list[list[int]] = [[i] for i in range(n)]
    while len(groups) > 1:
        best, pair = -np.inf, None
        for a in range(len(groups)):
            for b in range(a + 1, len(groups)):
                s = float(sim[np.ix_(groups[a], groups[b])].mean())
                if s > best:
                    best, pair = s, (a, b)
        if pair is None or best < threshold:
            break
        a, b = pair
        groups[a] = sorted(groups[a] + groups[b])
        del groups[b]
    groups.sort(key=lambda g: (-len(g), g[0]))
    labels = [0] * n
    for label, g in enumerate(groups):
        for i in g:
            labels[i] = label
    return labels


class EmbeddingCache:
    """Embeddings computed once per face: keyed by the image's content sha256, the box (rounded
    to whole pixels) and the model name, one small `.npy` file each, written atomically, so
    parallel workers and reruns share them and a renamed copy of a file is not re-embedded.

    `hits` / `misses` count lookups (a test asserts the second pass runs no inference)."""

    def __init__(self, folder: str | Path, model_name: str):
        self.folder = Path(folder) / "embeddings" / model_name
        self.model_name = model_name
        self.hits = 0
        self.misses = 0

    def key(self, sha256: str, box: Box) -> str:
        from prep.fsutil import sha256_bytes

        coords = ",".join(str(round(v)) for v in (box.x0, box.y0, box.x1, box.y1))
        return sha256_bytes(json.dumps([sha256, coords, box.kind, self.model_name]).encode())[:40]

    def path(self, sha256: str, box: Box) -> Path:
        k = self.key(sha256, box)
        return self.folder / k[:2] / f"{k}.npy"

    def get(self, sha256: str, box: Box) -> np.ndarray | None:
        p = self.path(sha256, box)
        try:
            with open(p, "rb") as fh:
                v = np.load(fh, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None  # absent or torn: recompute
        return v.astype(np.float32).reshape(-1) if v.ndim <= 2 and v.size else None

    def put(self, sha256: str, box: Box, vector: np.ndarray) -> None:
        import io

        from prep.fsutil import atomic_write_bytes

        buf = io.BytesIO()
        np.save(buf, np.asarray(vector, dtype=np.float32).reshape(-1), allow_pickle=False)
        atomic_write_bytes(self.path(sha256, box), buf.getvalue())

    def get_or_compute(self, sha256: str, box: Box, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """The cached vector for this face, else `compute()`'s, stored for next time."""
        got = self.get(sha256, box)
        if got is not None:
            self.hits += 1
            return got
        self.misses += 1
        vec = normalize(compute())
        try:
            self.put(sha256, box, vec)
        except OSError:
            pass  # a read-only or full disk costs a recompute next time, never the run
        return vec


__all__ = [
    "IDENTITY_MODELS",
    "REGISTRY",
    "EmbeddingCache",
    "IdentityModel",
    "ReferenceError",
    "References",
    "cluster",
    "cosine",
    "create_identity_model",
    "model_for_detector",
    "normalize",
    "reference_digest",
    "reference_files",
]
