"""The project file `loraprep.toml`: every decision of a `loraprep run`, typed and reproducible.

`loraprep run raw/ --trigger x ...` writes it; `loraprep run --config project/loraprep.toml`
reads it back; editing it is how a user changes a step. It is a view of the stages' own
options classes: `[crop]` is `prep.crop.CropOptions`, `[caption]` is
`captioning.pipeline.CaptionStageOptions`, and so on, minus the settings that are the
project's (`[project]`: source, trigger, trainer, resolution, workers), which every stage that
has such an option receives from the top. So each option is declared once, in its stage, and
`upscale = 'no'` or `resolution = 'big'` is refused naming the key, the section and the file.

Each stage records a fingerprint of its own options chained to the fingerprint of the stage
before it, so a changed setting redoes that stage and the ones after it, and nothing else.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import tomli_w
from pydantic import ConfigDict, Field, ValidationError, create_model, field_validator
from pydantic.fields import FieldInfo

from prep.fsutil import atomic_write_text
from prep.options import OptionsError, StageOptions, describe_error
from prep.project import PROJECT_FILE, ProjectDirs
from prep.trigger import Trigger

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

STATE_FILE = "stages.json"
"""Under `ProjectDirs.state`."""

PROJECT_KEYS = ("source", "trigger", "trainer", "resolution", "workers", "engine", "ray_address")
"""Settings of the whole project: `[project]`, handed to every stage whose options have them."""
RUN_KEYS = ("dry_run",)
"""Decided per invocation by `loraprep run`, never stored."""


class TrainSettings(StageOptions):
    """`[train]`: what `train_bridge config` gets beyond the dataset (loraprep's own glue)."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    preset: str | None = None
    """VRAM preset (8gb ... 80gb); default: the architecture's default preset."""
    models: dict[str, str] = Field(default_factory=dict)
    """Model files by role, e.g. dit, qwen3, vae (Anima); the roles are prep.archs' ModelArgs."""
    set: dict[str, Any] = Field(default_factory=dict)
    """Trainer options to override, checked against the trainer's real option list."""
    max_steps: int | None = Field(default=None, ge=1)
    """Warn when the run needs more steps than this (Colab ~1000)."""


@dataclass(frozen=True)
class Section:
    """One `[table]` of loraprep.toml: the options class of a stage, seen from the project."""

    name: str
    options: str
    """`module:Class` of the stage's options (imported here, declared there)."""
    defaults: dict[str, Any] = field(default_factory=dict)
    """Where loraprep run's default differs from the per-command CLI's (see docs/loraprep-run.md)."""
    extra: dict[str, tuple[Any, Any, str]] = field(default_factory=dict)
    """loraprep-only keys: name -> (type, default, description)."""
    hidden: tuple[str, ...] = ()
    """Fields loraprep sets itself (the stage's folders), besides PROJECT_KEYS and RUN_KEYS."""
    own: tuple[str, ...] = ()
    """PROJECT_KEYS this stage does not take from the project (its own, of another type: [clips] resolution = "832x480")."""
    video_only: bool = False
    """Only runs (and is only checked) when the trainer is a video one."""

    def options_class(self) -> type[Any]:
        mod, _, cls = self.options.partition(":")
        return getattr(importlib.import_module(mod), cls)


SECTIONS: tuple[Section, ...] = (
    # zips usually hold a top folder, and later stages read one level
    Section("import", "prep.importer:ImportOptions", defaults={"flatten": True}),
    Section("check", "prep.check:CheckOptions"),
    Section("dedupe", "prep.dedupe:DedupeOptions", extra={"enabled": (bool, True, "Move near-duplicates to dupes/ (false: keep them).")}, hidden=("move_to",)),
    # with a reference, off-model crops are moved out of 02_cropped (to off_model/) unless --keep-off-model
    Section("crop", "prep.crop:CropOptions", defaults={"off_model": "set-aside"}, extra={"enabled": (bool, True, "false: no face crop, only the bucket fit of the whole image.")}),
    # lora_type defaults to character, so identity tags are pruned unless lora_type = "style"
    Section("caption", "captioning.pipeline:CaptionStageOptions", defaults={"prune_identity": True}, hidden=("keep_apart",)),
    Section("layout", "prep.layout:LayoutOptions", hidden=("buckets_from",)),
    # video trainers (Wan) with video sources: `prep clips` into 02_clips; fps and 4N+1 frames follow the trainer
    Section("clips", "prep.clips:ClipsOptions", own=("resolution",), video_only=True),
    # 3D-render projects (`loraprep run --renders`): style variations of the captioned renders into 05_renders
    Section("variations", "prep.variations.run:VariationOptions", hidden=("backend_options",),
            extra={"enabled": (bool, False, "true (or --renders): add img2img style variations of the renders (prep render-variations).")}),
    Section("train", "loraprep.project:TrainSettings"),
)
SECTION_NAMES = tuple(s.name for s in SECTIONS)


# -- the section models -----------------------------------------------------------------------


def _fields(cls: type[Any]) -> dict[str, FieldInfo]:
    """The declared fields of an options class (a StageOptions)."""
    return dict(cls.model_fields)


def _section_model(sec: Section) -> type[StageOptions]:
    cls = sec.options_class()
    if sec.name == "train":
        return cls
    skip = (set(PROJECT_KEYS) - set(sec.own)) | set(RUN_KEYS) | set(sec.hidden)
    own = _fields(cls)
    unknown = set(sec.defaults) - set(own)
    if unknown:  # a stage renamed an option: fail at import, in every test
        raise RuntimeError(f"loraprep.project: [{sec.name}] defaults for unknown options {sorted(unknown)} of {sec.options}")
    spec: dict[str, Any] = {}
    for name, f in own.items():
        if name in skip:
            continue
        if name in sec.defaults:
            f = FieldInfo.merge_field_infos(f, default=sec.defaults[name])
        elif f.is_required():
            continue  # required options are the project's (trigger ...) or loraprep's
        spec[name] = (f.annotation, f)
    for name, (typ, default, doc) in sec.extra.items():
        spec[name] = (typ, Field(default=default, description=doc))
    return create_model(f"{sec.name.title()}Section", __base__=StageOptions, __doc__=f"[{sec.name}] of loraprep.toml ({sec.options}).", **spec)


_MODELS = {s.name: _section_model(s) for s in SECTIONS}
ImportSection, CheckSection, DedupeSection, CropSection, CaptionSection, LayoutSection = (_MODELS[n] for n in ("import", "check", "dedupe", "crop", "caption", "layout"))
VariationsSection = _MODELS["variations"]
ClipsSection = _MODELS["clips"]


class Project(StageOptions):
    """Everything a `loraprep run` decides. Top-level fields are `[project]`; the rest are sections."""

    model_config = ConfigDict(populate_by_name=True, use_attribute_docstrings=True)

    source: str
    """Folder or .zip of raw images."""
    trigger: Trigger = Field(min_length=1)
    """Trigger word, exact casing."""
    trainer: str = "anima"
    """Architecture (prep.archs): anima, flux, sdxl, sd3, wan21-t2v, ..."""
    resolution: int = Field(default=1024, ge=64, le=8192)
    """Training resolution; crops are made for its buckets and the config trains at it."""
    workers: int | None = Field(default=None, ge=1)
    """Parallel workers (default: all cores)."""
    engine: Literal["local", "ray"] = "local"
    """Where check, dedupe, crop and caption run: local threads, or Ray Data actors (`pip install 'loraprep[ray]'`; prep.executor)."""
    ray_address: str = "local"
    """With engine = "ray": local (a private Ray), auto (the running cluster) or ray://host:port."""
    import_: ImportSection = Field(default_factory=ImportSection, alias="import")  # type: ignore[valid-type]
    check: CheckSection = Field(default_factory=CheckSection)  # type: ignore[valid-type]
    dedupe: DedupeSection = Field(default_factory=DedupeSection)  # type: ignore[valid-type]
    crop: CropSection = Field(default_factory=CropSection)  # type: ignore[valid-type]
    caption: CaptionSection = Field(default_factory=CaptionSection)  # type: ignore[valid-type]
    layout: LayoutSection = Field(default_factory=LayoutSection)  # type: ignore[valid-type]
    variations: VariationsSection = Field(default_factory=VariationsSection)  # type: ignore[valid-type]
    clips: ClipsSection = Field(default_factory=ClipsSection)  # type: ignore[valid-type]
    train: TrainSettings = Field(default_factory=TrainSettings)

    @field_validator("trainer")
    @classmethod
    def _known_trainer(cls, v: str) -> str:
        from prep.archs import get_arch

        try:
            return get_arch(v).name
        except KeyError as exc:
            raise ValueError(str(exc.args[0]) if exc.args else f"unknown trainer {v!r}") from None

    def section(self, name: str) -> StageOptions:
        return getattr(self, "import_" if name == "import" else name)

    def stage_options(self, name: str, cls: type[Any] | None = None, **given: Any) -> Any:
        """The options of stage `name` as its own class: its section, plus the project's settings it has.

        `given` are values loraprep decides (the stage's folders, dry_run). Raises OptionsError
        naming the section when the stage's own checks refuse the combination.
        """
        sec = next(s for s in SECTIONS if s.name == name)
        cls = cls or sec.options_class()
        own = _fields(cls)
        data = {k: v for k, v in self.section(name).model_dump().items() if k in own}
        for k in PROJECT_KEYS:
            if k in own and k not in sec.own and getattr(self, k) is not None:
                data[k] = getattr(self, k)
        data.update(given)
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise OptionsError(f"{PROJECT_FILE} [{name}]", [describe_error(e) for e in exc.errors()]) from None

    # -- TOML ---------------------------------------------------------------------------
    def to_doc(self) -> dict[str, Any]:
        dump = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        doc: dict[str, Any] = {"project": {k: dump[k] for k in PROJECT_KEYS if k in dump}}
        for s in SECTION_NAMES:
            doc[s] = dump[s]
        return doc

    def to_toml(self) -> str:
        return "# loraprep project: `loraprep run --config THIS_FILE` reproduces the run.\n" + tomli_w.dumps(self.to_doc())

    @classmethod
    def from_doc(cls, doc: dict[str, Any], *, path: str = PROJECT_FILE) -> Project:
        """Validate a parsed loraprep.toml; every problem is named by file, section and key."""
        problems: list[tuple[str, str]] = []
        top = doc.get("project", {})
        if not isinstance(top, dict):
            raise OptionsError(path, [("[project]", "must be a table")])
        for key in ("source", "trigger"):
            if key not in top:
                problems.append((f"[project] {key}", "missing (it says what to train on and the trigger word)"))
        unknown = set(doc) - {"project", *SECTION_NAMES}
        for name in sorted(unknown):
            problems.append((f"[{name}]", f"unknown section (known: project, {', '.join(SECTION_NAMES)})"))
        data: dict[str, Any] = dict(top)
        for name in SECTION_NAMES:
            if name in doc:
                data[name] = doc[name]
        if problems:
            raise OptionsError(path, problems)
        try:
            project = cls.model_validate(data)
        except ValidationError as exc:
            raise OptionsError(path, _located(exc)) from None
        project.check_stages(where=path)
        return project

    @property
    def video_trainer(self) -> bool:
        from prep.archs import get_arch  # noqa: PLC0415

        return bool(get_arch(self.trainer).video_fps)

    def check_stages(self, *, where: str = PROJECT_FILE) -> None:
        """Build every stage's options once, so the stages' own checks speak at load time."""
        problems: list[tuple[str, str]] = []
        for s in SECTIONS:
            if s.name == "train" or (s.video_only and not self.video_trainer):
                continue
            try:
                self.stage_options(s.name, **_required_stand_ins(s, self))
            except OptionsError as exc:
                problems += [(f"[{s.name}] {k}", m) for k, m in exc.problems]
        if problems:
            raise OptionsError(where, problems)

    @classmethod
    def from_toml(cls, text: str, *, path: str = PROJECT_FILE) -> Project:
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise OptionsError(path, [("(file)", f"not valid TOML ({exc})")]) from None
        return cls.from_doc(doc, path=path)

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


def _required_stand_ins(sec: Section, project: Project) -> dict[str, Any]:
    """Values for the hidden, required options of a stage (its folders), only to check the rest."""
    own = _fields(sec.options_class())
    return {k: "." for k in sec.hidden if k in own and own[k].is_required()}


def _located(exc: ValidationError) -> list[tuple[str, str]]:
    out = []
    for err in exc.errors():
        key, msg = describe_error(err)
        loc = [str(p) for p in err.get("loc", ())]
        if loc and loc[0] in SECTION_NAMES or (loc and loc[0] == "import_"):
            sec = "import" if loc[0] == "import_" else loc[0]
            out.append((f"[{sec}] {'.'.join(loc[1:]) or '(table)'}", msg if msg != "unknown key" else f"unknown key (known: {', '.join(_MODELS[sec].model_fields)})"))
        else:
            known = ", ".join(PROJECT_KEYS)
            out.append((f"[project] {key}", msg if msg != "unknown key" else f"unknown key (known: {known}; stage options go in their own section)"))
    return out


def fingerprint(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class StageState:
    """What each stage last finished with: its fingerprint and a summary."""

    def __init__(self, dirs: ProjectDirs):
        self.path = dirs.state / STATE_FILE
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
