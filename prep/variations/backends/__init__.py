"""Image-to-image backends for `prep render-variations`.

A backend turns a batch of `GenRequest`s into images. It must be deterministic for a given
seed (where the model allows) and must not create a second paid job for a request it already
started (the `key` is stable across runs for that purpose).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from PIL import Image

DEFAULT_MODELS = {
    "replicate": "black-forest-labs/flux-dev",
    "diffusers": "stabilityai/stable-diffusion-xl-base-1.0",
}
BACKENDS = tuple(DEFAULT_MODELS)


@dataclass
class GenRequest:
    key: str
    """Stable id of this variation (its output path); the resume key for paid jobs."""
    image: Image.Image
    prompt: str
    strength: float
    seed: int
    negative_prompt: str | None = None
    steps: int | None = None
    guidance: float | None = None


class VariationBackend(Protocol):
    name: str
    model: str

    def generate(self, requests: list[GenRequest]) -> list[Image.Image]:
        """One image per request, in order. Raises on failure (the executor then retries the
        batch one request at a time and records the one that still fails)."""
        ...

    def describe(self) -> dict[str, Any]:
        """Provenance fields for the manifest (model, version, dtype, ...)."""
        ...


def make_backend(name: str, model: str | None = None, **kw: Any) -> VariationBackend:
    """Build a backend by name. Imports lazily so `torch`/`replicate` load only when used."""
    model = model or DEFAULT_MODELS.get(name)
    if name == "diffusers":
        from prep.variations.backends.diffusers_backend import DiffusersBackend

        return DiffusersBackend(model or DEFAULT_MODELS["diffusers"], **kw)
    if name == "replicate":
        from prep.variations.backends.replicate import ReplicateBackend

        return ReplicateBackend(model or DEFAULT_MODELS["replicate"], **kw)
    raise ValueError(f"unknown backend {name!r}: use one of {', '.join(BACKENDS)}")
