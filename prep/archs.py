"""The architectures loraprep prepares data for and configures training of: one table.

Every fact that differs between architectures lives here once, and every package reads it:
`prep crop`/`prep check` (bucket family and steps), `caption lint` (text encoder and its token
budget), and `train_bridge` (trainer, scripts, model roles, option list, precision rules,
block-swap limit, presets). It sits in `prep` because `prep` is the package the other two
depend on. Sources: the real parsers at the pinned commits (train_bridge/options/data) and
../shared/reference/train_bridge.md; the block-swap limits are the trainers' own asserts
(sd-scripts `num_blocks - 2`, musubi-tuner Wan `num_blocks - 1`).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

SD_SCRIPTS = "sd-scripts"
MUSUBI = "musubi-tuner"
SD_SCRIPTS_COMMIT = "48d368fa557731ad0488c07304dfeba8c07910eb"
MUSUBI_COMMIT = "30c658c4f4b0bf05038b3346eff9670259b10fc7"
TRAINER_COMMITS = {SD_SCRIPTS: SD_SCRIPTS_COMMIT, MUSUBI: MUSUBI_COMMIT}


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
class DitShape:
    """A video DiT's size (musubi-tuner 30c658c4 `wan/configs/wan_t2v_14B.py`, `wan_t2v_1_3B.py`)."""

    params_b: float  # billions of parameters
    dim: int
    ffn_dim: int
    num_layers: int
    vae_stride: tuple[int, int, int] = (4, 8, 8)  # (frames, height, width)
    patch: tuple[int, int, int] = (1, 2, 2)


WAN_14B = DitShape(14.0, 5120, 13824, 40)
WAN_1_3B = DitShape(1.3, 1536, 8960, 30)


@dataclass(frozen=True)
class ArchSpec:
    name: str
    trainer: str  # SD_SCRIPTS | MUSUBI
    family: str  # "anima", "flux", "sdxl", "sd3", "wan21", "wan22"
    train_script: str  # relative to the trainer checkout root
    options_key: str  # file stem under train_bridge/options/data
    network_module: str
    bucket_steps: tuple[int, ...]  # legal bucket steps; the first is loraprep's default
    bucket_family: str  # "sd-scripts" (BucketManager) | "musubi" (BucketSelector)
    text_encoder: str  # "clip" | "t5" | "qwen3": whose token budget a caption must fit
    models: tuple[ModelArg, ...]
    ignored_keys: frozenset[str] = frozenset()
    """Options the parser accepts but this architecture's code path never reads."""
    te_cache_allows_caption_dropout: bool = False
    max_blocks_to_swap: int | None = None
    """For the largest model of the architecture; `blocks_kept_on_device` gives it for any depth."""
    blocks_kept_on_device: int = 2
    """The trainer asserts blocks_to_swap <= num_blocks - this."""
    bf16_only: bool = False
    """FLUX/SD3: fp16 mixed/save precision and full_fp16 break training."""
    fp8_ignored: bool = False
    """Anima: the parser accepts fp8_base but the trainer never applies it."""
    mixed_precision_from_dit: bool = False
    """Wan: musubi asserts --mixed_precision equals the DiT's dtype."""
    training_attn_modes_refused: frozenset[str] = frozenset()
    """attn_mode values the trainer accepts for inference only (no backward pass)."""
    split_attn_modes: frozenset[str] = frozenset()
    """attn_mode values the trainer needs split_attn for (Anima: xformers)."""
    bundled_text_encoders: tuple[tuple[str, str], ...] = ()
    """(model role, tensor-name regex): text encoders a checkpoint may carry instead of files
    (SD3: sd3_utils.load_clip_l/clip_g/t5xxl look for `text_encoders.<role>.`)."""
    sample_prompt_options: str = "--w {w} --h {h} --s 30 --l 7.0 --d 42"
    """Per-prompt options in sample_prompts.txt ({w}/{h}: the training resolution)."""
    sample_size_step: int = 1
    """Sample width/height are rounded down to a multiple of this."""
    default_resolution: int = 1024
    task: str | None = None  # musubi --task
    i2v: bool = False
    dual_expert: bool = False  # Wan 2.2: high- and low-noise experts
    timestep_boundary: int | None = None  # Wan 2.2 expert split (0..1000)
    video_fps: float | None = None
    """Frame rate the trainer trains video at (musubi VideoDataset.TARGET_FPS_WAN = 16.0); None: no video."""
    video_frame_step: int | None = None
    """Clips must have N*step+1 frames (musubi VideoDataset.vae_frame_stride = 4: Wan's VAE, 4N+1)."""
    extra_scripts: dict[str, str] = field(default_factory=dict)
    description: str = ""
    dit_shape: DitShape | None = None
    """The DiT's size, for the VRAM model (`train_bridge.vram`)."""

    def model(self, name: str) -> ModelArg:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(name)

    @property
    def bucket_step_divisor(self) -> int:
        """What the trainer's `verify_bucket_reso_steps` asks bucket_reso_steps to divide by."""
        return min(self.bucket_steps) if self.trainer == SD_SCRIPTS else self.bucket_steps[0]

    def swap_limit(self, num_blocks: int | None = None) -> int | None:
        """Largest legal blocks_to_swap for a DiT of `num_blocks` (default: the largest model)."""
        if num_blocks:
            return max(0, num_blocks - self.blocks_kept_on_device)
        return self.max_blocks_to_swap


