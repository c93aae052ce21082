"""kohya-ss sd-scripts (48d368fa): Anima, FLUX, SDXL, SD3.

The dataset TOML is `[general]` + `[[datasets]]` with `[[datasets.subsets]]`; its schema is
strict voluptuous (reference §3.2). Latents and text-encoder outputs are cached by the training
script itself, which is why the caching constraints live here. Step counting follows
`DreamBoothDataset` + `BaseDataset.make_buckets` (see `train_bridge.estimate`).
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

from prep.archs import ArchSpec
from prep.buckets import BucketRecord, BucketSpec
from train_bridge.subsets import DatasetInfo
from train_bridge.trainers.base import (
    BOOL, FLOAT, INT, NUM, STR, CommandContext, MediaDir, Preset, Report, SubsetCount, check_keys, glob_exact, header_sizes, resolution_value,
)
from train_bridge.validate import Issue

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".PNG", ".JPG", ".JPEG", ".WEBP", ".BMP")

# -- dataset TOML keys a user may set (`--set dataset.KEY=VALUE`) ----------------------------
# Types follow the voluptuous schema (strict isinstance checks, reference §3.2).
DATASET_GENERAL = {
    "resolution": "resolution", "batch_size": "int", "enable_bucket": "bool", "bucket_no_upscale": "bool", "bucket_reso_steps": "int",
    "min_bucket_reso": "int", "max_bucket_reso": "int", "validation_split": "float", "network_multiplier": "float",
}
DATASET_SUBSET = {
    "caption_dropout_rate": "float", "caption_dropout_every_n_epochs": "int", "caption_tag_dropout_rate": "float", "shuffle_caption": "bool",
    "keep_tokens": "int", "keep_tokens_separator": "str", "caption_separator": "str", "secondary_separator": "str", "caption_prefix": "str",
    "caption_suffix": "str", "flip_aug": "bool", "color_aug": "bool", "random_crop": "bool", "alpha_mask": "bool", "token_warmup_step": "float",
    "token_warmup_min": "int", "resize_interpolation": "str", "num_repeats": "int",
}
# sd-scripts training options that are really dataset settings: the dataset TOML is where
# sd-scripts reads them reliably.
ROUTED = {"resolution": "resolution", "train_batch_size": "batch_size", **{k: k for k in DATASET_GENERAL if k != "batch_size"}}
ROUTED.update({k: k for k in DATASET_SUBSET if k != "num_repeats"})

# -- the schema `check` enforces --------------------------------------------------------------
SCHEMA_GENERAL = {
    "batch_size": INT, "bucket_reso_steps": INT, "min_bucket_reso": INT, "max_bucket_reso": INT, "validation_seed": INT,
    "enable_bucket": BOOL, "bucket_no_upscale": BOOL, "resolution": "res", "validation_split": FLOAT, "network_multiplier": FLOAT,
}
SCHEMA_ANY_LEVEL = {
    "num_repeats": INT, "keep_tokens": INT, "token_warmup_min": INT, "shuffle_caption": BOOL, "flip_aug": BOOL, "color_aug": BOOL,
    "random_crop": BOOL, "enable_wildcard": BOOL, "caption_separator": STR, "keep_tokens_separator": STR, "secondary_separator": STR,
    "caption_prefix": STR, "caption_suffix": STR, "resize_interpolation": STR, "face_crop_aug_range": "pair", "token_warmup_step": NUM,
    "custom_attributes": "table", "caption_dropout_rate": NUM, "caption_tag_dropout_rate": NUM, "caption_dropout_every_n_epochs": INT,
    "caption_extension": STR, "class_tokens": STR, "cache_info": BOOL,
}
SCHEMA_SUBSET_ONLY = {"image_dir": STR, "is_reg": BOOL, "alpha_mask": BOOL, "metadata_file": STR, "conditioning_data_dir": STR}
_TE_CACHE_CLASH = ("shuffle_caption", "caption_tag_dropout_rate", "token_warmup_step")

# -- presets ----------------------------------------------------------------------------------
_COMMON: dict[str, Any] = {
    "mixed_precision": "bf16", "save_precision": "bf16", "save_model_as": "safetensors", "optimizer_type": "AdamW8bit", "lr_scheduler": "constant",
    "max_grad_norm": 1.0, "seed": 42, "max_train_epochs": 10, "save_every_n_epochs": 1, "save_last_n_epochs": 4, "save_last_n_epochs_state": 1,
    "network_train_unet_only": True, "cache_latents": True, "cache_latents_to_disk": True, "cache_text_encoder_outputs": True,
    "cache_text_encoder_outputs_to_disk": True, "max_data_loader_n_workers": 2, "persistent_data_loader_workers": True, "log_with": "tensorboard",
}
# (resolution, batch, dim, alpha, gradient_checkpointing, blocks_to_swap, fp8_base)
_Row = tuple[int, int, int, float, bool, "int | None", bool]
_ROWS: dict[str, dict[str, _Row]] = {
    "anima": {
        "8gb": (512, 1, 16, 16.0, True, 20, False),
        "12gb": (768, 1, 16, 16.0, True, 10, False),
        "16gb": (768, 1, 20, 20.0, True, None, False),  # citron v5 defaults (Colab T4)
        "24gb": (1024, 1, 32, 32.0, True, None, False),
        "48gb": (1024, 4, 32, 32.0, True, None, False),
        "80gb": (1024, 8, 32, 32.0, False, None, False),
    },
    "flux": {
        "8gb": (512, 1, 8, 8.0, True, 28, True),  # sd-scripts docs: 28 blocks for 8 GB
        "12gb": (512, 1, 16, 16.0, True, 16, True),  # docs: 16 blocks for 12 GB
        "16gb": (768, 1, 16, 16.0, True, 8, True),
        "24gb": (1024, 1, 16, 16.0, True, None, True),
        "48gb": (1024, 2, 32, 32.0, True, None, False),
        "80gb": (1024, 4, 32, 32.0, True, None, False),
    },
    "sdxl": {
        "8gb": (768, 1, 8, 4.0, True, None, True),
        "12gb": (1024, 1, 16, 8.0, True, None, False),
        "16gb": (1024, 1, 32, 16.0, True, None, False),
        "24gb": (1024, 2, 32, 16.0, True, None, False),
        "48gb": (1024, 4, 32, 16.0, True, None, False),
        "80gb": (1024, 8, 32, 16.0, False, None, False),
    },
    "sd3": {
        "8gb": (512, 1, 8, 8.0, True, 10, True),
        "12gb": (768, 1, 16, 16.0, True, 4, True),
        "16gb": (1024, 1, 16, 16.0, True, None, True),
        "24gb": (1024, 1, 32, 32.0, True, None, False),
        "48gb": (1024, 2, 32, 32.0, True, None, False),
        "80gb": (1024, 4, 32, 32.0, True, None, False),
    },
}
# Per-architecture training keys and subset keys on top of _COMMON, and where they come from.
_EXTRA: dict[str, tuple[dict[str, Any], dict[str, Any], str]] = {
    "anima": (
        {"timestep_sampling": "sigmoid", "discrete_flow_shift": 1.0, "vae_chunk_size": 64, "vae_disable_cache": True},
        {"caption_dropout_rate": 0.1},  # citron v5; allowed with TE caching for Anima only
        "citron-colab-anima-lora-trainer v5 (16gb) + interpolation",
    ),
    "flux": ({"sdpa": True, "guidance_scale": 1.0, "timestep_sampling": "flux_shift", "model_prediction_type": "raw"}, {}, "sd-scripts docs + interpolation"),
    "sdxl": ({"sdpa": True}, {}, "sd-scripts docs + interpolation"),
    "sd3": ({"sdpa": True}, {}, "sd-scripts docs + interpolation"),
}


class SdScripts:
    name = "sd-scripts"
    image_extensions = IMAGE_EXTENSIONS
    video_extensions: tuple[str, ...] = ()  # sd-scripts trains images only
    dataset_general_keys = DATASET_GENERAL
    dataset_item_keys = DATASET_SUBSET
    routed_train_keys = ROUTED
    dataset_key_choices: dict[str, tuple[str, ...]] = {}
    crop_record_keys = {"bucket_reso_steps": "steps", "min_bucket_reso": "min_reso", "max_bucket_reso": "max_reso", "bucket_no_upscale": "no_upscale"}
    has_reg_subsets = True
    resume_needs_initial_step = True
    caches_in_training = True
    missing_caption_effect = "trained on the class tokens only"

    # -- config --------------------------------------------------------------------------------
    def preset(self, spec: ArchSpec, name: str) -> Preset:
        res, batch, dim, alpha, gc, swap, fp8 = _ROWS[spec.family][name]
        extra_train, subset, source = _EXTRA[spec.family]
        train: dict[str, Any] = dict(_COMMON)
        train.update({"network_module": spec.network_module, "network_dim": dim, "network_alpha": alpha, "learning_rate": 1e-4})
        if gc:
            train["gradient_checkpointing"] = True
        if swap:
            train["blocks_to_swap"] = swap
        if fp8 and not spec.fp8_ignored:
            train["fp8_base"] = True
        train.update(extra_train)
        return Preset(name, train, (res, res), batch, dict(subset), source=source)

    def run_defaults(self, spec: ArchSpec, run_dir: Path, sample_prompts: Path, train: dict[str, Any]) -> dict[str, Any]:
        return {"sample_prompts": str(sample_prompts), "sample_every_n_epochs": train.get("save_every_n_epochs", 1)}

    def derive_from_models(self, spec: ArchSpec, model_paths: dict[str, str], train: dict[str, Any], notes: dict[str, Any]) -> dict[str, str]:
        return {}

    def constraints(self, spec: ArchSpec, train: dict[str, Any], general: dict[str, Any], subset: dict[str, Any], explicit: set[str]) -> tuple[list[Issue], dict[str, str]]:
        issues: list[Issue] = []
        notes: dict[str, str] = {}
        te_cache = bool(train.get("cache_text_encoder_outputs") or train.get("cache_text_encoder_outputs_to_disk"))
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
            bad = [k for k in _TE_CACHE_CLASH if subset.get(k)]
            if subset.get("caption_dropout_rate") and not spec.te_cache_allows_caption_dropout:
                bad.append("caption_dropout_rate")
            for k in bad:
                issues.append(Issue("error", k, "incompatible with cache_text_encoder_outputs (set cache_text_encoder_outputs=false and network_train_unet_only=false to use it)"))
        if train.get("cache_latents") or train.get("cache_latents_to_disk"):
            for k in ("color_aug", "random_crop"):
                if subset.get(k):
                    issues.append(Issue("error", k, "incompatible with cache_latents"))
        steps = general.get("bucket_reso_steps")
        if steps is not None and steps % spec.bucket_step_divisor:
            issues.append(Issue("error", "bucket_reso_steps", f"must be divisible by {spec.bucket_step_divisor} for {spec.name}"))
        mode = train.get("attn_mode")
        if mode in spec.split_attn_modes and not train.get("split_attn"):
            train["split_attn"] = True
            notes["split_attn"] = f"on: attn_mode={mode} needs it"
        return issues, notes

    def dataset_toml(
        self, spec: ArchSpec, ds: DatasetInfo, preset: Preset, general_o: dict[str, Any], item_o: dict[str, Any], run_dir: Path, record: BucketRecord | None
    ) -> dict[str, Any]:
        general_o, subset_o = dict(general_o), dict(item_o)
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
        if record is not None:  # train at exactly the buckets the crops are fixed points of
            general.update(
                {"bucket_reso_steps": record.spec.steps, "min_bucket_reso": record.spec.min_reso, "max_bucket_reso": record.spec.max_reso, "bucket_no_upscale": record.spec.no_upscale}
            )
        general.update(general_o)
        for k in ("shuffle_caption", "keep_tokens"):
            if k in subset_o:
                general[k] = subset_o.pop(k)
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
            subsets.append(entry)
        dataset = {"resolution": res[0] if res[0] == res[1] else [res[0], res[1]], "batch_size": batch, "subsets": subsets}
        return {"general": general, "datasets": [dataset]}

    def dataset_summary(self, doc: dict[str, Any]) -> tuple[tuple[int, int], int]:
        general = doc.get("general", {})
        first = (doc.get("datasets") or [{}])[0]
        res = resolution_value(first.get("resolution", general.get("resolution"))) or (0, 0)
        return res, int(first.get("batch_size", general.get("batch_size", 1)))

    def bucket_plan(self, spec: ArchSpec, doc: dict[str, Any]) -> list[tuple[BucketSpec, list[MediaDir]]]:
        general = doc.get("general", {})
        out = []
        for ds in doc.get("datasets", []):
            def get(key: str, default: Any, ds: dict[str, Any] = ds) -> Any:
                return ds.get(key, general.get(key, default))

            res = resolution_value(get("resolution", None))
            if res is None:
                continue
            bs = BucketSpec(
                resolution=res, min_reso=get("min_bucket_reso", 256), max_reso=get("max_bucket_reso", 1024), steps=get("bucket_reso_steps", 64),
                no_upscale=get("bucket_no_upscale", False), enabled=get("enable_bucket", False),
            )
            out.append((bs, self._dirs(ds, general)))
        return out

    @staticmethod
    def _dirs(ds: dict[str, Any], general: dict[str, Any]) -> list[MediaDir]:
        out = []
        for s in ds.get("subsets", []):
            if "image_dir" in s:
                ext = s.get("caption_extension", ds.get("caption_extension", general.get("caption_extension")))
                out.append(MediaDir(s["image_dir"], bool(s.get("is_reg")), ext))
        return out

    def media_dirs(self, doc: dict[str, Any]) -> list[MediaDir]:
        general = doc.get("general", {})
        return [d for ds in doc.get("datasets", []) for d in self._dirs(ds, general)]

    def count_batches(self, spec: ArchSpec, doc: dict[str, Any], subsets_out: list[SubsetCount], buckets_out: Counter[str], warnings: list[str]) -> tuple[int, int, int]:
        general = doc.get("general", {})
        batches = n_train = n_reg = 0
        for ds in doc.get("datasets", []):
            b, t, r = _dataset_batches(ds, general, subsets_out, buckets_out)
            batches, n_train, n_reg = batches + b, n_train + t, n_reg + r
        return batches, n_train, n_reg

    def commands(self, spec: ArchSpec, ctx: CommandContext) -> list[dict[str, Any]]:
        acc = ["--num_cpu_threads_per_process", "1", "--mixed_precision", ctx.train.get("mixed_precision", "no")]
        return [
            {"name": c, "script": spec.train_script, "args": ["--config_file", str(p), "--dataset_config", str(ctx.dataset_toml)], "accelerate": True, "accelerate_args": list(acc)}
            for c, p in ctx.train_files.items()
        ]

    # -- check ---------------------------------------------------------------------------------
    def check_dataset_doc(self, spec: ArchSpec, doc: dict[str, Any], report: Report) -> None:
        for k in doc:
            if k not in ("general", "datasets"):
                report.add("error", "dataset", f"extra top-level key {k!r} (only [general] and [[datasets]] exist)")
        general = doc.get("general", {})
        check_keys("[general]", general, {**SCHEMA_GENERAL, **SCHEMA_ANY_LEVEL}, report)
        datasets = doc.get("datasets", [])
        if not datasets:
            report.add("error", "dataset", "no [[datasets]] entries")
        step_div = spec.bucket_step_divisor
        for i, ds in enumerate(datasets):
            check_keys(f"datasets[{i}]", ds, {**SCHEMA_GENERAL, **SCHEMA_ANY_LEVEL}, report)

            def get(key: str, default: Any = None, ds: dict[str, Any] = ds) -> Any:
                return ds.get(key, general.get(key, default))

            steps = get("bucket_reso_steps", 64)
            if isinstance(steps, int) and steps % step_div:
                report.add("error", "dataset", f"datasets[{i}].bucket_reso_steps={steps}: must be divisible by {step_div} for {spec.name}")
            res = get("resolution")
            if res is None:
                report.add("error", "dataset", f"datasets[{i}]: no resolution")
            elif resolution_value(res) is not None and get("enable_bucket", False):
                r = resolution_value(res)
                assert r is not None
                if isinstance(get("max_bucket_reso", 1024), int) and max(r) > get("max_bucket_reso", 1024):
                    report.add("error", "dataset", f"datasets[{i}]: max_bucket_reso must be >= the resolution {max(r)}")
                if isinstance(get("min_bucket_reso", 256), int) and min(r) < get("min_bucket_reso", 256):
                    report.add("error", "dataset", f"datasets[{i}]: min_bucket_reso must be <= the resolution {min(r)}")
            subs = ds.get("subsets", [])
            if not subs:
                report.add("error", "dataset", f"datasets[{i}]: no subsets")
            for j, s in enumerate(subs):
                where = f"datasets[{i}].subsets[{j}]"
                check_keys(where, s, {**SCHEMA_ANY_LEVEL, **SCHEMA_SUBSET_ONLY}, report)
                if "image_dir" not in s:
                    report.add("error", "dataset", f"{where}: required key image_dir not provided")
                if "num_repeats" not in s and "num_repeats" not in ds and "num_repeats" not in general:
                    report.add("warning", "dataset", f"{where}: num_repeats not set; the folder's N_ prefix is ignored with --dataset_config, so it trains 1 repeat")
                if s.get("caption_extension", ds.get("caption_extension", general.get("caption_extension"))) is None:
                    report.add("error", "dataset", f"{where}: caption_extension not set: sd-scripts falls back to '.caption' and finds no .txt captions")

    def check_dataset_vs_train(self, spec: ArchSpec, doc: dict[str, Any], flats: list[dict[str, Any]], report: Report) -> None:
        g = doc.get("general", {})
        if any(f.get("cache_latents") or f.get("cache_latents_to_disk") for f in flats):
            for ds in doc.get("datasets", []):
                for s in ds.get("subsets", [ds]):
                    if s.get("color_aug") or s.get("random_crop") or g.get("color_aug"):
                        report.add("error", "dataset", "color_aug/random_crop cannot be used with cache_latents")
        if not any(f.get("cache_text_encoder_outputs") or f.get("cache_text_encoder_outputs_to_disk") for f in flats):
            return
        for ds in doc.get("datasets", []):
            for s in ds.get("subsets", []):
                def val(k: str, s: dict[str, Any] = s, ds: dict[str, Any] = ds) -> Any:
                    return s.get(k, ds.get(k, g.get(k)))

                bad = [k for k in _TE_CACHE_CLASH if val(k)]
                if val("caption_dropout_rate") and not spec.te_cache_allows_caption_dropout:
                    bad.append("caption_dropout_rate")
                if bad:
                    report.add("error", "dataset", f"{s.get('image_dir')}: {', '.join(bad)} cannot be used with cache_text_encoder_outputs")

    def check_train(self, spec: ArchSpec, flat: dict[str, Any], report: Report, where: str) -> None:
        get = flat.get
        if (get("cache_text_encoder_outputs") or get("cache_text_encoder_outputs_to_disk")) and not get("network_train_unet_only"):
            report.add("error", "config", f"{where}: cache_text_encoder_outputs needs network_train_unet_only = true (the trainer asserts)")
        if not get("pretrained_model_name_or_path"):
            report.add("error", "config", f"{where}: pretrained_model_name_or_path is not set")


def _dataset_batches(ds: dict[str, Any], general: dict[str, Any], subsets_out: list[SubsetCount], buckets_out: Counter[str]) -> tuple[int, int, int]:
    """Batches, train images*repeats, reg images*repeats for one `[[datasets]]` entry."""

    def get(key: str, default: Any) -> Any:
        return ds.get(key, general.get(key, default))

    res = resolution_value(get("resolution", None))
    if res is None:
        raise ValueError("dataset has no resolution")
    spec = BucketSpec(
        resolution=res, min_reso=get("min_bucket_reso", 256), max_reso=get("max_bucket_reso", 1024), steps=get("bucket_reso_steps", 64),
        no_upscale=get("bucket_no_upscale", False), enabled=get("enable_bucket", False),
    )
    batch = int(get("batch_size", 1))
    # image_key -> [bucket, repeats]; later subsets with the same path overwrite (dict semantics)
    data: dict[str, list[Any]] = {}
    reg_infos: list[list[Any]] = []
    seen_dirs: set[str] = set()
    n_train = n_reg = 0
    for sub in ds.get("subsets", []):
        repeats = int(sub.get("num_repeats", get("num_repeats", 1)))
        image_dir = sub.get("image_dir")
        is_reg = bool(sub.get("is_reg", False))
        if repeats < 1 or image_dir is None or image_dir in seen_dirs:
            continue
        unreadable: list[str] = []
        items = header_sizes(glob_exact(image_dir, IMAGE_EXTENSIONS), unreadable)
        if not items:
            subsets_out.append(SubsetCount(image_dir, 0, repeats, is_reg, 0, unreadable=unreadable))
            continue
        seen_dirs.add(image_dir)
        count = SubsetCount(image_dir, len(items), repeats, is_reg, 0 if is_reg else len(items) * repeats, unreadable=unreadable)
        subsets_out.append(count)
        for path, (w, h) in items:
            info = [spec.select(w, h).bucket, repeats, count]
            if is_reg:
                reg_infos.append(info)
            else:
                data[path] = info
        if is_reg:
            n_reg += repeats * len(items)
        else:
            n_train += repeats * len(items)
    # Regularisation images are registered round-robin until they match the training samples.
    reg_registered: list[list[Any]] = []
    if n_reg and reg_infos:
        n = 0
        first = True
        while n < n_train:
            for info in reg_infos:
                if first:
                    reg_registered.append(info)
                    n += info[1]
                else:
                    info[1] += 1
                    n += 1
                if n >= n_train:
                    break
            first = False
    per_bucket: Counter[tuple[int, int]] = Counter()
    for bucket, reps, _ in list(data.values()) + reg_registered:
        per_bucket[bucket] += reps
    for _, reps, count in reg_registered:
        count.used_repeats += reps
    for b, c in per_bucket.items():
        buckets_out[f"{b[0]}x{b[1]}"] += c
    batches = sum(math.ceil(c / batch) for c in per_bucket.values())
    return batches, n_train, sum(r for _, r, _ in reg_registered)
