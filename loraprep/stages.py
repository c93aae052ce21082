"""The stages of `loraprep run`, in order: each a `prep.stage.Stage` with its folders and options.

    import -> check -> dedupe -> crop -> caption -> merge -> trigger -> lint -> layout -> config -> estimate
    (with --renders: ... -> trigger -> variations -> lint ..., lint and layout reading 05_renders)

Most are the per-command tools' own STAGE objects (`prep crop` and `loraprep run` call the same
`run`); `merge` (user + generated captions into 04_captioned), `config` and `estimate` are
loraprep's own glue, written here in the same shape. A `Step` binds a stage to the project: its
options (its loraprep.toml section plus the project's settings), the folders it reads and
writes (`prep.project.ProjectDirs`), what of its report the summary shows, and when its result
means the run must stop. A new stage is one `Step` in `STEPS`.
"""

from __future__ import annotations

import importlib
import os
import stat
from itertools import islice
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field

from prep.dataset import discover, read_caption
from prep.executor import Progress
from prep.buckets import BUCKET_RECORD
from prep.fsutil import atomic_write_text, link_or_copy
from prep.options import StageOptions
from prep.overrides import apply_captions, apply_rejects, overrides_path
from prep.project import ProjectDirs

from loraprep.project import Project, fingerprint

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
REPORT_FILES = {"manifest.jsonl", "crops.jsonl", "layout.json"}
RUN_TRAINING_FILES = {"logs", "output", "status.json"}
"""What `train_bridge launch` writes into run/: never a reason to redo config or estimate."""
TRAINER_CACHES = {"metadata_cache.json"}, {".npz"}
"""Names and suffixes of the caches a trainer writes into the dataset (prep.layout removes stale ones)."""


class StageStop(Exception):
    """A stage found a problem the user must fix; the message says what and how."""

    def __init__(self, stage: str, message: str, *, usage: bool = False):
        super().__init__(message)
        self.stage = stage
        self.usage = usage


# -- loraprep's own stages ------------------------------------------------------------------------


class MergeOptions(StageOptions):
    generated: str
    """Folder of generated captions (03_captions), mirrored by image id."""
    mode: str = "skip"
    """Captions the user already has: skip (keep), overwrite, append, prepend (captioning.merge)."""
    project: str | None = None
    """Project folder whose overrides.json (the studio's hand edits, `prep.overrides`) wins over both."""


@dataclass
class MergeReport:
    captions: int = 0
    without_caption: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    @property
    def n_failed(self) -> int:
        return len(self.failed)

    def to_json(self) -> dict[str, Any]:
        return {"captions": self.captions, "without_caption": self.without_caption, "failed": self.failed}


class MergeStage:
    """Images with their final captions: the user's and the generated one, merged by `mode`."""

    name = "merge"
    Options = MergeOptions

    def run(self, src: Path, out: Path, options: MergeOptions, *, progress: Progress | None = None) -> MergeReport:
        from captioning.merge import merge_caption

        rep = MergeReport()
        out.mkdir(parents=True, exist_ok=True)
        keep: set[str] = set()
        for it in discover(src):
            try:
                user = read_caption(it.caption_path)
                gen = read_caption(Path(options.generated) / Path(it.id).with_suffix(".txt"))
            except ValueError as exc:
                rep.failed.append(f"{it.id}: {exc}")
                continue
            text = merge_caption(user, gen, options.mode)  # type: ignore[arg-type]
            if not text:
                rep.without_caption.append(it.id)
            dst = out / it.id
            _link_or_copy(it.path, dst)
            atomic_write_text(dst.with_suffix(".txt"), (text or "") + "\n")
            keep.update({dst.name, dst.with_suffix(".txt").name})
            rep.captions += 1
        if options.project:  # the studio's hand edits win over the user's and the generated caption
            apply_captions(options.project, out)
        for stale in out.iterdir():  # crops that no longer exist upstream
            if stale.is_file() and stale.name not in keep:
                stale.unlink()
        return rep


class ImportKeepingRejects:
    """`prep import`, then the images the studio rejected set aside again (a re-import brings them back)."""

    name = "import"

    def __init__(self, inner: Any):
        self.inner = inner
        self.Options = inner.Options

    def run(self, src: Path, out: Path, options: StageOptions, *, progress: Progress | None = None) -> Any:
        rep = self.inner.run(src, out, options, progress=progress)
        apply_rejects(out.parent, out)  # out is the project's 01_raw
        return rep


class ConfigOptions(StageOptions):
    trainer: str
    trigger: str
    preset: str | None = None
    models: dict[str, str] = Field(default_factory=dict)
    set: dict[str, Any] = Field(default_factory=dict)