# -- sd-scripts (48d368fa) ------------------------------------------------------------------
_ANIMA_IGNORED = frozenset(
    {
        "fp8_base", "fp8_base_unet", "v2", "v_parameterization", "clip_skip", "noise_offset",
        "noise_offset_random_strength", "adaptive_noise_scale", "multires_noise_iterations",
        "multires_noise_discount", "sample_sampler", "min_timestep", "max_timestep",
    }
)
_FLOW_IGNORED = frozenset({"v2", "v_parameterization", "clip_skip", "noise_offset", "multires_noise_iterations", "multires_noise_discount", "sample_sampler"})

ANIMA = ArchSpec(
    name="anima",
    trainer=SD_SCRIPTS,
    family="anima",
    train_script="anima_train_network.py",
    options_key="sd-scripts__anima_train_network",
    network_module="networks.lora_anima",
    bucket_steps=(64, 16, 32, 48),
    bucket_family="sd-scripts",
    text_encoder="qwen3",
    models=(
        ModelArg("dit", "pretrained_model_name_or_path", True, "Anima DiT .safetensors", (r"(^|\.)blocks\.\d+\.(self_attn|cross_attn|mlp)\.",)),
        ModelArg("qwen3", "qwen3", True, "Qwen3-0.6B text encoder (.safetensors or HF folder)", (r"(^|\.)layers\.\d+\.(self_attn|mlp)\.",), allow_dir=True),
        ModelArg("vae", "vae", True, "Qwen-Image VAE (.safetensors or .pth)", (r"^(encoder|decoder)\.",)),
        ModelArg("llm_adapter", "llm_adapter_path", False, "LLM adapter (optional; read from the DiT when it holds one)"),
    ),
    ignored_keys=_ANIMA_IGNORED,
    te_cache_allows_caption_dropout=True,
    max_blocks_to_swap=26,  # 28 blocks (reference train_bridge.md §1)
    fp8_ignored=True,
    # library/anima_train_utils.py --attn_mode help (48d368fa): "xformers requires --split_attn.
    # sageattn does not support training (inference only)."
    training_attn_modes_refused=frozenset({"sageattn"}),
    split_attn_modes=frozenset({"xformers"}),
    sample_prompt_options="--w {w} --h {h} --s 30 --l 4.0 --d 42",
    sample_size_step=16,
    description="Anima (2B DiT, Qwen3 text encoder) LoRA with anima_train_network.py",
)

FLUX = ArchSpec(
    name="flux",
    trainer=SD_SCRIPTS,
    family="flux",
    train_script="flux_train_network.py",
    options_key="sd-scripts__flux_train_network",
    network_module="networks.lora_flux",
    bucket_steps=(64, 32),
    bucket_family="sd-scripts",
    text_encoder="t5",
    models=(
        ModelArg("dit", "pretrained_model_name_or_path", True, "FLUX.1 transformer (flux1-dev.safetensors)", (r"(^|\.)double_blocks\.\d+\.",)),
        ModelArg("clip_l", "clip_l", True, "CLIP-L text encoder .safetensors", (r"text_model\.encoder\.layers\.\d+\.",)),
        ModelArg("t5xxl", "t5xxl", True, "T5-XXL text encoder .safetensors", (r"(^|\.)encoder\.block\.\d+\.",)),
        ModelArg("ae", "ae", True, "FLUX autoencoder (ae.safetensors)", (r"(^|\.)(encoder|decoder)\.",)),
    ),
    ignored_keys=_FLOW_IGNORED,
    max_blocks_to_swap=35,  # reference train_bridge.md (FLUX docs: <= 35)
    bf16_only=True,
    sample_prompt_options="--w {w} --h {h} --s 20 --g 3.5 --d 42",
    description="FLUX.1 [dev] LoRA with flux_train_network.py (bf16 only)",
)

