"""Run a trainer's own parser and dataset validator on a generated config (trainer's Python).

`train_bridge check --sd-scripts PATH` / `--musubi PATH` starts this file as a subprocess
with the trainer venv's interpreter. It imports nothing from loraprep (only the stdlib and
the trainer), loads the TOML the way the trainer does (`toml` 0.10.2, one level flattened),
reports unknown keys and values argparse would never have accepted, merges with the real
parser, runs the strict dataset schema, and, for sd-scripts, builds the real dataset objects
(image sizes, buckets; CPU only, no weights) and the architecture's `assert_extra_args`, then
reports the exact step count. The results (a JSON list, one per job) go to OUT.json.

    python trainer_probe.py sd-scripts|musubi-tuner CHECKOUT OUT.json SCRIPT_STEM TRAIN.toml [--cache-args JSON] [CLI args]
    python trainer_probe.py sd-scripts|musubi-tuner CHECKOUT OUT.json --jobs JOBS.json
    python trainer_probe.py sd-scripts|musubi-tuner CHECKOUT OUT.json --imports MODULE ...   (`setup --check`)
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
import traceback


def _flatten(cfg):
    flat = {}
    for k, v in cfg.items():
        if isinstance(v, dict):
            flat.update(v)
        else:
            flat[k] = v
    return flat


def _check_values(parser, flat, errors):
    acts = {a.dest: a for a in parser._actions if a.dest != "help"}
    unknown = [k for k in flat if k not in acts]
    for k in unknown:
        errors.append(f"unknown key {k!r}: the trainer keeps it silently and never uses it")
    for k, v in flat.items():
        a = acts.get(k)
        if a is None:
            continue
        if a.nargs == 0 or isinstance(a, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            if not isinstance(v, bool):
                errors.append(f"{k}: expects true/false, got {v!r}")
            continue
        if a.nargs in ("*", "+"):
            if not isinstance(v, list):
                errors.append(f"{k}: must be an array")
                continue
            items = v
        else:
            if isinstance(v, (list, dict)):
                errors.append(f"{k}: expects a single value")
                continue
            items = [v]
        for it in items:
            if a.type in (None, str) and not isinstance(it, str):
                errors.append(f"{k}: expects a string, got {it!r}")
            elif a.type in (int, float) and (isinstance(it, (str, bool))):
                errors.append(f"{k}: numeric option given as {type(it).__name__}")
            elif a.type is int and isinstance(it, float):
                errors.append(f"{k}: expects int, got {it!r}")
            elif a.type is not None and a.type is not str:
                try:
                    a.type(str(it)) if a.type not in (int, float) else a.type(it)
                except Exception as exc:  # the parser's own converter rejects it
                    errors.append(f"{k}: {it!r} rejected by the parser: {exc}")
            if a.choices is not None and it not in a.choices:
                errors.append(f"{k}: {it!r} not in {list(a.choices)}")
    return unknown


def _parse(parser, flat, cli):
    return parser.parse_args(cli, namespace=argparse.Namespace(**flat))


def probe_sd_scripts(checkout, stem, train_path, cli, result):
    os.chdir(checkout)
    import toml
    import voluptuous

    mod = importlib.import_module(stem)
    from library import config_util, strategy_base, train_util

    parser = mod.setup_parser()
    errors = result["errors"]
    flat = _flatten(toml.load(train_path))
    result["unknown_keys"] = _check_values(parser, flat, errors)
    args = _parse(parser, flat, cli)
    if args.dataset_config is None:
        errors.append("dataset_config is not set")
        return
    train_util.verify_training_args(args)
    user_cfg = config_util.load_user_config(str(args.dataset_config))
    sanitizer = config_util.ConfigSanitizer(True, True, args.masked_loss, True)
    try:
        sanitizer.sanitize_user_config(user_cfg)
    except voluptuous.MultipleInvalid as exc:
        errors.extend(f"dataset config: {e}" for e in exc.errors)
        return
    if errors:
        return
    train_util.prepare_dataset_args(args, True)
    trainer_cls = next(v for k, v in vars(mod).items() if k.endswith("NetworkTrainer") and isinstance(v, type) and v.__module__ == mod.__name__)
    trainer = trainer_cls()
    strategy_base.LatentsCachingStrategy.set_strategy(trainer.get_latents_caching_strategy(args))
    blueprint = config_util.BlueprintGenerator(sanitizer).generate(user_cfg, args)
    train_group, val_group = config_util.generate_dataset_group_by_blueprint(blueprint.dataset_group)
    try:
        trainer.assert_extra_args(args, train_group, val_group)
    except AssertionError as exc:
        errors.append(f"assert_extra_args: {exc}")
    if len(train_group) == 0:
        errors.append("no training data found")
    per_epoch = math.ceil(len(train_group) / args.gradient_accumulation_steps)
    result["batches_per_epoch"] = len(train_group)
    result["num_train_images"] = train_group.num_train_images
    result["num_reg_images"] = train_group.num_reg_images
    result["steps_per_epoch"] = per_epoch
    result["total_steps"] = args.max_train_epochs * per_epoch if args.max_train_epochs else args.max_train_steps
    for k in ("mixed_precision", "network_module", "max_train_epochs", "save_state", "cache_text_encoder_outputs", "network_train_unet_only"):
        result.setdefault("args", {})[k] = getattr(args, k, None)


def probe_musubi(checkout, stem, train_path, cli, result, cache_args):
    import toml
    import torch

    torch.cuda.current_device = lambda: 0  # wan/modules/t5.py calls it at import time
    from musubi_tuner.dataset import config_utils
    from musubi_tuner.training.parser_common import setup_parser_common

    mod = importlib.import_module(f"musubi_tuner.{stem}")
    parser = mod.wan_setup_parser(setup_parser_common())
    errors = result["errors"]
    flat = _flatten(toml.load(train_path))
    result["unknown_keys"] = _check_values(parser, flat, errors)
    args = _parse(parser, flat, cli)
    if not any(getattr(args, a, False) for a in ("sdpa", "flash_attn", "flash3", "sage_attn", "xformers")):
        errors.append("no attention mode (sdpa, flash_attn, flash3, sage_attn or xformers) is set")
    for k in ("task", "dit", "mixed_precision", "min_timestep", "max_timestep", "timestep_boundary", "fp8_base", "fp8_scaled", "network_module", "save_state"):
        result.setdefault("args", {})[k] = getattr(args, k, None)
    user_cfg = config_utils.load_user_config(str(args.dataset_config))
    try:
        blueprint = config_utils.BlueprintGenerator(config_utils.ConfigSanitizer()).generate(user_cfg, args, architecture="wan")
        config_utils.generate_dataset_group_by_blueprint(blueprint.dataset_group, training=False)
    except TypeError:
        config_utils.ConfigSanitizer().sanitize_user_config(user_cfg)
    except Exception as exc:  # voluptuous.MultipleInvalid, ValueError (duplicate cache_directory)
        errors.extend(f"dataset config: {e}" for e in getattr(exc, "errors", [exc]))
    else:
        _musubi_steps(args, user_cfg, result)
    for name, argv in (cache_args or {}).items():
        cmod = importlib.import_module(f"musubi_tuner.{'wan_cache_latents' if name == 'cache_latents' else 'wan_cache_text_encoder_outputs'}")
        common = importlib.import_module("musubi_tuner.cache_latents" if name == "cache_latents" else "musubi_tuner.cache_text_encoder_outputs")
        cparser = cmod.wan_setup_parser(common.setup_parser_common())
        try:
            cparser.parse_args(argv)
        except SystemExit:
            errors.append(f"{name}: the cache script's parser rejects {argv}")


def run_job(trainer, checkout, job):
    """One config: {"script": stem, "train": path, "args": [...], "cache_args": {...}}."""
    result = {"trainer": trainer, "script": job["script"], "train": job["train"], "errors": [], "unknown_keys": []}
    try:
        if trainer == "sd-scripts":
            probe_sd_scripts(checkout, job["script"], os.path.abspath(job["train"]), job.get("args", []), result)
        else:
            probe_musubi(checkout, job["script"], os.path.abspath(job["train"]), job.get("args", []), result, job.get("cache_args"))
    except SystemExit as exc:
        result["errors"].append(f"the parser exited ({exc.code}): it rejected an argument")
    except Exception as exc:
        result["errors"].append(f"{type(exc).__name__}: {exc}")
        result["traceback"] = traceback.format_exc()[-4000:]
    return result


def _musubi_steps(args, user_cfg, result):
    """Steps as musubi's training loop will count them, with its own glob, selector and batcher.

    Training buckets come from the latent cache names, which carry the image size PIL read at
    caching time; so the real `BucketSelector` on those sizes and the real
    `BucketBatchManager` give the count without running the caches.
    """
    from PIL import Image

    from musubi_tuner.dataset import config_utils
    from musubi_tuner.dataset.bucket import BucketBatchManager, BucketSelector
    from musubi_tuner.dataset.media_utils import glob_images

    blueprint = config_utils.BlueprintGenerator(config_utils.ConfigSanitizer()).generate(user_cfg, args, architecture="wan")
    batches = 0
    for ds in blueprint.dataset_group.datasets:
        p = ds.params
        if not ds.is_image_dataset or not getattr(p, "image_directory", None):
            result.setdefault("notes", []).append("video dataset: steps not counted")
            continue
        selector = BucketSelector(p.resolution, p.enable_bucket, p.bucket_no_upscale, "wan")
        buckets = {}
        for path in glob_images(p.image_directory, caption_extension=p.caption_extension):
            with Image.open(path) as im:
                size = im.size
            reso = tuple(list(selector.get_bucket_resolution(size)) + [getattr(p, "fp_latent_window_size", None)])
            buckets.setdefault(reso, []).extend([path] * p.num_repeats)
        batches += len(BucketBatchManager(buckets, p.batch_size))
    per_epoch = math.ceil(batches / args.gradient_accumulation_steps)
    result["batches_per_epoch"] = batches
    result["steps_per_epoch"] = per_epoch
    result["total_steps"] = args.max_train_epochs * per_epoch if args.max_train_epochs else args.max_train_steps


def probe_imports(trainer, checkout, modules):
    """Import each module once, as the trainer's scripts do; say which are missing and why.
    (musubi's Wan code asks CUDA for the current device at import time; without a GPU that
    is patched as the config probe does, and said.)"""
    from importlib import metadata

    out = {"trainer": trainer, "python": sys.executable, "ok": [], "missing": [], "errors": [], "versions": {}, "notes": []}
    os.chdir(checkout)
    for dist in ("torch", "torchvision", "accelerate", "transformers", "diffusers", "safetensors", "bitsandbytes"):
        try:
            out["versions"][dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out["versions"][dist] = None
    for name in modules:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            out["missing"].append({"module": name, "missing": exc.name or str(exc), "error": f"{type(exc).__name__}: {exc}"})
        except Exception as exc:  # an import that fails for another reason (a broken build, an ABI mismatch)
            out["errors"].append({"module": name, "error": f"{type(exc).__name__}: {exc}"[:800]})
        else:
            out["ok"].append(name)
        if name == "torch" and "torch" in out["ok"]:
            import torch

            out["torch"] = {"version": torch.__version__, "cuda_build": torch.version.cuda, "gpu": bool(torch.cuda.is_available())}
            if trainer == "musubi-tuner" and not torch.cuda.is_available():
                torch.cuda.current_device = lambda: 0  # wan/modules/t5.py calls it in a default argument
                out["notes"].append("no GPU: torch.cuda.current_device patched for the import (musubi's Wan code needs a GPU to train)")
    return out


def main(argv=None):
    """argv: TRAINER CHECKOUT OUT.json (--jobs JOBS.json | SCRIPT TRAIN.toml [--cache-args JSON] [trainer CLI args])."""
    argv = list(sys.argv[1:] if argv is None else argv)
    trainer, checkout, out = argv[:3]
    rest = argv[3:]
    checkout = os.path.abspath(checkout)
    if rest[:1] == ["--imports"]:
        sys.path.insert(0, checkout if trainer == "sd-scripts" else os.path.join(checkout, "src"))
        result = probe_imports(trainer, checkout, rest[1:])
        with open(out, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=1, default=str)
        return 0
    if rest[:1] == ["--jobs"]:
        with open(rest[1], encoding="utf-8") as fh:
            jobs = json.load(fh)
    else:
        job = {"script": rest[0], "train": rest[1], "args": rest[2:]}
        if job["args"][:1] == ["--cache-args"]:
            job["cache_args"] = json.loads(job["args"][1])
            job["args"] = job["args"][2:]
        jobs = [job]
    sys.path.insert(0, checkout if trainer == "sd-scripts" else os.path.join(checkout, "src"))
    results = []
    for job in jobs:
        if trainer == "sd-scripts":
            try:
                from library import strategy_base

                strategy_base.LatentsCachingStrategy._strategy = None  # process-wide singleton
            except ImportError:
                pass
        results.append(run_job(trainer, checkout, job))
    with open(out, "w", encoding="utf-8") as fh:
        json.dump(results, fh, indent=1, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
