"""`loraprep run`: raw folder (or zip) to a launch-ready training run, a loop over stages.

The stages are `loraprep.stages.STEPS` (the per-command tools' own STAGE objects plus three of
loraprep's own): each gets its options from loraprep.toml and its folders from
`prep.project.ProjectDirs`, and records a fingerprint: its options, the fingerprint of the stage
before it, and a cheap signature (names, sizes, mtimes) of the folder it reads. A stage whose
fingerprint matches is skipped, so a second identical run does no work and a changed setting
redoes only that stage and the ones after it. The recorded fingerprint also holds a signature of
what the stage wrote (`Step.output_signature`, taken again at the end of the run, after later
stages that edit the same folder): an output deleted or changed by hand is redone, never trusted. A stage whose report has failed items is never
recorded as up to date: the next run tries them again. A full disk (`prep.fsutil.DiskFull`) stops
the run at the stage that hit it, naming the path, and that stage is not recorded either.
"""

from __future__ import annotations

import importlib
import inspect
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from loraprep.project import Project, StageState, fingerprint
from loraprep.stages import STAGES, StageStop, Step, steps_for
from prep.executor import Progress
from prep.fsutil import DiskFull
from prep.jsonout import write_json
from prep.lock import output_lock
from prep.options import OptionsError
from prep.project import ProjectDirs

__all__ = ["STAGES", "Pipeline", "RunReport", "StageResult", "StageStop", "preflight", "run_project"]


@dataclass
class StageResult:
    name: str
    status: str  # done | partial | up-to-date | stopped | skipped | would-run (dry run)
    summary: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class RunReport:
    project_dir: Path
    stages: list[StageResult] = field(default_factory=list)
    stopped_at: str | None = None
    stop_reason: str | None = None
    stop_usage: bool = False
    next_command: list[str] | None = None
    dry_run: bool = False

    @property
    def ok(self) -> bool:
        return self.stopped_at is None

    @property
    def partial(self) -> bool:
        return any(s.status == "partial" for s in self.stages)

    @property
    def work_done(self) -> bool:
        return any(s.status in ("done", "partial") for s in self.stages)

    @property
    def exit_code(self) -> int:
        """0 ok, 1 stopped, 2 stopped on a usage problem, 3 some items failed."""
        if not self.ok:
            return 2 if self.stop_usage else 1
        return 3 if self.partial else 0

    def stage(self, name: str) -> StageResult | None:
        return next((s for s in self.stages if s.name == name), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "project": str(self.project_dir),
            "ok": self.ok,
            "dry_run": self.dry_run,
            "exit_code": self.exit_code,
            "stopped_at": self.stopped_at,
            "stop_reason": self.stop_reason,
            "next_command": self.next_command,
            "stages": [asdict(s) for s in self.stages],
        }


def preflight(project: Project) -> None:
    """What can be refused before any stage runs: the trainer's options (`[train] set`) and model roles.

    Raises OptionsError naming the keys. The trainer itself and every stage's options were
    checked when the project was built.
    """
    from prep.archs import get_arch

    spec = get_arch(project.trainer)
    problems: list[tuple[str, str]] = []
    roles = [m.name for m in spec.models]
    for role in project.train.models:
        if role not in roles:
            problems.append((f"[train.models] {role}", f"{spec.name} has no model role {role!r} (its roles: {', '.join(roles)})"))
    for key, value in project.train.set.items():
        try:
            check_trainer_option(spec.name, key, value)
        except ValueError as exc:
            problems.append((f"[train.set] {key}", str(exc)))
    if problems:
        raise OptionsError("loraprep.toml", problems)


def check_trainer_option(trainer: str, key: str, value: Any) -> Any:
    """The typed value of one `--set KEY=VALUE` for `trainer`; ValueError naming what is wrong."""
    from train_bridge.config import ConfigError, split_overrides
    from train_bridge.options import load_option_list
    from train_bridge.trainers import get_arch

    spec = get_arch(trainer)
    try:
        train, general, subset = split_overrides(spec, {key: value}, load_option_list(spec.options_key))
    except ConfigError as exc:
        raise ValueError(str(exc).strip()) from None
    for typed in (train, general, subset):
        if typed:
            return next(iter(typed.values()))
    return value


