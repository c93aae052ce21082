"""Preflight for a run folder (or loose TOML files): catch what the trainer would not.

Offline, always: model files exist and are what they claim (safetensors header complete,
expected tensor names, Wan DiT dtype equal to `mixed_precision`), the dataset is non-empty,
every image has a `.txt` caption with the trigger in it, every training key exists in the
trainer's real option list with the type the parser expects, and the dataset TOML passes
the trainer's schema rules (reference §3.2, §6.3). With `--sd-scripts PATH` or `--musubi PATH`
it also runs the trainer's own parser and dataset validator in the trainer's Python
(`trainer_probe.py`, a subprocess with an argv list) and compares its step count with ours.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prep.dataset import read_caption
from train_bridge.estimate import MUSUBI_IMAGE_EXTENSIONS, SD_IMAGE_EXTENSIONS, _glob, estimate_from
from train_bridge.options import load_option_list
from train_bridge.safetensors_header import MIXED_PRECISION_FOR_DTYPE, HeaderError, is_pickle_zip, read_header
from train_bridge.trainers import ArchSpec, get_arch
from train_bridge.validate import flatten_like_trainer, validate_flat

PROBE = Path(__file__).with_name("trainer_probe.py")


@dataclass
class CheckItem:
    level: str  # ok | warning | error
    area: str  # models | dataset | config | captions | trainer
    message: str


@dataclass
class CheckReport:
    target: str
    arch: str
    items: list[CheckItem] = field(default_factory=list)
    trainer: list[dict[str, Any]] = field(default_factory=list)

    def add(self, level: str, area: str, message: str) -> None:
        self.items.append(CheckItem(level, area, message))

    @property
    def errors(self) -> list[CheckItem]:
        return [i for i in self.items if i.level == "error"]

    @property
    def warnings(self) -> list[CheckItem]:
        return [i for i in self.items if i.level == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "arch": self.arch,
            "ok": self.ok,
            "errors": [i.__dict__ for i in self.errors],
            "warnings": [i.__dict__ for i in self.warnings],
            "passed": [i.__dict__ for i in self.items if i.level == "ok"],
            "trainer": self.trainer,
        }


# -- models ----------------------------------------------------------------------------------------


def check_model(spec: ArchSpec, name: str, value: str, report: CheckReport, *, mixed_precision: str | None = None) -> None:
    m = spec.model(name)
    p = Path(value)
    if not p.exists():
        if m.allow_dir and re.fullmatch(r"[\w.-]+/[\w.-]+", value):
            report.add("warning", "models", f"{name}: {value!r} looks like a Hugging Face id; not checked offline")
        else:
            report.add("error", "models", f"{name}: {value} does not exist")
        return
    if p.is_dir():
        if m.allow_dir:
            report.add("ok", "models", f"{name}: folder {p}")
        else:
            report.add("error", "models", f"{name}: {p} is a folder; {spec.name} needs a file ({m.help})")
        return
    if p.suffix in (".pth", ".pt", ".bin", ".ckpt"):
        if is_pickle_zip(p):
            report.add("ok", "models", f"{name}: {p.name} (torch pickle, contents not checked)")
        else:
            report.add("error", "models", f"{name}: {p} is not a torch checkpoint (bad magic bytes); re-download it")
        return
    try:
        h = read_header(p)
    except (HeaderError, OSError) as exc:
        report.add("error", "models", f"{name}: {exc}; re-download it")
        return
    if not h.complete:
        report.add("error", "models", f"{name}: {p} is truncated ({h.file_size} of {h.data_end} bytes); re-download it")
        return
    if m.expect and not h.matches(m.expect):
        sample = ", ".join(list(h.tensors)[:3])
        report.add("error", "models", f"{name}: {p.name} is not the expected {m.help} (tensors: {sample}, ...); wrong file for --{name.replace('_', '-')}?")
        return
    report.add("ok", "models", f"{name}: {p.name} ({len(h.tensors)} tensors)")
    if spec.trainer == "musubi-tuner" and name in ("dit", "dit_high") and mixed_precision:
        dt = h.main_dtype(r"blocks\.\d+\..*weight$")
        want = MIXED_PRECISION_FOR_DTYPE.get(dt or "")
        if want and want != "no" and want != mixed_precision:
            report.add("error", "models", f"{name}: weights are {dt} but mixed_precision = {mixed_precision!r}; musubi asserts they match (set --set mixed_precision={want})")


# -- dataset TOML schema (mirrors the trainers' voluptuous schemas) --------------------------------

_INT, _BOOL, _STR, _FLOAT, _NUM = "int", "bool", "str", "float", "num"
SD_GENERAL_DATASET = {
    "batch_size": _INT, "bucket_reso_steps": _INT, "min_bucket_reso": _INT, "max_bucket_reso": _INT, "validation_seed": _INT,
    "enable_bucket": _BOOL, "bucket_no_upscale": _BOOL, "resolution": "res", "validation_split": _FLOAT, "network_multiplier": _FLOAT,
}
SD_ANY_LEVEL = {
    "num_repeats": _INT, "keep_tokens": _INT, "token_warmup_min": _INT, "shuffle_caption": _BOOL, "flip_aug": _BOOL, "color_aug": _BOOL,
    "random_crop": _BOOL, "enable_wildcard": _BOOL, "caption_separator": _STR, "keep_tokens_separator": _STR, "secondary_separator": _STR,
    "caption_prefix": _STR, "caption_suffix": _STR, "resize_interpolation": _STR, "face_crop_aug_range": "pair", "token_warmup_step": _NUM,
    "custom_attributes": "table", "caption_dropout_rate": _NUM, "caption_tag_dropout_rate": _NUM, "caption_dropout_every_n_epochs": _INT,
    "caption_extension": _STR, "class_tokens": _STR, "cache_info": _BOOL,
}
SD_SUBSET_ONLY = {"image_dir": _STR, "is_reg": _BOOL, "alpha_mask": _BOOL, "metadata_file": _STR, "conditioning_data_dir": _STR}
MUSUBI_GENERAL = {"resolution": "res", "caption_extension": _STR, "batch_size": _INT, "num_repeats": _INT, "enable_bucket": _BOOL, "bucket_no_upscale": _BOOL}
MUSUBI_DATASET = {
    **MUSUBI_GENERAL,
    "image_directory": _STR, "image_jsonl_file": _STR, "video_directory": _STR, "video_jsonl_file": _STR, "cache_directory": _STR,
    "control_directory": _STR, "target_frames": "frames", "frame_extraction": _STR, "frame_stride": _INT, "frame_sample": _INT,
    "max_frames": _INT, "source_fps": _FLOAT, "multiple_target": _BOOL, "fp_latent_window_size": _INT,
}


_MUSUBI_VIDEO_ONLY = {"video_directory", "video_jsonl_file", "target_frames", "frame_extraction", "frame_stride", "frame_sample", "max_frames", "source_fps"}
_MUSUBI_IMAGE_ONLY = {"image_directory", "image_jsonl_file", "multiple_target", "fp_latent_window_size"}


def _type_ok(kind: str, v: Any) -> bool:
    if kind == _INT:
        return isinstance(v, int) and not isinstance(v, bool)
    if kind == _BOOL:
        return isinstance(v, bool)
    if kind == _STR:
        return isinstance(v, str)
    if kind == _FLOAT:
        return isinstance(v, float)
    if kind == _NUM:
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if kind == "res":
        return (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, list) and len(v) == 2 and all(isinstance(x, int) for x in v))
    if kind == "pair":
        return isinstance(v, list) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v)
    if kind == "frames":
        return isinstance(v, list) and all(isinstance(x, int) for x in v)
    if kind == "table":
        return isinstance(v, dict)
    return True


def _check_keys(where: str, table: dict[str, Any], allowed: dict[str, str], report: CheckReport) -> None:
    for k, v in table.items():
        if k in ("subsets", "datasets") and isinstance(v, list):
            continue
        kind = allowed.get(k)
        if kind is None:
            report.add("error", "dataset", f"{where}: extra key {k!r} not allowed here (the trainer rejects the dataset config)")
        elif not _type_ok(kind, v):
            hint = " (write 0.0 / 1.0: the schema wants a float)" if kind == _FLOAT else ""
            report.add("error", "dataset", f"{where}.{k}: expected {kind}, got {v!r}{hint}")


def check_sd_dataset_doc(doc: dict[str, Any], spec: ArchSpec, report: CheckReport) -> None:
    for k in doc:
        if k not in ("general", "datasets"):
            report.add("error", "dataset", f"extra top-level key {k!r} (only [general] and [[datasets]] exist)")
    general = doc.get("general", {})
    _check_keys("[general]", general, {**SD_GENERAL_DATASET, **SD_ANY_LEVEL}, report)
    datasets = doc.get("datasets", [])
    if not datasets:
        report.add("error", "dataset", "no [[datasets]] entries")
    step_div = 16 if spec.family == "anima" else 32
    for i, ds in enumerate(datasets):
        _check_keys(f"datasets[{i}]", ds, {**SD_GENERAL_DATASET, **SD_ANY_LEVEL}, report)

        def get(key: str, default: Any = None, ds: dict[str, Any] = ds) -> Any:
            return ds.get(key, general.get(key, default))

        steps = get("bucket_reso_steps", 64)
        if isinstance(steps, int) and steps % step_div:
            report.add("error", "dataset", f"datasets[{i}].bucket_reso_steps={steps}: must be divisible by {step_div} for {spec.name}")
        res = get("resolution")
        if res is None:
            report.add("error", "dataset", f"datasets[{i}]: no resolution")
        elif _type_ok("res", res) and get("enable_bucket", False):
            r = (res, res) if isinstance(res, int) else tuple(res)
            if isinstance(get("max_bucket_reso", 1024), int) and max(r) > get("max_bucket_reso", 1024):
                report.add("error", "dataset", f"datasets[{i}]: max_bucket_reso must be >= the resolution {max(r)}")
            if isinstance(get("min_bucket_reso", 256), int) and min(r) < get("min_bucket_reso", 256):
                report.add("error", "dataset", f"datasets[{i}]: min_bucket_reso must be <= the resolution {min(r)}")
        subs = ds.get("subsets", [])
        if not subs:
            report.add("error", "dataset", f"datasets[{i}]: no subsets")
        for j, s in enumerate(subs):
            where = f"datasets[{i}].subsets[{j}]"
            _check_keys(where, s, {**SD_ANY_LEVEL, **SD_SUBSET_ONLY}, report)
            if "image_dir" not in s:
                report.add("error", "dataset", f"{where}: required key image_dir not provided")
            if "num_repeats" not in s and "num_repeats" not in ds and "num_repeats" not in general:
                report.add("warning", "dataset", f"{where}: num_repeats not set; the folder's N_ prefix is ignored with --dataset_config, so it trains 1 repeat")
            ext = s.get("caption_extension", ds.get("caption_extension", general.get("caption_extension")))
            if ext is None:
                report.add("error", "dataset", f"{where}: caption_extension not set: sd-scripts falls back to '.caption' and finds no .txt captions")


def check_musubi_dataset_doc(doc: dict[str, Any], report: CheckReport) -> None:
    for k in doc:
        if k not in ("general", "datasets"):
            report.add("error", "dataset", f"extra top-level key {k!r}")
    general = doc.get("general", {})
    _check_keys("[general]", general, MUSUBI_GENERAL, report)
    caches: set[str] = set()
    if not doc.get("datasets"):
        report.add("error", "dataset", "no [[datasets]] entries")
    for i, ds in enumerate(doc.get("datasets", [])):
        where = f"datasets[{i}]"
        if "subsets" in ds:
            report.add("error", "dataset", f"{where}: musubi-tuner has no subsets")
        video = "video_directory" in ds or "video_jsonl_file" in ds
        drop = _MUSUBI_IMAGE_ONLY if video else _MUSUBI_VIDEO_ONLY
        _check_keys(where, ds, {k: v for k, v in MUSUBI_DATASET.items() if k not in drop}, report)
        if not any(k in ds for k in ("image_directory", "image_jsonl_file", "video_directory", "video_jsonl_file")):
            report.add("error", "dataset", f"{where}: needs image_directory or video_directory")
        cache = ds.get("cache_directory")
        if cache is None:
            report.add("warning", "dataset", f"{where}: no cache_directory; caches go next to the media")
        elif cache in caches:
            report.add("error", "dataset", f"{where}: cache_directory {cache} is shared with another dataset (musubi raises ValueError)")
        else:
            caches.add(cache)
        for f in ds.get("target_frames", []) if isinstance(ds.get("target_frames"), list) else []:
            if isinstance(f, int) and (f < 1 or (f - 1) % 4):
                report.add("error", "dataset", f"{where}.target_frames: {f} is not N*4+1")
        if ds.get("frame_extraction") not in (None, "head", "chunk", "slide", "uniform", "full"):
            report.add("error", "dataset", f"{where}.frame_extraction: {ds['frame_extraction']!r} is not head/chunk/slide/uniform/full")
        if general.get("caption_extension", ds.get("caption_extension")) is None:
            report.add("warning", "dataset", f"{where}: caption_extension not set")


# -- images and captions ---------------------------------------------------------------------------


def check_media(spec: ArchSpec, doc: dict[str, Any], trigger: str | None, report: CheckReport) -> None:
    general = doc.get("general", {})
    dirs: list[tuple[str, bool, str | None]] = []
    if spec.trainer == "musubi-tuner":
        for ds in doc.get("datasets", []):
            d = ds.get("image_directory") or ds.get("video_directory")
            if d:
                dirs.append((d, False, ds.get("caption_extension", general.get("caption_extension"))))
        exts = MUSUBI_IMAGE_EXTENSIONS
    else:
        for ds in doc.get("datasets", []):
            for s in ds.get("subsets", []):
                if "image_dir" in s:
                    ext = s.get("caption_extension", ds.get("caption_extension", general.get("caption_extension")))
                    dirs.append((s["image_dir"], bool(s.get("is_reg")), ext))
        exts = SD_IMAGE_EXTENSIONS
    rx = re.compile(rf"(?<![\w]){re.escape(trigger)}(?![\w])") if trigger else None
    total = 0
    for d, is_reg, ext in dirs:
        p = Path(d)
        if not p.is_dir():
            report.add("error", "dataset", f"{d}: folder does not exist")
            continue
        images = _glob(d, exts)
        videos = [x for x in p.iterdir() if x.suffix.lower() in (".mp4", ".webm", ".mov", ".avi", ".mkv")]
        media = images + [str(v) for v in videos]
        if not media:
            report.add("error", "dataset", f"{d}: no images the trainer reads (.png .jpg .jpeg .webp .bmp, exact case)")
            continue
        total += 0 if is_reg else len(media)
        skipped = [x for x in p.iterdir() if x.is_file() and x.suffix.lower() in (".gif", ".tif", ".tiff") or (x.suffix.lower() in (".jpg", ".png", ".jpeg", ".webp") and x.suffix not in exts)]
        if skipped:
            report.add("warning", "dataset", f"{d}: {len(skipped)} file(s) the trainer skips ({skipped[0].name}, ...); run `prep layout` to convert them")
        cap_ext = ext or ".caption"
        missing, no_trigger = [], []
        for m in media:
            cap = Path(os.path.splitext(m)[0] + cap_ext)
            try:
                text = read_caption(cap)
            except ValueError as exc:
                report.add("error", "captions", str(exc))
                continue
            if text is None or not text:
                missing.append(Path(m).name)
            elif rx is not None and not is_reg and not rx.search(text):
                no_trigger.append(Path(m).name)
        if missing:
            what = "skipped by musubi-tuner" if spec.trainer == "musubi-tuner" else "trained on the class tokens only"
            report.add("error", "captions", f"{d}: {len(missing)} image(s) without a {cap_ext} caption ({', '.join(missing[:3])}); they are {what}")
        if no_trigger:
            report.add("error", "captions", f"{d}: trigger {trigger!r} missing from {len(no_trigger)} caption(s) ({', '.join(no_trigger[:3])}); run `prep trigger`")
        if not missing and not no_trigger:
            report.add("ok", "captions", f"{d}: {len(media)} captioned" + (f", trigger in all" if rx is not None and not is_reg else ""))
        stale = [x.name for x in p.glob("*.npz")]
        if stale:
            report.add("warning", "dataset", f"{d}: {len(stale)} trainer cache file(s) (*.npz) from an earlier run; delete them if images, captions, precision or caption_dropout_rate changed")
    if dirs and total == 0:
        report.add("error", "dataset", "the dataset has no training images")


# -- training TOML ---------------------------------------------------------------------------------


def _homogeneous(v: Any) -> bool:
    """toml 0.10.2 (what the trainers use) rejects arrays that mix types, even int and float."""
    if not isinstance(v, list) or not v:
        return True
    return len({type(x) for x in v}) == 1


def check_train_doc(spec: ArchSpec, doc: dict[str, Any], report: CheckReport, where: str = "train.toml") -> dict[str, Any]:
    options = load_option_list(spec.options_key)
    flat, issues = flatten_like_trainer(doc)
    for i in issues:
        report.add(i.level, "config", f"{where}: {i}")
    for k, v in flat.items():
        if isinstance(v, list) and not _homogeneous(v):
            report.add("error", "config", f"{where}: {k} mixes types in one array; the trainer's toml 0.10.2 cannot read it")
    for i in validate_flat(flat, options, ignored=spec.ignored_keys):
        report.add(i.level, "config", f"{where}: {i}")
    get = flat.get
    te_cache = get("cache_text_encoder_outputs") or get("cache_text_encoder_outputs_to_disk")
    if spec.trainer == "sd-scripts":
        if te_cache and not get("network_train_unet_only"):
            report.add("error", "config", f"{where}: cache_text_encoder_outputs needs network_train_unet_only = true (the trainer asserts)")
        if spec.family in ("flux", "sd3") and get("mixed_precision") == "fp16":
            report.add("error", "config", f"{where}: {spec.name} in fp16 trains to NaN; use bf16")
        for k in ("pretrained_model_name_or_path",):
            if not get(k):
                report.add("error", "config", f"{where}: {k} is not set")
    else:
        if not any(get(a) for a in ("sdpa", "flash_attn", "flash3", "sage_attn", "xformers")):
            report.add("error", "config", f"{where}: musubi needs one attention flag (sdpa = true)")
        if not get("dit"):
            report.add("error", "config", f"{where}: dit is not set")
        if spec.task and get("task") not in (spec.task, "t2v-1.3B" if spec.task == "t2v-14B" else spec.task):
            report.add("error", "config", f"{where}: task = {get('task')!r}, {spec.name} needs {spec.task!r}")
    if get("mixed_precision") in (None, "no"):
        report.add("warning", "config", f"{where}: mixed_precision is not set: everything runs in fp32")
    if get("log_with") in ("tensorboard", "all") and not get("logging_dir"):
        report.add("error", "config", f"{where}: log_with = tensorboard needs logging_dir")
    if get("blocks_to_swap") and (get("cpu_offload_checkpointing") or get("unsloth_offload_checkpointing") or get("offload_inactive_dit")):
        report.add("error", "config", f"{where}: blocks_to_swap cannot be combined with offloaded checkpointing")
    if not get("output_dir"):
        report.add("error", "config", f"{where}: output_dir is not set")
    if not get("max_train_epochs"):
        report.add("warning", "config", f"{where}: max_train_epochs not set: the trainer runs max_train_steps ({get('max_train_steps', 1600)})")
    if not get("save_state"):
        report.add("warning", "config", f"{where}: save_state is off: an interrupted run cannot resume")
    if not any(i.level == "error" and i.area == "config" for i in report.items):
        report.add("ok", "config", f"{where}: {len(flat)} keys, all known to {options.script} @ {options.commit[:8]}")
    return flat


# -- trainer subprocess ----------------------------------------------------------------------------


def trainer_python(checkout: Path, python: str | None = None) -> str:
    """The trainer's interpreter: explicit, else a venv inside the checkout, else ours."""
    if python:
        return python
    # .venv-loraprep is what `train_bridge setup` creates inside the checkout
    for cand in (".venv-loraprep/bin/python", "venv/bin/python", ".venv/bin/python", ".venv-loraprep/Scripts/python.exe", "venv/Scripts/python.exe", ".venv/Scripts/python.exe"):
        if (checkout / cand).is_file():
            return str(checkout / cand)
    return sys.executable


