"""The trainers train_bridge writes runs for: one `Trainer` per family, behind one protocol.

Facts that differ per architecture are data in `prep.archs` (re-exported here); behaviour that
differs per trainer family (the dataset TOML and its schema, the commands of a run, presets,
constraint and check-time rules, step counting) lives in one file per family:
`sd_scripts.py` (kohya-ss sd-scripts: Anima, FLUX, SDXL, SD3) and `musubi.py` (musubi-tuner:
Wan). `trainer_for(spec)` is the one place that picks it; config, check, estimate, presets
and OOM advice call the protocol and never ask which trainer it is.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Protocol

from prep.archs import ARCH_NAMES, MUSUBI, REGISTRY, SD_SCRIPTS, ArchSpec, ModelArg, get_arch
from prep.buckets import BucketRecord, BucketSpec
from train_bridge.subsets import DatasetInfo
from train_bridge.trainers.base import CommandContext, MediaDir, Preset, Report, SubsetCount
from train_bridge.validate import Issue


class Trainer(Protocol):
    name: str
    image_extensions: tuple[str, ...]
    """Suffixes the trainer's image glob finds (exact case)."""
    video_extensions: tuple[str, ...]
    """Suffixes the trainer's video glob finds (exact case); () for a trainer without video datasets."""
    dataset_general_keys: dict[str, str]
    """Dataset-wide keys `--set dataset.KEY=V` may set, with their kind."""
    dataset_item_keys: dict[str, str]
    """Per-subset (sd-scripts) / per-dataset (musubi) keys `--set dataset.KEY=V` may set."""
    routed_train_keys: dict[str, str]
    """Training options that are really dataset settings: routed into the dataset TOML."""
    dataset_key_choices: dict[str, tuple[str, ...]]
    """Allowed values of string dataset keys (musubi: frame_extraction)."""
    crop_record_keys: dict[str, str]
    """Dataset keys a crop record (`buckets.json`) sets, with the `BucketSpec` field they come from."""
    has_reg_subsets: bool
    caches_in_training: bool
    """Latents / text-encoder outputs are cached by the training script (sd-scripts options),
    not by separate cache commands (musubi)."""
    missing_caption_effect: str
    resume_needs_initial_step: bool
    """A state saved after a resume holds a session-relative step (sd-scripts), so launch passes
    the global step it recorded as `--initial_step`."""

    def preset(self, spec: ArchSpec, name: str) -> Preset:
        """The preset's settings for `spec` (name already normalised)."""

    def run_defaults(self, spec: ArchSpec, run_dir: Path, sample_prompts: Path, train: dict[str, Any]) -> dict[str, Any]:
        """Training keys every run of this trainer gets (sample prompts, ...)."""

    def derive_from_models(self, spec: ArchSpec, model_paths: dict[str, str], train: dict[str, Any], notes: dict[str, Any]) -> dict[str, str]:
        """Settings read off the model files (Wan: precision, 1.3B); returns what each DiT implies
        for `mixed_precision` ({model role: value}) so an explicit contradiction can be refused."""

    def constraints(self, spec: ArchSpec, train: dict[str, Any], general: dict[str, Any], subset: dict[str, Any], explicit: set[str]) -> tuple[list[Issue], dict[str, str]]:
        """Resolve or reject option combinations this trainer asserts on."""

    def dataset_toml(
        self, spec: ArchSpec, ds: DatasetInfo, preset: Preset, general_o: dict[str, Any], item_o: dict[str, Any], run_dir: Path, record: BucketRecord | None
    ) -> dict[str, Any]:
        """The dataset TOML document (`record`: the buckets the crops were made for)."""

    def dataset_summary(self, doc: dict[str, Any]) -> tuple[tuple[int, int], int]:
        """(resolution, batch size) of the first dataset of a dataset TOML."""

    def bucket_plan(self, spec: ArchSpec, doc: dict[str, Any]) -> list[tuple[BucketSpec, list[MediaDir]]]:
        """Per dataset entry: the bucket settings the trainer will use and the folders they apply to."""

    def media_dirs(self, doc: dict[str, Any]) -> list[MediaDir]:
        """Every folder the dataset TOML points the trainer at."""

    def count_batches(self, spec: ArchSpec, doc: dict[str, Any], subsets_out: list[SubsetCount], buckets_out: Counter[str], warnings: list[str]) -> tuple[int, int, int]:
        """(batches per epoch, train images x repeats, reg images x repeats), the trainer's way."""

    def commands(self, spec: ArchSpec, ctx: CommandContext) -> list[dict[str, Any]]:
        """The run's commands (run.json `commands`), caches first."""

    def check_dataset_doc(self, spec: ArchSpec, doc: dict[str, Any], report: Report) -> None:
        """The trainer's dataset schema rules."""

    def check_dataset_vs_train(self, spec: ArchSpec, doc: dict[str, Any], flats: list[dict[str, Any]], report: Report) -> None:
        """Dataset options that clash with the training configs' caching."""

    def check_train(self, spec: ArchSpec, flat: dict[str, Any], report: Report, where: str) -> None:
        """Training-TOML rules this trainer asserts on."""


def _registry() -> dict[str, Trainer]:
    from train_bridge.trainers.musubi import MusubiTuner
    from train_bridge.trainers.sd_scripts import SdScripts

    return {SD_SCRIPTS: SdScripts(), MUSUBI: MusubiTuner()}


TRAINERS: dict[str, Trainer] = _registry()


def trainer_named(name: str) -> Trainer:
    try:
        return TRAINERS[name]
    except KeyError:
        raise KeyError(f"unknown trainer {name!r}; loraprep knows {', '.join(TRAINERS)}") from None


def trainer_for(spec: ArchSpec) -> Trainer:
    """The one place that maps an architecture to its trainer implementation."""
    return trainer_named(spec.trainer)


__all__ = [
    "ARCH_NAMES", "REGISTRY", "TRAINERS", "ArchSpec", "CommandContext", "MediaDir", "ModelArg", "Preset", "SubsetCount", "Trainer",
    "get_arch", "trainer_for", "trainer_named",
]
