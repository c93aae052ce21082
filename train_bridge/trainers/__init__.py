"""Registry of the architectures train_bridge can configure.

One `ArchSpec` per architecture holds what differs between them: trainer, script paths,
the model files it needs (and which TOML key each one feeds), the option list it is checked
against, the legal bucket steps, and keys the trainer silently ignores for it.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ModelArg:
    """One model file an architecture needs."""

    name: str
    """Key in `models` and CLI option (`--qwen3`, `--clip-l`)."""
    key: str
    """Trainer option it is written to."""
    required: bool
    help: str
    expect: tuple[str, ...] = ()
    """Regexes; a safetensors file passes when any tensor name matches one of them."""
    allow_dir: bool = False
    """A Diffusers/HF folder (or repo id) is accepted instead of a file."""
    used_by: tuple[str, ...] = ("train",)
    """Commands that receive it (musubi caches need the VAE and text encoder)."""


@dataclass(frozen=True)
class ArchSpec:
    name: str
    trainer: str  # "sd-scripts" | "musubi-tuner"
    family: str  # "anima", "flux", "sdxl", "sd3", "wan21", "wan22"
    train_script: str  # relative to the trainer checkout root
    options_key: str  # file stem under train_bridge/options/data
    network_module: str
    bucket_steps: tuple[int, ...]  # first is the default
    models: tuple[ModelArg, ...]
    ignored_keys: frozenset[str] = frozenset()
    """Options the parser accepts but this architecture's code path never reads."""
    te_cache_allows_caption_dropout: bool = False
    max_blocks_to_swap: int | None = None
    task: str | None = None  # musubi --task
    i2v: bool = False
    dual_expert: bool = False  # Wan 2.2: high- and low-noise experts
    timestep_boundary: int | None = None  # Wan 2.2 expert split (0..1000)
    extra_scripts: dict[str, str] = field(default_factory=dict)
    description: str = ""

    def model(self, name: str) -> ModelArg:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(name)


def _registry() -> dict[str, ArchSpec]:
    from train_bridge.trainers import musubi, sd_scripts

    return {s.name: s for s in (*sd_scripts.SPECS, *musubi.SPECS)}


REGISTRY: dict[str, ArchSpec] = _registry()
ARCH_NAMES: tuple[str, ...] = tuple(REGISTRY)


def get_arch(name: str) -> ArchSpec:
    """The spec for `name`; an unknown name raises KeyError with the closest match."""
    try:
        return REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, ARCH_NAMES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise KeyError(f"unknown architecture {name!r}{hint}; choose one of {', '.join(ARCH_NAMES)}") from None