def run_probes(spec: ArchSpec, checkout: Path, jobs: list[dict[str, Any]], *, python: str | None = None, timeout: int = 900) -> list[dict[str, Any]]:
    """Run `trainer_probe.py` once in the trainer's Python for several configs.

    Each job: {"script": stem, "train": train.toml, "args": CLI args, "cache_args": {...}}.
    """
    with tempfile.TemporaryDirectory() as td:
        out = Path(td) / "probe.json"
        jobs_file = Path(td) / "jobs.json"
        jobs_file.write_text(json.dumps(jobs), encoding="utf-8")
        argv = [trainer_python(checkout, python), str(PROBE), spec.trainer, str(checkout), str(out), "--jobs", str(jobs_file)]
        env = dict(os.environ, PYTHONIOENCODING="utf-8", COLUMNS="200")
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, cwd=td)
        except subprocess.TimeoutExpired:
            return [{"errors": [f"the trainer's parser did not finish within {timeout} s"], "unknown_keys": []} for _ in jobs]
        if not out.is_file():
            tail = (proc.stderr or proc.stdout or "")[-1500:]
            return [{"errors": [f"the trainer probe failed to start (exit {proc.returncode}): {tail}"], "unknown_keys": []} for _ in jobs]
        return json.loads(out.read_text(encoding="utf-8"))


