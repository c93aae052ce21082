"""The one registry of caption backends: `--backend NAME` to the class that implements it.

Entries are import strings so that optional SDKs (google-genai, replicate, transformers) are
imported only when their backend is used. `a+b` chains backends (tags, then a sentence).
"""

from __future__ import annotations

import importlib

from captioning.backends.base import CaptionBackend

REGISTRY: dict[str, str] = {
    "wd14": "captioning.backends.wd14:WD14Backend",
    "gemini": "captioning.backends.gemini:GeminiBackend",
    "replicate": "captioning.backends.replicate:ReplicateBackend",
    "florence2": "captioning.backends.florence2:Florence2Backend",
    "joycaption": "captioning.backends.joycaption:JoyCaptionBackend",
    "qwen-vl": "captioning.backends.qwen_vl:QwenVLBackend",
}

EXTRAS = {"gemini": "gemini", "replicate": "replicate", "florence2": "vlm", "joycaption": "vlm", "qwen-vl": "vlm"}


class UnknownBackend(ValueError):
    pass


def backend_class(name: str) -> type[CaptionBackend]:
    """The class for `name`; raises UnknownBackend naming the choices or the extra to install."""
    if "+" in name:
        from captioning.backends.chain import chain_class

        return chain_class(name)
    target = REGISTRY.get(name)
    if target is None:
        raise UnknownBackend(f"unknown backend {name!r}: choose one of {', '.join(sorted(REGISTRY))} (or a chain like wd14+gemini)")
    mod_name, cls_name = target.split(":")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as exc:
        extra = EXTRAS.get(name)
        hint = f": pip install 'loraprep[{extra}]'" if extra else ""
        raise UnknownBackend(f"backend {name!r} needs a package that is not installed ({exc.name}){hint}") from exc
    return getattr(mod, cls_name)


def names() -> list[str]:
    return sorted(REGISTRY)
