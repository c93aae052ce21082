"""kohya-ss musubi-tuner architectures: Wan 2.1 and Wan 2.2, T2V and I2V (pinned 30c658c4).

musubi runs in three steps (cache latents, cache text-encoder outputs, train). Wan 2.2 has a
high-noise and a low-noise expert; loraprep trains them as two runs split at the task's
boundary (875 for T2V, 900 for I2V) with `preserve_distribution_shape`, as the maintainer
recommends (musubi-tuner#397/#445). Wan 2.1 I2V also needs CLIP when caching.
"""

from __future__ import annotations

from train_bridge.trainers import ArchSpec, ModelArg

TRAINER = "musubi-tuner"
COMMIT = "30c658c4f4b0bf05038b3346eff9670259b10fc7"
SRC = "src/musubi_tuner"
CACHE_LATENTS = f"{SRC}/wan_cache_latents.py"
CACHE_TE = f"{SRC}/wan_cache_text_encoder_outputs.py"

_WAN_DIT = (r"(^|\.)blocks\.\d+\.(self_attn|cross_attn|ffn)\.",)
_VAE = ModelArg("vae", "vae", True, "Wan 2.1 VAE (wan_2.1_vae.safetensors or Wan2.1_VAE.pth)", (r"^(encoder|decoder)\.",), used_by=("cache_latents", "train"))
_T5 = ModelArg("t5", "t5", True, "umT5-XXL text encoder (models_t5_umt5-xxl-enc-bf16.pth)", used_by=("cache_text_encoder", "train"))


def _wan(name: str, family: str, task: str, *, i2v: bool, dual: bool, boundary: int | None, desc: str) -> ArchSpec:
    models: list[ModelArg] = []
    if dual:
        models.append(ModelArg("dit", "dit", True, "low-noise expert DiT .safetensors", _WAN_DIT))
        models.append(ModelArg("dit_high", "dit", True, "high-noise expert DiT .safetensors", _WAN_DIT, used_by=("train_high",)))
    else:
        models.append(ModelArg("dit", "dit", True, "Wan 2.1 DiT .safetensors", _WAN_DIT))
    models += [_VAE, _T5]
    if i2v and family == "wan21":
        models.append(
            ModelArg("clip", "clip", True, "open-clip XLM-RoBERTa CLIP (.pth), Wan 2.1 I2V only", used_by=("cache_latents", "train"))
        )
    return ArchSpec(
        name=name,
        trainer=TRAINER,
        family=family,
        train_script=f"{SRC}/wan_train_network.py",
        options_key="musubi-tuner__wan_train_network",
        network_module="networks.lora_wan",
        bucket_steps=(16,),
        models=tuple(models),
        max_blocks_to_swap=39,
        task=task,
        i2v=i2v,
        dual_expert=dual,
        timestep_boundary=boundary,
        extra_scripts={"cache_latents": CACHE_LATENTS, "cache_text_encoder": CACHE_TE},
        description=desc,
    )


SPECS = (
    _wan("wan21-t2v", "wan21", "t2v-14B", i2v=False, dual=False, boundary=None, desc="Wan 2.1 text-to-video 14B (1.3B detected from the DiT)"),
    _wan("wan21-i2v", "wan21", "i2v-14B", i2v=True, dual=False, boundary=None, desc="Wan 2.1 image-to-video 14B (needs CLIP)"),
    _wan("wan22-t2v", "wan22", "t2v-A14B", i2v=False, dual=True, boundary=875, desc="Wan 2.2 text-to-video A14B, two experts"),
    _wan("wan22-i2v", "wan22", "i2v-A14B", i2v=True, dual=True, boundary=900, desc="Wan 2.2 image-to-video A14B, two experts"),
)

# Cache-script option lists (validated like the train options).
CACHE_OPTIONS = {"cache_latents": "musubi-tuner__wan_cache_latents", "cache_text_encoder": "musubi-tuner__wan_cache_text_encoder_outputs"}
