"""VRAM presets (8, 12, 16, 24, 48, 80 GB) per architecture.

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

from dataclasses import dataclass, field
from typing import Any

from train_bridge.trainers import ArchSpec

PRESETS: tuple[str, ...] = ("8gb", "12gb", "16gb", "24gb", "48gb", "80gb")
DEFAULT_PRESET = "16gb"


@dataclass
class Preset:
    name: str
    train: dict[str, Any]
    """Training-TOML keys (trainer option names)."""
    resolution: tuple[int, int]
    batch_size: int
    subset: dict[str, Any] = field(default_factory=dict)
    """Dataset keys per subset (sd-scripts) or per dataset (musubi)."""
    experts: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Wan 2.2: per-expert overrides for "high" and "low"."""
    source: str = ""


def normalize_preset(name: str | int) -> str:
    s = str(name).strip().lower().replace(" ", "")
    if not s.endswith("gb"):
        s += "gb"
    if s not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return s


# -- sd-scripts -------------------------------------------------------------------------

_SD_COMMON: dict[str, Any] = {
    "mixed_precision": "bf16",
    "save_precision": "bf16",
    "save_model_as": "safetensors",
    "optimizer_type": "AdamW8bit",
    "lr_scheduler": "constant",
    "max_grad_norm": 1.0,
    "seed": 42,
    "max_train_epochs": 10,
    "save_every_n_epochs": 1,
    "save_last_n_epochs": 4,
    "save_last_n_epochs_state": 1,
    "network_train_unet_only": True,
    "cache_latents": True,
    "cache_latents_to_disk": True,
    "cache_text_encoder_outputs": True,
    "cache_text_encoder_outputs_to_disk": True,
    "max_data_loader_n_workers": 2,
    "persistent_data_loader_workers": True,
    "log_with": "tensorboard",
}

# (resolution, batch, dim, alpha, gradient_checkpointing, blocks_to_swap, fp8_base)
_Row = tuple[int, int, int, float, bool, int | None, bool]

_ANIMA: dict[str, _Row] = {
    "8gb": (512, 1, 16, 16.0, True, 20, False),
    "12gb": (768, 1, 16, 16.0, True, 10, False),
    "16gb": (768, 1, 20, 20.0, True, None, False),  # citron v5 defaults (Colab T4)
    "24gb": (1024, 1, 32, 32.0, True, None, False),
    "48gb": (1024, 4, 32, 32.0, True, None, False),
    "80gb": (1024, 8, 32, 32.0, False, None, False),
}
_FLUX: dict[str, _Row] = {
    "8gb": (512, 1, 8, 8.0, True, 28, True),  # sd-scripts docs: 28 blocks for 8 GB
    "12gb": (512, 1, 16, 16.0, True, 16, True),  # docs: 16 blocks for 12 GB
    "16gb": (768, 1, 16, 16.0, True, 8, True),
    "24gb": (1024, 1, 16, 16.0, True, None, True),
    "48gb": (1024, 2, 32, 32.0, True, None, False),
    "80gb": (1024, 4, 32, 32.0, True, None, False),
}
_SDXL: dict[str, _Row] = {
    "8gb": (768, 1, 8, 4.0, True, None, True),
    "12gb": (1024, 1, 16, 8.0, True, None, False),
    "16gb": (1024, 1, 32, 16.0, True, None, False),
    "24gb": (1024, 2, 32, 16.0, True, None, False),
    "48gb": (1024, 4, 32, 16.0, True, None, False),
    "80gb": (1024, 8, 32, 16.0, False, None, False),
}
_SD3: dict[str, _Row] = {
    "8gb": (512, 1, 8, 8.0, True, 10, True),
    "12gb": (768, 1, 16, 16.0, True, 4, True),
    "16gb": (1024, 1, 16, 16.0, True, None, True),
    "24gb": (1024, 1, 32, 32.0, True, None, False),
    "48gb": (1024, 2, 32, 32.0, True, None, False),
    "80gb": (1024, 4, 32, 32.0, True, None, False),
}


