"""Does a variation still show the render's character? Face embeddings, decisions, set-aside.

img2img at a strength high enough to lose the render look can also lose the face. Each
finished variation's face is embedded (`prep.identity`, SFace for photo-like renders, CCIP for
anime) and compared with its own render's face: below the threshold (default: the model's
published same-identity value, SFace's 0.363 from OpenCV) the variation is *drifted* and kept
aside in `set_aside/drifted/`, never deleted. A render with no detectable face keeps its
variations unchecked, with a note. The similarity is recorded in the variation's manifest
record, so a rerun (or a new threshold) decides again without embedding anything again; the
embeddings themselves are cached by content hash under `.loraprep/embeddings/`.

The final-set share (`max_synthetic_share`) is applied here too: when more variations pass than
the share allows, each render keeps its most faithful ones first, round by round, and the rest
wait in `set_aside/surplus/`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from prep.fsutil import sha256_file
from prep.images import ImageLoadError, load_image

ASIDE_DIR = "set_aside"
DRIFTED = "drifted"
SURPLUS = "surplus"
KEPT = "kept"


def aside_id(kind: str, variation_id: str) -> str:
    """Where a set-aside variation lives, relative to the output folder."""
    return f"{ASIDE_DIR}/{kind}/{variation_id}"


@dataclass
class Check:
    """What the identity pass found for one variation (stored as `identity` in its record)."""

    model: str
    similarity: float | None
    source_face: bool
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "similarity": self.similarity, "source_face": self.source_face, "note": self.note}

    @classmethod
    def from_json(cls, d: Any) -> Check | None:
        if not isinstance(d, dict) or "model" not in d:
            return None
        sim = d.get("similarity")
        return cls(str(d["model"]), float(sim) if sim is not None else None, bool(d.get("source_face")), d.get("note"))


def decide(check: Check | None, threshold: float) -> tuple[str, str | None]:
    """(kept | drifted, note) for a check; no check (identity off) keeps the variation."""
    if check is None:
        return KEPT, None
    if not check.source_face:
        return KEPT, check.note or "no face found in the render: identity not checked"
    if check.similarity is None:
        return DRIFTED, check.note or "no face found in the variation"
    if check.similarity < threshold:
        return DRIFTED, f"face similarity {check.similarity:.3f} to its render is below {threshold:.3f}"
    return KEPT, None


class IdentityChecker:
    """Embeds render and variation faces once each (EmbeddingCache) and compares them."""

    def __init__(self, out: Path, *, model_name: str = "auto", model_path: str | None = None, detector: str = "photo", state_dir: str = ".loraprep"):
        from prep.detectors import create_detector
        from prep.identity import (
            EmbeddingCache,
            create_identity_model,
            model_for_detector,
        )

        name = model_for_detector(detector) if model_name == "auto" else model_name
        self.model = create_identity_model(name, model_path=model_path)
        self.detector = create_detector(detector)
        resolve = getattr(self.model, "resolve", None)
        if callable(resolve):
            resolve()  # the model file must be there before anything is generated (ModelNotAvailable says how)
        self.cache = EmbeddingCache(out / state_dir, self.model.name)
        self._sources: dict[str, tuple[np.ndarray | None, str | None]] = {}

    @property
    def name(self) -> str:
        return str(self.model.name)

    @property
    def threshold(self) -> float:
        return float(self.model.threshold)

    def _faces(self, path: Path, sha: str) -> tuple[list[np.ndarray], str | None]:
        try:
            img = load_image(path).image
        except ImageLoadError as exc:
            return [], f"{path}: cannot be read ({exc.reason})"
        boxes = self.detector.detect(img)
        if not boxes:
            return [], None
        return [self.cache.get_or_compute(sha, b, lambda b=b: self.model.embed(img, b)) for b in boxes], None

    def source(self, path: Path, sha: str) -> tuple[np.ndarray | None, str | None]:
        """The render's main (largest) face vector, or None and a note."""
        if sha not in self._sources:
            vecs, err = self._faces(path, sha)
            if err:
                self._sources[sha] = (None, err)
            elif not vecs:
                self._sources[sha] = (None, "no face found in the render: identity not checked")
            else:
                self._sources[sha] = (vecs[0], None)  # detectors return the largest first
        return self._sources[sha]

    def check(self, variation: Path, source: Path, source_sha: str) -> Check:
        ref, note = self.source(source, source_sha)
        if ref is None:
            return Check(self.name, None, False, note)
        vecs, err = self._faces(variation, sha256_file(variation))
        if err:
            return Check(self.name, None, True, err)
        if not vecs:
            return Check(self.name, None, True, "no face found in the variation")
        # several faces in a variation: the one most like the render is the character
        return Check(self.name, round(max(float(self.model.similarity(ref, v)) for v in vecs), 4), True)


def choose_surplus(candidates: Iterable[tuple[str, str, float | None, int]], cap: int | None) -> set[str]:
    """Ids set aside so at most `cap` variations stay. `candidates` are (id, source id,
    similarity or None, plan order). Round k keeps each render's k-th most faithful variation,
    best similarity first within the round, so every render keeps some before any keeps many."""
    items = list(candidates)
    if cap is None or len(items) <= cap:
        return set()
    by_src: dict[str, list[tuple[str, str, float | None, int]]] = {}
    for it in items:
        by_src.setdefault(it[1], []).append(it)
    for lst in by_src.values():
        lst.sort(key=lambda t: (-(t[2] if t[2] is not None else -math.inf), t[3]))
    keep: list[str] = []
    k = 0
    while len(keep) < cap:
        rnd = [lst[k] for lst in by_src.values() if len(lst) > k]
        if not rnd:
            break
        rnd.sort(key=lambda t: (-(t[2] if t[2] is not None else -math.inf), t[3]))
        keep += [t[0] for t in rnd[: cap - len(keep)]]
        k += 1
    return {t[0] for t in items} - set(keep)
