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

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prep.buckets import musubi_bucket_resolutions
from train_bridge.runspec import RunSpec, RunSpecError, read_dataset_toml
from train_bridge.trainers import ArchSpec, trainer_for
from train_bridge.trainers.base import SubsetCount
from train_bridge.vram import advice as vram_advice
from train_bridge.vram import estimate as vram_estimate
from train_bridge.vram import preset_vram_gib, weight_bytes

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
    vram: list[dict[str, Any]] = field(default_factory=list)
    """Video runs: the modelled GPU memory of the largest frames x resolution bucket (`train_bridge.vram`)."""

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
            "vram": self.vram,
        }


def musubi_buckets(resolution: tuple[int, int], steps: int = 16) -> list[tuple[int, int]]:
    """musubi-tuner's `BucketSelector` bucket list (the rule lives in `prep.buckets`)."""
    return musubi_bucket_resolutions(resolution, steps)


def vram_report(spec: ArchSpec, buckets: dict[str, int], train: dict[str, Any], vram_gib: float | None) -> tuple[list[dict[str, Any]], list[str]]:
    """The modelled memory of the heaviest video bucket, and advice when it exceeds `vram_gib`."""
    shape = spec.dit_shape
    sizes = []
    for key in buckets:
        parts = key.split("x")
        if len(parts) == 3:
            sizes.append(tuple(int(p) for p in parts))
    if shape is None or not sizes:
        return [], []
    swap = int(train.get("blocks_to_swap") or 0)
    bpw = weight_bytes(train)
    est = max((vram_estimate(shape, f, w, h, blocks_to_swap=swap, bytes_per_weight=bpw) for w, h, f in sizes), key=lambda e: e.total_gib)
    row = {**est.as_dict(), "blocks_to_swap": swap, "fp8_base": bool(train.get("fp8_base")), "model": "loraprep's model (docs/train_bridge.md), not a measurement"}
    if vram_gib is not None:
        row["budget_gib"] = vram_gib
    warnings = []
    if vram_gib is not None and est.total_gib > vram_gib:
        tips = vram_advice(spec, train, est.frames, est.width, est.height, vram_gib)
        warnings.append(
            f"{est.frames} frames at {est.width}x{est.height} needs about {est.total_gib:.0f} GiB of GPU memory (loraprep's model) "
            f"and the preset is for {vram_gib:g} GiB: try {'; or '.join(tips)}"
        )
    return [row], warnings


def estimate_from(
    spec: ArchSpec, dataset_doc: dict[str, Any], train: dict[str, Any], *, budget: int | None = None, num_processes: int = 1, preset: str | None = None
) -> Estimate:
    """Steps for a dataset TOML document and the (flattened) training options."""
    trainer = trainer_for(spec)
    subsets: list[SubsetCount] = []
    buckets: Counter[str] = Counter()
    warnings: list[str] = []
    batches, n_train, n_reg = trainer.count_batches(spec, dataset_doc, subsets, buckets, warnings)
    ga = int(train.get("gradient_accumulation_steps", 1) or 1)
    per_epoch = math.ceil(batches / num_processes / ga) if batches else 0
    epochs = train.get("max_train_epochs")
    if epochs:
        total = int(epochs) * per_epoch
    else:
        total = int(train.get("max_train_steps", 1600))
        if per_epoch:
            warnings.append(f"max_train_epochs is not set: the trainer runs max_train_steps={total} steps")
    exts = " ".join(e for e in trainer.image_extensions if e == e.lower())
    for s in subsets:
        if s.images == 0:
            warnings.append(f"{s.image_dir}: no images the trainer can read (it takes {exts}, exact case)")
        if s.skipped_uncaptioned:
            warnings.append(f"{s.image_dir}: {s.skipped_uncaptioned} image(s) without a .txt caption are skipped by {trainer.name}")
        for u in s.unreadable:
            warnings.append(f"unreadable image: {u}")
    table = SECONDS_PER_STEP.get(spec.family, {})
    # a batch of B costs about B times a single step (memory-bound trainers)
    batch_factor = float(trainer.dataset_summary(dataset_doc)[1]) if dataset_doc.get("datasets") else 1.0
    runs = 2 if spec.dual_expert else 1
    hours = {gpu: round(total * s * batch_factor * ga * runs / 3600.0, 2) for gpu, s in table.items()}
    warnings += budget_warnings(total, per_epoch, budget)
    vram, vram_warnings = vram_report(spec, buckets, train, preset_vram_gib(preset))
    warnings += vram_warnings
    return Estimate(per_epoch, total, int(epochs) if epochs else None, batches, n_train, n_reg, dict(sorted(buckets.items())), subsets, hours, warnings, budget, vram)


def budget_warnings(total: int, steps_per_epoch: int, budget: int | None) -> list[str]:
    """The step-budget warning `estimate` and `config` both give."""
    if budget is None or total <= budget:
        return []
    spe = max(steps_per_epoch, 1)
    return [f"{total} steps is above the budget of {budget}: try max_train_epochs={max(1, budget // spe)}, or fewer repeats"]


def estimate_run(run_dir: Path | str, *, budget: int | None = None) -> Estimate:
    """Estimate a written run folder (run.json, its dataset TOML and its first train TOML).

    Warns as `config` did: outside the step range recorded in run.json (`derived.step_target`,
    per architecture and use case, `train_bridge.presets`), and above `budget` when one is given.

    Raises RunSpecError (naming the file) for a missing or malformed run.json or TOML.
    """
    run = RunSpec.load(Path(run_dir))
    spec = run.arch_spec()
    cmd = run.train_commands[0] if run.train_commands else run.commands[0]
    flat = run.read_train(cmd)
    ds_path = run.dataset_toml(cmd)
    if ds_path is None and flat.get("dataset_config"):
        ds_path = Path(flat["dataset_config"])
    if ds_path is None:
        raise RunSpecError(f"{run.path}: command {cmd.name} names no dataset config; rewrite it with `train_bridge config`.")
    est = estimate_from(spec, read_dataset_toml(ds_path), flat, budget=budget, preset=getattr(run, "preset", None))
    target = run.derived.get("step_target") if isinstance(run.derived, dict) else None
    if isinstance(target, dict) and {"low", "high"} <= set(target):
        from train_bridge.presets import StepTarget  # noqa: PLC0415

        uc = run.derived.get("use_case")
        what = spec.name + (f" {uc['name']}" if isinstance(uc, dict) and uc.get("name") else "")
        for w in StepTarget(int(target["low"]), int(target["high"]), str(target.get("source", ""))).warnings(est.total_steps, est.steps_per_epoch, what):
            if w not in est.warnings:
                est.warnings.append(w)
    return est
