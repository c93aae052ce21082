"""`auto`: choose the detector per image.

YuNet runs first (it is cheap and, on real faces, very sure of itself). When its best score is
at least `photo_confident` (0.85) the image is treated as a photo and the anime model is not
run. Otherwise the anime head detector runs; if it finds a head, its boxes win (anime and
illustrations give YuNet low scores or misses). Only when neither is sure do YuNet's weaker
boxes (above its own threshold) count. When one model cannot be found, the other works alone
and `warnings` says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image

from prep.detectors import Box
from prep.detectors.anime import AnimeDetector
from prep.detectors.yunet import YuNetDetector
from prep.models import ModelNotAvailable


class AutoDetector:
    name = "auto"

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        anime_model_path: str | Path | None = None,
        device: str = "cpu",
        threads: int = 0,
        photo_confident: float = 0.85,
        anime_target: str = "head",
        **_: Any,
    ):
        self.photo = YuNetDetector(model_path, device=device, threads=threads)
        self.anime = AnimeDetector(anime_model_path, device=device, threads=threads, target=anime_target)
        self.photo_confident = photo_confident
        self.warnings: list[str] = []
        self._checked = False
        self._have_photo = True
        self._have_anime = True

    def check(self) -> None:
        """Resolve both models once; keep the ones that exist, raise if neither does."""
        if self._checked:
            return
        errors = []
        for attr, det in (("_have_photo", self.photo), ("_have_anime", self.anime)):
            try:
                det.resolve()
            except ModelNotAvailable as exc:
                setattr(self, attr, False)
                errors.append(str(exc))
                self.warnings.append(f"auto: {det.name} detector unavailable, using the other only ({exc})")
        self._checked = True
        if not (self._have_photo or self._have_anime):
            raise ModelNotAvailable("no face detector model available: " + " | ".join(errors))

    def detect(self, image: Image.Image) -> list[Box]:
        self.check()
        photo: list[Box] = self.photo.detect(image) if self._have_photo else []
        if photo and max(b.score for b in photo) >= self.photo_confident:
            return photo
        anime: list[Box] = self.anime.detect(image) if self._have_anime else []
        return anime or photo