@dataclass
class ConfigReport:
    arch: str
    files: dict[str, str]
    preset: str | None
    warnings: list[str]
    n_failed: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"arch": self.arch, "files": self.files, "preset": self.preset, "warnings": self.warnings}


class ConfigStage:
    """`train_bridge config` on the dataset; it reads the dataset's bucket record and trains at it."""

    name = "config"
    Options = ConfigOptions

    def run(self, src: Path, out: Path, options: ConfigOptions, *, progress: Progress | None = None) -> ConfigReport:
        from train_bridge.config import ConfigError, write_run_config

        kw: dict[str, Any] = {"preset": options.preset} if options.preset else {}
        try:
            rc = write_run_config(options.trainer, src, out, models=dict(options.models), overrides=dict(options.set) or None, trigger=options.trigger, **kw)
        except ConfigError as exc:
            raise StageStop(
                "config",
                f"{exc}\nfix it on the command line (model files: --dit/--qwen3/--vae or --model ROLE=PATH; options: --set KEY=VALUE) "
                "or in [train] of loraprep.toml, and run again",
            ) from None
        return ConfigReport(rc.arch, {k: str(v) for k, v in rc.files.items()}, rc.run.get("preset"), [str(w) for w in rc.warnings])


class EstimateOptions(StageOptions):
    max_steps: int | None = None


@dataclass
class EstimateReport:
    data: dict[str, Any]
    n_failed: int = 0

    def to_json(self) -> dict[str, Any]:
        return self.data


class EstimateStage:
    """`train_bridge estimate` and `train_bridge check` on the run folder."""

    name = "estimate"
    Options = EstimateOptions

    def run(self, src: Path, out: Path, options: EstimateOptions, *, progress: Progress | None = None) -> EstimateReport:
        from train_bridge.check import check_run
        from train_bridge.estimate import estimate_run

        kw = {"budget": options.max_steps} if options.max_steps else {}
        est = estimate_run(src, **kw)
        chk = check_run(src)
        return EstimateReport(
            {
                "steps_per_epoch": est.steps_per_epoch,
                "total_steps": est.total_steps,
                "epochs": est.epochs,
                "buckets": est.buckets,
                "time_hours": est.time_hours,
                "warnings": list(est.warnings),
                "over_budget": est.over_budget,
                "check_errors": [f"{i.area}: {i.message}" for i in chk.errors],
                "check_warnings": [f"{i.area}: {i.message}" for i in chk.warnings],
            }
        )


# -- the table ----------------------------------------------------------------------------------


def _stage(module: str) -> Any:
    """The module-level STAGE object of a per-command tool (imported when the step runs)."""
    return importlib.import_module(module).STAGE


@dataclass(frozen=True)
class Step:
    name: str
    stage: Callable[[], Any]
    """Returns the Stage object (lazy: a run that stops early imports little)."""
    src: Callable[[Project, ProjectDirs], Path]
    out: Callable[[ProjectDirs], Path]
    reads: Callable[[Project, ProjectDirs], Any]
    """A cheap signature of what it reads (names, sizes, mtimes)."""
    options: Callable[[Project, ProjectDirs, Any], StageOptions] | None = None
    """Default: the project's section of the same name (`Project.stage_options`)."""
    report_file: str | None = None
    """Name under reports/ for the stage's full report."""
    summary: Callable[[Any, dict[str, Any]], dict[str, Any]] = lambda rep, js: js
    stop: Callable[[Any, dict[str, Any], Project, ProjectDirs], str | None] = lambda rep, js, p, d: None
    enabled: Callable[[Project], bool] = lambda p: True
    errors: tuple[str, ...] = ()
    """`module:Exception` raised by the stage for problems the user must fix (stop, not crash)."""
    writes: Callable[[Project, ProjectDirs], Any] | None = None
    """A cheap signature of what it writes (default: its whole `out` folder). Recorded at the end
    of a run and compared before the next: an output deleted or edited by hand redoes the stage."""

    def output_signature(self, project: Project, dirs: ProjectDirs) -> Any:
        if self.writes is not None:
            return self.writes(project, dirs)
        return tree_signature(self.out(dirs))

    def options_for(self, project: Project, dirs: ProjectDirs, stage: Any, **given: Any) -> StageOptions:
        if self.options is not None:
            return self.options(project, dirs, stage)
        return project.stage_options(self.name, stage.Options, **given)


