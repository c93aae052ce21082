"""Write a training run: `train.toml`, `dataset.toml`, `sample_prompts.txt`, `run.json`.

The files are right the first time because every choice that sd-scripts / musubi-tuner
would silently get wrong is made explicit (reference §8): `num_repeats` and
`caption_extension = ".txt"` in the dataset TOML, numbers typed as the parser expects,
`resolution` only in the dataset TOML (as an int or [W, H]), text-encoder caching only with
`network_train_unet_only`, FLUX/SD3 in bf16, Wan's mixed precision equal to the DiT dtype,
`save_state` on for resume, and every training key checked against the real option list.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from prep.buckets import BucketSpec
from prep.fsutil import atomic_write_text
from train_bridge import presets as _presets
from train_bridge.options import OptionList, load_option_list
from train_bridge.safetensors_header import MIXED_PRECISION_FOR_DTYPE, HeaderError, read_header
from train_bridge.subsets import DatasetInfo, read_dataset
from train_bridge.trainers import ArchSpec, get_arch
from train_bridge.validate import Issue, OptionError, coerce, flatten_like_trainer, parse_set, validate_flat

RUN_FILE = "run.json"
TRAIN_TOML = "train.toml"
DATASET_TOML = "dataset.toml"
SAMPLE_PROMPTS = "sample_prompts.txt"


class ConfigError(ValueError):
    """The asked-for run cannot be configured; `issues` say why and what to change."""

    def __init__(self, issues: list[Issue] | list[str]):
        self.issues = [i if isinstance(i, Issue) else Issue("error", "", i) for i in issues]
        super().__init__("; ".join(str(i) for i in self.issues))


# -- dataset TOML keys a user may set (`--set dataset.KEY=VALUE`) ----------------------------
# Types follow the trainers' voluptuous schemas (strict isinstance checks, reference §3.2/§6.3).
SD_DATASET_GENERAL = {
    "resolution": "resolution",
    "batch_size": "int",
    "enable_bucket": "bool",
    "bucket_no_upscale": "bool",
    "bucket_reso_steps": "int",
    "min_bucket_reso": "int",
    "max_bucket_reso": "int",
    "validation_split": "float",
    "network_multiplier": "float",
}
SD_DATASET_SUBSET = {
    "caption_dropout_rate": "float",
    "caption_dropout_every_n_epochs": "int",
    "caption_tag_dropout_rate": "float",
    "shuffle_caption": "bool",
    "keep_tokens": "int",
    "keep_tokens_separator": "str",
    "caption_separator": "str",
    "secondary_separator": "str",
    "caption_prefix": "str",
    "caption_suffix": "str",
    "flip_aug": "bool",
    "color_aug": "bool",
    "random_crop": "bool",
    "alpha_mask": "bool",
    "token_warmup_step": "float",
    "token_warmup_min": "int",
    "resize_interpolation": "str",
    "num_repeats": "int",
}
MUSUBI_DATASET_GENERAL = {"resolution": "resolution", "batch_size": "int", "enable_bucket": "bool", "bucket_no_upscale": "bool"}
MUSUBI_DATASET_ITEM = {
    "num_repeats": "int",
    "target_frames": "frames",
    "frame_extraction": "str",
    "frame_stride": "int",
    "frame_sample": "int",
    "max_frames": "int",
    "source_fps": "float",
}
FRAME_EXTRACTION = ("head", "chunk", "slide", "uniform", "full")
# sd-scripts training options that are really dataset settings: routed into the dataset TOML.
SD_ROUTED = {"resolution": "resolution", "train_batch_size": "batch_size", **{k: k for k in SD_DATASET_GENERAL if k != "batch_size"}}
SD_ROUTED.update({k: k for k in SD_DATASET_SUBSET if k in ("caption_dropout_rate", "shuffle_caption", "keep_tokens", "flip_aug", "color_aug", "random_crop", "caption_tag_dropout_rate", "token_warmup_step", "token_warmup_min", "caption_dropout_every_n_epochs", "caption_prefix", "caption_suffix", "keep_tokens_separator", "caption_separator", "secondary_separator", "alpha_mask", "resize_interpolation")})
FORBIDDEN_TRAIN_KEYS = {
    "caption_extension": "loraprep always uses .txt captions (set in the dataset TOML)",
    "dataset_config": "written by loraprep",
    "config_file": "written by loraprep",
    "output_config": "would make the trainer write a config and exit",
    "train_data_dir": "ignored once --dataset_config is used",
    "reg_data_dir": "ignored once --dataset_config is used",
    "in_json": "ignored once --dataset_config is used",
    "dataset_repeats": "repeats are written per subset as num_repeats",
}

# Train-TOML section per key (sections are cosmetic: the trainer flattens one level).
_SECTIONS = [
    ("model", r"^(pretrained_model_name_or_path|qwen3|vae|llm_adapter_path|t5_tokenizer_path|clip_l|clip_g|t5xxl|ae|dit|dit_high_noise|t5|clip|task|model_type)$"),
    ("dataset", r"^dataset_config$"),
    ("network", r"^network_|^dim_from_weights$|^base_weights"),
    ("optimizer", r"^(optimizer_|learning_rate|lr_|max_grad_norm|unet_lr|text_encoder_lr)"),
    ("output", r"^(output_|save_|logging_dir|log_|training_comment|metadata_)"),
    ("sample", r"^sample_"),
]


def _section(key: str) -> str:
    for name, rx in _SECTIONS:
        if re.search(rx, key):
            return name
    return "training"


@dataclass
class RunConfig:
    """What `write_run_config` wrote (or would write with `dry_run`)."""

    arch: str
    run_dir: Path
    files: dict[str, Path]
    run: dict[str, Any]
    train: dict[str, dict[str, Any]]
    """Flat training options per command config (`train`, or `train_high`/`train_low`)."""
    dataset: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


# -- value helpers ----------------------------------------------------------------------------


def _parse_resolution(raw: Any) -> tuple[int, int]:
    if isinstance(raw, (list, tuple)):
        vals = [int(v) for v in raw]
    elif isinstance(raw, int):
        vals = [raw]
    else:
        vals = [int(v) for v in re.split(r"[,x\s]+", str(raw).strip()) if v]
    if len(vals) == 1:
        vals = vals * 2
    if len(vals) != 2 or min(vals) <= 0:
        raise ValueError(f"resolution must be N or W,H, got {raw!r}")
    return vals[0], vals[1]


def _dataset_value(kind: str, raw: Any, key: str) -> Any:
    if kind == "resolution":
        return _parse_resolution(raw)
    if kind == "frames":
        items = raw if isinstance(raw, list) else [v for v in re.split(r"[,\s]+", str(raw).strip("[] ")) if v]
        frames = [int(v) for v in items]
        bad = [f for f in frames if f < 1 or (f - 1) % 4]
        if bad:
            raise ValueError(f"frame counts must be N*4+1 (1, 5, 9, ... 81), got {bad}")
        return frames
    if kind == "bool":
        return coerce(_FakeOpt("flag"), raw)
    if kind == "int":
        return coerce(_FakeOpt("int"), raw)
    if kind == "float":
        return coerce(_FakeOpt("float"), raw)
    return str(raw)


@dataclass(frozen=True)
class _FakeOpt:
    type: str
    name: str = ""
    nargs: Any = None
    choices: Any = None

    @property
    def is_list(self) -> bool:
        return False


def _typed(flat: dict[str, Any], options: OptionList) -> dict[str, Any]:
    """Re-type values the parser types as float/int (1 -> 1.0 for float options); drop None."""
    out = {}
    for k, v in flat.items():
        if v is None:
            continue
        opt = options.get(k)
        if opt is not None and opt.type == "float" and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        out[k] = v
    return out


def _sectioned(flat: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for k, v in flat.items():
        out.setdefault(_section(k), {})[k] = v
    order = ["model", "dataset", "network", "optimizer", "training", "output", "sample"]
    return {s: out[s] for s in order if s in out}


def _safe_name(text: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")
    return s or "lora"


# -- overrides ----------------------------------------------------------------------------------


def split_overrides(spec: ArchSpec, items: list[str] | dict[str, Any] | None, options: OptionList) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """`--set` items -> (train options, dataset [general] keys, per-subset keys), all typed.

    `dataset.KEY=V` addresses the dataset TOML; for sd-scripts a few training options that
    are really dataset settings (`resolution`, `train_batch_size`, `flip_aug`, ...) are
    routed there too, because the dataset TOML is where sd-scripts reads them reliably.
    """
    if not items:
        return {}, {}, {}
    pairs: list[tuple[str, Any]]
    if isinstance(items, dict):
        pairs = list(items.items())
    else:
        pairs = []
        for it in items:
            k, sep, v = it.partition("=")
            if not sep:
                raise ConfigError([Issue("error", it, "expected key=value")])
            pairs.append((k.strip(), v))
    general_schema = MUSUBI_DATASET_GENERAL if spec.trainer == "musubi-tuner" else SD_DATASET_GENERAL
    item_schema = MUSUBI_DATASET_ITEM if spec.trainer == "musubi-tuner" else SD_DATASET_SUBSET
    train_items: list[str] = []
    train_typed: dict[str, Any] = {}
    general: dict[str, Any] = {}
    subset: dict[str, Any] = {}
    issues: list[Issue] = []
    for key, raw in pairs:
        if key.startswith("--"):
            key = key[2:].replace("-", "_")
        target = None
        if key.startswith("dataset."):
            target = key[len("dataset.") :]
        elif spec.trainer == "sd-scripts" and key in SD_ROUTED:
            target = SD_ROUTED[key]
        if target is not None:
            try:
                if target in general_schema:
                    general[target] = _dataset_value(general_schema[target], raw, target)
                elif target in item_schema:
                    if target == "frame_extraction" and str(raw) not in FRAME_EXTRACTION:
                        raise ValueError(f"must be one of {', '.join(FRAME_EXTRACTION)}")
                    subset[target] = _dataset_value(item_schema[target], raw, target)
                else:
                    import difflib

                    close = difflib.get_close_matches(target, [*general_schema, *item_schema], n=2)
                    hint = f" (did you mean {', '.join('dataset.' + c for c in close)}?)" if close else ""
                    raise ValueError(f"not a dataset TOML key loraprep can set{hint}")
            except ValueError as exc:
                issues.append(Issue("error", key, str(exc)))
            continue
        if key in FORBIDDEN_TRAIN_KEYS:
            issues.append(Issue("error", key, FORBIDDEN_TRAIN_KEYS[key]))
            continue
        if isinstance(items, dict) and not isinstance(raw, str):
            opt = options.get(key)
            if opt is None:
                train_items.append(f"{key}={raw}")  # reported as unknown below
            else:
                try:
                    train_typed[key] = coerce(opt, raw)
                except ValueError as exc:
                    issues.append(Issue("error", key, str(exc)))
        else:
            train_items.append(f"{key}={raw}")
    try:
        train_typed.update(parse_set(train_items, options))
    except OptionError as exc:
        issues.extend(exc.issues)
    for key in {i.partition("=")[0].strip() for i in train_items} | set(train_typed):
        if key in spec.ignored_keys:
            issues.append(Issue("error", key, f"{spec.name} accepts {key} but never uses it (reference §1.2); leave it out"))
    if issues:
        raise ConfigError(issues)
    return train_typed, general, subset


# -- model-derived settings -----------------------------------------------------------------------


def _wan_from_dit(spec: ArchSpec, dit: Path | None, train: dict[str, Any], notes: dict[str, Any]) -> None:
    """musubi asserts `--mixed_precision` equals the DiT dtype; derive it (and 1.3B vs 14B)."""
    if dit is None or not dit.is_file() or dit.suffix != ".safetensors":
        return
    try:
        h = read_header(dit)
    except (HeaderError, OSError):
        return
    dtype = h.main_dtype(r"blocks\.\d+\..*weight$")
    if dtype in MIXED_PRECISION_FOR_DTYPE and dtype != "F32":
        train["mixed_precision"] = MIXED_PRECISION_FOR_DTYPE[dtype]
        notes["mixed_precision"] = f"{train['mixed_precision']}: the DiT's weights are {dtype}"
    elif dtype and dtype.startswith("F8"):
        train["fp8_base"] = True
        train.pop("fp8_scaled", None)
        notes["fp8"] = f"DiT is {dtype}: fp8_base without fp8_scaled"
    n_blocks = h.count_indices(r"(?:^|\.)blocks\.(\d+)\.")
    if spec.family == "wan21" and not spec.i2v and 0 < n_blocks <= 30:
        train["task"] = "t2v-1.3B"
        train["network_dim"], train["network_alpha"] = 16, 16.0
        notes["task"] = f"t2v-1.3B: the DiT has {n_blocks} blocks (lora-gym 1.3B: dim 16/16)"
        if train.get("blocks_to_swap", 0) > 29:
            train["blocks_to_swap"] = 29


# -- constraints ----------------------------------------------------------------------------------


def _constraints(spec: ArchSpec, train: dict[str, Any], general: dict[str, Any], subset: dict[str, Any], explicit: set[str]) -> tuple[list[Issue], dict[str, str]]:
    """Resolve or reject combinations the trainer asserts on (reference §1.4, §1.6, §8)."""
    issues: list[Issue] = []
    notes: dict[str, str] = {}
    te_cache = bool(train.get("cache_text_encoder_outputs") or train.get("cache_text_encoder_outputs_to_disk"))
    if spec.trainer == "sd-scripts":
        if te_cache and train.get("network_train_unet_only") is False:
            if {"cache_text_encoder_outputs", "cache_text_encoder_outputs_to_disk"} & explicit:
                issues.append(Issue("error", "network_train_unet_only", "text-encoder output caching needs network_train_unet_only = true (the trainer asserts)"))
            else:
                train.pop("cache_text_encoder_outputs", None)
                train.pop("cache_text_encoder_outputs_to_disk", None)
                te_cache = False
                notes["cache_text_encoder_outputs"] = "off: the text encoder is trained (network_train_unet_only = false)"
        if te_cache:
            train["network_train_unet_only"] = True
            bad = [k for k in ("shuffle_caption", "caption_tag_dropout_rate", "token_warmup_step") if subset.get(k)]
            if subset.get("caption_dropout_rate") and not spec.te_cache_allows_caption_dropout:
                bad.append("caption_dropout_rate")
            for k in bad:
                issues.append(Issue("error", k, "incompatible with cache_text_encoder_outputs (set cache_text_encoder_outputs=false and network_train_unet_only=false to use it)"))
        if train.get("cache_latents") or train.get("cache_latents_to_disk"):
            for k in ("color_aug", "random_crop"):
                if subset.get(k):
                    issues.append(Issue("error", k, "incompatible with cache_latents"))
        if spec.family in ("flux", "sd3") and (train.get("mixed_precision") == "fp16" or train.get("save_precision") == "fp16" or train.get("full_fp16")):
            issues.append(Issue("error", "mixed_precision", f"{spec.name} trains to NaN / an empty LoRA in fp16 (sd-scripts#1707, #1407); use bf16"))
        steps = general.get("bucket_reso_steps")
        if steps is not None and steps % (16 if spec.family == "anima" else 32):
            issues.append(Issue("error", "bucket_reso_steps", f"must be divisible by {16 if spec.family == 'anima' else 32} for {spec.name}"))
        if spec.family == "anima" and train.get("attn_mode") == "xformers" and not train.get("split_attn"):
            train["split_attn"] = True
            notes["split_attn"] = "on: attn_mode=xformers needs it"
    swap = train.get("blocks_to_swap")
    if swap:
        if spec.max_blocks_to_swap is not None and swap > spec.max_blocks_to_swap:
            issues.append(Issue("error", "blocks_to_swap", f"at most {spec.max_blocks_to_swap} for {spec.name}"))
        for k in ("cpu_offload_checkpointing", "unsloth_offload_checkpointing", "offload_inactive_dit"):
            if train.get(k):
                if k in explicit and "blocks_to_swap" in explicit:
                    issues.append(Issue("error", k, "cannot be combined with blocks_to_swap"))
                else:
                    train.pop("blocks_to_swap")
                    notes["blocks_to_swap"] = f"off: {k} replaces it"
                    break
    if spec.trainer == "musubi-tuner":
        if spec.family == "wan21" and train.get("fp8_scaled"):
            issues.append(Issue("warning", "fp8_scaled", "reported to corrupt colours on Wan 2.1 (lora-gym)"))
        lo, hi = train.get("min_timestep"), train.get("max_timestep")
        if lo is not None and hi is not None and lo >= hi:
            issues.append(Issue("error", "min_timestep", "must be below max_timestep"))
    return issues, notes


# -- writers ----------------------------------------------------------------------------------------


def _sd_dataset_toml(ds: DatasetInfo, preset: _presets.Preset, general_o: dict[str, Any], subset_o: dict[str, Any], spec: ArchSpec) -> dict[str, Any]:
    res = general_o.pop("resolution", preset.resolution)
    batch = general_o.pop("batch_size", preset.batch_size)
    steps = general_o.get("bucket_reso_steps", spec.bucket_steps[0])
    default = BucketSpec.training_default(res, steps=steps)  # the range `prep crop` crops for
    general: dict[str, Any] = {
        "caption_extension": ".txt",
        "shuffle_caption": False,
        "keep_tokens": 0,
        "enable_bucket": True,
        "bucket_no_upscale": False,
        "bucket_reso_steps": steps,
        "min_bucket_reso": default.min_reso,
        "max_bucket_reso": default.max_reso,
    }
    for k, v in general_o.items():
        general[k] = v
    if "shuffle_caption" in subset_o:
        general["shuffle_caption"] = subset_o.pop("shuffle_caption")
    if "keep_tokens" in subset_o:
        general["keep_tokens"] = subset_o.pop("keep_tokens")
    subsets = []
    for s in ds.subsets:
        entry: dict[str, Any] = {"image_dir": str(s.image_dir), "num_repeats": s.num_repeats}
        if s.class_tokens:
            entry["class_tokens"] = s.class_tokens
        if s.is_reg:
            entry["is_reg"] = True
        else:
            entry.update(preset.subset)
            entry.update(subset_o)
            if "num_repeats" in subset_o:
                entry["num_repeats"] = subset_o["num_repeats"]
        subsets.append(entry)
    dataset = {"resolution": res[0] if res[0] == res[1] else [res[0], res[1]], "batch_size": batch, "subsets": subsets}
    return {"general": general, "datasets": [dataset]}


def _musubi_dataset_toml(ds: DatasetInfo, preset: _presets.Preset, general_o: dict[str, Any], item_o: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    res = general_o.pop("resolution", preset.resolution)
    general: dict[str, Any] = {
        "resolution": [res[0], res[1]],
        "caption_extension": ".txt",
        "batch_size": general_o.pop("batch_size", preset.batch_size),
        "enable_bucket": True,
        "bucket_no_upscale": False,
    }
    general.update(general_o)
    datasets = []
    for i, s in enumerate(ds.train_subsets):
        cache = run_dir / "cache" / f"{i:02d}_{_safe_name(s.image_dir.name)}"
        if s.n_videos and not s.n_images:
            entry: dict[str, Any] = {"video_directory": str(s.image_dir), "cache_directory": str(cache), "num_repeats": s.num_repeats}
            entry["target_frames"] = item_o.get("target_frames", [1, 25, 45])
            entry["frame_extraction"] = item_o.get("frame_extraction", "head")
            for k in ("frame_stride", "frame_sample", "max_frames", "source_fps"):
                if k in item_o:
                    entry[k] = item_o[k]
        else:
            entry = {"image_directory": str(s.image_dir), "cache_directory": str(cache), "num_repeats": item_o.get("num_repeats", s.num_repeats)}
        datasets.append(entry)
    return {"general": general, "datasets": datasets}


def _sample_prompts(spec: ArchSpec, trigger: str, class_token: str | None, res: tuple[int, int]) -> str:
    subject = f"{trigger}, {class_token}" if class_token else trigger
    w, h = res
    if spec.trainer == "musubi-tuner":
        opts = f"--w {w - w % 16} --h {h - h % 16} --f 1 --s 20 --d 42"
    elif spec.family == "flux":
        opts = f"--w {w} --h {h} --s 20 --g 3.5 --d 42"
    elif spec.family == "anima":
        opts = f"--w {w - w % 16} --h {h - h % 16} --s 30 --l 4.0 --d 42"
    else:
        opts = f"--w {w} --h {h} --s 30 --l 7.0 --d 42"
    lines = [
        "# loraprep sample prompts: one per line, options after ' --' (see sd-scripts docs/train_network)",
        f"{subject}, portrait, looking at viewer, simple background {opts}",
        f"{subject}, full body, standing outdoors, daylight {opts}",
    ]
    return "\n".join(lines) + "\n"


def _toml_text(doc: dict[str, Any], header: str) -> str:
    def drop_none(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: drop_none(v) for k, v in x.items() if v is not None}
        if isinstance(x, list):
            return [drop_none(v) for v in x if v is not None]
        return x

    return header + tomli_w.dumps(drop_none(doc))


def _resolve_models(spec: ArchSpec, models: dict[str, Any]) -> tuple[dict[str, str], list[Issue]]:
    issues: list[Issue] = []
    out: dict[str, str] = {}
    known = {m.name for m in spec.models}
    for name in models:
        if models[name] is not None and name not in known:
            issues.append(Issue("error", name, f"{spec.name} takes no {name!r} model (it takes {', '.join(sorted(known))})"))
    for m in spec.models:
        val = models.get(m.name)
        if val is None:
            if m.required:
                issues.append(Issue("error", m.name, f"missing: {m.help} (--{m.name.replace('_', '-')})"))
            continue
        p = Path(val).expanduser()
        hf_id = m.allow_dir and not p.exists() and re.fullmatch(r"[\w.-]+/[\w.-]+", str(val)) is not None
        out[m.name] = str(val) if hf_id else str(p.resolve())
    return out, issues


def write_run_config(
    arch: str,
    dataset_dir: Path | str,
    run_dir: Path | str,
    *,
    models: dict[str, Any],
    preset: str | int = _presets.DEFAULT_PRESET,
    overrides: list[str] | dict[str, Any] | None = None,
    trigger: str | None = None,
    output_name: str | None = None,
    repeats: int | None = None,
    dry_run: bool = False,
    now: _dt.datetime | None = None,
) -> RunConfig:
    """Build and (unless `dry_run`) write the run files; raises ConfigError on any problem."""
    spec = get_arch(arch)
    preset_name = _presets.normalize_preset(preset)
    pr = _presets.get_preset(spec, preset_name)
    options = load_option_list(spec.options_key)
    run_dir = Path(run_dir).resolve()
    ds = read_dataset(dataset_dir, repeats=repeats)
    issues: list[Issue] = []
    if not any(s.n_images or s.n_videos for s in ds.train_subsets):
        issues.append(Issue("error", "dataset", f"{ds.root}: no training images found"))
    trig = trigger or ds.trigger
    if not trig:
        issues.append(Issue("error", "trigger", "unknown: pass --trigger (or lay the dataset out with `prep layout --trigger`)"))
    model_paths, miss = _resolve_models(spec, models)
    issues += miss
    try:
        train_o, general_o, subset_o = split_overrides(spec, overrides, options)
    except ConfigError as exc:
        issues += exc.issues
        train_o, general_o, subset_o = {}, {}, {}
    if issues:
        raise ConfigError(issues)
    warnings: list[str] = []
    if spec.trainer == "musubi-tuner" and ds.reg_subsets:
        warnings.append("musubi-tuner has no regularisation subsets; reg/ is left out of the Wan dataset")

    derived: dict[str, Any] = {"preset_source": pr.source}
    name = output_name or _safe_name(trig or "lora")
    out_dir = run_dir / "output"
    log_dir = run_dir / "logs"
    ds_path = run_dir / DATASET_TOML
    prompts_path = run_dir / SAMPLE_PROMPTS

    base = dict(pr.train)
    for m in spec.models:  # the high-noise DiT goes only into train_high.toml
        if m.name in model_paths and m.name != "dit_high":
            base[m.key] = model_paths[m.name]
    base.update({"dataset_config": str(ds_path), "output_dir": str(out_dir), "output_name": name, "logging_dir": str(log_dir), "save_state": True})
    if spec.trainer == "sd-scripts":
        base.update({"sample_prompts": str(prompts_path), "sample_every_n_epochs": base.get("save_every_n_epochs", 1)})
    if spec.trainer == "musubi-tuner":
        _wan_from_dit(spec, Path(model_paths["dit"]) if "dit" in model_paths else None, base, derived)
    base.update(train_o)
    explicit = set(train_o)
    cissues, cnotes = _constraints(spec, base, general_o, {**pr.subset, **subset_o}, explicit)
    derived.update(cnotes)
    errors = [i for i in cissues if i.level == "error"]
    warnings += [str(i) for i in cissues if i.level == "warning"]
    if errors:
        raise ConfigError(errors)
    if base.get("save_state") is not True:
        warnings.append("save_state is off: an interrupted run cannot resume")

    # Per-command training configs.
    configs: dict[str, dict[str, Any]] = {}
    if spec.dual_expert:
        for expert in ("high", "low"):
            cfg = dict(base)
            cfg.update({k: v for k, v in pr.experts[expert].items() if k not in explicit})
            cfg["output_name"] = f"{name}_{expert}"
            if expert == "high":
                cfg["dit"] = model_paths["dit_high"]
            configs[f"train_{expert}"] = cfg
        derived["experts"] = {
            e: {"dit": configs[f"train_{e}"]["dit"], "timesteps": [configs[f"train_{e}"].get("min_timestep"), configs[f"train_{e}"].get("max_timestep")], "output_name": configs[f"train_{e}"]["output_name"]}
            for e in ("high", "low")
        }
    else:
        configs["train"] = base

    for cname in configs:
        configs[cname] = _typed(configs[cname], options)
        problems = [i for i in validate_flat(configs[cname], options, ignored=spec.ignored_keys) if i.level == "error"]
        if problems:
            raise ConfigError(problems)

    if spec.trainer == "musubi-tuner":
        dataset_doc = _musubi_dataset_toml(ds, pr, dict(general_o), dict(subset_o), run_dir)
        res = tuple(dataset_doc["general"]["resolution"])
    else:
        dataset_doc = _sd_dataset_toml(ds, pr, dict(general_o), dict(subset_o), spec)
        r = dataset_doc["datasets"][0]["resolution"]
        res = (r, r) if isinstance(r, int) else tuple(r)
        g = dataset_doc["general"]
        try:
            BucketSpec(resolution=res, min_reso=g["min_bucket_reso"], max_reso=g["max_bucket_reso"], steps=g["bucket_reso_steps"]).validate()
        except ValueError as exc:
            raise ConfigError([Issue("error", "dataset.resolution", str(exc))]) from None

    files = {"dataset": ds_path, "sample_prompts": prompts_path, "run": run_dir / RUN_FILE}
    train_files = {c: run_dir / (TRAIN_TOML if c == "train" else f"train_{c.split('_', 1)[1]}.toml") for c in configs}
    files.update({f"train:{c}": p for c, p in train_files.items()})

    mp = configs[next(iter(configs))].get("mixed_precision", "no")
    acc_args = ["--num_cpu_threads_per_process", "1", "--mixed_precision", mp]
    commands: list[dict[str, Any]] = []
    if spec.trainer == "musubi-tuner":
        lat = ["--dataset_config", str(ds_path), "--vae", model_paths["vae"]]
        if base.get("vae_cache_cpu"):
            lat.append("--vae_cache_cpu")
        if spec.i2v:
            lat += ["--clip", model_paths["clip"]] if "clip" in model_paths else ["--i2v"]
        te = ["--dataset_config", str(ds_path), "--t5", model_paths["t5"], "--batch_size", "16"]
        if preset_name in ("8gb", "12gb", "16gb"):
            te.append("--fp8_t5")
        commands.append({"name": "cache_latents", "script": spec.extra_scripts["cache_latents"], "args": lat, "accelerate": False, "accelerate_args": []})
        commands.append({"name": "cache_text_encoder", "script": spec.extra_scripts["cache_text_encoder"], "args": te, "accelerate": False, "accelerate_args": []})
    for c, p in train_files.items():
        args = ["--config_file", str(p), "--dataset_config", str(ds_path)]
        commands.append({"name": c, "script": spec.train_script, "args": args, "accelerate": True, "accelerate_args": list(acc_args)})

    first = configs[next(iter(configs))]
    asked = {
        "arch": spec.name,
        "dataset": str(ds.root),
        "preset": preset_name,
        "models": {k: str(v) for k, v in models.items() if v is not None},
        "overrides": overrides if isinstance(overrides, list) else {k: v for k, v in (overrides or {}).items()},
        "trigger": trigger,
        "output_name": output_name,
        "repeats": repeats,
    }
    derived.update(
        {
            "resolution": list(res),
            "batch_size": dataset_doc["general"].get("batch_size") if spec.trainer == "musubi-tuner" else dataset_doc["datasets"][0]["batch_size"],
            "subsets": [{"image_dir": str(s.image_dir), "num_repeats": s.num_repeats, "is_reg": s.is_reg, "images": s.n_images, "videos": s.n_videos, "class_tokens": s.class_tokens} for s in ds.subsets],
            "trainer_commit": options.commit,
            "option_list": spec.options_key,
        }
    )
    run: dict[str, Any] = {
        "version": 1,
        "trainer": spec.trainer,
        "arch": spec.name,
        "preset": preset_name,
        "created": (now or _dt.datetime.now(_dt.timezone.utc)).isoformat(timespec="seconds"),
        "dataset": str(ds.root),
        "trigger": trig,
        "commands": commands,
        "output_dir": str(out_dir),
        "output_name": name,
        "logging_dir": str(log_dir),
        "save_state": True,
        "max_train_steps": None if first.get("max_train_epochs") else first.get("max_train_steps", 1600),
        "max_train_epochs": first.get("max_train_epochs"),
        "estimate": None,
        "asked": asked,
        "derived": derived,
    }
    rc = RunConfig(spec.name, run_dir, files, run, configs, dataset_doc, warnings)

    # Exact step estimate from the files we are about to write.
    from train_bridge.estimate import estimate_from

    est = estimate_from(spec, dataset_doc, first)
    run["estimate"] = {"steps_per_epoch": est.steps_per_epoch, "total_steps": est.total_steps}
    rc.warnings += est.warnings

    if dry_run:
        return rc
    run_dir.mkdir(parents=True, exist_ok=True)
    head = f"# written by loraprep train_bridge for {spec.name} ({spec.trainer} {options.commit[:8]}); section names are cosmetic\n"
    for c, p in train_files.items():
        atomic_write_text(p, _toml_text(_sectioned(configs[c]), head))
    atomic_write_text(ds_path, _toml_text(dataset_doc, f"# dataset config for {spec.trainer} ({spec.name}), written by loraprep\n"))
    atomic_write_text(prompts_path, _sample_prompts(spec, trig, ds.class_token, res))
    atomic_write_text(run_dir / RUN_FILE, json.dumps(run, indent=2, ensure_ascii=False) + "\n")
    return rc


def load_run(run_dir: Path | str) -> dict[str, Any]:
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not a run folder (run `train_bridge config` first)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); rewrite it with `train_bridge config`") from None


def load_train_toml(path: Path | str) -> tuple[dict[str, Any], list[Issue]]:
    import tomllib

    return flatten_like_trainer(tomllib.loads(Path(path).read_text(encoding="utf-8")))
