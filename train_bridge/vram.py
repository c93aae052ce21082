"""A GPU-memory model for Wan LoRA training on video, per frames x resolution, with advice.

This is loraprep's own model (docs/train_bridge.md, "VRAM for video"), not a measurement:

    tokens      = (1 + (frames - 1) // 4) * (H // 16) * (W // 16)      # VAE 4x8x8, patch 1x2x2
    weights     = params * bytes_per_weight * (1 - blocks_to_swap / num_layers)
    checkpoints = num_layers * tokens * dim * 2 bytes                    # gradient checkpointing keeps each block's input
    working     = tokens * (10 * dim + 3 * ffn_dim) * 2 bytes            # one block recomputed for backward
    total       = weights + checkpoints + working + 2 GiB                # CUDA context, LoRA, optimizer, buffers

The constants (10, 3, 2 GiB) are chosen so that the two settings lora-gym's local template
reports working on a 24 GB card with `--blocks_to_swap 20` (fp8 14B: 21 frames at 1280x720
and 45 frames at 960x544; alvdansen/lora-gym templates/local/train_local_t2v_lightning.py and
the dataset template templates/configs/wan22-dataset-config-local.toml, read in the copy
nikhilash6/lora-gym@e6170fd6) come out under 24 GiB. Attention is assumed memory-efficient (sdpa /
flash: linear in tokens). Reports that do not fit the model are listed in the docs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from prep.archs import ArchSpec, DitShape

GIB = 1024**3
OVERHEAD_GIB = 2.0
WORK_DIM_FACTOR = 10
WORK_FFN_FACTOR = 3
ACT_BYTES = 2  # bf16 / fp16 activations
RESOLUTION_LADDER = ((1280, 720), (960, 544), (832, 480), (640, 368), (512, 288), (384, 224))
"""Landscape sizes advice steps down through (Wan's 720p and 480p, then smaller; same areas for portrait)."""


@dataclass(frozen=True)
class VramEstimate:
    frames: int
    width: int
    height: int
    tokens: int
    weights_gib: float
    activations_gib: float
    total_gib: float

    def as_dict(self) -> dict[str, Any]:
        return {k: round(v, 1) if isinstance(v, float) else v for k, v in self.__dict__.items()}


def weight_bytes(train: dict[str, Any]) -> float:
    """Bytes per DiT weight on the GPU: fp8 with fp8_base, else the mixed precision's 2 bytes."""
    return 1.0 if train.get("fp8_base") else 2.0


def tokens(shape: DitShape, frames: int, width: int, height: int) -> int:
    st, sh, sw = shape.vae_stride
    pt, ph, pw = shape.patch
    lat_f = 1 + (max(frames, 1) - 1) // st
    return (lat_f // pt) * (height // (sh * ph)) * (width // (sw * pw))


def estimate(shape: DitShape, frames: int, width: int, height: int, *, blocks_to_swap: int = 0, bytes_per_weight: float = 1.0) -> VramEstimate:
    n = tokens(shape, frames, width, height)
    swap = min(max(blocks_to_swap, 0), shape.num_layers)
    weights = shape.params_b * 1e9 * bytes_per_weight * (1 - swap / shape.num_layers)
    ckpt = shape.num_layers * n * shape.dim * ACT_BYTES
    work = n * (WORK_DIM_FACTOR * shape.dim + WORK_FFN_FACTOR * shape.ffn_dim) * ACT_BYTES
    act = (ckpt + work) / GIB
    w = weights / GIB
    return VramEstimate(frames, width, height, n, w, act, w + act + OVERHEAD_GIB)


def preset_vram_gib(preset: str | None) -> float | None:
    """`24gb` -> 24.0 (the presets are named by the card they are for)."""
    m = re.fullmatch(r"(\d+)gb", str(preset or "").strip().lower())
    return float(m.group(1)) if m else None


def _fits(shape: DitShape, frames: int, w: int, h: int, swap: int, bpw: float, budget: float) -> bool:
    return estimate(shape, frames, w, h, blocks_to_swap=swap, bytes_per_weight=bpw).total_gib <= budget


def advice(spec: ArchSpec, train: dict[str, Any], frames: int, width: int, height: int, budget_gib: float) -> list[str]:
    """What would make `frames` x `width`x`height` fit `budget_gib` (empty when it fits)."""
    shape = spec.dit_shape
    if shape is None:
        return []
    swap = int(train.get("blocks_to_swap") or 0)
    bpw = weight_bytes(train)
    if _fits(shape, frames, width, height, swap, bpw, budget_gib):
        return []
    tips: list[str] = []
    limit = spec.swap_limit(shape.num_layers) or 0
    if swap < limit and _fits(shape, frames, width, height, limit, bpw, budget_gib):
        need = next(s for s in range(swap + 1, limit + 1) if _fits(shape, frames, width, height, s, bpw, budget_gib))
        tips.append(f"blocks_to_swap={need} (slower: blocks wait for the CPU)")
    if bpw > 1 and _fits(shape, frames, width, height, swap, 1.0, budget_gib):
        tips.append("fp8_base=true (with fp8_scaled for Wan 2.2)")
    f = frames
    while f > 1 and not _fits(shape, f, width, height, swap, bpw, budget_gib):
        f -= 4
    if f >= 5 and f != frames:
        tips.append(f"fewer frames: {f} (prep clips --frames {f}, or --set dataset.max_frames={f})")
    area = width * height
    for lw, lh in RESOLUTION_LADDER:
        if lw * lh >= area:
            continue
        w, h = (lw, lh) if width >= height else (lh, lw)
        if _fits(shape, frames, w, h, swap, bpw, budget_gib):
            tips.append(f"lower resolution: {w}x{h} (prep clips --resolution {w}x{h}, or --set dataset.resolution={w},{h})")
            break
    if not tips:
        tips.append("it does not fit even with every block swapped: use fewer frames and a lower resolution, or a bigger GPU")
    return tips