def probe_jobs_for_run(run: dict[str, Any]) -> list[dict[str, Any]]:
    """One probe job per training command of a run.json (cache argv checked with the first)."""
    spec = get_arch(run["arch"])
    cache_args = {c["name"]: c["args"] for c in run["commands"] if c["name"].startswith("cache")} or None
    jobs = []
    for c in run["commands"]:
        if not c["name"].startswith("train"):
            continue
        a = c["args"]
        cfg = a[a.index("--config_file") + 1]
        cli = [x for i, x in enumerate(a) if not (x == "--config_file" or (i > 0 and a[i - 1] == "--config_file"))]
        jobs.append({"name": c["name"], "script": Path(spec.train_script).stem, "train": cfg, "args": cli, "cache_args": cache_args})
        cache_args = None
    return jobs


# -- entry points ----------------------------------------------------------------------------------


def check_config_files(arch: str, train_toml: Path | str | None = None, dataset_toml: Path | str | None = None, *, trigger: str | None = None) -> CheckReport:
    """Check loose TOML files (no run.json): keys, types, schema, captions."""
    spec = get_arch(arch)
    report = CheckReport(str(train_toml or dataset_toml), spec.name)
    flat: dict[str, Any] = {}
    if train_toml is not None:
        try:
            doc = tomllib.loads(Path(train_toml).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            report.add("error", "config", f"{train_toml}: {exc}")
            return report
        flat = check_train_doc(spec, doc, report, Path(train_toml).name)
    ds_path = dataset_toml or flat.get("dataset_config")
    if ds_path is None:
        report.add("error", "dataset", "no dataset config (dataset_config is not set)")
        return report
    try:
        ddoc = tomllib.loads(Path(ds_path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        report.add("error", "dataset", f"{ds_path}: {exc}")
        return report
    check_dataset_doc(spec, ddoc, [flat], trigger, report)
    return report


def check_dataset_doc(spec: ArchSpec, ddoc: dict[str, Any], flats: list[dict[str, Any]], trigger: str | None, report: CheckReport) -> None:
    """The dataset TOML: schema, options that clash with the training TOMLs' caching, media."""
    if spec.trainer == "musubi-tuner":
        check_musubi_dataset_doc(ddoc, report)
    else:
        check_sd_dataset_doc(ddoc, spec, report)
    if any(f.get("cache_latents") or f.get("cache_latents_to_disk") for f in flats):
        for ds in ddoc.get("datasets", []):
            for s in ds.get("subsets", [ds]):
                if s.get("color_aug") or s.get("random_crop") or ddoc.get("general", {}).get("color_aug"):
                    report.add("error", "dataset", "color_aug/random_crop cannot be used with cache_latents")
    te_cache = any(f.get("cache_text_encoder_outputs") or f.get("cache_text_encoder_outputs_to_disk") for f in flats)
    if te_cache and spec.trainer == "sd-scripts":
        g = ddoc.get("general", {})
        for ds in ddoc.get("datasets", []):
            for s in ds.get("subsets", []):
                def val(k: str, s: dict[str, Any] = s, ds: dict[str, Any] = ds) -> Any:
                    return s.get(k, ds.get(k, g.get(k)))

                bad = [k for k in ("shuffle_caption", "caption_tag_dropout_rate", "token_warmup_step") if val(k)]
                if val("caption_dropout_rate") and not spec.te_cache_allows_caption_dropout:
                    bad.append("caption_dropout_rate")
                if bad:
                    report.add("error", "dataset", f"{s.get('image_dir')}: {', '.join(bad)} cannot be used with cache_text_encoder_outputs")
    check_media(spec, ddoc, trigger, report)


def check_run(run_dir: Path | str, *, sd_scripts: Path | str | None = None, musubi: Path | str | None = None, python: str | None = None, timeout: int = 900) -> CheckReport:
    """Everything `train_bridge check RUN` reports."""
    from train_bridge.config import load_run

    run_dir = Path(run_dir).resolve()
    run = load_run(run_dir)
    spec = get_arch(run["arch"])
    report = CheckReport(str(run_dir), spec.name)
    trains = [c for c in run["commands"] if c["name"].startswith("train")]
    ds_path: Path | None = None
    flats: dict[str, dict[str, Any]] = {}
    for c in trains:
        a = c["args"]
        cfg = Path(a[a.index("--config_file") + 1])
        ds_path = Path(a[a.index("--dataset_config") + 1]) if "--dataset_config" in a else ds_path
        if not cfg.is_file():
            report.add("error", "config", f"{cfg} is missing; rerun `train_bridge config`")
            continue
        doc = tomllib.loads(cfg.read_text(encoding="utf-8"))
        flats[c["name"]] = check_train_doc(spec, doc, report, cfg.name)
    if ds_path is None or not ds_path.is_file():
        report.add("error", "dataset", f"dataset config {ds_path} is missing")
        return report
    try:
        ddoc = tomllib.loads(ds_path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        report.add("error", "dataset", f"{ds_path}: {exc}")
        return report
    check_dataset_doc(spec, ddoc, list(flats.values()), run.get("trigger"), report)

    # Models: every path a command passes or a config names.
    checked: set[tuple[str, str]] = set()
    for cname, flat in flats.items():
        for m in spec.models:
            val = flat.get(m.key)
            if m.name == "dit_high" and cname != "train_high":
                continue
            if m.name == "dit" and cname == "train_high":
                continue
            if val is None:
                if m.required and "train" in m.used_by[0]:
                    report.add("error", "models", f"{m.name}: not set in {cname}")
                continue
            name = "dit_high" if (m.key == "dit" and cname == "train_high") else m.name
            if (name, str(val)) not in checked:
                checked.add((name, str(val)))
                check_model(spec, name, str(val), report, mixed_precision=flat.get("mixed_precision"))
    for c in run["commands"]:
        if c["name"].startswith("cache"):
            a = c["args"]
            for flag, name in (("--vae", "vae"), ("--t5", "t5"), ("--clip", "clip")):
                if flag in a and (name, a[a.index(flag) + 1]) not in checked:
                    checked.add((name, a[a.index(flag) + 1]))
                    check_model(spec, name, a[a.index(flag) + 1], report)
            if spec.i2v and "--i2v" not in a and "--clip" not in a and c["name"] == "cache_latents":
                report.add("error", "config", "cache_latents for an I2V model needs --i2v (or --clip for Wan 2.1); training fails with KeyError 'latents_image'")

    # Our estimate vs run.json.
    first = flats.get(trains[0]["name"]) if trains else None
    ours = None
    if first is not None:
        try:
            ours = estimate_from(spec, ddoc, first)
            report.add("ok", "dataset", f"estimate: {ours.steps_per_epoch} steps/epoch, {ours.total_steps} total")
        except (ValueError, OSError) as exc:
            report.add("error", "dataset", f"cannot estimate steps: {exc}")

    checkout = sd_scripts if spec.trainer == "sd-scripts" else musubi
    other = musubi if spec.trainer == "sd-scripts" else sd_scripts
    if other is not None:
        report.add("warning", "trainer", f"{spec.name} trains with {spec.trainer}; the other checkout is ignored")
    if checkout is not None:
        jobs = probe_jobs_for_run(run)
        results = run_probes(spec, Path(checkout).resolve(), jobs, python=python, timeout=timeout)
        for job, res in zip(jobs, results):
            res["command"] = job["name"]
            report.trainer.append(res)
            for e in res.get("errors", []):
                report.add("error", "trainer", f"{job['name']}: {spec.trainer} rejects: {e}")
            if not res.get("errors"):
                report.add("ok", "trainer", f"{job['name']}: {spec.trainer} parser and dataset validator accept it (0 unknown keys)")
            if ours is not None and res.get("total_steps") is not None:
                if res["total_steps"] != ours.total_steps or res.get("steps_per_epoch") != ours.steps_per_epoch:
                    report.add("error", "trainer", f"{job['name']}: step count differs: trainer {res.get('steps_per_epoch')}/epoch, {res['total_steps']} total; loraprep {ours.steps_per_epoch}/epoch, {ours.total_steps} total")
                else:
                    report.add("ok", "trainer", f"{job['name']}: the trainer computes the same {res['total_steps']} steps")
    return report
