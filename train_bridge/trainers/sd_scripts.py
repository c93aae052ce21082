"""kohya-ss sd-scripts architectures: Anima, FLUX.1, SDXL, SD3 (pinned at v0.10.1, 48d368fa).

Facts come from the real parsers (train_bridge/options/data) and reference §1-§2: bucket
steps must divide by 16 (Anima) or 32 (others); Anima ignores fp8, noise offset and
min/max timestep; FLUX and SD3 must train in bf16.
"""

from __future__ import annotations

from train_bridge.trainers import ArchSpec, ModelArg

TRAINER = "sd-scripts"
COMMIT = "48d368fa557731ad0488c07304dfeba8c07910eb"

_ANIMA_IGNORED = frozenset(
    {
        "fp8_base",
        "fp8_base_unet",
        "v2",
        "v_parameterization",
        "clip_skip",
        "noise_offset",
        "noise_offset_random_strength",
        "adaptive_noise_scale",
        "multires_noise_iterations",
        "multires_noise_discount",
        "sample_sampler",
        "min_timestep",
        "max_timestep",
    }
)
_FLOW_IGNORED = frozenset({"v2", "v_parameterization", "clip_skip", "noise_offset", "multires_noise_iterations", "multires_noise_discount", "sample_sampler"})

ANIMA = ArchSpec(
    name="anima",
    trainer=TRAINER,
    family="anima",
    train_script="anima_train_network.py",
    options_key="sd-scripts__anima_train_network",
    network_module="networks.lora_anima",
    bucket_steps=(64, 16, 32, 48),
    models=(
        ModelArg("dit", "pretrained_model_name_or_path", True, "Anima DiT .safetensors", (r"(^|\.)blocks\.\d+\.(self_attn|cross_attn|mlp)\.",)),
        ModelArg("qwen3", "qwen3", True, "Qwen3-0.6B text encoder (.safetensors or HF folder)", (r"(^|\.)layers\.\d+\.(self_attn|mlp)\.",), allow_dir=True),
        ModelArg("vae", "vae", True, "Qwen-Image VAE (.safetensors or .pth)", (r"^(encoder|decoder)\.",)),
        ModelArg("llm_adapter", "llm_adapter_path", False, "LLM adapter (optional; read from the DiT when it holds one)"),
    ),
    ignored_keys=_ANIMA_IGNORED,
    te_cache_allows_caption_dropout=True,
    max_blocks_to_swap=26,
    description="Anima (2B DiT, Qwen3 text encoder) LoRA with anima_train_network.py",
)

FLUX = ArchSpec(
    name="flux",
    trainer=TRAINER,
    family="flux",
    train_script="flux_train_network.py",
    options_key="sd-scripts__flux_train_network",
    network_module="networks.lora_flux",
    bucket_steps=(64, 32),
    models=(
        ModelArg("dit", "pretrained_model_name_or_path", True, "FLUX.1 transformer (flux1-dev.safetensors)", (r"(^|\.)double_blocks\.\d+\.",)),
        ModelArg("clip_l", "clip_l", True, "CLIP-L text encoder .safetensors", (r"text_model\.encoder\.layers\.\d+\.",)),
        ModelArg("t5xxl", "t5xxl", True, "T5-XXL text encoder .safetensors", (r"(^|\.)encoder\.block\.\d+\.",)),
        ModelArg("ae", "ae", True, "FLUX autoencoder (ae.safetensors)", (r"(^|\.)(encoder|decoder)\.",)),
    ),
    ignored_keys=_FLOW_IGNORED,
    max_blocks_to_swap=35,
    description="FLUX.1 [dev] LoRA with flux_train_network.py (bf16 only)",
)

SDXL = ArchSpec(
    name="sdxl",
    trainer=TRAINER,
    family="sdxl",
    train_script="sdxl_train_network.py",
    options_key="sd-scripts__sdxl_train_network",
    network_module="networks.lora",
    bucket_steps=(64, 32),
    models=(
        ModelArg(
            "checkpoint",
            "pretrained_model_name_or_path",
            True,
            "SDXL checkpoint (.safetensors), Diffusers folder or HF id",
            (r"^model\.diffusion_model\.", r"^conditioner\.embedders\.", r"^(down|up|mid)_blocks?\."),
            allow_dir=True,
        ),
        ModelArg("vae", "vae", False, "optional replacement VAE", (r"(^|\.)(encoder|decoder)\.",), allow_dir=True),
    ),
    ignored_keys=frozenset({"v2", "v_parameterization", "clip_skip"}),
    description="SDXL LoRA with sdxl_train_network.py",
)

SD3 = ArchSpec(
    name="sd3",
    trainer=TRAINER,
    family="sd3",
    train_script="sd3_train_network.py",
    options_key="sd-scripts__sd3_train_network",
    network_module="networks.lora_sd3",
    bucket_steps=(64, 32),
    models=(
        ModelArg("checkpoint", "pretrained_model_name_or_path", True, "SD3/3.5 checkpoint .safetensors", (r"(^|\.)joint_blocks\.\d+\.",)),
        ModelArg("clip_l", "clip_l", False, "CLIP-L (when the checkpoint has no text encoders)", (r"text_model\.encoder\.layers\.\d+\.",)),
        ModelArg("clip_g", "clip_g", False, "CLIP-G (when the checkpoint has no text encoders)", (r"text_model\.encoder\.layers\.\d+\.",)),
        ModelArg("t5xxl", "t5xxl", False, "T5-XXL (when the checkpoint has no text encoders)", (r"(^|\.)encoder\.block\.\d+\.",)),
        ModelArg("vae", "vae", False, "optional VAE", (r"(^|\.)(encoder|decoder)\.",)),
    ),
    ignored_keys=_FLOW_IGNORED,
    max_blocks_to_swap=20,
    description="SD3 / SD3.5 LoRA with sd3_train_network.py (bf16 only)",
)

SPECS = (ANIMA, FLUX, SDXL, SD3)
