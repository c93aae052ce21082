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

from dataclasses import dataclass
from typing import Any

from train_bridge.trainers import REGISTRY, ArchSpec, trainer_for
from train_bridge.trainers.base import Preset

PRESETS: tuple[str, ...] = ("8gb", "12gb", "16gb", "24gb", "48gb", "80gb")
DEFAULT_PRESET = "16gb"

__all__ = [
    "DEFAULT_PRESET", "PRESETS", "USE_CASES", "Preset", "StepTarget", "UseCase", "get_preset", "get_use_case", "normalize_preset",
    "normalize_use_case", "preset_table", "sample_every", "step_target",
]


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


# -- use cases ---------------------------------------------------------------------------------
#
# Beside the VRAM presets (how the run fits the GPU), a use case says what is trained: it sets
# network_dim / network_alpha / learning_rate and the step range the run should land in. Every
# value is either cited (the `source` of its row) or marked as loraprep's choice in
# docs/train_bridge-presets.md. An explicit --set always wins.

USE_CASES: tuple[str, ...] = ("face", "full-body", "3d-to-photo", "anime", "video-ready")


@dataclass(frozen=True)
class StepTarget:
    """The step range guides give for an architecture and use case; outside it `config` warns."""

    low: int
    high: int
    source: str

    def warnings(self, total: int, steps_per_epoch: int, what: str) -> list[str]:
        spe = max(1, steps_per_epoch)
        if total > self.high:
            return [(f"{total} steps is above the {self.low}-{self.high} steps guides give for {what} ({self.source}): it may overfit; "
                     f"try max_train_epochs={max(1, self.high // spe)}, or fewer repeats (or pick an earlier checkpoint)")]
        if total < self.low:
            return [(f"{total} steps is below the {self.low}-{self.high} steps guides give for {what} ({self.source}): it may underfit; "
                     f"try max_train_epochs={max(1, -(-self.low // spe))}, or more repeats")]
        return []


@dataclass(frozen=True)
class UseCase:
    name: str
    train: dict[str, Any]  # network_dim / network_alpha / learning_rate for this family
    steps: StepTarget
    prompts: tuple[str, ...]  # sample prompts after the dataset one ({subject}: trigger[, class])
    source: str


_SDS = "sd-scripts 48d368fa docs"
_AITK = "ostris/ai-toolkit config/examples/train_lora_flux_24gb.yaml (steps 2000, '500 - 4000 is a good range', linear 16, lr 1e-4)"
_GYM = "lora-gym e42df8b0 Wan templates (reference train_bridge.md §6.6)"
_CIV_ILL = "civitai.com/articles/9148 (Illustrious: dim 32 standard, 64 'higher detail'; 40 images x 5-10 repeats x 10 epochs at batch 4)"
_LILT = "lilting.ch/en/articles/wai-anima-keichan-lora-training (Anima character: 600-720 exposures per image, repeats x epochs)"
_CHOSEN = "loraprep's choice"

