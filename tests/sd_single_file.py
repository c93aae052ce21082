"""Save a (tiny) diffusers Stable Diffusion 1.x pipeline as ONE original-layout `.safetensors`
file, the way checkpoints come from Civitai (`model.diffusion_model.*`, `first_stage_model.*`,
`cond_stage_model.transformer.*`).

This is diffusers' own reverse converter, `scripts/convert_diffusers_to_original_stable_diffusion.py`
(huggingface/diffusers; that script is not shipped in the wheel), with its hard-coded SD 1.x
layout (4 blocks, 2 layers each) replaced by the layout read from the model's config, so a tiny
model with 2 blocks of 1 layer converts too. Tests check the result by converting it back with
diffusers' forward code and by loading it with `from_single_file`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _unet_map(cfg: Any) -> list[tuple[str, str]]:
    """(original prefix, diffusers prefix) pairs for a UNet2DConditionModel config."""
    n = len(cfg.block_out_channels)
    lpb = cfg.layers_per_block
    down_attn = ["CrossAttn" in t for t in cfg.down_block_types]
    up_attn = ["CrossAttn" in t for t in cfg.up_block_types]
    m: list[tuple[str, str]] = []
    for i in range(n):
        for j in range(lpb):
            m.append((f"input_blocks.{(lpb + 1) * i + j + 1}.0.", f"down_blocks.{i}.resnets.{j}."))
            if down_attn[i]:
                m.append((f"input_blocks.{(lpb + 1) * i + j + 1}.1.", f"down_blocks.{i}.attentions.{j}."))
        for j in range(lpb + 1):
            m.append((f"output_blocks.{(lpb + 1) * i + j}.0.", f"up_blocks.{i}.resnets.{j}."))
            if up_attn[i]:
                m.append((f"output_blocks.{(lpb + 1) * i + j}.1.", f"up_blocks.{i}.attentions.{j}."))
        if i < n - 1:
            m.append((f"input_blocks.{(lpb + 1) * (i + 1)}.0.op.", f"down_blocks.{i}.downsamplers.0.conv."))
            m.append((f"output_blocks.{(lpb + 1) * i + lpb}.{2 if up_attn[i] else 1}.", f"up_blocks.{i}.upsamplers.0."))
    m.append(("middle_block.1.", "mid_block.attentions.0."))
    for j in range(2):
        m.append((f"middle_block.{2 * j}.", f"mid_block.resnets.{j}."))
    return m


UNET_TOP = [
    ("time_embed.0.weight", "time_embedding.linear_1.weight"),
    ("time_embed.0.bias", "time_embedding.linear_1.bias"),
    ("time_embed.2.weight", "time_embedding.linear_2.weight"),
    ("time_embed.2.bias", "time_embedding.linear_2.bias"),
    ("input_blocks.0.0.weight", "conv_in.weight"),
    ("input_blocks.0.0.bias", "conv_in.bias"),
    ("out.0.weight", "conv_norm_out.weight"),
    ("out.0.bias", "conv_norm_out.bias"),
    ("out.2.weight", "conv_out.weight"),
    ("out.2.bias", "conv_out.bias"),
]
UNET_RESNET = [("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("out_layers.0", "norm2"), ("out_layers.3", "conv2"),
               ("emb_layers.1", "time_emb_proj"), ("skip_connection", "conv_shortcut")]


def convert_unet(sd: dict[str, Any], cfg: Any) -> dict[str, Any]:
    top = {hf: orig for orig, hf in UNET_TOP}
    layer = _unet_map(cfg)
    out = {}
    for k, v in sd.items():
        name = top.get(k, k)
        if "resnets" in k:
            for orig, hf in UNET_RESNET:
                name = name.replace(hf, orig)
        for orig, hf in layer:
            name = name.replace(hf, orig)
        out["model.diffusion_model." + name] = v
    return out


def _vae_map(cfg: Any) -> list[tuple[str, str]]:
    n = len(cfg.block_out_channels)
    lpb = cfg.layers_per_block
    m = [("nin_shortcut", "conv_shortcut"), ("norm_out", "conv_norm_out"), ("mid.attn_1.", "mid_block.attentions.0.")]
    for i in range(n):
        for j in range(lpb):
            m.append((f"encoder.down.{i}.block.{j}.", f"encoder.down_blocks.{i}.resnets.{j}."))
        if i < n - 1:
            m.append((f"down.{i}.downsample.", f"down_blocks.{i}.downsamplers.0."))
            m.append((f"up.{n - 1 - i}.upsample.", f"up_blocks.{i}.upsamplers.0."))
        for j in range(lpb + 1):
            m.append((f"decoder.up.{n - 1 - i}.block.{j}.", f"decoder.up_blocks.{i}.resnets.{j}."))
    for i in range(2):
        m.append((f"mid.block_{i + 1}.", f"mid_block.resnets.{i}."))
    return m


# diffusers >= 0.2x names the VAE attention to_q/to_k/to_v/to_out.0 (the script predates that)
VAE_ATTN = [("norm.", "group_norm."), ("q.", "to_q."), ("k.", "to_k."), ("v.", "to_v."), ("proj_out.", "to_out.0.")]


def convert_vae(sd: dict[str, Any], cfg: Any) -> dict[str, Any]:
    layer = _vae_map(cfg)
    out = {}
    for k, v in sd.items():
        name = k
        for orig, hf in layer:
            name = name.replace(hf, orig)
        if "attentions" in k:
            for orig, hf in VAE_ATTN:
                name = name.replace(hf, orig)
            if any(name.endswith(f"mid.attn_1.{w}.weight") for w in ("q", "k", "v", "proj_out")):
                v = v.reshape(*v.shape, 1, 1)  # the original VAE attention is 1x1 convs
        out["first_stage_model." + name] = v
    return out


def save_original_sd_checkpoint(pipe: Any, path: Path) -> Path:
    """Write `pipe` (an SD 1.x pipeline object) as one original-layout safetensors file."""
    from safetensors.torch import save_file

    sd: dict[str, Any] = {}
    sd.update(convert_unet(pipe.unet.state_dict(), pipe.unet.config))
    sd.update(convert_vae(pipe.vae.state_dict(), pipe.vae.config))
    # original files name the CLIP text model `cond_stage_model.transformer.text_model.*` (the
    # transformers 4 layout); transformers 5 drops the `text_model.` level from its state dict
    te = {k if k.startswith("text_model.") else "text_model." + k: v for k, v in pipe.text_encoder.state_dict().items()}
    sd.update({"cond_stage_model.transformer." + k: v for k, v in te.items()})
    save_file({k: v.contiguous().clone() for k, v in sd.items()}, str(path))
    return path
