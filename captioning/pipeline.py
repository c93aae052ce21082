"""The caption pipeline every backend runs through.

    report = caption_folder("cropped/", "wd14", CaptionOptions(trigger="sage_character"),
                            mode="skip", rules=TagRules(...))

It finds the images, decides per image what to do with an existing caption (`mode`), skips
what a previous run already finished (the manifest in the output folder), runs the backend
batch by batch, turns tags into text (`captioning.tags`), prunes identity tags when asked,
puts the trigger first exactly once (`prep.trigger.apply_trigger`, for every backend), writes
each `.txt` atomically and records each image's status as it goes. A killed run therefore
loses at most the batch in flight; running the same command again captions only the rest.

Backends need only `caption_batch`. A backend may also offer
`caption_stream(items, options) -> Iterator[list[CaptionResult]]` to overlap its own
decoding with inference (wd14 does); the pipeline prefers it.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from captioning.backends import backend_class
from captioning.backends.base import CaptionBackend, CaptionOptions, CaptionResult, Estimate, LoraType, accepts_video
from captioning.captionfile import UnreadableCaption, read_user_caption
from captioning.identity import DEFAULT_GROUPS, GROUPS, IdentityRules, PruneReport, core_tags, prune_identity
from captioning.merge import MODES, SEPARATOR, Mode, merge_caption
from captioning.tags import Order, TagRules, Thresholds, normalize, parse_replacements, split_caption, split_tags
from prep.dataset import ImageItem, discover, read_caption
from prep.executor import EngineOptions, LocalExecutor, Progress, Result, make_executor, rel_or_abs
from prep.fsutil import atomic_write_text, sha256_file
from prep.inputs import printable
from prep.lock import output_lock
from prep.manifest import Manifest, Record, stat_key
from prep.models import ModelNotAvailable
from prep.options import StageOptions
from prep.remote import redact
from prep.trigger import Trigger, apply_trigger, validate_trigger

STEP = "caption"
__all__ = ["MODES", "SEPARATOR", "Mode", "caption_folder", "CaptionReport", "CaptionStageOptions", "STAGE"]


@dataclass(slots=True)  # one per image: no __dict__ each (100k-image runs)
class ItemOutcome:
    id: str
    status: str
    """ok | skipped (had a caption) | resumed (done by an earlier run) | failed | blocked."""
    caption: str | None = None
    """Only while the pipeline counts it: a report names its captions' files, not their texts."""
    reason: str | None = None


@dataclass
class CaptionReport:
    backend: str
    folder: Path
    output: Path
    mode: str
    trigger: str | None
    outcomes: list[ItemOutcome] = field(default_factory=list)
    tag_frequency: Counter[str] = field(default_factory=Counter)
    pruned: PruneReport = field(default_factory=PruneReport)
    estimate: Estimate | None = None
    dry_run: bool = False
    keep_tokens: int | None = None
    to_caption: int = 0

    def count(self, status: str) -> int:
        return sum(1 for o in self.outcomes if o.status == status)

    @property
    def total(self) -> int:
        return len(self.outcomes)

    @property
    def n_failed(self) -> int:
        """Images that failed or were blocked (`prep.stage.StageReport`): the stage is not up to date."""
        return len(self.problems)

    @property
    def problems(self) -> list[ItemOutcome]:
        return [o for o in self.outcomes if o.status in ("failed", "blocked")]

    def exit_code(self) -> int:
        """0 ok, 3 partial (some failed or blocked, counting images done by an earlier run), 1 all failed."""
        attempted = [o for o in self.outcomes if o.status in ("ok", "resumed", "failed", "blocked")]
        bad = len(self.problems)
        if bad == 0:
            return 0
        return 1 if bad >= len(attempted) else 3

    def keep_tokens_hint(self) -> str | None:
        if not self.trigger or self.keep_tokens is None:
            return None
        return (
            f"captions start with {self.trigger!r}; if you train with shuffle_caption, set keep_tokens = {self.keep_tokens} "
            "(sd-scripts --keep_tokens / dataset config keep_tokens, musubi-tuner the same) so it stays first"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "folder": str(self.folder),
            "output": str(self.output),
            "mode": self.mode,
            "dry_run": self.dry_run,
            "trigger": self.trigger,
            "keep_tokens": self.keep_tokens,
            "counts": {s: self.count(s) for s in ("ok", "skipped", "resumed", "failed", "blocked")} | {"total": self.total},
            "to_caption": self.to_caption,
            "estimate": None if self.estimate is None else {
                "images": self.estimate.images, "seconds": self.estimate.seconds,
                "cost_usd": self.estimate.cost_usd, "notes": self.estimate.notes,
            },
            "problems": [{"id": o.id, "status": o.status, "reason": o.reason} for o in self.problems],
            "tag_frequency": dict(self.tag_frequency.most_common()),
            "pruned": self.pruned.to_json(),
        }