# family -> (dim, alpha, lr, steps low, steps high, source)
_UC: dict[str, dict[str, tuple[int, float, float, int, int, str]]] = {
    "face": {
        "sdxl": (32, 16.0, 1e-4, 1500, 3000, f"dim 32 / lr 1e-4: {_SDS}/sdxl_train_network.md; steps: {_CHOSEN}"),
        "flux": (16, 16.0, 1e-4, 1000, 2500, f"{_AITK}; the narrower step range for one face: {_CHOSEN}"),
        "sd3": (16, 16.0, 1e-4, 1000, 2500, f"dim/lr as FLUX ({_SDS}/sd3_train_network.md uses lr 1e-4); steps: {_CHOSEN}"),
        "anima": (16, 16.0, 1e-4, 800, 2000, f"dim 8-20 / lr 1e-4: {_SDS}/anima_train_network.md and the citron Colab (dim 20); steps: {_CHOSEN}"),
        "wan21": (24, 24.0, 8e-5, 1000, 3000, f"{_GYM}; steps: {_CHOSEN}"),
        "wan22": (42, 42.0, 8e-5, 1000, 3000, f"{_GYM} (low-noise expert); steps: {_CHOSEN}"),
    },
    "full-body": {
        "sdxl": (32, 16.0, 1e-4, 2000, 3500, f"dim 32 / lr 1e-4: {_SDS}/sdxl_train_network.md; steps: {_CHOSEN} (more poses and outfits than a face)"),
        "flux": (16, 16.0, 1e-4, 1500, 4000, _AITK),
        "sd3": (16, 16.0, 1e-4, 1500, 4000, f"as FLUX ({_AITK}); {_CHOSEN} for SD3"),
        "anima": (20, 20.0, 1e-4, 1000, 3000, f"dim 20 / lr 1e-4: the citron Anima Colab; steps: {_CHOSEN}"),
        "wan21": (24, 24.0, 8e-5, 1500, 4000, f"{_GYM}; steps: {_CHOSEN}"),
        "wan22": (42, 42.0, 8e-5, 1500, 4000, f"{_GYM} (low-noise expert); steps: {_CHOSEN}"),
    },
    "3d-to-photo": {
        # a realistic look learned from renders: a wider adapter, more steps (loraprep's choice throughout)
        "sdxl": (64, 32.0, 1e-4, 2000, 4000, f"dim 64 'higher detail': {_CIV_ILL}; lr: {_SDS}; steps: {_CHOSEN}"),
        "flux": (32, 32.0, 1e-4, 2000, 4000, f"{_AITK} (upper half of its range); dim 32: {_CHOSEN}"),
        "sd3": (32, 32.0, 1e-4, 2000, 4000, _CHOSEN),
        "anima": (32, 32.0, 1e-4, 1500, 3000, _CHOSEN),
        "wan21": (32, 32.0, 8e-5, 2000, 4000, f"lr: {_GYM}; dim/steps: {_CHOSEN}"),
        "wan22": (42, 42.0, 8e-5, 2000, 4000, f"{_GYM} (low-noise expert); steps: {_CHOSEN}"),
    },
    "anime": {
        "sdxl": (48, 24.0, 8e-5, 1500, 3000, f"dim 32-64: {_CIV_ILL}; lr 8e-5 and dim 48: {_CHOSEN}"),
        "flux": (16, 16.0, 1e-4, 1000, 3000, _AITK),
        "sd3": (16, 16.0, 1e-4, 1000, 3000, _CHOSEN),
        "anima": (20, 20.0, 1e-4, 1000, 3000, f"dim 20 / lr 1e-4: the citron Anima Colab; exposures: {_LILT}"),
        "wan21": (24, 24.0, 8e-5, 1000, 3000, _GYM),
        "wan22": (42, 42.0, 8e-5, 1000, 3000, _GYM),
    },
    "video-ready": {
        # a still-image LoRA meant to be reused for video: moderate rank, no overfitting of single frames
        "sdxl": (32, 16.0, 1e-4, 1500, 3000, f"{_SDS}/sdxl_train_network.md; steps: {_CHOSEN}"),
        "flux": (16, 16.0, 1e-4, 1000, 3000, _AITK),
        "sd3": (16, 16.0, 1e-4, 1000, 3000, _CHOSEN),
        "anima": (16, 16.0, 1e-4, 1000, 2500, _CHOSEN),
        "wan21": (24, 24.0, 8e-5, 1000, 3000, _GYM),
        "wan22": (42, 42.0, 8e-5, 1000, 3000, _GYM),
    },
}