SDXL = ArchSpec(
    name="sdxl",
    trainer=SD_SCRIPTS,
    family="sdxl",
    train_script="sdxl_train_network.py",
    options_key="sd-scripts__sdxl_train_network",
    network_module="networks.lora",
    bucket_steps=(64, 32),
    bucket_family="sd-scripts",
    text_encoder="clip",
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
    trainer=SD_SCRIPTS,
    family="sd3",
    train_script="sd3_train_network.py",
    options_key="sd-scripts__sd3_train_network",
    network_module="networks.lora_sd3",
    bucket_steps=(64, 32),
    bucket_family="sd-scripts",
    text_encoder="clip",
    models=(
        ModelArg("checkpoint", "pretrained_model_name_or_path", True, "SD3/3.5 checkpoint .safetensors", (r"(^|\.)joint_blocks\.\d+\.",)),
        ModelArg("clip_l", "clip_l", False, "CLIP-L (when the checkpoint has no text encoders)", (r"text_model\.encoder\.layers\.\d+\.",)),
        ModelArg("clip_g", "clip_g", False, "CLIP-G (when the checkpoint has no text encoders)", (r"text_model\.encoder\.layers\.\d+\.",)),
        ModelArg("t5xxl", "t5xxl", False, "T5-XXL (when the checkpoint has no text encoders)", (r"(^|\.)encoder\.block\.\d+\.",)),
        ModelArg("vae", "vae", False, "optional VAE", (r"(^|\.)(encoder|decoder)\.",)),
    ),
    ignored_keys=_FLOW_IGNORED,
    # sd3_models.MMDiT.enable_block_swap asserts blocks_to_swap <= num_blocks - 2 (48d368fa):
    # 36 for SD3.5 Large (38 joint blocks), 22 for SD3/3.5 Medium (24).
    max_blocks_to_swap=36,
    bf16_only=True,
    bundled_text_encoders=(("clip_l", r"^text_encoders\.clip_l\."), ("clip_g", r"^text_encoders\.clip_g\."), ("t5xxl", r"^text_encoders\.t5xxl\.")),
    description="SD3 / SD3.5 LoRA with sd3_train_network.py (bf16 only)",
)

# -- musubi-tuner (30c658c4) -----------------------------------------------------------------
_MUSUBI_SRC = "src/musubi_tuner"
_WAN_DIT = (r"(^|\.)blocks\.\d+\.(self_attn|cross_attn|ffn)\.",)
_WAN_VAE = ModelArg("vae", "vae", True, "Wan 2.1 VAE (wan_2.1_vae.safetensors or Wan2.1_VAE.pth)", (r"^(encoder|decoder)\.",), used_by=("cache_latents", "train"))
_WAN_T5 = ModelArg("t5", "t5", True, "umT5-XXL text encoder (models_t5_umt5-xxl-enc-bf16.pth)", used_by=("cache_text_encoder", "train"))


def _wan(name: str, family: str, task: str, *, i2v: bool, dual: bool, boundary: int | None, desc: str) -> ArchSpec:
    models: list[ModelArg] = []
    if dual:
        models.append(ModelArg("dit", "dit", True, "low-noise expert DiT .safetensors", _WAN_DIT))
        models.append(ModelArg("dit_high", "dit", True, "high-noise expert DiT .safetensors", _WAN_DIT, used_by=("train_high",)))
    else:
        models.append(ModelArg("dit", "dit", True, "Wan 2.1 DiT .safetensors", _WAN_DIT))
    models += [_WAN_VAE, _WAN_T5]
    if i2v and family == "wan21":
        models.append(ModelArg("clip", "clip", True, "open-clip XLM-RoBERTa CLIP (.pth), Wan 2.1 I2V only", used_by=("cache_latents", "train")))
    return ArchSpec(
        name=name,
        trainer=MUSUBI,
        family=family,
        train_script=f"{_MUSUBI_SRC}/wan_train_network.py",
        options_key="musubi-tuner__wan_train_network",
        network_module="networks.lora_wan",
        bucket_steps=(16,),
        bucket_family="musubi",
        text_encoder="t5",
        models=tuple(models),
        max_blocks_to_swap=39,  # 40 blocks (14B); 29 for the 30-block 1.3B
        blocks_kept_on_device=1,
        mixed_precision_from_dit=True,
        sample_prompt_options="--w {w} --h {h} --f 1 --s 20 --d 42",
        sample_size_step=16,
        task=task,
        i2v=i2v,
        dual_expert=dual,
        timestep_boundary=boundary,
        video_fps=16.0,
        video_frame_step=4,
        extra_scripts={"cache_latents": f"{_MUSUBI_SRC}/wan_cache_latents.py", "cache_text_encoder": f"{_MUSUBI_SRC}/wan_cache_text_encoder_outputs.py"},
        description=desc,
        dit_shape=WAN_14B,
    )


