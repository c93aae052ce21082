"""VRAM presets (8, 12, 16, 24, 48, 80 GB) per architecture; the tables are in
`train_bridge/trainers/sd_scripts.py` and `train_bridge/trainers/musubi.py`.

Sources: the Anima Colab trainer (citron v5: dim=alpha=20, lr 1e-4, AdamW8bit, 768 px,
latents and text-encoder outputs cached, gradient checkpointing, VAE chunking; runs on a
16 GB T4), lora-gym's Wan templates (adamw8bit + weight_decay 0.01, polynomial power 2,
shift sampling 3.0 T2V / 5.0 I2V, fp8 base, Wan 2.2 fp16 + fp8_scaled, high expert dim 8
lr 1e-4, low expert dim 42 lr 8e-5), and the sd-scripts docs (FLUX block swap 28/16 for
8/12 GB, bf16 only; SDXL/SD3 caching needs `network_train_unet_only`). Sizes between those
anchors are interpolations and are marked so in `Preset.source`.

Every key here is checked against the trainer's real option list by the tests, and the
traps of reference §8 are avoided by construction: text-encoder caching always comes with
`network_train_unet_only`, numbers are typed as the parser expects, FLUX/SD3 run in bf16,
and no key an architecture ignores is written.
"""

from __future__ import annotations

from typing import Any

from train_bridge.trainers import REGISTRY, ArchSpec, trainer_for
from train_bridge.trainers.base import Preset

PRESETS: tuple[str, ...] = ("8gb", "12gb", "16gb", "24gb", "48gb", "80gb")
DEFAULT_PRESET = "16gb"

__all__ = ["DEFAULT_PRESET", "PRESETS", "Preset", "get_preset", "normalize_preset", "preset_table"]


def normalize_preset(name: str | int) -> str:
    s = str(name).strip().lower().replace(" ", "")
    if not s.endswith("gb"):
        s += "gb"
    if s not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return s


def get_preset(spec: ArchSpec, preset: str | int = DEFAULT_PRESET) -> Preset:
    """The preset settings for `spec` at `preset` VRAM (the tables live in each trainer's file)."""
    return trainer_for(spec).preset(spec, normalize_preset(preset))


def preset_table() -> list[dict[str, Any]]:
    """Rows for docs and `--json`: arch, preset, resolution, batch, dim, swap, fp8."""
    rows = []
    for spec in REGISTRY.values():
        for p in PRESETS:
            pr = get_preset(spec, p)
            t = pr.train
            rows.append(
                {
                    "arch": spec.name,
                    "preset": p,
                    "resolution": f"{pr.resolution[0]}x{pr.resolution[1]}",
                    "batch": pr.batch_size,
                    "dim/alpha": "high 8/8, low 42/42" if pr.experts else f"{t['network_dim']}/{t['network_alpha']:g}",
                    "optimizer": t["optimizer_type"],
                    "grad_ckpt": bool(t.get("gradient_checkpointing")),
                    "blocks_to_swap": t.get("blocks_to_swap") or 0,
                    "fp8": "base+scaled" if t.get("fp8_scaled") else ("base" if t.get("fp8_base") else "no"),
                    "precision": t["mixed_precision"],
                }
            )
    return rows