def tree_signature(
    folder: Path, *, suffixes: set[str] | None = None, exclude_names: set[str] | frozenset[str] = frozenset(), exclude_suffixes: set[str] | frozenset[str] = frozenset()
) -> str:
    """Cheap fingerprint of a folder: relative names, sizes and mtimes (no reading).

    Uses each entry's own stat (`os.lstat`): a dangling symlink or a symlink loop in a user's
    folder is a row like any other (the stages name it), never a crash, and links to folders
    are not followed (os.walk's default), so a loop cannot recurse.
    """
    try:
        top = os.stat(folder)  # the folder (or file) the user named, through a link they chose
    except OSError:
        return "missing"  # also a dangling link or a loop given as the source
    if not stat.S_ISDIR(top.st_mode):
        return fingerprint(folder.name, top.st_size, top.st_mtime_ns)
    rows = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in exclude_names)
        for fn in sorted(filenames):
            if fn in exclude_names or fn.startswith("."):
                continue
            p = Path(dirpath) / fn
            if (suffixes is not None and p.suffix.lower() not in suffixes) or p.suffix.lower() in exclude_suffixes:
                continue
            try:
                st = os.lstat(p)
            except OSError:  # removed while we looked
                continue
            rows.append((p.relative_to(folder).as_posix(), st.st_size, st.st_mtime_ns))  # json escapes undecodable bytes
    return fingerprint(rows)


def _get(js: dict[str, Any], *keys: str, default: Any = None) -> Any:
    for k in keys:
        if k in js:
            return js[k]
    return default


def _ids(items: Any) -> list[str]:
    out = []
    for it in items or []:
        out.append(str(it.get("file") or it.get("id") or it.get("source") or it) if isinstance(it, dict) else str(it))
    return out


# summaries and stops: what a user needs from each report, in a few keys


def _import_summary(rep: Any, js: dict[str, Any]) -> dict[str, Any]:
    # each refused or unreadable file by name (escaped) with its reason: the user fixes them at the source
    return {"imported": rep.imported, "already_there": rep.count("skipped"), "renamed": rep.count("renamed"), "refused": {e.source: e.reason or e.status for e in rep.problems}}


def _import_stop(rep: Any, js: dict[str, Any], p: Project, d: ProjectDirs) -> str | None:
    if rep.imported + rep.count("skipped") == 0:
        return f"{p.source}: no images found (jpg, png, webp, bmp, tiff or gif)"
    return None


SUMMARY_NAMES = 100
"""Files a stage summary names per list (chosen): the summary is kept in the project state and
printed; the stage's own report (reports/check.json, crops.jsonl) names every file. A list cut
short says how long it was in `<key>_total`."""


def _capped(out: dict[str, Any], key: str, values: Any) -> None:
    """`out[key]` = the first SUMMARY_NAMES of `values` (a list, a dict or an iterator, which is
    counted to its end), with the full count in `out[key + "_total"]` when some were left out
    (100k upscaled crops made a 6 MB state)."""
    if isinstance(values, dict):
        n = len(values)
        out[key] = dict(islice(values.items(), SUMMARY_NAMES))
    else:
        it = iter(values)
        out[key] = list(islice(it, SUMMARY_NAMES))
        n = len(out[key]) + sum(1 for _ in it)
    if n > SUMMARY_NAMES:
        out[f"{key}_total"] = n


def _check_summary(rep: Any, js: dict[str, Any]) -> dict[str, Any]:
    probs = rep.problems(stream=True)  # per-image lists as iterators: 100k small images are 100k entries
    out: dict[str, Any] = {"images": len(rep.images)}
    _capped(out, "unreadable", [e["file"] for e in probs["corrupt"]])
    _capped(out, "small", (e["file"] for e in probs["small"]))
    out.update({"exif_rotated": sum(1 for _ in probs["exif_rotated"]), "transparent": sum(1 for _ in probs["transparent"]), "buckets": rep.summary()["buckets"]})
    # quality and identity flags (prep.check.QUALITY_KINDS): blurry, monochrome, off_model, ...
    flagged: dict[str, Any] = {}
    for kind in getattr(rep, "flag_kinds", ()):
        names: dict[str, Any] = {}
        _capped(names, kind, (e["file"] for e in probs[kind]))
        if names[kind]:
            flagged.update(names)
    out["flagged"] = flagged
    return out


def _check_stop(rep: Any, js: dict[str, Any], p: Project, d: ProjectDirs) -> str | None:
    return None if rep.images else f"no readable images in {d.raw}: see reports/check.json for each file's reason"


def _dedupe_summary(rep: Any, js: dict[str, Any]) -> dict[str, Any]:
    return {"groups": len(rep.groups), "moved_to_dupes": [Path(a).name for a, _ in rep.moved]}


