"""Exact optimisation steps for a run, computed the way the trainer computes them.

sd-scripts (`DreamBoothDataset` + `BaseDataset.make_buckets`, v0.10.1): every image lands in a
bucket (`prep.buckets.BucketSpec`, same rules), each image is added `num_repeats` times,
each bucket yields `ceil(count / batch_size)` batches, datasets add up, and an epoch is
`ceil(batches / gradient_accumulation_steps)` steps. Regularisation images are registered
round-robin until they match the number of training images (with repeats), which doubles
the samples per epoch. Image sizes are the stored header sizes: the trainers ignore EXIF
rotation. musubi-tuner buckets with its own selector (step 16, same area, nearest aspect
ratio) and drops images without a caption file.

The naive `ceil(images * repeats / batch)` (the Colab notebook's formula) is wrong for
batch > 1 because every bucket rounds up on its own.
"""

from __future__ import annotations

import glob
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prep.buckets import BucketSpec, musubi_bucket_resolutions
from prep.images import ImageLoadError, stored_size
from train_bridge.trainers import ArchSpec, get_arch

SD_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".PNG", ".JPG", ".JPEG", ".WEBP", ".BMP")
MUSUBI_IMAGE_EXTENSIONS = SD_IMAGE_EXTENSIONS + (".avif", ".AVIF")
COLAB_BUDGET = 1000

# Seconds per optimisation step at batch 1 and the preset's resolution. Order-of-magnitude
# figures from the reference (citron notebook: "1000 steps ≈ 4+ h on a T4" for Anima at 768;
# the log example: 33 s/it on a T4). Others are scaled by published relative throughput and
# are marked approximate in the output.
SECONDS_PER_STEP: dict[str, dict[str, float]] = {
    "anima": {"T4": 15.0, "L4": 6.0, "A100": 1.6, "H100": 1.0},
    "flux": {"T4": 40.0, "L4": 12.0, "A100": 2.5, "H100": 1.6},
    "sdxl": {"T4": 6.0, "L4": 2.5, "A100": 0.8, "H100": 0.5},
    "sd3": {"T4": 10.0, "L4": 4.0, "A100": 1.2, "H100": 0.8},
    "wan21": {"L4": 30.0, "A100": 6.0, "H100": 4.0},
    "wan22": {"L4": 30.0, "A100": 6.0, "H100": 4.0},
}


@dataclass
class SubsetCount:
    image_dir: str
    images: int
    num_repeats: int
    is_reg: bool
    used_repeats: int  # images * repeats actually registered (reg: after balancing)
    skipped_uncaptioned: int = 0
    unreadable: list[str] = field(default_factory=list)


@dataclass
class Estimate:
    steps_per_epoch: int
    total_steps: int
    epochs: int | None
    batches_per_epoch: int
    images_with_repeats: int
    reg_images_with_repeats: int
    buckets: dict[str, int]
    subsets: list[SubsetCount]
    time_hours: dict[str, float]
    warnings: list[str] = field(default_factory=list)
    budget: int | None = None

    @property
    def over_budget(self) -> bool:
        return self.budget is not None and self.total_steps > self.budget

    def as_dict(self) -> dict[str, Any]:
        return {
            "steps_per_epoch": self.steps_per_epoch,
            "total_steps": self.total_steps,
            "epochs": self.epochs,
            "batches_per_epoch": self.batches_per_epoch,
            "images_with_repeats": self.images_with_repeats,
            "reg_images_with_repeats": self.reg_images_with_repeats,
            "buckets": self.buckets,
            "subsets": [s.__dict__ for s in self.subsets],
            "time_hours": self.time_hours,
            "budget": self.budget,
            "over_budget": self.over_budget,
            "warnings": self.warnings,
        }


def _glob(directory: str, exts: tuple[str, ...]) -> list[str]:
    paths: set[str] = set()
    for ext in exts:
        paths.update(glob.glob(os.path.join(glob.escape(directory), "*" + ext)))
    return sorted(paths)