def _config_key(backend: str, options: CaptionOptions, rules: TagRules, mode: str, identity: Any, prune_core: float | None) -> str:
    """Fingerprint of what decides a caption; a finished image is re-done only when it changes."""
    blob = json.dumps(
        {
            "backend": backend, "model": options.model, "revision": options.revision, "trigger": options.trigger,
            "prompt": options.prompt, "lora_type": options.lora_type, "mode": mode, "rules": repr(rules),
            "identity": repr(identity), "core": prune_core,
            "extra": {k: v for k, v in sorted(options.extra.items())
                      if k != "batch" and isinstance(v, (str, int, float, bool, type(None)))},  # batch: speed, not captions
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _target(item: ImageItem, output: Path | None) -> Path:
    if output is None:
        return item.caption_path
    return output / Path(item.id).with_suffix(item.caption_path.suffix)


def _read(path: Path) -> str:
    """A caption we wrote (resumed outcomes); unreadable counts as empty here, never for the user's files."""
    try:
        return read_caption(path) or ""
    except ValueError:
        return ""


def _existing(item: ImageItem, target: Path, output: Path | None, mode: str, keep_apart: bool) -> tuple[str, str | None]:
    """(the caption of the user's that the new one is merged with, the text of `target` when it
    was read for that, else None); raises UnreadableCaption when a caption is not UTF-8.

    keep_apart: the caption beside the image (merged later). In place: the caption file itself.
    With `-o`: the caption in the output folder, or for append/prepend the one beside the image
    when the output has none yet. The second value spares a resumed image a second read of
    its caption (100k of them on a rerun).
    """
    if keep_apart:
        return read_user_caption(item.caption_path) or "", None
    current = read_user_caption(target) or ""
    in_target = current
    if not current and output is not None and mode in ("append", "prepend"):
        current = read_user_caption(item.caption_path) or ""
    return current, in_target


class _CaptionStep:
    """The executor's step: one backend call per batch, each result carried in `Result.data`.

    A missing model is not an image's fault: it is kept (`fatal`) and re-raised by the pipeline
    instead of being retried image by image.
    """

    def __init__(self, backend: CaptionBackend, options: CaptionOptions, backend_name: str = ""):
        self.backend = backend
        self.options = options
        self.backend_name = backend_name or getattr(backend, "name", "") or "this"
        self.fatal: ModelNotAvailable | None = None
        self.video_native = accepts_video(backend, options)

    def _caption(self, batch: list[ImageItem]) -> dict[str, CaptionResult]:
        """Images (and clips, for a backend that takes them) go to the backend as they are; clips
        for an image-only backend are captioned from sampled frames (`captioning.frames`)."""
        clips = [] if self.video_native else [it for it in batch if it.flags.get("video")]
        stills = [it for it in batch if not (it.flags.get("video") and not self.video_native)]
        got = {r.id: r for r in self.backend.caption_batch(stills, self.options)} if stills else {}
        if clips:
            from captioning.frames import caption_from_frames

            got.update({r.id: r for r in caption_from_frames(self.backend, clips, self.options, self.backend_name)})
        return got

    def __call__(self, batch: list[ImageItem]) -> list[Result]:
        if self.fatal is None:
            try:
                got = self._caption(batch)
            except ModelNotAvailable as exc:
                self.fatal = exc
        if self.fatal is not None:  # `fatal` in data: a Ray worker's step is not the driver's object
            return [Result(it.id, "failed", source=str(it.path), reason=str(self.fatal), data={"fatal": True}) for it in batch]
        out = []
        for it in batch:
            r = got.get(it.id)
            if r is None:
                out.append(Result(it.id, "failed", source=str(it.path), reason=f"{it.path}: the backend returned no result for it"))
            else:
                out.append(Result(it.id, "ok" if r.status == "ok" else "failed", source=str(it.path), reason=r.reason, data={"caption": r}))
        return out


def _as_caption_result(r: Result) -> CaptionResult:
    res = r.data.get("caption")
    if isinstance(res, CaptionResult):
        return res
    return CaptionResult(r.id, "failed", reason=r.reason or f"{r.source}: captioning failed")


def executor_for(backend: CaptionBackend, options: CaptionOptions, engine: EngineOptions | None = None) -> Any:
    """How prep's executor drives `backend`: remote backends (`parallel`) get one image per call on
    `concurrency` threads, results as they finish (one image waiting out a Retry-After holds up
    no other); local ones get batches of `batch_size` in order, one call at a time."""
    if engine is not None and engine.engine == "ray":
        # One backend per actor: a local model loads once per worker; a remote backend's
        # `concurrency` and `rpm` are per actor (`CaptionStageOptions.caption_options` splits them).
        if getattr(backend, "parallel", False):
            return make_executor(engine, workers=max(1, options.concurrency), batch_size=1)
        return make_executor(engine, workers=options.workers, batch_size=max(1, options.batch_size))
    if getattr(backend, "parallel", False):
        return LocalExecutor(workers=max(1, options.concurrency), kind="thread", batch_size=1)
    return LocalExecutor(workers=1, kind="serial", batch_size=max(1, options.batch_size))


def caption_folder(
    folder: Path | str,
    backend_name: str = "wd14",
    options: CaptionOptions | None = None,
    *,
    mode: Mode = "skip",
    output: Path | str | None = None,
    rules: TagRules | None = None,
    prune_identity_tags: bool = False,
    identity: IdentityRules | None = None,
    prune_core: float | None = None,
    recursive: bool = False,
    resume: bool = True,
    dry_run: bool = False,
    backend: CaptionBackend | None = None,
    progress: Progress | None = None,
    only: set[str] | None = None,
    keep_apart: bool = False,
    videos: bool = True,
    engine: EngineOptions | None = None,
) -> CaptionReport:
    """Caption every image under `folder` with `backend_name`; returns what happened per image.

    `output`: folder for the `.txt` files (mirrors the image tree) and the manifest; default:
    beside the images. `mode` decides about images that already have a caption: skip them,
    overwrite, or append/prepend the new caption (`captioning.merge.merge_caption`). A caption
    file that is not UTF-8 is never touched: its image is reported failed, with the fix.
    `keep_apart` (needs `output`): write only the generated captions into `output` and leave
    the merge with the users' captions (beside the images) to a later step, as `loraprep run`
    does; `mode` then only decides whether images with a user's caption are captioned (not in
    skip mode), so changing append/prepend/overwrite later re-captions nothing.
    `resume`: images a previous run with the same settings finished are not captioned again.
    `backend` overrides the registry lookup (tests, callers holding a loaded model). `only`:
    restrict to these image ids. Raises `UnknownBackend` / `ModelNotAvailable` before any work.
    `videos`: video clips (`prep.video.discover_videos`) are items too, captioned in `clip.txt`
    beside `clip.mp4` with the same manifest, resume and retries; a backend without
    `accepts_video` captions sampled frames instead (`captioning.frames`).
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}: use one of {', '.join(MODES)}")
    folder = Path(folder)
    out_dir = Path(output) if output else folder
    if keep_apart and out_dir.resolve() == folder.resolve():
        raise ValueError("keep_apart needs an output folder other than the images' folder")
    options = options or CaptionOptions()
    rules = rules or TagRules()
    identity = identity or IdentityRules()
    if backend is None:
        backend = backend_class(backend_name)()
    trigger = validate_trigger(options.trigger) or None if options.trigger else None

    exclude = [out_dir] if output and out_dir.resolve() != folder.resolve() else []
    found = discover(folder, recursive=recursive, exclude=exclude)
    items, clash = _with_videos(found, folder, recursive, exclude) if videos else (found, [])
    if only is not None:
        items = [it for it in items if it.id in only]
    manifest = Manifest.in_folder(out_dir)
    write_mode = "generated" if keep_apart else mode  # what decides the written text
    config = _config_key(backend_name, options, rules, write_mode, identity if prune_identity_tags else None, prune_core)
    report = CaptionReport(backend=backend_name, folder=folder, output=out_dir, mode=mode, trigger=trigger, dry_run=dry_run)
    if trigger:
        report.keep_tokens = 1 + len(rules.always_first) + (1 if rules.include_rating and not rules.rating_last else 0)

    trig = normalize(trigger) if trigger else None

    def count(text: str | None) -> None:
        """Tag statistics of our captions, counted as they come (the texts are not kept)."""
        if text:
            tags = split_caption(text)
            report.tag_frequency.update(tags if trig is None else [t for t in tags if normalize(t) != trig])

    outcome: dict[str, ItemOutcome] = {}
    # named, never opened (symlink loops, FIFOs and devices, formats we cannot read); not in the manifest: found again each run
    skipped = [ItemOutcome(s.id, "failed", reason=s.message) for s in getattr(found, "skipped", [])
               if not (videos and _is_video(s.path))] + clash
    todo: list[ImageItem] = []
    for item in items:
        target = _target(item, output and out_dir)
        try:
            current, target_text = _existing(item, target, output and out_dir, mode, keep_apart)
        except UnreadableCaption as exc:
            # never overwritten, never merged away: the user fixes the file and runs again
            outcome[item.id] = ItemOutcome(item.id, "failed", reason=str(exc))
            if not dry_run:
                manifest.append(Record(STEP, item.id, "failed", source=printable(item.path), reason=str(exc),
                                       data={"backend": backend_name, "unreadable_caption": printable(exc.path), "encoding": exc.encoding}))
            continue
        rec = manifest.get(STEP, item.id) if resume else None
        if rec is not None and rec.data.get("config") == config and rec.status in ("ok", "blocked"):
            # Finished earlier with the same settings on the same bytes. Blocked stays blocked
            # (no second paid request); pass resume=False to try it again.
            if (rec.status == "blocked" or target.exists()) and _same_source(manifest, rec, item, record=not dry_run):
                if rec.status == "ok":
                    outcome[item.id] = ItemOutcome(item.id, "resumed")
                    if not dry_run:
                        count(_read(target) if target_text is None else target_text)
                else:
                    outcome[item.id] = ItemOutcome(item.id, "blocked", reason=rec.reason)
                continue
        if (rec is not None and rec.status == "writing" and rec.data.get("config") == config and _landed(rec, target)
                and _same_source(manifest, rec, item, record=False)):
            # ours: written just before a kill took its record; recorded now, never counted as the user's
            if not dry_run:
                manifest.append(Record(STEP, item.id, "ok", rec.source, rec.source_sha256, list(rec.outputs), None,
                                       {k: v for k, v in rec.data.items() if k != "caption_sha256"} | {"recovered": True}))
            outcome[item.id] = ItemOutcome(item.id, "resumed")
            if not dry_run:
                count(_read(target) if target_text is None else target_text)
            continue
        if mode == "skip" and current:
            outcome[item.id] = ItemOutcome(item.id, "skipped")
            continue
        todo.append(item)
    report.to_caption = len(todo)

    if dry_run:
        report.estimate = _estimate(backend, todo, options)
        report.outcomes = skipped + [outcome.get(i.id) or ItemOutcome(i.id, "pending") for i in items]
        return report

    run_opts = replace(options, state_dir=out_dir, extra={**options.extra, **rules.thresholds.to_extra()})
    by_id = {i.id: i for i in todo}
    is_tags = getattr(backend, "kind", "text") == "tags"
    step = _CaptionStep(backend, run_opts, backend_name)
    executor = executor_for(backend, run_opts, engine)
    # A backend may decode ahead of its calls (wd14 overlaps decoding with inference); not on Ray,
    # where the workers decode their own shards.
    prefetch = getattr(backend, "prefetch", None) if not (engine and engine.engine == "ray") else None
    stills = [it for it in todo if not it.flags.get("video")]
    ahead = prefetch(stills, run_opts) if callable(prefetch) and stills else nullcontext()
    with ahead, output_lock(out_dir, f"caption --backend {backend_name}"):  # one run per folder: never paid twice
        for r in executor.run(step, todo, progress=progress, description=f"captioning ({backend_name})") if todo else ():
            if step.fatal is not None:
                raise step.fatal
            if r.data.get("fatal"):
                raise ModelNotAvailable(r.reason or "the model is not available")
            item = by_id.get(r.id)
            if item is None:
                continue
            done = outcome[item.id] = _finish(item, _as_caption_result(r), output and out_dir, manifest, config, backend_name, mode,
                                              trigger, rules, is_tags, prune_identity_tags, identity, report.pruned, keep_apart)
            if done.caption is not None:
                count(done.caption)
                done.caption = None  # counted; the file has it (a 100k-image run held ~110 MiB of captions)

    report.outcomes = skipped + [outcome[i.id] for i in items]
    if prune_core and is_tags:
        core = _prune_core(report, items, output and out_dir, manifest, prune_core, trigger)
        for t in [t for t in report.tag_frequency if normalize(t) in core]:
            del report.tag_frequency[t]  # pruned from every caption of ours
    return report


def _is_video(path: Path) -> bool:
    from prep.video import is_video_path

    return is_video_path(path)


def _with_videos(found: list[ImageItem], folder: Path, recursive: bool, exclude: list[Path]) -> tuple[list[ImageItem], list[ItemOutcome]]:
    """The images plus the video clips of `folder`, sorted by id; a clip's caption is `clip.txt`.

    An animated GIF is a clip (prep.video's rule), not an image. A clip whose caption file is
    also an image's (`walk.mp4` beside `walk.png`) is not captioned: it is reported with the fix.
    """
    from prep.dataset import caption_path_for
    from prep.video import discover_videos

    ex = [e.resolve() for e in exclude]
    clips = [p for p in discover_videos(folder, recursive) if not any(p.resolve().is_relative_to(e) for e in ex)]
    if not clips:
        return list(found), []
    clip_set = {p for p in clips}
    images = [it for it in found if it.path not in clip_set]
    taken = {it.caption_path: it for it in images}
    out: list[ImageItem] = list(images)
    clash: list[ItemOutcome] = []
    for p in clips:
        rel = printable(p.relative_to(folder).as_posix())
        cap = caption_path_for(p)
        other = taken.get(cap)
        if other is not None:
            clash.append(ItemOutcome(rel, "failed", reason=(
                f"{printable(p)}: its caption {printable(cap.name)} is also the caption of {other.id}; "
                "rename one of them so each has its own caption file")))
            continue
        taken[cap] = ImageItem(id=rel, path=p, caption_path=cap, flags={"video": True})
        out.append(taken[cap])
    out.sort(key=lambda it: it.id)
    return out, clash


def _estimate(backend: CaptionBackend, todo: list[ImageItem], options: CaptionOptions) -> Estimate:
    """Images by `estimate`; clips by `estimate_video(n, seconds, options)` where the backend has it
    (seconds probed, no request made), added together."""
    clips = [it for it in todo if it.flags.get("video")]
    est = backend.estimate(len(todo) - len(clips), options)
    fn = getattr(backend, "estimate_video", None)
    if not clips or not callable(fn) or not accepts_video(backend, options):
        if clips:
            est = replace(est, images=len(todo), notes=(est.notes + "; " if est.notes else "")
                          + f"{len(clips)} clip(s) captioned from sampled frames (counted as images)")
        return est
    from prep.video import VideoError, probe_video

    seconds = 0.0
    for it in clips:
        try:
            seconds += probe_video(it.path).duration
        except VideoError:
            pass  # named when captioned
    vid = fn(len(clips), seconds, options)
    cost = None if est.cost_usd is None or vid.cost_usd is None else est.cost_usd + vid.cost_usd
    if not len(todo) - len(clips):
        cost = vid.cost_usd
    secs = None if est.seconds is None or vid.seconds is None else est.seconds + vid.seconds
    notes = "; ".join(n for n in (est.notes if len(todo) > len(clips) else "", vid.notes) if n)
    return Estimate(images=len(todo), seconds=secs, cost_usd=cost, notes=notes)


def _source_digest(item: ImageItem) -> tuple[str, list[int]]:
    """The source's content hash and its stat, taken before the read: a change during it shows next run."""
    st = stat_key(item.path)
    return sha256_file(item.path), st


def _same_source(manifest: Manifest, rec: Record, item: ImageItem, record: bool = True) -> bool:
    """True when the source still has the bytes `rec` was made from. An unchanged stat trusts the
    recorded hash without a read; a touched file with the same bytes is hashed once and its new
    stat recorded, so the next rerun reads nothing (as prep crop does)."""
    if rec.source_sha256 is None:
        return True
    try:
        st = stat_key(item.path)
        if manifest.recorded_sha256(STEP, item.id, st) is not None:
            return True
        sha = sha256_file(item.path)
    except OSError:
        return False  # gone or unreadable: captioned again, where the backend names the problem
    if sha != rec.source_sha256:
        return False
    if record:  # a dry run writes nothing
            manifest.append(Record(rec.step, rec.id, rec.status, rec.source, rec.source_sha256, list(rec.outputs), rec.reason,
                               {**rec.data, "source_stat": st}))
    return True


def _finish(item: ImageItem, res: CaptionResult, output: Path | None, manifest: Manifest, config: str, backend_name: str,
            mode: str, trigger: str | None, rules: TagRules, is_tags: bool, prune: bool, identity: IdentityRules,
            pruned: PruneReport, keep_apart: bool = False) -> ItemOutcome:
    """Turn one backend result into a written caption and a manifest record."""
    source = printable(item.path)
    data = {k: v for k, v in res.data.items() if k != "thresholded"}
    if res.status != "ok":
        status = "blocked" if res.status == "blocked" else ("retryable" if res.status == "retryable" else "failed")
        # redact here, where every reason reaches the manifest: no backend can leak a key into it
        reason = redact(res.reason or f"{source}: the {backend_name} backend gave status {res.status} without a reason")
        sha, st = _source_digest(item) if status == "blocked" else (None, None)
        manifest.append(Record(STEP, item.id, status, source=source, source_sha256=sha, reason=reason,
                               data={"backend": backend_name, "config": config, **data, **({"source_stat": st} if st else {})}))
        return ItemOutcome(item.id, "blocked" if status == "blocked" else "failed", reason=reason)

    has_text = bool(res.text and res.text.strip())
    tag_caption = not has_text and (res.tags is not None or is_tags)
    names: list[str] = []
    chained = has_text and res.tags is not None  # a chain (wd14+gemini): tag rules for the tags, then the sentence
    if tag_caption or chained:
        tags = res.tags or []
        if not res.data.get("thresholded"):
            tags = rules.thresholds.select_tags(tags)
        names = rules.apply(tags)
        if prune:
            names, gone = prune_identity(names, identity)
            pruned.identity.update(gone)
        text = SEPARATOR.join(names)
        if chained:
            text = SEPARATOR.join([*names, " ".join((res.text or "").split())])
    else:
        text = " ".join((res.text or "").split()) if "\n" not in (res.text or "") else (res.text or "").strip()
    if not text.strip() and not (tag_caption and trigger):
        reason = f"{source}: the {backend_name} backend returned an empty caption (lower the thresholds, or check the image)"
        manifest.append(Record(STEP, item.id, "failed", source=source, reason=reason, data={"backend": backend_name}))
        return ItemOutcome(item.id, "failed", reason=reason)

    target = _target(item, output)
    try:
        existing = "" if keep_apart else _existing(item, target, output, mode, keep_apart)[0]
    except UnreadableCaption as exc:  # became unreadable while we captioned: still never overwritten
        manifest.append(Record(STEP, item.id, "failed", source=source, reason=str(exc), data={"backend": backend_name}))
        return ItemOutcome(item.id, "failed", reason=str(exc))
    caption = merge_caption(existing, text, "overwrite" if keep_apart else mode, tags=tag_caption or is_tags) or ""
    if trigger:
        caption = apply_trigger(caption, trigger)
    sha, st = _source_digest(item)
    body = caption + "\n"
    rel = rel_or_abs(target, manifest.path.parent)
    # A small "writing" record first, the full one after the file: a kill between the two leaves a
    # record that says which caption was on its way (`caption_sha256`), so the next run can tell
    # our caption from the user's, and no record ever says ok for a file that is not there.
    manifest.append(Record(STEP, item.id, "writing", source=source, source_sha256=sha, outputs=[rel],
                           data={"backend": backend_name, "config": config, "caption_sha256": _text_digest(body), "source_stat": st}))
    try:
        atomic_write_text(target, body)
    except OSError as exc:  # one caption that cannot be written (name too long, a folder in the way) fails alone
        reason = f"{printable(target)}: cannot write the caption ({printable(exc.strerror or str(exc))}); check the name and the disk"
        manifest.append(Record(STEP, item.id, "failed", source=source, reason=reason, data={"backend": backend_name}))
        return ItemOutcome(item.id, "failed", reason=reason)
    manifest.append(
        Record(
            STEP, item.id, "ok", source=source, source_sha256=sha, outputs=[rel],
            data={"backend": backend_name, "config": config, **data, **({"tags": names} if tag_caption else {}), "source_stat": st},
        )
    )
    return ItemOutcome(item.id, "ok", caption=caption)


def _text_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _landed(rec: Record, target: Path) -> bool:
    """A "writing" record's caption is in `target`: the kill came after the file, before its record."""
    try:
        return hashlib.sha256(target.read_bytes()).hexdigest()[:16] == rec.data.get("caption_sha256")
    except OSError:
        return False


def _prune_core(report: CaptionReport, items: list[ImageItem], output: Path | None, manifest: Manifest, fraction: float,
                trigger: str | None) -> dict[str, float]:
    """Drop tags present in >= `fraction` of the generated captions (this run and resumed ones), rewriting the files.

    Shares are computed from the generated tags kept in the manifest, so a resumed run prunes
    the same way as an uninterrupted one. Captions are read from their files, one at a time.
    """
    by_id = {i.id: i for i in items}
    ours = [o.id for o in report.outcomes if o.status in ("ok", "resumed") and o.id in by_id]

    def generated() -> Iterator[list[str]]:
        for oid in ours:
            text = _read(_target(by_id[oid], output))
            if not text:
                continue
            rec = manifest.get(STEP, oid)
            tags = rec.data.get("tags") if rec is not None else None
            yield list(tags) if isinstance(tags, list) else split_caption(text)

    core = core_tags(generated(), fraction, protect=[trigger] if trigger else [])
    report.pruned.core = core
    if not core:
        return core
    for oid in ours:
        path = _target(by_id[oid], output)
        tags = split_caption(_read(path))
        kept = [t for t in tags if normalize(t) not in core]
        if tags and len(kept) != len(tags):
            atomic_write_text(path, SEPARATOR.join(kept) + "\n")
    return core


# -- the caption stage: options declared once, for `caption`, loraprep.toml and `loraprep run` ----

_LOCAL = "wd14, florence2, joycaption, qwen-vl"


class CaptionStageOptions(EngineOptions):
    """Every option of the caption stage: the `caption` command's flags are generated from these
    fields (`prep.options.options_command`) and `loraprep.toml`'s [caption] table is validated by
    them. Defaults are the tool's choices, documented in docs/captioning.md."""

    backend: str = Field("wd14", description="wd14 (local tagger), gemini, replicate, florence2, joycaption, qwen-vl (images and video clips), or a chain like wd14+gemini.",
                         json_schema_extra={"cli": ("--backend", "-b")})
    model: str | None = Field(None, description="Model: Hub repo id or local folder (wd14: folder holding model.onnx + selected_tags.csv).",
                              json_schema_extra={"cli": ("--model", "-m")})
    revision: str | None = Field(None, description="Hub revision (commit or tag) to pin the model.")
    trigger: Trigger | None = Field(None, description="Trigger word: put first, exactly once, exact casing.",
                                json_schema_extra={"cli": ("--trigger", "-t")})
    lora_type: LoraType = Field("character", description="Prompt preset of sentence backends; character sets may prune identity tags.")
    mode: Mode = Field("skip", description="Images that already have a caption: skip them, overwrite, append or prepend the new one.")
    recursive: bool = Field(False, description="Include subfolders.", json_schema_extra={"cli": ("--recursive/--no-recursive", "-r")})
    general_threshold: float = Field(0.35, ge=0.0, description="Tag tagger: minimum score of general tags.")
    character_threshold: float = Field(0.85, ge=0.0, description="Tag tagger: minimum score of character tags.")
    mcut: bool = Field(False, description="Thresholds by MCut per image instead (character floor 0.15).")
    rating: bool = Field(False, description="Add the most likely rating tag (general/sensitive/questionable/explicit).")
    rating_last: bool = Field(False, description="Put the rating tag last instead of first.")
    order: Order = Field("confidence", description="Tag order: confidence (highest first) or category (model order).")
    character_first: bool = Field(True, description="Put character tags before general tags.",
                                  json_schema_extra={"cli": ("--character-first/--no-character-first",)})
    keep_underscores: bool = Field(False, description="Write long_hair, not long hair.")
    escape_parens: bool = Field(False, description="Write \\( \\) for A1111 prompt syntax.")
    exclude: list[str] = Field(default_factory=list, description="Tags to drop (repeat or comma-separate; either long_hair or long hair).",
                               json_schema_extra={"cli": ("--exclude", "-x")})
    replace: list[str] = Field(default_factory=list, description="OLD=NEW tag replacement (repeat); OLD= drops it.")
    always_first: list[str] = Field(default_factory=list, description="Tags moved to the front when present, in the order given.")
    max_tags: int | None = Field(None, ge=1, description="Keep at most N tags (after ordering).")
    prune_identity: bool = Field(False, description="Drop tags of the character's fixed look (hair, eyes, skin, ears, tail, wings ...).")
    identity_groups: list[str] = Field(default_factory=lambda: list(DEFAULT_GROUPS),
                                       description=f"Groups pruned by --prune-identity (comma-separated or repeated): {', '.join(GROUPS)}.")
    keep_tag: list[str] = Field(default_factory=list, description="Never prune these tags (e.g. a hairstyle that changes).")
    prune_core: float | None = Field(None, gt=0.0, le=1.0, description="Drop tags present in at least this share of the captions (e.g. 0.6).")
    device: str = Field("auto", description=f"auto | cpu | cuda | tensorrt | coreml | dml (local backends: {_LOCAL}).")
    batch_size: int = Field(8, ge=1, description="Images per backend call (local backends); given explicitly, also the "
                            "model's batch (wd14 otherwise runs 1 at a time on CPU, where larger batches only cost memory).")
    workers: int | None = Field(None, ge=1, description="Image decode threads (local backends).")
    concurrency: int = Field(4, ge=1, description="Requests in flight (remote backends).")
    rpm: float | None = Field(None, gt=0, description="Requests per minute cap (remote backends).")
    prompt: str | None = Field(None, description="Override the backend's prompt preset (sentence backends).")
    max_new_tokens: int = Field(256, ge=1, description="Length limit of generated sentences.")
    preprocess: Literal["reference", "sd-scripts"] | None = Field(
        None, description="wd14: reference (model authors', default) or sd-scripts (its resize, for tag-for-tag parity).")
    settings: list[str] = Field(default_factory=list, description="Backend-specific KEY=VALUE (repeat), e.g. --set threads=2 --set draft=false.",
                                json_schema_extra={"cli": ("--set",)})
    resume: bool = Field(True, description="Skip images a previous run with the same settings already finished (--no-resume re-captions them).")
    keep_apart: bool = Field(False, description="Write only generated captions into the output folder and leave merging with the "
                             "users' captions to a later step (loraprep run's layout).", json_schema_extra={"cli": None})

    @field_validator("replace")
    @classmethod
    def _check_replace(cls, v: list[str]) -> list[str]:
        parse_replacements(v)  # raises naming the bad entry
        return v

    @field_validator("settings")
    @classmethod
    def _check_settings(cls, v: list[str]) -> list[str]:
        parse_set(v)
        return v

    @field_validator("identity_groups")
    @classmethod
    def _check_groups(cls, v: list[str]) -> list[str]:
        groups = split_tags(v)
        unknown = [g for g in groups if g not in GROUPS]
        if unknown:
            raise ValueError(f"unknown identity group(s) {', '.join(unknown)}; use {', '.join(GROUPS)}")
        return groups

    # -- views for the library ----------------------------------------------------------------
    def caption_options(self) -> CaptionOptions:
        extra = parse_set(self.settings)
        if self.preprocess is not None:
            extra["preprocess"] = self.preprocess
        # The model's batch: the user's --batch-size when given, else the backend's per-device choice (wd14: 1 on CPU).
        extra.setdefault("batch", self.batch_size if "batch_size" in self.model_fields_set else "auto")
        return CaptionOptions(
            trigger=self.trigger, lora_type=self.lora_type, model=self.model, revision=self.revision, device=self.device,
            batch_size=self.batch_size, workers=self.workers, prompt=self.prompt, max_new_tokens=self.max_new_tokens,
            concurrency=self.concurrency, rpm=self._rpm_per_worker(), extra=extra,
        )

    def _rpm_per_worker(self) -> float | None:
        """On Ray each of `concurrency` actors has its own limiter: the cap is shared out among them."""
        if self.rpm is None or self.engine != "ray":
            return self.rpm
        return self.rpm / max(1, self.concurrency)

    def tag_rules(self) -> TagRules:
        return TagRules(
            thresholds=Thresholds(general=self.general_threshold, character=self.character_threshold, mcut=self.mcut),
            include_rating=self.rating or self.rating_last,
            rating_last=self.rating_last,
            character_first=self.character_first,
            order=self.order,
            underscores=self.keep_underscores,
            escape_parens=self.escape_parens,
            exclude=tuple(split_tags(self.exclude)),
            replace=parse_replacements(self.replace),
            always_first=tuple(split_tags(self.always_first)),
            max_tags=self.max_tags,
        )

    def identity_rules(self) -> IdentityRules:
        return IdentityRules(groups=tuple(self.identity_groups), keep=tuple(split_tags(self.keep_tag)))


def _parse_value(v: str) -> Any:
    low = v.strip().lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    try:
        return json.loads(v)
    except ValueError:
        return v


def parse_set(pairs: list[str]) -> dict[str, Any]:
    """`--set key=value` pairs to a dict (numbers, booleans and JSON parsed)."""
    out: dict[str, Any] = {}
    for p in pairs:
        if "=" not in p:
            raise ValueError(f"--set {p!r}: write it as KEY=VALUE")
        k, v = p.split("=", 1)
        out[k.strip().replace("-", "_")] = _parse_value(v)
    return out


class CaptionStage:
    """The caption stage (`prep.stage.Stage`): `caption` and `loraprep run` both call `run`."""

    name: ClassVar[str] = "caption"
    Options: ClassVar[type[StageOptions]] = CaptionStageOptions

    def run(self, src: Path, out: Path, options: CaptionStageOptions, *, progress: Progress | None = None,
            dry_run: bool = False, backend: CaptionBackend | None = None) -> CaptionReport:
        """Caption the images in `src`, writing captions (and the manifest) to `out` (`out == src`: beside them).

        With `options.keep_apart`, `out` holds only generated captions and the users' captions
        beside the images are merged later (`captioning.merge.merge_caption`).
        """
        src, out = Path(src), Path(out)
        same = out.resolve() == src.resolve()
        return caption_folder(
            src, options.backend, options.caption_options(), mode=options.mode, output=None if same else out,
            rules=options.tag_rules(), prune_identity_tags=options.prune_identity, identity=options.identity_rules(),
            prune_core=options.prune_core, recursive=options.recursive, resume=options.resume, dry_run=dry_run,
            backend=backend, progress=progress, keep_apart=options.keep_apart, engine=options,
        )


STAGE = CaptionStage()