def _crop_summary(rep: Any, js: dict[str, Any]) -> dict[str, Any]:
    s: dict[str, Any] = dict(rep.summary())
    _capped(s, "no_face", rep.no_face)
    n_flagged = s["flagged"]  # the count; the key then names them (read lazily: 100k results live on disk)
    s["flagged"] = dict(islice(((r.id, r.reason) for r in rep.results if r.status == "flagged"), SUMMARY_NAMES))
    if n_flagged > SUMMARY_NAMES:
        s["flagged_total"] = n_flagged
    return {
        **s,
        "contact_sheets": [str(p) for p in rep.contact_sheets],
        "warnings": list(rep.warnings),
        "suggested_resolution": _get(js, "suggested_resolution", default=getattr(rep, "suggested_resolution", None)),
        **({"off_model": list(rep.off_model), "set_aside": list(rep.set_aside)} if getattr(rep, "off_model", None) else {}),
    }


def _crop_stop(rep: Any, js: dict[str, Any], p: Project, d: ProjectDirs) -> str | None:
    if rep.summary()["outputs"]:
        return None
    small = [r.id for r in rep.results if "small_source" in r.data.get("flags", [])]
    hint = " (all too small for the resolution: set [crop] upscale = true or a lower resolution)" if small else ""
    if getattr(rep, "set_aside", None):
        hint = f" (every match was off-model, set aside in {d.off_model}: check the reference images, or pass --keep-off-model)"
    return f"no crops were written{hint}; see {d.cropped / 'crops.jsonl'}"


def _caption_summary(rep: Any, js: dict[str, Any]) -> dict[str, Any]:
    counts = js["counts"]
    return {
        "backend": js.get("backend"),
        "captioned": counts.get("ok", 0),
        "reused": counts.get("resumed", 0),
        "user_captions_kept": counts.get("skipped", 0),
        "failed": [o.id for o in rep.problems],
        "top_tags": dict(rep.tag_frequency.most_common(10)),
        "pruned": rep.pruned.to_json(),
    }


def _caption_stop(rep: Any, js: dict[str, Any], p: Project, d: ProjectDirs) -> str | None:
    c = js["counts"]
    if rep.problems and c.get("ok", 0) + c.get("resumed", 0) == 0:
        return "no image could be captioned: " + "; ".join(f"{o.id}: {o.reason}" for o in rep.problems[:5])
    return None


def _lint_summary(rep: Any, js: dict[str, Any]) -> dict[str, Any]:
    return {"errors": rep.errors, "issues": dict(rep.by_code()), "max_tokens": rep.max_tokens, "budget": rep.budget}


def _layout_summary(rep: Any, js: dict[str, Any]) -> dict[str, Any]:
    return {"images": rep.n_images, "reg_images": rep.n_reg, "image_dir": rep.image_dir, "stale_caches_removed": len(rep.removed), "warnings": list(rep.warnings)}


def _final(p: Project, d: ProjectDirs) -> Path:
    """The captioned images lint and layout read: 05_renders (originals + variations) for a 3D-render project."""
    return d.renders if p.variations.enabled else d.captioned


def _variations_summary(rep: Any, js: dict[str, Any]) -> dict[str, Any]:
    ident = rep.identity or {}
    return {
        "originals": rep.originals, "generated": rep.generated, "resumed": rep.resumed, "failed": [f["id"] for f in rep.failed],
        "drifted": list(ident.get("drifted", [])), "set_aside": {a["id"]: a["where"] for a in rep.set_aside},
        "unchecked": [u["id"] for u in ident.get("unchecked", [])], "identity_threshold": ident.get("threshold"), "warnings": list(rep.warnings),
    }


def _variations_stop(rep: Any, js: dict[str, Any], p: Project, d: ProjectDirs) -> str | None:
    if rep.sources and rep.generated + rep.resumed == 0 and rep.failed:
        return "no variation could be made: " + "; ".join(f"{f['id']}: {f['reason']}" for f in rep.failed[:3])
    return None


def _layout_stop(rep: Any, js: dict[str, Any], p: Project, d: ProjectDirs) -> str | None:
    if rep.n_images == 0:
        return "no image reached the dataset: " + "; ".join(f"{i.id}: {i.reason}" for i in rep.failed[:5])
    return None


def _signature_of(folder: Callable[[ProjectDirs], Path], **kw: Any) -> Callable[[Project, ProjectDirs], Any]:
    return lambda p, d: tree_signature(folder(d), **kw)