def _sizes(paths: list[str], unreadable: list[str]) -> list[tuple[str, tuple[int, int]]]:
    out = []
    for p in paths:
        try:
            out.append((p, stored_size(p)))
        except ImageLoadError as exc:
            unreadable.append(f"{p}: {exc}")
    return out


def _sd_dataset_batches(ds: dict[str, Any], general: dict[str, Any], subsets_out: list[SubsetCount], buckets_out: Counter[str]) -> tuple[int, int, int]:
    """Batches, train images*repeats, reg images*repeats for one `[[datasets]]` entry."""

    def get(key: str, default: Any) -> Any:
        return ds.get(key, general.get(key, default))

    res = get("resolution", None)
    if res is None:
        raise ValueError("dataset has no resolution")
    res_t = (res, res) if isinstance(res, int) else (int(res[0]), int(res[1]))
    spec = BucketSpec(
        resolution=res_t,
        min_reso=get("min_bucket_reso", 256),
        max_reso=get("max_bucket_reso", 1024),
        steps=get("bucket_reso_steps", 64),
        no_upscale=get("bucket_no_upscale", False),
        enabled=get("enable_bucket", False),
    )
    batch = int(get("batch_size", 1))
    # image_key -> [bucket, repeats]; later subsets with the same path overwrite (dict semantics)
    data: dict[str, list[Any]] = {}
    reg_infos: list[list[Any]] = []
    seen_dirs: set[str] = set()
    n_train = n_reg = 0
    for sub in ds.get("subsets", []):
        def sget(key: str, default: Any, sub: dict[str, Any] = sub) -> Any:
            return sub.get(key, get(key, default))

        repeats = int(sget("num_repeats", 1))
        image_dir = sub.get("image_dir")
        is_reg = bool(sub.get("is_reg", False))
        if repeats < 1 or image_dir is None or image_dir in seen_dirs:
            continue
        unreadable: list[str] = []
        items = _sizes(_glob(image_dir, SD_IMAGE_EXTENSIONS), unreadable)
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
    for bucket, reps, count in reg_registered:
        count.used_repeats += reps
    for b, c in per_bucket.items():
        buckets_out[f"{b[0]}x{b[1]}"] += c
    batches = sum(math.ceil(c / batch) for c in per_bucket.values())
    return batches, n_train, sum(r for _, r, _ in reg_registered)


def musubi_buckets(resolution: tuple[int, int], steps: int = 16) -> list[tuple[int, int]]:
    """musubi-tuner's `BucketSelector` bucket list (the rule lives in `prep.buckets`)."""
    return musubi_bucket_resolutions(resolution, steps)


def _musubi_batches(doc: dict[str, Any], subsets_out: list[SubsetCount], buckets_out: Counter[str], warnings: list[str]) -> tuple[int, int]:
    general = doc.get("general", {})
    batches = n_items = 0
    for ds in doc.get("datasets", []):
        def get(key: str, default: Any, ds: dict[str, Any] = ds) -> Any:
            return ds.get(key, general.get(key, default))

        if "image_directory" not in ds:
            warnings.append(f"{ds.get('video_directory')}: video datasets are not estimated (frame counts need the videos decoded)")
            continue
        res = get("resolution", [960, 544])
        res_t = (res, res) if isinstance(res, int) else (int(res[0]), int(res[1]))
        selector = BucketSpec(resolution=res_t, steps=16, no_upscale=get("bucket_no_upscale", False), enabled=get("enable_bucket", False), family="musubi")
        ext = get("caption_extension", None)
        repeats = int(get("num_repeats", 1))
        batch = int(get("batch_size", 1))
        d = ds["image_directory"]
        paths = _glob(d, MUSUBI_IMAGE_EXTENSIONS)
        captioned = [p for p in paths if ext is None or os.path.exists(os.path.splitext(p)[0] + ext)]
        unreadable: list[str] = []
        items = _sizes(captioned, unreadable)
        count = SubsetCount(d, len(items), repeats, False, len(items) * repeats, len(paths) - len(captioned), unreadable)
        subsets_out.append(count)
        per: Counter[tuple[int, int]] = Counter()
        for _, size in items:
            per[selector.select(*size).bucket] += repeats
        for b, c in per.items():
            buckets_out[f"{b[0]}x{b[1]}"] += c
        batches += sum(math.ceil(c / batch) for c in per.values())
        n_items += len(items) * repeats
    return batches, n_items


