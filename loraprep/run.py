"""`loraprep run`: raw folder (or zip) to a launch-ready training run, one stage at a time.

Stages, each a call into the library that owns it:

    import -> check -> dedupe -> crop -> caption -> trigger -> lint -> layout -> config -> estimate

Each stage writes under the project folder and records a fingerprint: its own settings, the
fingerprint of the stage before it, and a cheap signature (names, sizes, mtimes) of the folder
it reads. A stage whose fingerprint matches is skipped, so a second identical run does no work
and a changed setting redoes only that stage and the ones after it. Inside a stage, the
per-image manifests skip images already done, so even a redone stage repeats little.

Project folder:
    loraprep.toml      every decision (rerun with --config)
    01_raw/            imported copy of the source (dedupe moves duplicates to dupes/)
    02_cropped/        bucket-exact crops, crops.jsonl, contact_sheet*.jpg (+ user captions)
    03_captions/       generated captions and their manifest
    04_captioned/      the images with their final captions (trigger first)
    dataset/           kohya layout: img/{repeats}_{trigger}[ {class}]/
    run/               train.toml, dataset.toml, sample_prompts.txt, run.json
    reports/           check.json, dedupe.json, lint.json, summary.json
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from loraprep.project import PROJECT_FILE, Project, StageState, fingerprint
from prep.dataset import discover, read_caption
from prep.executor import Progress
from prep.fsutil import atomic_write_text, link_or_copy
from prep.trigger import apply_trigger

STAGES = ("import", "check", "dedupe", "crop", "caption", "trigger", "lint", "layout", "config", "estimate")


class StageStop(Exception):
    """A stage found a problem the user must fix; the message says what and how."""

    def __init__(self, stage: str, message: str):
        super().__init__(message)
        self.stage = stage


@dataclass
class StageResult:
    name: str
    status: str  # done | up-to-date | stopped
    summary: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class RunReport:
    project_dir: Path
    stages: list[StageResult] = field(default_factory=list)
    stopped_at: str | None = None
    stop_reason: str | None = None
    next_command: list[str] | None = None

    @property
    def ok(self) -> bool:
        return self.stopped_at is None

    @property
    def work_done(self) -> bool:
        return any(s.status == "done" for s in self.stages)

    def stage(self, name: str) -> StageResult | None:
        return next((s for s in self.stages if s.name == name), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "project": str(self.project_dir),
            "ok": self.ok,
            "stopped_at": self.stopped_at,
            "stop_reason": self.stop_reason,
            "next_command": self.next_command,
            "stages": [asdict(s) for s in self.stages],
        }


def tree_signature(folder: Path, *, suffixes: set[str] | None = None, exclude_names: set[str] = frozenset()) -> str:  # type: ignore[assignment]
    """Cheap fingerprint of a folder: relative names, sizes and mtimes (no reading).

    `exclude_names` leaves out files and folders of those names (reports, training logs).
    """
    if not folder.exists():
        return "missing"
    if folder.is_file():
        st = folder.stat()
        return fingerprint(folder.name, st.st_size, st.st_mtime_ns)
    rows = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in exclude_names)
        for fn in sorted(filenames):
            if fn in exclude_names or fn.startswith("."):
                continue
            p = Path(dirpath) / fn
            if suffixes is not None and p.suffix.lower() not in suffixes:
                continue
            st = p.stat()
            rows.append((p.relative_to(folder).as_posix(), st.st_size, st.st_mtime_ns))
    return fingerprint(rows)


_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
_REPORT_FILES = {"manifest.jsonl", "crops.jsonl", "layout.json"}


class Pipeline:
    """Runs the stages of one project in order, skipping the ones that are up to date."""

    def __init__(self, project: Project, project_dir: Path, *, progress_factory: Callable[[], Progress | None] = lambda: None, force: set[str] | None = None):
        self.p = project
        self.dir = Path(project_dir)
        self.state = StageState(self.dir)
        self.progress = progress_factory
        self.force = force or set()
        self.report = RunReport(self.dir)
        self._prev_fp = "start"

    # folders --------------------------------------------------------------------------------
    @property
    def raw(self) -> Path:
        return self.dir / "01_raw"

    @property
    def cropped(self) -> Path:
        return self.dir / "02_cropped"

    @property
    def captions(self) -> Path:
        return self.dir / "03_captions"

    @property
    def captioned(self) -> Path:
        return self.dir / "04_captioned"

    @property
    def dataset(self) -> Path:
        return self.dir / "dataset"

    @property
    def run_dir(self) -> Path:
        return self.dir / "run"

    @property
    def reports(self) -> Path:
        return self.dir / "reports"

    def _write_report(self, name: str, data: Any) -> Path:
        path = self.reports / name
        atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False, default=str))
        return path

    # driver ---------------------------------------------------------------------------------
    def run(self) -> RunReport:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.p.save(self.dir / PROJECT_FILE)
        for name in STAGES:
            fn = getattr(self, f"stage_{name}")
            settings, inputs = self._inputs(name)
            fp = fingerprint(name, settings, self._prev_fp, inputs)
            if self.state.fresh(name, fp) and name not in self.force:
                self.report.stages.append(StageResult(name, "up-to-date", self.state.summary(name)))
                self._prev_fp = fp
                continue
            t = time.perf_counter()
            try:
                summary = fn()
            except StageStop as stop:
                self.state.forget(name)
                self.report.stages.append(StageResult(name, "stopped", {"reason": str(stop)}, time.perf_counter() - t))
                self.report.stopped_at, self.report.stop_reason = name, str(stop)
                break
            # Stages that change their own input folder record the signature after the work,
            # so the next identical run sees them as up to date.
            _, inputs_after = self._inputs(name)
            fp = fingerprint(name, settings, self._prev_fp, inputs_after)
            self.state.record(name, fp, summary)
            self.report.stages.append(StageResult(name, "done", summary, time.perf_counter() - t))
            self._prev_fp = fp
        if self.report.ok:
            self.report.next_command = ["train_bridge", "launch", str(self.run_dir)]
        self._write_report("summary.json", self.report.to_json())
        return self.report

    def _inputs(self, name: str) -> tuple[Any, Any]:
        """(settings that affect the stage, signature of what it reads)."""
        p = self.p
        if name == "import":
            return asdict(p.import_) | {"source": str(Path(p.source).resolve())}, tree_signature(Path(p.source))
        if name == "check":
            return {"resolution": p.resolution, "trainer": p.trainer, **asdict(p.check)}, tree_signature(self.raw, exclude_names=_REPORT_FILES)
        if name == "dedupe":
            return asdict(p.dedupe), tree_signature(self.raw, exclude_names=_REPORT_FILES)
        if name == "crop":
            return {"resolution": p.resolution, "trainer": p.trainer, **asdict(p.crop)}, tree_signature(self.raw, exclude_names=_REPORT_FILES)
        if name == "caption":
            return asdict(p.caption) | {"trigger": p.trigger}, tree_signature(self.cropped, suffixes=_IMAGE_SUFFIXES | {".txt"})
        if name == "trigger":
            return {"trigger": p.trigger, "mode": p.caption.mode}, (tree_signature(self.cropped, suffixes={".txt"}), tree_signature(self.captions, suffixes={".txt"}))
        if name == "lint":
            return {"trigger": p.trigger, "trainer": p.trainer, "lora_type": p.caption.lora_type}, tree_signature(self.captioned)
        if name == "layout":
            return asdict(p.layout) | {"trigger": p.trigger}, tree_signature(self.captioned)
        if name == "config":
            return {"trainer": p.trainer, "resolution": p.resolution, **asdict(p.train)}, tree_signature(self.dataset)
        if name == "estimate":
            return {"max_steps": p.train.max_steps}, tree_signature(self.run_dir, exclude_names={"logs", "output", "status.json"})
        raise KeyError(name)

    # stages ---------------------------------------------------------------------------------
    def stage_import(self) -> dict[str, Any]:
        from prep.importer import ImportOptions, ImportRefused, import_source

        src = Path(self.p.source)
        if not src.exists():
            raise StageStop("import", f"{src}: does not exist; pass a folder or a .zip of images")
        try:
            rep = import_source(src, self.raw, ImportOptions(flatten=self.p.import_.flatten))
        except ImportRefused as exc:
            raise StageStop("import", str(exc)) from None
        self._write_report("import.json", rep.to_json())
        if rep.imported + rep.count("skipped") == 0:
            raise StageStop("import", f"{src}: no images found (jpg, png, webp, bmp, tiff or gif)")
        return {"imported": rep.imported, "already_there": rep.count("skipped"), "renamed": rep.count("renamed"), "refused": len(rep.problems)}

    def stage_check(self) -> dict[str, Any]:
        from prep.check import CheckOptions, check_folder

        rep = check_folder(self.raw, CheckOptions(resolution=self.p.resolution, min_side=self.p.check.min_side, workers=self.p.workers), progress=self.progress())
        self._write_report("check.json", rep.to_json())
        probs = rep.problems()
        if not rep.images:
            raise StageStop("check", f"no readable images in {self.raw}: see reports/check.json for each file's reason")
        return {
            "images": len(rep.images),
            "unreadable": [e["file"] for e in probs["corrupt"]],
            "small": [e["file"] for e in probs["small"]],
            "exif_rotated": len(probs["exif_rotated"]),
            "transparent": len(probs["transparent"]),
            "buckets": rep.summary()["buckets"],
        }

    def stage_dedupe(self) -> dict[str, Any]:
        from prep.dedupe import dedupe_folder

        if not self.p.dedupe.enabled:
            return {"enabled": False}
        rep = dedupe_folder(self.raw, threshold=self.p.dedupe.threshold, mirror=self.p.dedupe.mirror, move_to=self.dir / "dupes", workers=self.p.workers, progress=self.progress())
        self._write_report("dedupe.json", rep.to_json())
        return {"groups": len(rep.groups), "moved_to_dupes": [Path(a).name for a, _ in rep.moved]}

    def stage_crop(self) -> dict[str, Any]:
        from prep.crop import CropOptions, crop_folder
        from prep.models import ModelNotAvailable

        c = self.p.crop
        opts = CropOptions(
            framing=c.framing if c.enabled else "full",  # disabled: whole image, bucket fit only
            resolution=self.p.resolution,
            trainer=self._crop_trainer(),
            detector=c.detector,
            detector_model=c.detector_model,
            anime_model=c.anime_model,
            no_face=c.no_face,
            all_faces=c.all_faces,
            upscale=c.upscale,
            pad=c.pad,
            background=c.background,
            format=c.format,
            workers=self.p.workers or 0,
        )
        try:
            opts.validate()
            rep = crop_folder(self.raw, self.cropped, opts, progress=self.progress())
        except ModelNotAvailable as exc:
            raise StageStop("crop", f"face detector model: {exc}") from None
        except ValueError as exc:
            raise StageStop("crop", f"crop settings: {exc} (edit [crop] in {PROJECT_FILE})") from None
        outputs = rep.summary()["outputs"]
        if outputs == 0:
            small = [r.id for r in rep.results if "small_source" in r.data.get("flags", [])]
            hint = " (all too small for the resolution: set [crop] upscale = true or a lower resolution)" if small else ""
            raise StageStop("crop", f"no crops were written{hint}; see {self.cropped / 'crops.jsonl'}")
        return {
            **rep.summary(),
            "no_face": rep.no_face,
            "flagged": {r.id: r.reason for r in rep.flagged},
            "contact_sheets": [str(p) for p in rep.contact_sheets],
            "warnings": rep.warnings,
        }

    def _crop_trainer(self) -> str | None:
        t = self.p.trainer.lower()
        return "wan" if t.startswith("wan") else t

    def _user_caption_ids(self) -> set[str]:
        """Cropped images that came with a caption of the user's (copied along by crop)."""
        out = set()
        for it in discover(self.cropped):
            try:
                text = read_caption(it.caption_path)
            except ValueError:
                continue
            if text:
                out.add(it.id)
        return out

    def stage_caption(self) -> dict[str, Any]:
        from captioning.backends import UnknownBackend
        from captioning.backends.base import CaptionOptions
        from captioning.pipeline import caption_folder
        from captioning.tags import TagRules, Thresholds, parse_replacements
        from prep.models import ModelNotAvailable

        c = self.p.caption
        user = self._user_caption_ids() if c.mode == "skip" else set()
        items = [it.id for it in discover(self.cropped)]
        todo = [i for i in items if i not in user]
        opts = CaptionOptions(trigger=self.p.trigger, lora_type=c.lora_type, model=c.model, workers=self.p.workers)  # type: ignore[arg-type]
        rules = TagRules(
            thresholds=Thresholds(general=c.general_threshold, character=c.character_threshold, mcut=c.mcut),
            exclude=list(c.exclude),
            replace=parse_replacements(c.replace),
        )
        try:
            rep = caption_folder(
                self.cropped,
                c.backend,
                opts,
                mode="overwrite",
                output=self.captions,
                rules=rules,
                prune_identity_tags=c.prune_identity and c.lora_type == "character",
                prune_core=c.prune_core,
                only=set(todo),
                progress=self.progress(),
            )
        except (UnknownBackend, ModelNotAvailable) as exc:
            raise StageStop("caption", f"caption backend {c.backend!r}: {exc}") from None
        self._write_report("caption.json", rep.to_json())
        counts = rep.to_json()["counts"]
        if todo and counts["ok"] + counts["resumed"] == 0:
            raise StageStop("caption", "no image could be captioned: " + "; ".join(f"{o.id}: {o.reason}" for o in rep.problems[:5]))
        return {
            "backend": c.backend,
            "captioned": counts["ok"],
            "reused": counts["resumed"],
            "user_captions_kept": len(user),
            "failed": [o.id for o in rep.problems],
            "top_tags": dict(rep.tag_frequency.most_common(10)),
            "pruned": rep.pruned.to_json(),
        }

    def stage_trigger(self) -> dict[str, Any]:
        """Merge user and generated captions, put the trigger first, hard-link images beside them."""
        mode = self.p.caption.mode
        out = self.captioned
        out.mkdir(parents=True, exist_ok=True)
        keep: set[str] = set()
        changed = missing = 0
        for it in discover(self.cropped):
            user = _safe_read(it.caption_path)
            gen = _safe_read(self.captions / Path(it.id).with_suffix(".txt"))
            if mode == "skip":
                text = user or gen
            elif mode == "overwrite":
                text = gen or user
            elif mode == "append":
                text = ", ".join(t for t in (user, gen) if t)
            else:  # prepend
                text = ", ".join(t for t in (gen, user) if t)
            if not text:
                missing += 1
            final = apply_trigger(text or "", self.p.trigger)
            changed += final != (text or "")
            img_dst = out / it.id
            _link_or_copy(it.path, img_dst)
            atomic_write_text(img_dst.with_suffix(".txt"), final + "\n")
            keep.update({img_dst.name, img_dst.with_suffix(".txt").name})
        for stale in out.iterdir():  # crops that no longer exist upstream
            if stale.is_file() and stale.name not in keep:
                stale.unlink()
        return {"captions": len(keep) // 2, "trigger_added_or_moved": changed, "without_caption": missing}

    def stage_lint(self) -> dict[str, Any]:
        from captioning.lint import TRAINERS, lint_folder

        trainer = self.p.trainer.lower()
        trainer = trainer if trainer in TRAINERS else trainer.split("-")[0]
        if trainer not in TRAINERS:
            return {"skipped": f"no lint profile for {self.p.trainer}"}
        rep = lint_folder(self.captioned, trigger=self.p.trigger, trainer=trainer, lora_type=self.p.caption.lora_type)
        self._write_report("lint.json", rep.to_json())
        return {"errors": rep.errors, "issues": dict(rep.by_code()), "max_tokens": rep.max_tokens, "budget": rep.budget}

    def stage_layout(self) -> dict[str, Any]:
        from prep.layout import LayoutOptions, layout_dataset

        lo = self.p.layout
        opts = LayoutOptions(trigger=self.p.trigger, repeats=lo.repeats, class_token=lo.class_token, reg_dir=Path(lo.reg) if lo.reg else None)
        rep = layout_dataset(self.captioned, self.dataset, opts)
        if rep.n_images == 0:
            raise StageStop("layout", "no image reached the dataset: " + "; ".join(f"{i.id}: {i.reason}" for i in rep.failed[:5]))
        return {"images": rep.n_images, "reg_images": rep.n_reg, "image_dir": rep.image_dir, "stale_caches_removed": len(rep.removed), "warnings": rep.warnings}

    def stage_config(self) -> dict[str, Any]:
        from train_bridge.config import ConfigError, write_run_config

        t = self.p.train
        kw: dict[str, Any] = {}
        if t.preset:
            kw["preset"] = t.preset
        try:
            rc = write_run_config(
                self.p.trainer,
                self.dataset,
                self.run_dir,
                models=dict(t.models),
                # the crops were made for this resolution's buckets: train at the same one
                overrides={**dict(t.set), "dataset.resolution": f"{self.p.resolution},{self.p.resolution}"},
                trigger=self.p.trigger,
                **kw,
            )
        except ConfigError as exc:
            raise StageStop(
                "config",
                f"{exc}\nfix it on the command line (model files: --dit/--qwen3/--vae or --model ROLE=PATH; options: --set KEY=VALUE) "
                f"or in [train] of {PROJECT_FILE}, and run again",
            ) from None
        return {"arch": rc.arch, "files": {k: str(v) for k, v in rc.files.items()}, "preset": rc.run.get("preset"), "warnings": rc.warnings}

    def stage_estimate(self) -> dict[str, Any]:
        from train_bridge.check import check_run
        from train_bridge.estimate import estimate_run

        kw = {"budget": self.p.train.max_steps} if self.p.train.max_steps else {}
        est = estimate_run(self.run_dir, **kw)
        chk = check_run(self.run_dir)
        return {
            "steps_per_epoch": est.steps_per_epoch,
            "total_steps": est.total_steps,
            "epochs": est.epochs,
            "buckets": est.buckets,
            "time_hours": est.time_hours,
            "warnings": est.warnings,
            "over_budget": est.over_budget,
            "check_errors": [f"{i.area}: {i.message}" for i in chk.errors],
            "check_warnings": [f"{i.area}: {i.message}" for i in chk.warnings],
        }


def _safe_read(path: Path) -> str:
    try:
        return read_caption(path) or ""
    except ValueError:
        return ""


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard link `src` at `dst` unless it is already that file."""
    try:
        if os.path.samefile(src, dst):
            return
    except OSError:
        pass
    link_or_copy(src, dst)


def run_project(project: Project, project_dir: Path, **kw: Any) -> RunReport:
    return Pipeline(project, project_dir, **kw).run()