def _dataset_signature(p: Project, d: ProjectDirs) -> str:
    """The dataset without the caches a trainer adds to it (training is not a change of the dataset)."""
    return tree_signature(d.dataset, exclude_names=TRAINER_CACHES[0], exclude_suffixes=TRAINER_CACHES[1])


def _crop_options(p: Project, d: ProjectDirs, stage: Any) -> StageOptions:
    # disabled: the whole image, bucket fit only; with references, off-model crops go to off_model/ unless kept
    aside = {"set_aside": str(d.off_model)} if p.crop.reference and p.crop.set_aside is None else {}
    return p.stage_options("crop", stage.Options, **({} if p.crop.enabled else {"framing": "full"}), **aside)


def _caption_options(p: Project, d: ProjectDirs, stage: Any) -> StageOptions:
    # generated captions only, in 03_captions; the users' are merged by the merge stage
    return p.stage_options("caption", stage.Options, keep_apart=True)


def _present(cls: type[Any], **values: Any) -> dict[str, Any]:
    fields = getattr(cls, "model_fields", {})
    return {k: v for k, v in values.items() if k in fields}


STEPS: tuple[Step, ...] = (
    Step(
        "import", lambda: ImportKeepingRejects(_stage("prep.importer")), lambda p, d: Path(p.source), lambda d: d.raw,
        lambda p, d: tree_signature(Path(p.source)), report_file="import.json",
        summary=_import_summary, stop=_import_stop, errors=("prep.importer:ImportRefused",),
    ),
    Step(
        "check", lambda: _stage("prep.check"), lambda p, d: d.raw, lambda d: d.reports,
        _signature_of(lambda d: d.raw, exclude_names=REPORT_FILES), report_file="check.json", summary=_check_summary, stop=_check_stop,
        writes=lambda p, d: tree_signature(d.reports / "check.json"),
    ),
    Step(
        "dedupe", lambda: _stage("prep.dedupe"), lambda p, d: d.raw, lambda d: d.dupes,
        _signature_of(lambda d: d.raw, exclude_names=REPORT_FILES), report_file="dedupe.json",
        summary=_dedupe_summary, enabled=lambda p: p.dedupe.enabled,
    ),
    Step(
        "crop", lambda: _stage("prep.crop"), lambda p, d: d.raw, lambda d: d.cropped,
        lambda p, d: (tree_signature(d.raw, exclude_names=REPORT_FILES), tree_signature(overrides_path(d.root)),
                      *([tree_signature(Path(p.crop.reference))] if p.crop.reference else [])), options=_crop_options,
        summary=_crop_summary, stop=_crop_stop, errors=("prep.models:ModelNotAvailable", "prep.identity:ReferenceError"),
    ),
    Step(
        "caption", lambda: _stage("captioning.pipeline"), lambda p, d: d.cropped, lambda d: d.captions,
        _signature_of(lambda d: d.cropped, suffixes=IMAGE_SUFFIXES | {".txt"}), options=_caption_options, report_file="caption.json",
        summary=_caption_summary, stop=_caption_stop, errors=("captioning.backends:UnknownBackend", "prep.models:ModelNotAvailable"),
    ),
    Step(
        "merge", MergeStage, lambda p, d: d.cropped, lambda d: d.captioned,
        lambda p, d: (tree_signature(d.cropped, suffixes=IMAGE_SUFFIXES | {".txt"}), tree_signature(d.captions, suffixes={".txt"}),
                      tree_signature(overrides_path(d.root))),
        options=lambda p, d, s: MergeOptions(generated=str(d.captions), mode=p.caption.mode, project=str(d.root)),
    ),
    Step(
        "trigger", lambda: _stage("prep.trigger_step"), lambda p, d: d.captioned, lambda d: d.captioned,
        _signature_of(lambda d: d.captioned),
        options=lambda p, d, s: s.Options.model_validate(_present(s.Options, trigger=p.trigger, create_missing=True)),
    ),
    Step(
        # 3D renders (`--renders`): style variations of the captioned renders, identity-checked, into 05_renders;
        # the project's workers (cores) are not the variations' workers (predictions in flight)
        "variations", lambda: _stage("prep.variations.run"), lambda p, d: d.captioned, lambda d: d.renders,
        _signature_of(lambda d: d.captioned), options=lambda p, d, s: p.stage_options("variations", s.Options, workers=None),
        report_file="variations.json", summary=_variations_summary, stop=_variations_stop, enabled=lambda p: p.variations.enabled,
        errors=("prep.models:ModelNotAvailable", "prep.remote:RemoteError", "builtins:ValueError", "builtins:RuntimeError"),
    ),
    Step(
        "lint", lambda: _stage("captioning.lint"), lambda p, d: _final(p, d), lambda d: d.reports,
        lambda p, d: tree_signature(_final(p, d)),
        options=lambda p, d, s: s.Options.model_validate(_present(s.Options, trigger=p.trigger, trainer=p.trainer, lora_type=p.caption.lora_type)),
        report_file="lint.json", summary=_lint_summary, writes=lambda p, d: tree_signature(d.reports / "lint.json"),
    ),
    Step(
        "layout", lambda: _stage("prep.layout"), lambda p, d: _final(p, d), lambda d: d.dataset,
        lambda p, d: (tree_signature(_final(p, d)), tree_signature(d.cropped / BUCKET_RECORD)),
        # the bucket record crop wrote travels with the dataset (merge copies only images and captions)
        options=lambda p, d, s: p.stage_options("layout", s.Options, **_present(s.Options, buckets_from=str(d.cropped))),
        summary=_layout_summary, stop=_layout_stop,
        writes=_dataset_signature,
    ),
    Step(
        "config", ConfigStage, lambda p, d: d.dataset, lambda d: d.run, _dataset_signature,
        writes=_signature_of(lambda d: d.run, exclude_names=RUN_TRAINING_FILES),
        options=lambda p, d, s: ConfigOptions(trainer=p.trainer, trigger=p.trigger, preset=p.train.preset, models=dict(p.train.models), set=dict(p.train.set)),
    ),
    Step(
        "estimate", EstimateStage, lambda p, d: d.run, lambda d: d.reports,
        _signature_of(lambda d: d.run, exclude_names=RUN_TRAINING_FILES),
        options=lambda p, d, s: EstimateOptions(max_steps=p.train.max_steps), writes=lambda p, d: None,  # its report is in summary.json
    ),
)
STAGES = tuple(s.name for s in STEPS)