_UC_PROMPTS: dict[str, tuple[str, ...]] = {
    "face": ("{subject}, close-up portrait, looking at viewer, soft light", "{subject}, profile view, outdoors, daylight"),
    "full-body": ("{subject}, full body, standing, simple background", "{subject}, walking in a city street, full body"),
    "3d-to-photo": ("{subject}, photo, realistic skin texture, natural light", "{subject}, photo, full body, outdoors"),
    "anime": ("{subject}, upper body, looking at viewer, simple background", "{subject}, full body, standing outdoors, daylight"),
    "video-ready": ("{subject}, medium shot, neutral pose, plain background", "{subject}, full body, side view, walking"),
}
DEFAULT_PROMPTS: tuple[str, ...] = ("{subject}, portrait, looking at viewer, simple background", "{subject}, full body, standing outdoors, daylight")

# The step range without a use case: ai-toolkit's 500-4000 for a DiT (FLUX, and loraprep uses it
# for SD3/Anima), the use-case-free middle for SDXL and Wan. loraprep's choice where not cited.
_DEFAULT_STEPS: dict[str, tuple[int, int, str]] = {
    "flux": (500, 4000, _AITK),
    "sd3": (500, 4000, f"as FLUX ({_AITK}); {_CHOSEN}"),
    "anima": (500, 4000, f"as FLUX ({_AITK}); {_CHOSEN}"),
    "sdxl": (1000, 4000, _CHOSEN),
    "wan21": (500, 4000, _CHOSEN),
    "wan22": (500, 4000, _CHOSEN),
}


def normalize_use_case(name: str | None) -> str | None:
    if name is None or name == "":
        return None
    s = str(name).strip().lower().replace("_", "-")
    if s not in USE_CASES:
        raise ValueError(f"unknown use case {name!r}; choose one of {', '.join(USE_CASES)}")
    return s


def get_use_case(spec: ArchSpec, name: str) -> UseCase:
    n = normalize_use_case(name)
    assert n is not None
    dim, alpha, lr, lo, hi, source = _UC[n][spec.family]
    return UseCase(n, {"network_dim": dim, "network_alpha": alpha, "learning_rate": lr}, StepTarget(lo, hi, source), _UC_PROMPTS[n], source)


def step_target(spec: ArchSpec, use_case: str | None = None) -> StepTarget:
    """The step range `config` checks the run against (per architecture, and use case when given)."""
    if use_case:
        return get_use_case(spec, use_case).steps
    lo, hi, source = _DEFAULT_STEPS[spec.family]
    return StepTarget(lo, hi, source)


# -- samples ------------------------------------------------------------------------------------

SAMPLE_EVERY: dict[str, int] = {"8gb": 500, "12gb": 500, "16gb": 250, "24gb": 250, "48gb": 250, "80gb": 250}
"""Steps between samples (and checkpoints) per VRAM preset. 250: ai-toolkit's example configs
(`sample_every: 250`, `save_every: 250`); 500 on 8/12 GB, where block swap makes each sample
slow (loraprep's choice, inside the 250-500 people use)."""
SAMPLE_POINTS_MIN = 4
"""A short run still gets this many sampling points (loraprep's choice: enough to see a trend)."""
_NICE = (1, 2, 5, 10, 20, 25, 50, 100, 125, 200, 250, 500)


def sample_every(preset: str, total_steps: int | None) -> int:
    """Steps between samples: the preset's, lowered to a round number for a run too short to
    sample SAMPLE_POINTS_MIN times."""
    n = SAMPLE_EVERY[normalize_preset(preset)]
    if total_steps and total_steps // n < SAMPLE_POINTS_MIN:
        fit = max(1, total_steps // SAMPLE_POINTS_MIN)
        n = max(x for x in _NICE if x <= fit)
    return n


def use_case_table() -> list[dict[str, Any]]:
    """Rows for docs and `presets --use-cases --json`: use case, arch, dim/alpha, lr, steps, source."""
    rows = []
    for uc in USE_CASES:
        for spec in REGISTRY.values():
            u = get_use_case(spec, uc)
            rows.append({"use_case": uc, "arch": spec.name, "dim/alpha": f"{u.train['network_dim']}/{u.train['network_alpha']:g}",
                         "lr": f"{u.train['learning_rate']:g}", "steps": f"{u.steps.low}-{u.steps.high}", "source": u.source})
    return rows
