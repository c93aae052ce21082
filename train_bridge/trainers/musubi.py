"""kohya-ss musubi-tuner (30c658c4): Wan 2.1 / 2.2.

One `[[datasets]]` entry per folder (no subsets, no regularisation), each with its own
`cache_directory`; latents and text-encoder outputs are cached by separate scripts before
training; `--mixed_precision` must equal the DiT's dtype (musubi asserts); buckets come from
its `BucketSelector` (step 16) and images without a caption file are dropped.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from pathlib import Path
from typing import Any

from prep.archs import ArchSpec
from prep.buckets import BucketRecord, BucketSpec
from train_bridge.safetensors_header import MIXED_PRECISION_FOR_DTYPE, HeaderError, read_header
from train_bridge.subsets import DatasetInfo
from train_bridge.trainers.base import (
    BOOL, FLOAT, INT, STR, CommandContext, MediaDir, Preset, Report, SubsetCount, check_keys, glob_exact, header_sizes, resolution_value, safe_name,
)
from train_bridge.trainers.sd_scripts import IMAGE_EXTENSIONS as _SD_IMAGE_EXTENSIONS
from train_bridge.validate import Issue
from train_bridge.video_items import (
    DEFAULT_MAX_FRAMES, MUSUBI_VIDEO_EXTENSIONS, VideoDatasetCount, VideoScan, VideoScanError, count_video_dataset, effective_mode, glob_videos, round_4n1,
    scan_video,
)
from train_bridge.vram import RESOLUTION_LADDER, preset_vram_gib, weight_bytes
from train_bridge.vram import estimate as vram_estimate

IMAGE_EXTENSIONS = _SD_IMAGE_EXTENSIONS + (".avif", ".AVIF")
FRAME_EXTRACTION = ("head", "chunk", "slide", "uniform", "full")
DIT_BLOCKS = r"(?:^|\.)blocks\.(\d+)\."
DIT_WEIGHTS = r"blocks\.\d+\..*weight$"

DATASET_GENERAL = {"resolution": "resolution", "batch_size": "int", "enable_bucket": "bool", "bucket_no_upscale": "bool"}
DATASET_ITEM = {
    "num_repeats": "int", "target_frames": "frames", "frame_extraction": "str", "frame_stride": "int", "frame_sample": "int", "max_frames": "int",
    "source_fps": "float",
}
SCHEMA_GENERAL = {"resolution": "res", "caption_extension": STR, "batch_size": INT, "num_repeats": INT, "enable_bucket": BOOL, "bucket_no_upscale": BOOL}
SCHEMA_DATASET = {
    **SCHEMA_GENERAL,
    "image_directory": STR, "image_jsonl_file": STR, "video_directory": STR, "video_jsonl_file": STR, "cache_directory": STR,
    "control_directory": STR, "target_frames": "frames", "frame_extraction": STR, "frame_stride": INT, "frame_sample": INT,
    "max_frames": INT, "source_fps": FLOAT, "multiple_target": BOOL, "fp_latent_window_size": INT,
}
_VIDEO_ONLY = {"video_directory", "video_jsonl_file", "target_frames", "frame_extraction", "frame_stride", "frame_sample", "max_frames", "source_fps"}
_IMAGE_ONLY = {"image_directory", "image_jsonl_file", "multiple_target", "fp_latent_window_size"}

# -- video datasets -------------------------------------------------------------------------
FULL_MAX_DEFAULT = 81
"""`max_frames` for videos that are not all 4N+1 clips (5 s at 16 fps, Wan's generation
length and `prep clips`' default): `full` then trains each video's first 81 frames. loraprep's choice."""
_FPS_TOLERANCE = 0.01


def _scans(directory: str, caption_ext: str | None, source_fps: float | None, target_fps: float | None) -> list[VideoScan]:
    out = []
    for p in glob_videos(directory):
        if caption_ext is not None and not os.path.exists(os.path.splitext(p)[0] + caption_ext):
            continue
        try:
            out.append(scan_video(p, source_fps=source_fps, target_fps=target_fps))
        except VideoScanError:
            continue  # `check` and `estimate` name it
    return out


def video_keys(spec: ArchSpec, directory: str, item_o: dict[str, Any], general: dict[str, Any], preset: Preset) -> dict[str, Any]:
    """The video keys of one `[[datasets]]` entry, chosen from the videos themselves.

    Default `frame_extraction = "full"`: musubi trains each video from frame 0 for
    `min(frames, max_frames)` rounded down to 4N+1 (`retrieve_latent_cache_batches`), so a
    4N+1-frame clip from `prep clips` trains every frame the user saw. `head` with
    `target_frames = [N]` would silently drop every clip shorter than N. `source_fps` is set only
    when the videos are not at the model's rate (musubi re-times to 16 fps only when it is set)
    and all share one rate (it is one value per dataset).
    """
    keys: dict[str, Any] = {}
    target = spec.video_fps or 16.0
    fps_given = "source_fps" in item_o
    probe = _scans(directory, general.get("caption_extension"), None, None)
    rates = sorted({round(s.fps, 3) for s in probe if s.fps})
    source = item_o.get("source_fps")
    if not fps_given and len(rates) == 1 and abs(rates[0] - target) > _FPS_TOLERANCE:
        source = float(rates[0])
    if source is not None:
        keys["source_fps"] = float(source)
        probe = _scans(directory, general.get("caption_extension"), float(source), target)
    frames = [s.frames for s in probe]
    mode = item_o.get("frame_extraction", "head" if "target_frames" in item_o else "full")  # target_frames asked for: a mode that reads it
    keys["frame_extraction"] = mode
    all_4n1 = bool(frames) and all((f - 1) % 4 == 0 for f in frames)
    longest = round_4n1(max(frames)) if frames else FULL_MAX_DEFAULT
    if mode == "full":
        keys["max_frames"] = item_o.get("max_frames", longest if all_4n1 else min(longest, FULL_MAX_DEFAULT))
    else:
        shortest = round_4n1(min(frames)) if frames else FULL_MAX_DEFAULT
        keys["target_frames"] = item_o.get("target_frames", [max(1, min(shortest, FULL_MAX_DEFAULT))])
        if mode == "slide":
            keys["frame_stride"] = item_o.get("frame_stride", keys["target_frames"][0])
        if mode == "uniform":
            keys["frame_sample"] = item_o.get("frame_sample", 2)
        if "max_frames" in item_o:
            keys["max_frames"] = item_o["max_frames"]
    return keys


def fitting_resolution(spec: ArchSpec, preset: Preset, res: tuple[int, int], entry: dict[str, Any]) -> tuple[int, int] | None:
    """A smaller video resolution when the preset's would not fit its card at the dataset's frame count
    (`train_bridge.vram`'s model); None when it fits or nothing on the ladder does."""
    budget = preset_vram_gib(preset.name)
    if budget is None or spec.dit_shape is None:
        return None
    frames = int(entry.get("max_frames") or max(entry.get("target_frames") or [1]))
    swap = int(preset.train.get("blocks_to_swap") or 0)
    bpw = weight_bytes(preset.train)
    if vram_estimate(spec.dit_shape, frames, *res, blocks_to_swap=swap, bytes_per_weight=bpw).total_gib <= budget:
        return None
    for lw, lh in RESOLUTION_LADDER:
        w, h = (lw, lh) if res[0] >= res[1] else (lh, lw)
        if w * h < res[0] * res[1] and vram_estimate(spec.dit_shape, frames, w, h, blocks_to_swap=swap, bytes_per_weight=bpw).total_gib <= budget:
            return (w, h)
    return None


def video_warnings(spec: ArchSpec, vc: VideoDatasetCount, ds: dict[str, Any]) -> list[str]:
    """What about a counted video dataset the user should know before training."""
    out = []
    d = vc.directory
    if vc.uncaptioned:
        out.append(f"{d}: {len(vc.uncaptioned)} video(s) without a caption file ({', '.join(os.path.basename(p) for p in vc.uncaptioned[:3])}): musubi-tuner stops with FileNotFoundError when caching them; caption them or move them out")
    for u in vc.unreadable:
        out.append(f"unreadable video: {u}")
    if vc.too_short:
        out.append(f"{d}: {len(vc.too_short)} video(s) shorter than every target_frames train nothing: {', '.join(os.path.basename(t) for t in vc.too_short[:3])}")
    if vc.same_stem:
        out.append(f"{d}: videos share a name ({', '.join(os.path.basename(p) for p in vc.same_stem[:4])}): musubi's cache files are named by stem, so one overwrites the other; rename them")
    target = spec.video_fps or 16.0
    rates = sorted({round(s.fps, 3) for s in vc.scans if s.fps})
    if ds.get("source_fps") is None and any(abs(r - target) > _FPS_TOLERANCE for r in rates):
        if len(rates) > 1:
            out.append(f"{d}: videos at several frame rates ({', '.join(f'{r:g}' for r in rates)} fps); musubi's source_fps is one value per dataset, so they train at their own speed: re-time them with `prep clips --fps {target:g}`")
        else:
            out.append(f"{d}: videos are {rates[0]:g} fps and source_fps is not set: they train as if they were {target:g} fps (motion {rates[0] / target:.2g}x slower); set dataset.source_fps={rates[0]:g} or run `prep clips`")
    mode = effective_mode(ds.get("frame_extraction"), ds.get("frame_sample"))
    if mode == "full":
        mf = int(ds.get("max_frames", DEFAULT_MAX_FRAMES))
        longer = [s for s in vc.scans if s.frames > mf]
        if longer:
            out.append(f"{d}: {len(longer)} video(s) are longer than max_frames={mf}: only their first {round_4n1(mf)} frames train (cut them with `prep clips`)")
        odd = [s for s in vc.scans if s.frames <= mf and (s.frames - 1) % 4]
        if odd:
            out.append(f"{d}: {len(odd)} video(s) are not 4N+1 frames long: musubi drops their last 1-3 frames ({', '.join(f'{os.path.basename(s.path)}: {s.frames}' for s in odd[:3])})")
    return out


# -- presets (lora-gym e42df8b0 templates + block swap per VRAM) -----------------------------
# (square side, batch, blocks_to_swap)
_ROWS: dict[str, tuple[int, int, int | None]] = {
    "8gb": (512, 1, 36),
    "12gb": (640, 1, 30),
    "16gb": (768, 1, 20),
    "24gb": (960, 1, 10),
    "48gb": (960, 1, None),
    "80gb": (960, 2, None),
}
_FP8_TEXT_ENCODER_PRESETS = ("8gb", "12gb", "16gb")
# Warnings per architecture family for an option (lora-gym's notes).
_OPTION_WARNINGS: dict[str, dict[str, str]] = {"wan21": {"fp8_scaled": "reported to corrupt colours on Wan 2.1 (lora-gym)"}}
# A 14B T2V DiT with at most this many blocks is the 1.3B model (30 blocks): its task and LoRA size.
_SMALL_T2V = {"t2v-14B": ("t2v-1.3B", 30, 16, 16.0)}


class MusubiTuner:
    name = "musubi-tuner"
    image_extensions = IMAGE_EXTENSIONS
    video_extensions = MUSUBI_VIDEO_EXTENSIONS
    dataset_general_keys = DATASET_GENERAL
    dataset_item_keys = DATASET_ITEM
    routed_train_keys: dict[str, str] = {}
    dataset_key_choices = {"frame_extraction": FRAME_EXTRACTION}
    crop_record_keys = {"bucket_no_upscale": "no_upscale"}
    has_reg_subsets = False
    resume_needs_initial_step = False
    caches_in_training = False
    missing_caption_effect = "skipped by musubi-tuner"

    # -- config --------------------------------------------------------------------------------
    def preset(self, spec: ArchSpec, name: str) -> Preset:
        side, batch, swap = _ROWS[name]
        train: dict[str, Any] = {
            "task": spec.task, "sdpa": True, "network_module": spec.network_module, "optimizer_type": "adamw8bit", "optimizer_args": ["weight_decay=0.01"],
            "lr_scheduler": "polynomial", "lr_scheduler_power": 2.0, "gradient_checkpointing": True, "max_data_loader_n_workers": 2,
            "persistent_data_loader_workers": True, "timestep_sampling": "shift", "discrete_flow_shift": 5.0 if spec.i2v else 3.0, "fp8_base": True,
            "vae_cache_cpu": True, "max_train_epochs": 10, "save_every_n_epochs": 1, "save_last_n_epochs": 4, "save_last_n_epochs_state": 1, "seed": 42,
            "log_with": "tensorboard",
        }
        if swap:
            train["blocks_to_swap"] = swap
        experts: dict[str, dict[str, Any]] = {}
        if not spec.dual_expert:
            train.update({"mixed_precision": "bf16", "network_dim": 24, "network_alpha": 24.0, "learning_rate": 8e-5})
        else:
            b = spec.timestep_boundary or 875
            train.update({"mixed_precision": "fp16", "fp8_scaled": True, "preserve_distribution_shape": True})
            experts = {
                "high": {"network_dim": 8, "network_alpha": 8.0, "learning_rate": 1e-4, "min_timestep": b, "max_timestep": 1000},
                "low": {"network_dim": 42, "network_alpha": 42.0, "learning_rate": 8e-5, "min_timestep": 0, "max_timestep": b},
            }
        return Preset(name, train, (side, side), batch, {}, experts, source="lora-gym e42df8b0 templates + block swap per VRAM")

    def run_defaults(self, spec: ArchSpec, run_dir: Path, sample_prompts: Path, train: dict[str, Any]) -> dict[str, Any]:
        return {}

    def derive_from_models(self, spec: ArchSpec, model_paths: dict[str, str], train: dict[str, Any], notes: dict[str, Any]) -> dict[str, str]:
        """musubi asserts `--mixed_precision` equals the DiT dtype: derive it (and 1.3B vs 14B)."""
        implied: dict[str, str] = {}
        for role in ("dit", "dit_high"):
            p = Path(model_paths[role]) if role in model_paths else None
            if p is None or not p.is_file() or p.suffix != ".safetensors":
                continue
            try:
                h = read_header(p)
            except (HeaderError, OSError):
                continue
            dtype = h.main_dtype(DIT_WEIGHTS)
            if dtype in MIXED_PRECISION_FOR_DTYPE and dtype != "F32":
                implied[role] = MIXED_PRECISION_FOR_DTYPE[dtype]
                if role == "dit":
                    train["mixed_precision"] = implied[role]
                    notes["mixed_precision"] = f"{implied[role]}: the DiT's weights are {dtype}"
            elif dtype and dtype.startswith("F8") and role == "dit":
                train["fp8_base"] = True
                train.pop("fp8_scaled", None)
                notes["fp8"] = f"DiT is {dtype}: fp8_base without fp8_scaled"
            if role != "dit":
                continue
            n_blocks = h.count_indices(DIT_BLOCKS)
            small = _SMALL_T2V.get(spec.task or "")
            if small and 0 < n_blocks <= small[1]:
                train["task"] = small[0]
                train["network_dim"], train["network_alpha"] = small[2], small[3]
                notes["task"] = f"{small[0]}: the DiT has {n_blocks} blocks (lora-gym 1.3B: dim {small[2]}/{small[3]:g})"
                limit = spec.swap_limit(n_blocks)
                if limit is not None and train.get("blocks_to_swap", 0) > limit:
                    train["blocks_to_swap"] = limit
        return implied

    def constraints(self, spec: ArchSpec, train: dict[str, Any], general: dict[str, Any], subset: dict[str, Any], explicit: set[str]) -> tuple[list[Issue], dict[str, str]]:
        issues: list[Issue] = []
        for key, why in _OPTION_WARNINGS.get(spec.family, {}).items():
            if train.get(key):
                issues.append(Issue("warning", key, why))
        return issues, {}

    def dataset_toml(
        self, spec: ArchSpec, ds: DatasetInfo, preset: Preset, general_o: dict[str, Any], item_o: dict[str, Any], run_dir: Path, record: BucketRecord | None
    ) -> dict[str, Any]:
        general_o = dict(general_o)
        explicit_res = "resolution" in general_o
        res = general_o.pop("resolution", preset.resolution)
        general: dict[str, Any] = {
            "resolution": [res[0], res[1]],
            "caption_extension": ".txt",
            "batch_size": general_o.pop("batch_size", preset.batch_size),
            "enable_bucket": True,
            "bucket_no_upscale": record.spec.no_upscale if record is not None else False,
        }
        general.update(general_o)
        datasets = []
        for i, s in enumerate(ds.train_subsets):
            cache = run_dir / "cache" / f"{i:02d}_{safe_name(s.image_dir.name)}"
            repeats = item_o.get("num_repeats", s.num_repeats)
            if s.n_images or not s.n_videos:
                datasets.append({"image_directory": str(s.image_dir), "cache_directory": str(cache), "num_repeats": repeats})
            if s.n_videos:  # a mixed folder is two datasets on the same folder (musubi globs images and videos apart)
                vcache = cache.with_name(cache.name + "_video") if s.n_images else cache
                entry: dict[str, Any] = {"video_directory": str(s.image_dir), "cache_directory": str(vcache), "num_repeats": repeats}
                entry.update(video_keys(spec, str(s.image_dir), item_o, general, preset))
                if not explicit_res:
                    fit = fitting_resolution(spec, preset, tuple(general["resolution"]), entry)
                    if fit is not None:
                        entry["resolution"] = list(fit)
                datasets.append(entry)
        return {"general": general, "datasets": datasets}

    def dataset_summary(self, doc: dict[str, Any]) -> tuple[tuple[int, int], int]:
        general = doc.get("general", {})
        return resolution_value(general.get("resolution")) or (0, 0), int(general.get("batch_size", 1))

    def _bucket_spec(self, spec: ArchSpec, ds: dict[str, Any], general: dict[str, Any]) -> BucketSpec:
        def get(key: str, default: Any) -> Any:
            return ds.get(key, general.get(key, default))

        res = resolution_value(get("resolution", [960, 544])) or (960, 544)
        return BucketSpec(resolution=res, steps=spec.bucket_steps[0], no_upscale=get("bucket_no_upscale", False), enabled=get("enable_bucket", False), family="musubi")

    def bucket_plan(self, spec: ArchSpec, doc: dict[str, Any]) -> list[tuple[BucketSpec, list[MediaDir]]]:
        general = doc.get("general", {})
        return [
            (self._bucket_spec(spec, ds, general), [MediaDir(ds["image_directory"], False, ds.get("caption_extension", general.get("caption_extension")))])
            for ds in doc.get("datasets", [])
            if "image_directory" in ds
        ]

    def media_dirs(self, doc: dict[str, Any]) -> list[MediaDir]:
        general = doc.get("general", {})
        out = []
        for ds in doc.get("datasets", []):
            ext = ds.get("caption_extension", general.get("caption_extension"))
            if ds.get("image_directory"):
                out.append(MediaDir(ds["image_directory"], False, ext))
            elif ds.get("video_directory"):
                out.append(MediaDir(ds["video_directory"], False, ext, kind="video"))
        return out

    def count_batches(self, spec: ArchSpec, doc: dict[str, Any], subsets_out: list[SubsetCount], buckets_out: Counter[str], warnings: list[str]) -> tuple[int, int, int]:
        general = doc.get("general", {})
        batches = n_items = 0
        for ds in doc.get("datasets", []):
            def get(key: str, default: Any, ds: dict[str, Any] = ds) -> Any:
                return ds.get(key, general.get(key, default))

            if "video_directory" in ds:
                vc = count_video_dataset(ds, general, steps=spec.bucket_steps[0])
                warnings.extend(video_warnings(spec, vc, ds))
                subsets_out.append(SubsetCount(vc.directory, len(vc.scans), vc.num_repeats, False, vc.items * vc.num_repeats))  # video_warnings names the rest
                for (w, h, f), c in vc.buckets.items():
                    buckets_out[f"{w}x{h}x{f}"] += c
                batches += vc.batches
                n_items += vc.items * vc.num_repeats
                continue
            if "image_directory" not in ds:
                warnings.append(f"{ds.get('video_jsonl_file')}: JSONL datasets are not estimated")
                continue
            selector = self._bucket_spec(spec, ds, general)
            ext = get("caption_extension", None)
            repeats = int(get("num_repeats", 1))
            batch = int(get("batch_size", 1))
            d = ds["image_directory"]
            paths = glob_exact(d, IMAGE_EXTENSIONS)
            captioned = [p for p in paths if ext is None or os.path.exists(os.path.splitext(p)[0] + ext)]
            unreadable: list[str] = []
            items = header_sizes(captioned, unreadable)
            subsets_out.append(SubsetCount(d, len(items), repeats, False, len(items) * repeats, len(paths) - len(captioned), unreadable))
            per: Counter[tuple[int, int]] = Counter()
            for _, size in items:
                per[selector.select(*size).bucket] += repeats
            for b, c in per.items():
                buckets_out[f"{b[0]}x{b[1]}"] += c
            batches += sum(math.ceil(c / batch) for c in per.values())
            n_items += len(items) * repeats
        return batches, n_items, 0

    def commands(self, spec: ArchSpec, ctx: CommandContext) -> list[dict[str, Any]]:
        ds = str(ctx.dataset_toml)
        lat = ["--dataset_config", ds, "--vae", ctx.model_paths["vae"]]
        if ctx.train.get("vae_cache_cpu"):
            lat.append("--vae_cache_cpu")
        if spec.i2v:
            lat += ["--clip", ctx.model_paths["clip"]] if "clip" in ctx.model_paths else ["--i2v"]
        te = ["--dataset_config", ds, "--t5", ctx.model_paths["t5"], "--batch_size", "16"]
        if ctx.preset in _FP8_TEXT_ENCODER_PRESETS:
            te.append("--fp8_t5")
        cmds: list[dict[str, Any]] = [
            {"name": "cache_latents", "script": spec.extra_scripts["cache_latents"], "args": lat, "accelerate": False, "accelerate_args": []},
            {"name": "cache_text_encoder", "script": spec.extra_scripts["cache_text_encoder"], "args": te, "accelerate": False, "accelerate_args": []},
        ]
        acc = ["--num_cpu_threads_per_process", "1", "--mixed_precision", ctx.train.get("mixed_precision", "no")]
        for c, p in ctx.train_files.items():
            cmds.append({"name": c, "script": spec.train_script, "args": ["--config_file", str(p), "--dataset_config", ds], "accelerate": True, "accelerate_args": list(acc)})
        return cmds

    # -- check ---------------------------------------------------------------------------------
    def check_dataset_doc(self, spec: ArchSpec, doc: dict[str, Any], report: Report) -> None:
        for k in doc:
            if k not in ("general", "datasets"):
                report.add("error", "dataset", f"extra top-level key {k!r}")
        general = doc.get("general", {})
        check_keys("[general]", general, SCHEMA_GENERAL, report)
        caches: set[str] = set()
        if not doc.get("datasets"):
            report.add("error", "dataset", "no [[datasets]] entries")
        for i, ds in enumerate(doc.get("datasets", [])):
            where = f"datasets[{i}]"
            if "subsets" in ds:
                report.add("error", "dataset", f"{where}: musubi-tuner has no subsets")
            video = "video_directory" in ds or "video_jsonl_file" in ds
            drop = _IMAGE_ONLY if video else _VIDEO_ONLY
            check_keys(where, ds, {k: v for k, v in SCHEMA_DATASET.items() if k not in drop}, report)
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
            if ds.get("frame_extraction") not in (None, *FRAME_EXTRACTION):
                report.add("error", "dataset", f"{where}.frame_extraction: {ds['frame_extraction']!r} is not {'/'.join(FRAME_EXTRACTION)}")
            if general.get("caption_extension", ds.get("caption_extension")) is None:
                report.add("warning", "dataset", f"{where}: caption_extension not set")

    def check_dataset_vs_train(self, spec: ArchSpec, doc: dict[str, Any], flats: list[dict[str, Any]], report: Report) -> None:
        return None

    def check_train(self, spec: ArchSpec, flat: dict[str, Any], report: Report, where: str) -> None:
        get = flat.get
        if not any(get(a) for a in ("sdpa", "flash_attn", "flash3", "sage_attn", "xformers")):
            report.add("error", "config", f"{where}: musubi needs one attention flag (sdpa = true)")
        if not get("dit"):
            report.add("error", "config", f"{where}: dit is not set")
        small = _SMALL_T2V.get(spec.task or "")
        allowed = (spec.task, small[0]) if small else (spec.task,)
        if spec.task and get("task") not in allowed:
            report.add("error", "config", f"{where}: task = {get('task')!r}, {spec.name} needs {spec.task!r}")