# -- video runs: a video trainer (Wan) and a source holding videos ---------------------------------
#
#    import -> check -> clips -> caption -> layout -> config -> estimate
#
# The image-only stages (dedupe, crop, merge, trigger, lint) do not apply to clips; `layout` for
# clips merges the user's and the generated captions, puts the trigger first and lays the clips
# out for musubi-tuner. Images in a video source are left out (a run trains one kind).

VIDEO_CAPTION_SUFFIXES = {".mp4", ".webm", ".mov", ".mkv", ".avi", ".m4v", ".gif", ".txt"}


def source_videos(source: Path) -> list[str]:
    """Videos in a source folder (recursive) or .zip, by name: what makes a run a video run."""
    import zipfile

    from prep.video import discover_videos, is_video_path

    try:
        if source.is_dir():
            return [p.relative_to(source).as_posix() for p in discover_videos(source, recursive=True)]
        if source.is_file() and zipfile.is_zipfile(source):
            with zipfile.ZipFile(source) as z:
                return [n for n in z.namelist() if not n.endswith("/") and is_video_path(Path(n))]
    except OSError:
        return []
    return []


def is_video_run(p: Project) -> bool:
    from prep.archs import get_arch

    return bool(get_arch(p.trainer).video_fps) and bool(source_videos(Path(p.source)))