def estimate_from(spec: ArchSpec, dataset_doc: dict[str, Any], train: dict[str, Any], *, budget: int | None = None, num_processes: int = 1) -> Estimate:
    """Steps for a dataset TOML document and the (flattened) training options."""
    subsets: list[SubsetCount] = []
    buckets: Counter[str] = Counter()
    warnings: list[str] = []
    if spec.trainer == "musubi-tuner":
        batches, n_train = _musubi_batches(dataset_doc, subsets, buckets, warnings)
        n_reg = 0
    else:
        batches = n_train = n_reg = 0
        general = dataset_doc.get("general", {})
        for ds in dataset_doc.get("datasets", []):
            b, t, r = _sd_dataset_batches(ds, general, subsets, buckets)
            batches, n_train, n_reg = batches + b, n_train + t, n_reg + r
    ga = int(train.get("gradient_accumulation_steps", 1) or 1)
    per_epoch = math.ceil(batches / num_processes / ga) if batches else 0
    epochs = train.get("max_train_epochs")
    if epochs:
        total = int(epochs) * per_epoch
    else:
        total = int(train.get("max_train_steps", 1600))
        if per_epoch:
            warnings.append(f"max_train_epochs is not set: the trainer runs max_train_steps={total} steps")
    for s in subsets:
        if s.images == 0:
            warnings.append(f"{s.image_dir}: no images the trainer can read (it takes .png .jpg .jpeg .webp .bmp, exact case)")
        if s.skipped_uncaptioned:
            warnings.append(f"{s.image_dir}: {s.skipped_uncaptioned} image(s) without a .txt caption are skipped by musubi-tuner")
        for u in s.unreadable:
            warnings.append(f"unreadable image: {u}")
    table = SECONDS_PER_STEP.get(spec.family, {})
    # a batch of B costs about B times a single step (memory-bound trainers)
    batch_factor = 1.0
    if spec.trainer == "musubi-tuner":
        batch_factor = float(dataset_doc.get("general", {}).get("batch_size", 1))
    elif dataset_doc.get("datasets"):
        batch_factor = float(dataset_doc["datasets"][0].get("batch_size", dataset_doc.get("general", {}).get("batch_size", 1)))
    runs = 2 if spec.dual_expert else 1
    hours = {gpu: round(total * s * batch_factor * ga * runs / 3600.0, 2) for gpu, s in table.items()}
    if budget is not None and total > budget:
        spe = max(per_epoch, 1)
        warnings.append(f"{total} steps is above the budget of {budget}: try max_train_epochs={max(1, budget // spe)}, or fewer repeats")
    return Estimate(per_epoch, total, int(epochs) if epochs else None, batches, n_train, n_reg, dict(sorted(buckets.items())), subsets, hours, warnings, budget)


def estimate_run(run_dir: Path | str, *, budget: int | None = COLAB_BUDGET) -> Estimate:
    """Estimate a written run folder (reads run.json, the dataset TOML and the first train TOML)."""
    import tomllib

    from train_bridge.config import load_run, load_train_toml

    run = load_run(run_dir)
    spec = get_arch(run["arch"])
    train_cmd = next(c for c in run["commands"] if c["name"].startswith("train"))
    args = train_cmd["args"]
    cfg_path = Path(args[args.index("--config_file") + 1])
    ds_path = Path(args[args.index("--dataset_config") + 1]) if "--dataset_config" in args else None
    flat, _ = load_train_toml(cfg_path)
    ds_path = ds_path or Path(flat["dataset_config"])
    doc = tomllib.loads(ds_path.read_text(encoding="utf-8"))
    return estimate_from(spec, doc, flat, budget=budget)
