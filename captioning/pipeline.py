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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from captioning.backends import backend_class
from captioning.backends.base import CaptionBackend, CaptionOptions, CaptionResult, Estimate
from captioning.identity import IdentityRules, PruneReport, core_tags, prune_identity
from captioning.tags import TagRules, normalize, split_caption
from prep.dataset import ImageItem, discover, read_caption
from prep.executor import Progress, rel_or_abs
from prep.fsutil import atomic_write_text, sha256_file
from prep.manifest import Manifest, Record
from prep.models import ModelNotAvailable
from prep.remote import redact
from prep.trigger import apply_trigger

STEP = "caption"
Mode = Literal["skip", "overwrite", "append", "prepend"]
MODES = ("skip", "overwrite", "append", "prepend")
SEPARATOR = ", "


@dataclass
class ItemOutcome:
    id: str
    status: str
    """ok | skipped (had a caption) | resumed (done by an earlier run) | failed | blocked."""
    caption: str | None = None
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
    def problems(self) -> list[ItemOutcome]:
        return [o for o in self.outcomes if o.status in ("failed", "blocked")]

    def exit_code(self) -> int:
        """0 ok, 3 partial (some failed or blocked), 1 all attempted images failed."""
        attempted = [o for o in self.outcomes if o.status in ("ok", "failed", "blocked")]
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
            "extra": {k: v for k, v in sorted(options.extra.items()) if isinstance(v, (str, int, float, bool, type(None)))},
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _target(item: ImageItem, output: Path | None) -> Path:
    if output is None:
        return item.caption_path
    return output / Path(item.id).with_suffix(item.caption_path.suffix)


def _read(path: Path) -> str:
    try:
        return read_caption(path) or ""
    except ValueError:
        return ""


def _merge(existing: str, new: str, mode: str, tags: bool) -> str:
    """Combine an existing caption with a new one for append/prepend (tags: no duplicates)."""
    if mode not in ("append", "prepend") or not existing.strip():
        return new
    if tags:
        old = split_caption(existing)
        fresh = split_caption(new)
        keys = {normalize(t) for t in old}
        if mode == "append":
            return SEPARATOR.join(old + [t for t in fresh if normalize(t) not in keys])
        fresh_keys = {normalize(t) for t in fresh}
        return SEPARATOR.join(fresh + [t for t in old if normalize(t) not in fresh_keys])
    return f"{existing.strip()} {new}" if mode == "append" else f"{new} {existing.strip()}"


def _guarded_batches(backend: CaptionBackend, items: list[ImageItem], options: CaptionOptions) -> Iterator[list[CaptionResult]]:
    """caption_batch in chunks; a chunk that raises is retried per image so one image cannot sink it."""
    size = max(1, options.batch_size, options.concurrency)
    for i in range(0, len(items), size):
        chunk = items[i : i + size]
        try:
            yield backend.caption_batch(chunk, options)
            continue
        except (KeyboardInterrupt, SystemExit, ModelNotAvailable):
            raise
        except Exception:
            pass
        out = []
        for item in chunk:
            try:
                out.extend(backend.caption_batch([item], options))
            except (KeyboardInterrupt, SystemExit, ModelNotAvailable):
                raise
            except Exception as exc:
                out.append(CaptionResult(item.id, "failed", reason=f"{item.path}: {type(exc).__name__}: {exc}"))
        yield out