def _streams(rep: Any) -> bool:
    """`rep.to_json` takes `stream` (its images as iterators, see `prep.jsonout`)."""
    try:
        return "stream" in inspect.signature(rep.to_json).parameters
    except (TypeError, ValueError):
        return False


class Pipeline:
    """Runs the stages of one project in order, skipping the ones that are up to date."""

    def __init__(
        self,
        project: Project,
        project_dir: Path,
        *,
        progress_factory: Callable[[], Progress | None] = lambda: None,
        force: set[str] | None = None,
        dry_run: bool = False,
        steps: tuple[Step, ...] | None = None,
    ):
        self.p = project
        self.dirs = ProjectDirs(Path(project_dir))
        self.state = StageState(self.dirs)
        self.progress = progress_factory
        self.force = force or set()
        self.dry_run = dry_run
        self.steps = steps if steps is not None else steps_for(project)  # video runs: import, check, clips, caption, layout, config, estimate
        self.report = RunReport(self.dirs.root, dry_run=dry_run)

    def _write_report(self, name: str, data: Any) -> None:
        write_json(self.dirs.reports / name, data)

    def _settings(self, step: Step, stage: Any) -> Any:
        if not step.enabled(self.p):
            return {"enabled": False}
        return step.options_for(self.p, self.dirs, stage).model_dump(mode="json")

    def run(self) -> RunReport:
        """Run the stages, holding the project folder (prep.lock) so a second `loraprep run` on it
        refuses (OutputLocked, exit 2, naming the holder). The stages lock their own subfolders;
        the lock is per folder and re-entrant in one process, so nothing waits on itself."""
        if self.dry_run:
            return self.plan()
        with output_lock(self.dirs.root, "loraprep run"):
            return self._run()

    def _run(self) -> RunReport:
        try:
            self.p.save(self.dirs.file)
        except DiskFull as exc:
            self.report.stopped_at, self.report.stop_reason = "start", str(exc)
            return self.report
        prev = "start"
        finished: list[tuple[Step, str]] = []
        for step in self.steps:
            stage = step.stage()
            settings = self._settings(step, stage)
            fp = fingerprint(step.name, settings, prev, step.reads(self.p, self.dirs))
            if step.name not in self.force and self._fresh(step, fp):
                self.report.stages.append(StageResult(step.name, "up-to-date", self.state.summary(step.name)))
                finished.append((step, fp))
                prev = fp
                continue
            t = time.perf_counter()
            try:
                try:
                    status, summary = self._run_step(step, stage)
                except DiskFull as exc:
                    raise StageStop(step.name, f"{step.name}: {exc}") from None
            except StageStop as stop:
                self.state.forget(step.name)
                self.report.stages.append(StageResult(step.name, "stopped", {"reason": str(stop)}, time.perf_counter() - t))
                self.report.stopped_at, self.report.stop_reason, self.report.stop_usage = step.name, str(stop), stop.usage
                break
            # Stages that change their own input folder record the signature after the work,
            # so the next identical run sees them as up to date.
            fp = fingerprint(step.name, settings, prev, step.reads(self.p, self.dirs))
            try:
                if status == "partial":
                    self.state.forget(step.name)  # failed items: never up to date
                else:
                    self.state.record(step.name, self._recorded(step, fp), summary)
                    finished.append((step, fp))
            except DiskFull as exc:  # the stage's work is kept but not recorded: the next run redoes it
                self.report.stages.append(StageResult(step.name, "stopped", {"reason": str(exc)}, time.perf_counter() - t))
                self.report.stopped_at, self.report.stop_reason = step.name, f"{step.name}: {exc}"
                break
            self.report.stages.append(StageResult(step.name, status, summary, time.perf_counter() - t))
            prev = fp
        if self.report.ok:
            self.report.next_command = ["train_bridge", "launch", str(self.dirs.run)]
        try:
            self._write_report("summary.json", self.report.to_json())
        except DiskFull as exc:
            if self.report.ok:
                self.report.stopped_at, self.report.stop_reason = "summary", str(exc)
        self._record_outputs(finished)
        return self.report

    def _recorded(self, step: Step, fp: str) -> str:
        """What the state keeps for a finished stage: its input fingerprint and what it wrote."""
        return fingerprint(fp, step.output_signature(self.p, self.dirs))

    def _fresh(self, step: Step, fp: str) -> bool:
        return self.state.fresh(step.name, self._recorded(step, fp))

    def _record_outputs(self, finished: list[tuple[Step, str]]) -> None:
        """Take each finished stage's output signature again, now that the later stages that edit
        the same folders (trigger in 04_captioned, dedupe in 01_raw) are done, in one state write."""
        changed = None
        for step, fp in finished:
            entry = self.state.data.get(step.name)
            rec = self._recorded(step, fp)
            if entry is not None and entry.get("fingerprint") != rec:
                entry["fingerprint"] = rec
                changed = step.name
        if changed is None:
            return
        try:
            self.state.record(changed, self.state.data[changed]["fingerprint"], self.state.summary(changed))  # writes them all
        except DiskFull:
            pass  # each stage was recorded when it finished: the next run at worst redoes one

    def _run_step(self, step: Step, stage: Any) -> tuple[str, dict[str, Any]]:
        if not step.enabled(self.p):
            return "done", {"enabled": False}
        errors = tuple(_exception(e) for e in step.errors)
        try:
            options = step.options_for(self.p, self.dirs, stage)
            src = step.src(self.p, self.dirs)
            if not src.exists():
                raise StageStop(step.name, f"{src}: does not exist" + ("; pass a folder or a .zip of images" if step.name == "import" else ""))
            rep = stage.run(src, step.out(self.dirs), options, progress=self.progress())
        except OptionsError as exc:
            raise StageStop(step.name, f"{exc} (edit [{step.name}] in loraprep.toml)", usage=True) from None
        except errors as exc:  # type: ignore[misc]
            raise StageStop(step.name, f"{step.name}: {exc}") from None
        # a report that can stream its per-image parts (check, crop) is never made one document
        # (written in pieces when it has a report file); the summaries read the report, not them
        js = rep.to_json(stream=True) if _streams(rep) else rep.to_json()
        if step.report_file:
            self._write_report(step.report_file, js)
        reason = step.stop(rep, js, self.p, self.dirs)
        if reason:
            raise StageStop(step.name, reason)
        summary = step.summary(rep, js)
        failed = getattr(rep, "n_failed", None)
        if failed is None:  # a report without the protocol's n_failed: its listed problems
            failed = len(js.get("problems") or [])
        failed = int(failed)
        if failed:
            summary["n_failed"] = failed
        return ("partial" if failed else "done"), summary

    def plan(self) -> RunReport:
        """What each stage would do, writing nothing (not even loraprep.toml)."""
        prev, upstream_runs = "start", False
        for step in self.steps:
            stage = step.stage()
            try:
                settings = self._settings(step, stage)
            except OptionsError as exc:
                self.report.stages.append(StageResult(step.name, "stopped", {"reason": str(exc)}))
                self.report.stopped_at, self.report.stop_reason, self.report.stop_usage = step.name, str(exc), True
                break
            fp = fingerprint(step.name, settings, prev, step.reads(self.p, self.dirs))
            src, out = step.src(self.p, self.dirs), step.out(self.dirs)
            info = {"reads": str(src), "writes": str(out)}
            if not step.enabled(self.p):
                status, info["note"] = "skipped", "disabled in loraprep.toml"
            elif upstream_runs:
                status, info["note"] = "would-run", "after the stages before it"
            elif step.name in self.force:
                status, info["note"] = "would-run", "--redo"
            elif self._fresh(step, fp):
                status = "up-to-date"
            else:
                status = "would-run"
                info["note"] = "settings or inputs changed" if step.name in self.state.data else "not run yet"
            upstream_runs = upstream_runs or status == "would-run"
            if status == "would-run":
                info["options"] = {k: v for k, v in settings.items() if v not in (None, [], {}, "")}
            self.report.stages.append(StageResult(step.name, status, info))
            prev = fp
        return self.report


def _exception(spec: str) -> type[BaseException]:
    mod, _, name = spec.partition(":")
    return getattr(importlib.import_module(mod), name)


def run_project(project: Project, project_dir: Path, **kw: Any) -> RunReport:
    return Pipeline(project, project_dir, **kw).run()