@dataclass
class VideoImportReport:
    """The importer's report plus the videos in 01_raw."""

    inner: Any
    videos: list[str] = field(default_factory=list)

    @property
    def n_failed(self) -> int:
        return int(getattr(self.inner, "n_failed", 0) or 0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def to_json(self) -> dict[str, Any]:
        return {**self.inner.to_json(), "videos": self.videos}


class ImportWithVideos:
    """`prep import` (it takes videos, images and captions, from a folder or a .zip), reporting the
    videos that reached 01_raw: a video run needs at least one."""

    name = "import"

    def __init__(self, inner: Any):
        self.inner = inner
        self.Options = inner.Options

    def run(self, src: Path, out: Path, options: StageOptions, *, progress: Progress | None = None) -> VideoImportReport:
        from prep.video import discover_videos

        rep = VideoImportReport(self.inner.run(src, out, options, progress=progress))
        rep.videos = [p.name for p in discover_videos(out)] if out.is_dir() else []
        return rep


@dataclass
class VideoCheckReport:
    inner: Any
    videos: dict[str, Any]

    @property
    def n_failed(self) -> int:
        return 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def to_json(self) -> dict[str, Any]:
        return {**self.inner.to_json(), "videos": self.videos}


class CheckWithVideos:
    """`prep check` on the images, plus `prep.video.check_videos` (length, fps, what 81-frame clips drop)."""

    name = "check"

    def __init__(self, inner: Any):
        self.inner = inner
        self.Options = inner.Options

    def run(self, src: Path, out: Path, options: StageOptions, *, progress: Progress | None = None) -> VideoCheckReport:
        from prep.clips import ClipsOptions
        from prep.video import check_videos

        clip = ClipsOptions()  # the fps and frames the clips stage will use by default
        return VideoCheckReport(self.inner.run(src, out, options, progress=progress), check_videos(src, fps=clip.target_fps, frames=clip.frames))


class ClipsKeepingCaptions:
    """`prep clips`, then each clip gets the caption the user wrote for its source video (raw/walk.txt
    -> 02_clips/walk_000.txt): the user's caption, to be merged with the generated one by `layout`."""

    name = "clips"

    def __init__(self, inner: Any):
        self.inner = inner
        self.Options = inner.Options

    def run(self, src: Path, out: Path, options: StageOptions, *, progress: Progress | None = None) -> Any:
        rep = self.inner.run(src, out, options, progress=progress)
        for c in rep.clips:
            try:
                user = read_caption((src / c["source"]).with_suffix(".txt"))
            except ValueError:
                continue  # named by check
            cap = (out / c["clip"]).with_suffix(".txt")
            if user and (not cap.is_file() or cap.read_text(encoding="utf-8").strip() != user):
                atomic_write_text(cap, user + "\n")
        return rep


class VideoLayoutOptions(StageOptions):
    trigger: str
    generated: str
    """Folder of generated captions (03_captions), by clip name."""
    mode: str = "skip"
    repeats: int = 1
    class_token: str | None = None


@dataclass
class VideoLayoutReport:
    n_videos: int = 0
    image_dir: str = ""
    without_caption: list[str] = field(default_factory=list)

    @property
    def n_failed(self) -> int:
        return len(self.without_caption)

    def to_json(self) -> dict[str, Any]:
        return {"videos": self.n_videos, "image_dir": self.image_dir, "without_caption": self.without_caption}


class VideoLayoutStage:
    """The clips with their final captions (user's and generated merged by `mode`, trigger first) in
    dataset/img/{repeats}_{trigger}/, with layout.json and the clips' buckets.json. A clip without
    any caption is left out and named: musubi-tuner stops on an uncaptioned video."""

    name = "layout"
    Options = VideoLayoutOptions

    def run(self, src: Path, out: Path, options: VideoLayoutOptions, *, progress: Progress | None = None) -> VideoLayoutReport:
        import json
        import shutil

        from captioning.merge import merge_caption
        from prep.layout import LAYOUT_FILE, subset_folder_name
        from prep.trigger import apply_trigger
        from prep.video import discover_videos

        rep = VideoLayoutReport()
        folder = out / "img" / subset_folder_name(options.repeats, options.trigger, options.class_token)
        folder.mkdir(parents=True, exist_ok=True)
        keep: set[str] = set()
        for clip in discover_videos(src):
            try:
                user = read_caption(clip.with_suffix(".txt"))
                gen = read_caption(Path(options.generated) / clip.with_suffix(".txt").name)
            except ValueError as exc:
                rep.without_caption.append(f"{clip.name}: {exc}")
                continue
            text = merge_caption(user, gen, options.mode)  # type: ignore[arg-type]
            if not text:
                rep.without_caption.append(f"{clip.name}: no caption (write {clip.with_suffix('.txt')}, or a caption for its source video, or caption it with a video backend: --backend gemini)")
                continue
            _link_or_copy(clip, folder / clip.name)
            atomic_write_text(folder / clip.with_suffix(".txt").name, apply_trigger(text, options.trigger) + "\n")
            keep.update({clip.name, clip.with_suffix(".txt").name})
            rep.n_videos += 1
        for stale in folder.iterdir():
            if stale.is_file() and stale.name not in keep:
                stale.unlink()
        for parent in (out / "img",):  # subset folders of an earlier trigger or repeats
            for d in parent.iterdir():
                if d.is_dir() and d != folder:
                    shutil.rmtree(d)
        if (src / BUCKET_RECORD).is_file():
            link_or_copy(src / BUCKET_RECORD, out / BUCKET_RECORD, link=False)
        meta = {"trigger": options.trigger, "class_token": options.class_token, "repeats": options.repeats, "videos": rep.n_videos, "written_by": "loraprep run (video layout)"}
        atomic_write_text(out / LAYOUT_FILE, json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
        rep.image_dir = str(folder)
        return rep


def _video_import_stop(rep: Any, js: dict[str, Any], p: Project, d: ProjectDirs) -> str | None:
    return None if rep.videos else f"{p.source}: no videos found (mp4, mov, webm, mkv, avi, gif)"


def _video_check_stop(rep: Any, js: dict[str, Any], p: Project, d: ProjectDirs) -> str | None:
    totals = js.get("videos", {}).get("summary", {})
    return None if totals.get("ok") else f"no readable videos in {d.raw}: see reports/check.json for each file's reason"


def _clips_summary(rep: Any, js: dict[str, Any]) -> dict[str, Any]:
    return {**js.get("summary", {}), "fps": js.get("fps"), "frames": js.get("frames"), "failed": {r["file"]: r.get("reason") for r in js.get("videos", []) if r.get("status") == "failed"}}


def _clips_stop(rep: Any, js: dict[str, Any], p: Project, d: ProjectDirs) -> str | None:
    if rep.clips:
        return None
    why = "; ".join(f"{r['file']}: {r.get('reason') or r.get('status')}" for r in js.get("videos", [])[:5])
    return f"no clips were cut ({why}); see {d.clips / 'clips.jsonl'}"


def _video_layout_stop(rep: Any, js: dict[str, Any], p: Project, d: ProjectDirs) -> str | None:
    if rep.n_videos == 0:
        return "no clip reached the dataset: " + "; ".join(rep.without_caption[:5])
    return None


def _clips_options(p: Project, d: ProjectDirs, stage: Any) -> StageOptions:
    # [clips] of loraprep.toml (its own resolution, WxH); fps, 4N+1 frames and buckets follow the trainer
    return p.stage_options("clips", stage.Options, trainer=p.trainer)


_BY_NAME = {s.name: s for s in STEPS}
VIDEO_STEPS: tuple[Step, ...] = (
    Step(
        "import", lambda: ImportWithVideos(ImportKeepingRejects(_stage("prep.importer"))), lambda p, d: Path(p.source), lambda d: d.raw,
        lambda p, d: tree_signature(Path(p.source)), report_file="import.json",
        summary=lambda rep, js: {**_import_summary(rep, js), "videos": len(rep.videos)}, stop=_video_import_stop, errors=("prep.importer:ImportRefused",),
    ),
    Step(
        "check", lambda: CheckWithVideos(_stage("prep.check")), lambda p, d: d.raw, lambda d: d.reports,
        _signature_of(lambda d: d.raw, exclude_names=REPORT_FILES), report_file="check.json",
        summary=lambda rep, js: {**js["videos"].get("summary", {}), "errors": {e["file"]: e["reason"] for e in js["videos"].get("errors", [])},
                                 "warnings": {v["file"]: v["warnings"] for v in js["videos"].get("videos", []) if v.get("warnings")}}, stop=_video_check_stop,
        writes=lambda p, d: tree_signature(d.reports / "check.json"),
    ),
    Step(
        "clips", lambda: ClipsKeepingCaptions(_stage("prep.clips")), lambda p, d: d.raw, lambda d: d.clips,
        _signature_of(lambda d: d.raw, exclude_names=REPORT_FILES), options=_clips_options, report_file="clips.json",
        summary=_clips_summary, stop=_clips_stop,
    ),
    Step(
        "caption", lambda: _stage("captioning.pipeline"), lambda p, d: d.clips, lambda d: d.captions,
        _signature_of(lambda d: d.clips, suffixes=VIDEO_CAPTION_SUFFIXES), options=_caption_options, report_file="caption.json",
        summary=_caption_summary, errors=("captioning.backends:UnknownBackend", "prep.models:ModelNotAvailable"),
    ),
    Step(
        "layout", VideoLayoutStage, lambda p, d: d.clips, lambda d: d.dataset,
        lambda p, d: (tree_signature(d.clips, suffixes=VIDEO_CAPTION_SUFFIXES | {".json"}), tree_signature(d.captions, suffixes={".txt"})),
        options=lambda p, d, s: VideoLayoutOptions(trigger=p.trigger, generated=str(d.captions), mode=p.caption.mode, repeats=p.layout.repeats, class_token=p.layout.class_token),
        summary=lambda rep, js: js, stop=_video_layout_stop, writes=_dataset_signature,
    ),
    _BY_NAME["config"],
    _BY_NAME["estimate"],
)
STAGES = tuple(dict.fromkeys([*STAGES, *(s.name for s in VIDEO_STEPS)]))


def steps_for(project: Project) -> tuple[Step, ...]:
    """The steps of `project`'s run: the video chain for a video trainer with a source of videos."""
    return VIDEO_STEPS if is_video_run(project) else STEPS


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard link `src` at `dst` unless it is already that file."""
    try:
        if os.path.samefile(src, dst):
            return
    except OSError:
        pass
    link_or_copy(src, dst)
