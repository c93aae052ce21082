"""The project file `loraprep.toml`: every decision of a `loraprep run`, reproducible.

`loraprep run raw/ --trigger x ...` writes it; `loraprep run --config project/loraprep.toml`
reads it back; editing it is how a user changes a step. Each stage records a fingerprint of
its own settings chained to the fingerprint of the stage before it, so a changed setting
redoes that stage and the ones after it, and nothing else.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import tomli_w

from prep.fsutil import atomic_write_text

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PROJECT_FILE = "loraprep.toml"
STATE_FILE = ".loraprep/stages.json"


@dataclass
class ImportSettings:
    flatten: bool = True
    """One flat folder (zips usually hold a top folder; later stages read one level)."""


@dataclass
class CheckSettings:
    min_side: int | None = None
    """Images whose short side is below this are reported (default: half the resolution)."""


@dataclass
class DedupeSettings:
    enabled: bool = True
    threshold: int = 8
    mirror: bool = True


@dataclass
class CropSettings:
    enabled: bool = True
    framing: str = "bust"
    detector: str = "auto"
    detector_model: str | None = None
    anime_model: str | None = None
    no_face: str = "center"
    all_faces: bool = False
    upscale: bool = False
    pad: bool = False
    background: str = "white"
    format: str = "png"


@dataclass
class CaptionSettings:
    backend: str = "wd14"
    model: str | None = None
    general_threshold: float = 0.35
    character_threshold: float = 0.85
    mcut: bool = False
    prune_identity: bool = True
    """Drop tags of a character's fixed look (hair, eyes, ...) so the trigger learns them.

    On by default here because `lora_type` defaults to character; set false for style LoRAs.
    """
    prune_core: float | None = None
    exclude: list[str] = field(default_factory=list)
    replace: list[str] = field(default_factory=list)
    lora_type: str = "character"
    mode: str = "skip"
    """What to do with captions a user already has: skip (keep them), overwrite, append, prepend."""


@dataclass
class LayoutSettings:
    repeats: int = 10
    class_token: str | None = None
    reg: str | None = None


@dataclass
class TrainSettings:
    preset: str | None = None
    models: dict[str, str] = field(default_factory=dict)
    """Model files by role, e.g. dit, qwen3, vae (Anima); see `train_bridge config -h`."""
    set: dict[str, Any] = field(default_factory=dict)
    """Trainer options to override, checked against the trainer's real option list."""
    max_steps: int | None = None


@dataclass
class Project:
    source: str
    trigger: str
    trainer: str = "anima"
    resolution: int = 1024
    workers: int | None = None
    import_: ImportSettings = field(default_factory=ImportSettings)
    check: CheckSettings = field(default_factory=CheckSettings)
    dedupe: DedupeSettings = field(default_factory=DedupeSettings)
    crop: CropSettings = field(default_factory=CropSettings)
    caption: CaptionSettings = field(default_factory=CaptionSettings)
    layout: LayoutSettings = field(default_factory=LayoutSettings)
    train: TrainSettings = field(default_factory=TrainSettings)

    SECTIONS = ("import_", "check", "dedupe", "crop", "caption", "layout", "train")

    # -- TOML ---------------------------------------------------------------------------
    def to_toml(self) -> str:
        top = {k: v for k, v in asdict(self).items() if k not in self.SECTIONS}
        doc: dict[str, Any] = {"project": _drop_none(top)}
        for s in self.SECTIONS:
            doc[s.rstrip("_")] = _drop_none(asdict(getattr(self, s)))
        return "# loraprep project: `loraprep run --config THIS_FILE` reproduces the run.\n" + tomli_w.dumps(doc)

    @classmethod
    def from_toml(cls, text: str, *, path: str = PROJECT_FILE) -> Project:
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{path}: not valid TOML ({exc})") from None
        top = dict(doc.get("project", {}))
        for key in ("source", "trigger"):
            if key not in top:
                raise ValueError(f"{path}: [project] needs `{key}`")
        kwargs: dict[str, Any] = {}
        known_top = {f.name for f in fields(cls)} - set(cls.SECTIONS)
        for k, v in top.items():
            if k not in known_top:
                raise ValueError(f"{path}: unknown key project.{k} (known: {', '.join(sorted(known_top))})")
            kwargs[k] = v
        for s in cls.SECTIONS:
            sec_cls = {f.name: f for f in fields(cls)}[s].default_factory  # type: ignore[misc]
            data = doc.get(s.rstrip("_"), {})
            allowed = {f.name for f in fields(sec_cls)}  # type: ignore[arg-type]
            bad = set(data) - allowed
            if bad:
                raise ValueError(f"{path}: unknown key(s) in [{s.rstrip('_')}]: {', '.join(sorted(bad))} (known: {', '.join(sorted(allowed))})")
            kwargs[s] = sec_cls(**data)  # type: ignore[operator]
        unknown = set(doc) - {"project", *(s.rstrip("_") for s in cls.SECTIONS)}
        if unknown:
            raise ValueError(f"{path}: unknown section(s) {', '.join(sorted(unknown))}")
        return cls(**kwargs)

    @classmethod
    def load(cls, path: Path) -> Project:
        return cls.from_toml(Path(path).read_text(encoding="utf-8"), path=str(path))

    def save(self, path: Path) -> bool:
        """Write the file if its content changed; returns whether it wrote."""
        path, text = Path(path), self.to_toml()
        try:
            if path.read_text(encoding="utf-8") == text:
                return False
        except FileNotFoundError:
            pass
        atomic_write_text(path, text)
        return True


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    """tomli-w cannot write None: leave unset keys out (they take their defaults on reading)."""
    return {k: (_drop_none(v) if isinstance(v, dict) else v) for k, v in d.items() if v is not None}


def fingerprint(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class StageState:
    """What each stage last finished with: its fingerprint and a summary."""

    def __init__(self, project_dir: Path):
        self.path = Path(project_dir) / STATE_FILE
        try:
            self.data: dict[str, dict[str, Any]] = json.loads(self.path.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            self.data = {}

    def fresh(self, stage: str, fp: str) -> bool:
        return self.data.get(stage, {}).get("fingerprint") == fp

    def record(self, stage: str, fp: str, summary: dict[str, Any]) -> None:
        self.data[stage] = {"fingerprint": fp, "summary": summary}
        atomic_write_text(self.path, json.dumps(self.data, indent=2, default=str))

    def summary(self, stage: str) -> dict[str, Any]:
        return self.data.get(stage, {}).get("summary", {})

    def forget(self, stage: str) -> None:
        if self.data.pop(stage, None) is not None:
            atomic_write_text(self.path, json.dumps(self.data, indent=2, default=str))
