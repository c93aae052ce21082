"""What every trainer implementation shares: preset and count types, dataset value parsing.

Kept apart from `train_bridge.trainers` (the protocol and registry) so that the trainer files,
presets, config, estimate and check can all import it without an import cycle.
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from prep.images import ImageLoadError, stored_size
from train_bridge.validate import coerce


@dataclass
class Preset:
    name: str
    train: dict[str, Any]
    """Training-TOML keys (trainer option names)."""
    resolution: tuple[int, int]
    batch_size: int
    subset: dict[str, Any] = field(default_factory=dict)
    """Dataset keys per subset (sd-scripts) or per dataset (musubi)."""
    experts: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Wan 2.2: per-expert overrides for "high" and "low"."""
    source: str = ""


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
class MediaDir:
    """One folder the trainer reads images (or videos) from, as its dataset TOML says."""

    path: str
    is_reg: bool
    caption_extension: str | None
    kind: str = "image"
    """`image` or `video` (musubi: a video_directory entry; a mixed folder is listed once per kind)."""


@dataclass
class CommandContext:
    """What a trainer needs to build the argv of a run's commands."""

    dataset_toml: Path
    train_files: dict[str, Path]
    """Command name (`train`, `train_high`, ...) -> its training TOML."""
    model_paths: dict[str, str]
    train: dict[str, Any]
    """The flat options of the first training config."""
    preset: str


class Report(Protocol):
    """Where check-time findings go (`train_bridge.check.CheckReport`)."""

    def add(self, level: str, area: str, message: str) -> None: ...


VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".avi", ".mkv")


def glob_exact(directory: str, exts: tuple[str, ...]) -> list[str]:
    """Files with one of `exts` (exact case, as the trainers' glob does)."""
    paths: set[str] = set()
    for ext in exts:
        paths.update(glob.glob(os.path.join(glob.escape(directory), "*" + ext)))
    return sorted(paths)


def header_sizes(paths: list[str], unreadable: list[str]) -> list[tuple[str, tuple[int, int]]]:
    """(path, stored size) from the image headers; failures are appended to `unreadable`."""
    out = []
    for p in paths:
        try:
            out.append((p, stored_size(p)))
        except ImageLoadError as exc:
            unreadable.append(f"{p}: {exc}")
    return out


def parse_resolution(raw: Any) -> tuple[int, int]:
    """`1024`, `"1024"`, `"896,1152"`, `[896, 1152]` -> (W, H)."""
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


@dataclass(frozen=True)
class _Kind:
    """A stand-in option so dataset values go through the same coercion as training options."""

    type: str
    name: str = ""
    nargs: Any = None
    choices: Any = None

    @property
    def is_list(self) -> bool:
        return False


def dataset_value(kind: str, raw: Any) -> Any:
    """A `--set dataset.KEY=V` value typed as the trainer's dataset schema wants it."""
    if kind == "resolution":
        return parse_resolution(raw)
    if kind == "frames":
        items = raw if isinstance(raw, list) else [v for v in re.split(r"[,\s]+", str(raw).strip("[] ")) if v]
        frames = [int(v) for v in items]
        bad = [f for f in frames if f < 1 or (f - 1) % 4]
        if bad:
            raise ValueError(f"frame counts must be N*4+1 (1, 5, 9, ... 81), got {bad}")
        return frames
    if kind in ("bool", "int", "float"):
        return coerce(_Kind({"bool": "flag"}.get(kind, kind)), raw)  # type: ignore[arg-type]
    return str(raw)


def safe_name(text: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")
    return s or "lora"


def resolution_value(res: Any) -> tuple[int, int] | None:
    """A dataset TOML resolution (int or [W, H]) as (W, H); None when absent or malformed."""
    if isinstance(res, int) and not isinstance(res, bool):
        return (res, res)
    if isinstance(res, list) and len(res) == 2 and all(isinstance(x, int) for x in res):
        return (res[0], res[1])
    return None


# -- dataset TOML schema checks (the trainers' voluptuous schemas are strict isinstance checks) --
INT, BOOL, STR, FLOAT, NUM = "int", "bool", "str", "float", "num"


def type_ok(kind: str, v: Any) -> bool:
    if kind == INT:
        return isinstance(v, int) and not isinstance(v, bool)
    if kind == BOOL:
        return isinstance(v, bool)
    if kind == STR:
        return isinstance(v, str)
    if kind == FLOAT:
        return isinstance(v, float)
    if kind == NUM:
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if kind == "res":
        return resolution_value(v) is not None
    if kind == "pair":
        return isinstance(v, list) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v)
    if kind == "frames":
        return isinstance(v, list) and all(isinstance(x, int) for x in v)
    if kind == "table":
        return isinstance(v, dict)
    return True


def check_keys(where: str, table: dict[str, Any], allowed: dict[str, str], report: Report) -> None:
    for k, v in table.items():
        if k in ("subsets", "datasets") and isinstance(v, list):
            continue
        kind = allowed.get(k)
        if kind is None:
            report.add("error", "dataset", f"{where}: extra key {k!r} not allowed here (the trainer rejects the dataset config)")
        elif not type_ok(kind, v):
            hint = " (write 0.0 / 1.0: the schema wants a float)" if kind == FLOAT else ""
            report.add("error", "dataset", f"{where}.{k}: expected {kind}, got {v!r}{hint}")
