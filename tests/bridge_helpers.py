"""Builders for train_bridge tests: a laid-out dataset and header-only model files."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from PIL import Image

from prep.layout import LayoutOptions, layout_dataset

# Mixed aspect ratios (portrait, landscape, square, extreme, small) so buckets differ.
SIZES = [(1024, 1024), (832, 1216), (1216, 832), (900, 1400), (2000, 1000), (640, 480), (768, 1344), (1536, 640), (700, 700), (1100, 1650), (1650, 1100)]


SD3_TEXT_ENCODER_TENSORS = [
    "text_encoders.clip_l.transformer.text_model.embeddings.position_embedding.weight",
    "text_encoders.clip_g.transformer.text_model.embeddings.position_embedding.weight",
    "text_encoders.t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.k.weight",
]


def write_safetensors(path: Path, tensors: dict[str, list[int]], dtype: str = "BF16") -> Path:
    """A valid safetensors file whose tensors are zeros (tiny shapes)."""
    header: dict[str, dict] = {}
    off = 0
    width = {"BF16": 2, "F16": 2, "F32": 4, "F8_E4M3": 1}[dtype]
    for k, shape in tensors.items():
        n = width
        for d in shape:
            n *= d
        header[k] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + n]}
        off += n
    blob = json.dumps(header).encode()
    blob += b" " * ((8 - len(blob) % 8) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(blob)))
        fh.write(blob)
        fh.write(b"\0" * off)
    return path


def write_pth(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"PK\x03\x04" + b"\0" * 60)
    return path


def make_models(root: Path) -> dict[str, dict[str, str]]:
    """Header-only stand-ins for every architecture's model files (models dict per arch)."""
    m = root
    sd = lambda name, keys, dt="BF16": str(write_safetensors(m / name, {k: [2, 2] for k in keys}, dt))  # noqa: E731
    vae = sd("vae.safetensors", ["encoder.conv1.weight", "decoder.conv1.weight"])
    wan_blocks = [f"blocks.{i}.self_attn.q.weight" for i in range(40)] + ["patch_embedding.weight"]
    return {
        "anima": {
            "dit": sd("anima.safetensors", ["net.blocks.0.self_attn.q_proj.weight", "net.blocks.0.mlp.layer1.weight"]),
            "qwen3": sd("qwen3.safetensors", ["model.layers.0.self_attn.q_proj.weight"]),
            "vae": sd("qwen_image_vae.safetensors", ["encoder.conv1.weight", "decoder.conv1.weight"]),
        },
        "flux": {
            "dit": sd("flux1-dev.safetensors", ["double_blocks.0.img_attn.qkv.weight"]),
            "clip_l": sd("clip_l.safetensors", ["text_model.encoder.layers.0.mlp.fc1.weight"]),
            "t5xxl": sd("t5xxl.safetensors", ["encoder.block.0.layer.0.SelfAttention.q.weight"]),
            "ae": sd("ae.safetensors", ["decoder.conv_in.weight", "encoder.conv_in.weight"]),
        },
        "sdxl": {"checkpoint": sd("sdxl.safetensors", ["model.diffusion_model.input_blocks.0.0.weight", "conditioner.embedders.0.transformer.text_model.embeddings.position_ids"])},
        # SD3.5 with its text encoders inside (sd3_utils reads text_encoders.<name>.* from it)
        "sd3": {"checkpoint": sd("sd3.5_medium.safetensors", ["model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight", *SD3_TEXT_ENCODER_TENSORS])},
        "wan21-t2v": {"dit": sd("wan2.1_t2v_14B_bf16.safetensors", wan_blocks), "vae": vae, "t5": str(write_pth(m / "models_t5_umt5-xxl-enc-bf16.pth"))},
        "wan21-i2v": {
            "dit": sd("wan2.1_i2v_14B_bf16.safetensors", wan_blocks),
            "vae": vae,
            "t5": str(write_pth(m / "models_t5_umt5-xxl-enc-bf16.pth")),
            "clip": str(write_pth(m / "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth")),
        },
        "wan22-t2v": {
            "dit": sd("wan2.2_t2v_low_noise_14B_fp16.safetensors", wan_blocks, "F16"),
            "dit_high": sd("wan2.2_t2v_high_noise_14B_fp16.safetensors", wan_blocks, "F16"),
            "vae": vae,
            "t5": str(write_pth(m / "models_t5_umt5-xxl-enc-bf16.pth")),
        },
        "wan22-i2v": {
            "dit": sd("wan2.2_i2v_low_noise_14B_fp16.safetensors", wan_blocks, "F16"),
            "dit_high": sd("wan2.2_i2v_high_noise_14B_fp16.safetensors", wan_blocks, "F16"),
            "vae": vae,
            "t5": str(write_pth(m / "models_t5_umt5-xxl-enc-bf16.pth")),
        },
    }


def make_source(root: Path, sizes: list[tuple[int, int]] = SIZES, *, n_reg: int = 0, caption: str = "a woman, red hair") -> tuple[Path, Path | None]:
    src = root / "src"
    src.mkdir(parents=True, exist_ok=True)
    for i, (w, h) in enumerate(sizes):
        Image.new("RGB", (w, h), (i * 20 % 255, 90, 40)).save(src / f"img{i:02d}.png")
        (src / f"img{i:02d}.txt").write_text(caption, encoding="utf-8")
    reg = None
    if n_reg:
        reg = root / "regs"
        reg.mkdir(parents=True, exist_ok=True)
        for i in range(n_reg):
            w, h = sizes[(i * 3) % len(sizes)]
            Image.new("RGB", (w, h), (10, 10, 10)).save(reg / f"r{i:02d}.jpg")
    return src, reg


def make_dataset(root: Path, *, repeats: int = 3, n_reg: int = 5, sizes: list[tuple[int, int]] = SIZES, trigger: str = "sage_character") -> Path:
    """A `prep layout` dataset: mixed aspect ratios, optional regularisation images."""
    src, reg = make_source(root, sizes, n_reg=n_reg)
    out = root / "dataset"
    layout_dataset(src, out, LayoutOptions(trigger=trigger, repeats=repeats, class_token="woman" if reg else None, reg_dir=reg, reg_repeats=1))
    return out