def _sd_preset(spec: ArchSpec, preset: str) -> Preset:
    table = {"anima": _ANIMA, "flux": _FLUX, "sdxl": _SDXL, "sd3": _SD3}[spec.family]
    res, batch, dim, alpha, gc, swap, fp8 = table[preset]
    train: dict[str, Any] = dict(_SD_COMMON)
    train.update({"network_module": spec.network_module, "network_dim": dim, "network_alpha": alpha, "learning_rate": 1e-4})
    if gc:
        train["gradient_checkpointing"] = True
    if swap:
        train["blocks_to_swap"] = swap
    if fp8 and spec.family != "anima":  # Anima has no fp8 (silently disabled)
        train["fp8_base"] = True
    subset: dict[str, Any] = {}
    source = "sd-scripts docs + interpolation"
    if spec.family == "anima":
        train.update(
            {"timestep_sampling": "sigmoid", "discrete_flow_shift": 1.0, "vae_chunk_size": 64, "vae_disable_cache": True}
        )
        subset["caption_dropout_rate"] = 0.1  # citron v5; allowed with TE caching for Anima only
        source = "citron-colab-anima-lora-trainer v5 (16gb) + interpolation"
    elif spec.family == "flux":
        train.update(
            {"sdpa": True, "guidance_scale": 1.0, "timestep_sampling": "flux_shift", "model_prediction_type": "raw"}
        )
    elif spec.family == "sdxl":
        train["sdpa"] = True
    elif spec.family == "sd3":
        train["sdpa"] = True
    return Preset(preset, train, (res, res), batch, subset, source=source)


# -- musubi-tuner (Wan) -------------------------------------------------------------------

# (square side, batch, blocks_to_swap)
_WAN: dict[str, tuple[int, int, int | None]] = {
    "8gb": (512, 1, 36),
    "12gb": (640, 1, 30),
    "16gb": (768, 1, 20),
    "24gb": (960, 1, 10),
    "48gb": (960, 1, None),
    "80gb": (960, 2, None),
}


def _wan_preset(spec: ArchSpec, preset: str) -> Preset:
    side, batch, swap = _WAN[preset]
    train: dict[str, Any] = {
        "task": spec.task,
        "sdpa": True,
        "network_module": spec.network_module,
        "optimizer_type": "adamw8bit",
        "optimizer_args": ["weight_decay=0.01"],
        "lr_scheduler": "polynomial",
        "lr_scheduler_power": 2.0,
        "gradient_checkpointing": True,
        "max_data_loader_n_workers": 2,
        "persistent_data_loader_workers": True,
        "timestep_sampling": "shift",
        "discrete_flow_shift": 5.0 if spec.i2v else 3.0,
        "fp8_base": True,
        "vae_cache_cpu": True,
        "max_train_epochs": 10,
        "save_every_n_epochs": 1,
        "save_last_n_epochs": 4,
        "save_last_n_epochs_state": 1,
        "seed": 42,
        "log_with": "tensorboard",
    }
    if swap:
        train["blocks_to_swap"] = swap
    experts: dict[str, dict[str, Any]] = {}
    if spec.family == "wan21":
        train.update({"mixed_precision": "bf16", "network_dim": 24, "network_alpha": 24.0, "learning_rate": 8e-5})
    else:
        b = spec.timestep_boundary or 875
        train.update({"mixed_precision": "fp16", "fp8_scaled": True, "preserve_distribution_shape": True})
        experts = {
            "high": {"network_dim": 8, "network_alpha": 8.0, "learning_rate": 1e-4, "min_timestep": b, "max_timestep": 1000},
            "low": {"network_dim": 42, "network_alpha": 42.0, "learning_rate": 8e-5, "min_timestep": 0, "max_timestep": b},
        }
    return Preset(preset, train, (side, side), batch, {}, experts, source="lora-gym e42df8b0 templates + block swap per VRAM")


def get_preset(spec: ArchSpec, preset: str | int = DEFAULT_PRESET) -> Preset:
    """The preset settings for `spec` at `preset` VRAM."""
    name = normalize_preset(preset)
    return _wan_preset(spec, name) if spec.trainer == "musubi-tuner" else _sd_preset(spec, name)


def preset_table() -> list[dict[str, Any]]:
    """Rows for docs and `--json`: arch, preset, resolution, batch, dim, swap, fp8."""
    from train_bridge.trainers import REGISTRY

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