WAN = (
    _wan("wan21-t2v", "wan21", "t2v-14B", i2v=False, dual=False, boundary=None, desc="Wan 2.1 text-to-video 14B (1.3B detected from the DiT)"),
    _wan("wan21-i2v", "wan21", "i2v-14B", i2v=True, dual=False, boundary=None, desc="Wan 2.1 image-to-video 14B (needs CLIP)"),
    _wan("wan22-t2v", "wan22", "t2v-A14B", i2v=False, dual=True, boundary=875, desc="Wan 2.2 text-to-video A14B, two experts"),
    _wan("wan22-i2v", "wan22", "i2v-A14B", i2v=True, dual=True, boundary=900, desc="Wan 2.2 image-to-video A14B, two experts"),
)

REGISTRY: dict[str, ArchSpec] = {s.name: s for s in (ANIMA, FLUX, SDXL, SD3, *WAN)}
ARCH_NAMES: tuple[str, ...] = tuple(REGISTRY)
ALIASES: dict[str, str] = {"wan": "wan21-t2v", "wan21": "wan21-t2v", "wan22": "wan22-t2v"}
"""Short names that pick an architecture where only its data rules matter (crop, lint)."""


def get_arch(name: str) -> ArchSpec:
    """The spec for `name` (or an alias); an unknown name raises KeyError with the closest match."""
    key = str(name).strip().lower()
    key = ALIASES.get(key, key)
    try:
        return REGISTRY[key]
    except KeyError:
        close = difflib.get_close_matches(key, [*ARCH_NAMES, *ALIASES], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise KeyError(f"unknown architecture {name!r}{hint}; choose one of {', '.join(ARCH_NAMES)}") from None


# -- where the weights come from (train_bridge models get/list) ---------------------------------
@dataclass(frozen=True)
class WeightFile:
    """One file of the Hugging Face Hub that fills a model role of an architecture.

    Sources of every repo id, file name, revision, size and sha256: docs/models.md
    ("Training weights"). `revision` is a commit only where a public source names one for
    this file; else "main". `size`/`sha256` only where published for this exact revision.
    """

    role: str
    repo_id: str
    filename: str
    revision: str = "main"
    size: int | None = None
    sha256: str | None = None
    gated: bool = False
    """The repository asks for HF_TOKEN and an accepted licence (the Hub answers 401/403)."""
    by_default: bool = True
    """`models get ARCH` fetches it without --role (False: optional roles such as SDXL's VAE)."""
    variant: str = ""
    """"" is the default; others (`--variant schnell`) replace the default file of that role."""


_ANIMA_REPO, _ANIMA_REV = "circlestone-labs/Anima", "f973fc41ec7545364ac9776c2440285f43ff2a30"
_FLUX_TE_REPO, _FLUX_TE_REV = "comfyanonymous/flux_text_encoders", "6af2a98e3f615bdfa612fbd85da93d1ed5f69ef5"
_FLUX_CLIP_L = WeightFile("clip_l", _FLUX_TE_REPO, "clip_l.safetensors", _FLUX_TE_REV, 246_144_152, "660c6f5b1abae9dc498ac2d21e1347d2abdb0cf6c0c0c8576cd796491d9a6cdd")
_FLUX_T5 = WeightFile("t5xxl", _FLUX_TE_REPO, "t5xxl_fp16.safetensors", _FLUX_TE_REV, 9_787_841_024, "6e480b09fae049a72d2a8c5fbccb8d3e92febeb233bbe9dfe7256958a9167635")
_SD35 = "stabilityai/stable-diffusion-3.5-large"
_WAN21_REPO, _WAN22_REPO = "Comfy-Org/Wan_2.1_ComfyUI_repackaged", "Comfy-Org/Wan_2.2_ComfyUI_Repackaged"
_WAN_AI = "Wan-AI/Wan2.1-I2V-14B-720P"
_WAN_VAE_FILE = WeightFile("vae", _WAN21_REPO, "split_files/vae/wan_2.1_vae.safetensors", "ab076c7a07868990c4506a87f2f60020763a0114")
_WAN_T5_FILE = WeightFile("t5", _WAN_AI, "models_t5_umt5-xxl-enc-bf16.pth")
_WAN_DITS = "split_files/diffusion_models"

WEIGHTS: dict[str, tuple[WeightFile, ...]] = {
    "anima": (
        WeightFile("dit", _ANIMA_REPO, "split_files/diffusion_models/anima-base-v1.0.safetensors", _ANIMA_REV, 4_182_218_328, "bd43b7cffe1ed1153d9c41e7beb2f18cb1273eafbaa3af3edd6a173dc90a006e"),
        WeightFile("qwen3", _ANIMA_REPO, "split_files/text_encoders/qwen_3_06b_base.safetensors", _ANIMA_REV, 1_192_135_096, "cd2a512003e2f9f3cd3c32a9c3573f820bb28c940f73c57b1ddaa983d9223eba"),
        WeightFile("vae", _ANIMA_REPO, "split_files/vae/qwen_image_vae.safetensors", _ANIMA_REV, 253_806_246, "a70580f0213e67967ee9c95f05bb400e8fb08307e017a924bf3441223e023d1f"),
        WeightFile("dit", _ANIMA_REPO, "split_files/diffusion_models/anima-preview.safetensors", variant="preview"),
    ),
    "flux": (
        WeightFile("dit", "black-forest-labs/FLUX.1-dev", "flux1-dev.safetensors", gated=True),
        WeightFile("ae", "black-forest-labs/FLUX.1-dev", "ae.safetensors", gated=True),
        _FLUX_CLIP_L,
        _FLUX_T5,
        WeightFile("dit", "black-forest-labs/FLUX.1-schnell", "flux1-schnell.safetensors", variant="schnell"),
        WeightFile("ae", "black-forest-labs/FLUX.1-schnell", "ae.safetensors", variant="schnell"),
    ),
    "sdxl": (
        WeightFile("checkpoint", "stabilityai/stable-diffusion-xl-base-1.0", "sd_xl_base_1.0.safetensors"),
        WeightFile("vae", "stabilityai/sdxl-vae", "sdxl_vae.safetensors", by_default=False),
    ),
    "sd3": (
        WeightFile("checkpoint", _SD35, "sd3.5_large.safetensors", gated=True),
        WeightFile("clip_l", _SD35, "text_encoders/clip_l.safetensors", gated=True),
        WeightFile("clip_g", _SD35, "text_encoders/clip_g.safetensors", gated=True),
        WeightFile("t5xxl", _SD35, "text_encoders/t5xxl_fp16.safetensors", gated=True),
    ),
    "wan21-t2v": (WeightFile("dit", _WAN21_REPO, f"{_WAN_DITS}/wan2.1_t2v_14B_bf16.safetensors"), _WAN_VAE_FILE, _WAN_T5_FILE),
    "wan21-i2v": (
        WeightFile("dit", _WAN21_REPO, f"{_WAN_DITS}/wan2.1_i2v_480p_14B_bf16.safetensors"),
        _WAN_VAE_FILE,
        _WAN_T5_FILE,
        WeightFile("clip", _WAN_AI, "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"),
    ),
    "wan22-t2v": (
        WeightFile("dit", _WAN22_REPO, f"{_WAN_DITS}/wan2.2_t2v_low_noise_14B_fp16.safetensors"),
        WeightFile("dit_high", _WAN22_REPO, f"{_WAN_DITS}/wan2.2_t2v_high_noise_14B_fp16.safetensors"),
        _WAN_VAE_FILE,
        _WAN_T5_FILE,
    ),
    "wan22-i2v": (
        WeightFile("dit", _WAN22_REPO, f"{_WAN_DITS}/wan2.2_i2v_low_noise_14B_fp16.safetensors"),
        WeightFile("dit_high", _WAN22_REPO, f"{_WAN_DITS}/wan2.2_i2v_high_noise_14B_fp16.safetensors"),
        _WAN_VAE_FILE,
        _WAN_T5_FILE,
    ),
}
"""Per architecture: the Hub files `train_bridge models get` downloads and `config` fills roles from."""