def _results(backend: CaptionBackend, items: list[ImageItem], options: CaptionOptions) -> Iterator[list[CaptionResult]]:
    stream = getattr(backend, "caption_stream", None)
    if callable(stream):
        return stream(items, options)
    return _guarded_batches(backend, items, options)


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
) -> CaptionReport:
    """Caption every image under `folder` with `backend_name`; returns what happened per image.

    `output`: folder for the `.txt` files (mirrors the image tree) and the manifest; default:
    beside the images. `mode` decides about images that already have a caption: skip them,
    overwrite, or append/prepend the new caption. `resume`: images a previous run with the same
    settings finished are not captioned again. `backend` overrides the registry lookup (tests,
    callers holding a loaded model). `only`: restrict to these image ids (e.g. the ones without a
    caption of the user's). Raises `UnknownBackend` / `ModelNotAvailable` before any work.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}: use one of {', '.join(MODES)}")
    folder = Path(folder)
    out_dir = Path(output) if output else folder
    options = options or CaptionOptions()
    rules = rules or TagRules()
    identity = identity or IdentityRules()
    if backend is None:
        backend = backend_class(backend_name)()
    trigger = options.trigger.strip() if options.trigger else None

    exclude = [out_dir] if output and out_dir.resolve() != folder.resolve() else []
    items = discover(folder, recursive=recursive, exclude=exclude)
    if only is not None:
        items = [it for it in items if it.id in only]
    manifest = Manifest.in_folder(out_dir)
    config = _config_key(backend_name, options, rules, mode, identity if prune_identity_tags else None, prune_core)
    report = CaptionReport(backend=backend_name, folder=folder, output=out_dir, mode=mode, trigger=trigger, dry_run=dry_run)
    if trigger:
        report.keep_tokens = 1 + len(rules.always_first) + (1 if rules.include_rating and not rules.rating_last else 0)

    outcome: dict[str, ItemOutcome] = {}
    todo: list[ImageItem] = []
    for item in items:
        target = _target(item, output and out_dir)
        rec = manifest.get(STEP, item.id) if resume else None
        if rec is not None and rec.data.get("config") == config and rec.status in ("ok", "blocked"):
            # Finished earlier with the same settings on the same bytes. Blocked stays blocked
            # (no second paid request); pass resume=False to try it again.
            if (rec.status == "blocked" or target.exists()) and rec.source_sha256 in (None, sha256_file(item.path)):
                if rec.status == "ok":
                    outcome[item.id] = ItemOutcome(item.id, "resumed", caption=_read(target))
                else:
                    outcome[item.id] = ItemOutcome(item.id, "blocked", reason=rec.reason)
                continue
        current = _read(target) if mode == "skip" else ""
        if current:
            outcome[item.id] = ItemOutcome(item.id, "skipped", caption=current)
            continue
        todo.append(item)
    report.to_caption = len(todo)

    if dry_run:
        report.estimate = backend.estimate(len(todo), options)
        report.outcomes = [outcome.get(i.id) or ItemOutcome(i.id, "pending") for i in items]
        return report

    run_opts = replace(options, state_dir=out_dir, extra={**options.extra, **rules.thresholds.to_extra()})
    by_id = {i.id: i for i in todo}
    is_tags = getattr(backend, "kind", "text") == "tags"
    if progress:
        progress.start(len(todo), f"captioning ({backend_name})")
    try:
        for chunk in _results(backend, todo, run_opts) if todo else ():
            for res in chunk:
                item = by_id.get(res.id)
                if item is None:
                    continue
                outcome[item.id] = _finish(item, res, output and out_dir, manifest, config, backend_name, mode, trigger,
                                           rules, is_tags, prune_identity_tags, identity, report.pruned)
                if progress:
                    progress.advance()
        for item in todo:  # a backend that silently dropped an image
            if item.id not in outcome:
                outcome[item.id] = ItemOutcome(item.id, "failed", reason=f"{item.path}: the backend returned no result for it")
                manifest.append(Record(STEP, item.id, "failed", source=str(item.path), reason=outcome[item.id].reason))
    finally:
        if progress:
            progress.stop()

    report.outcomes = [outcome[i.id] for i in items]
    if prune_core and is_tags:
        _prune_core(report, items, output and out_dir, manifest, prune_core, trigger)
    for o in report.outcomes:
        if o.status in ("ok", "resumed") and o.caption:
            report.tag_frequency.update(t for t in split_caption(o.caption) if not (trigger and normalize(t) == normalize(trigger)))
    return report


def _finish(item: ImageItem, res: CaptionResult, output: Path | None, manifest: Manifest, config: str, backend_name: str,
            mode: str, trigger: str | None, rules: TagRules, is_tags: bool, prune: bool, identity: IdentityRules,
            pruned: PruneReport) -> ItemOutcome:
    """Turn one backend result into a written caption and a manifest record."""
    source = str(item.path)
    data = {k: v for k, v in res.data.items() if k != "thresholded"}
    if res.status != "ok":
        status = "blocked" if res.status == "blocked" else ("retryable" if res.status == "retryable" else "failed")
        # redact here, where every reason reaches the manifest: no backend can leak a key into it
        reason = redact(res.reason or f"{item.path}: the {backend_name} backend gave status {res.status} without a reason")
        sha = sha256_file(item.path) if status == "blocked" else None
        manifest.append(Record(STEP, item.id, status, source=source, source_sha256=sha, reason=reason,
                               data={"backend": backend_name, "config": config, **data}))
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
        reason = f"{item.path}: the {backend_name} backend returned an empty caption (lower the thresholds, or check the image)"
        manifest.append(Record(STEP, item.id, "failed", source=source, reason=reason, data={"backend": backend_name}))
        return ItemOutcome(item.id, "failed", reason=reason)

    target = _target(item, output)
    existing = ""
    if mode in ("append", "prepend"):  # with -o, start from the caption beside the image when the output has none
        existing = _read(target) or (_read(item.caption_path) if output is not None else "")
    caption = _merge(existing, text, mode, tag_caption or is_tags)
    if trigger:
        caption = apply_trigger(caption, trigger)
    atomic_write_text(target, caption + "\n")
    manifest.append(
        Record(
            STEP, item.id, "ok", source=source, source_sha256=sha256_file(item.path),
            outputs=[rel_or_abs(target, manifest.path.parent)],
            data={"backend": backend_name, "config": config, **data, **({"tags": names} if tag_caption else {})},
        )
    )
    return ItemOutcome(item.id, "ok", caption=caption)


def _prune_core(report: CaptionReport, items: list[ImageItem], output: Path | None, manifest: Manifest, fraction: float,
                trigger: str | None) -> None:
    """Drop tags present in >= `fraction` of the generated captions (this run and resumed ones), rewriting the files.

    Shares are computed from the generated tags kept in the manifest, so a resumed run prunes
    the same way as an uninterrupted one.
    """
    ours = {o.id: o for o in report.outcomes if o.status in ("ok", "resumed") and o.caption}
    generated: dict[str, list[str]] = {}
    for oid, o in ours.items():
        rec = manifest.get(STEP, oid)
        tags = rec.data.get("tags") if rec is not None else None
        generated[oid] = list(tags) if isinstance(tags, list) else split_caption(o.caption or "")
    core = core_tags(generated, fraction, protect=[trigger] if trigger else [])
    report.pruned.core = core
    if not core:
        return
    paths = {i.id: _target(i, output) for i in items}
    for oid, o in ours.items():
        tags = split_caption(o.caption or "")
        kept = [t for t in tags if normalize(t) not in core]
        if len(kept) != len(tags):
            o.caption = SEPARATOR.join(kept)
            atomic_write_text(paths[oid], o.caption + "\n")
