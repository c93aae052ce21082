"""The studio's view of a dataset: images, captions, loraprep's findings, and the edits.

`Dataset.open(folder)` reads a loraprep project (its newest images folder: 04_captioned, else
02_cropped, else 01_raw; its reports for badges) or any folder of images with `.txt` captions.
Captions are held in memory (a 10,000-image set is a few MB) and re-read from disk before each
edit, so another tab or process is noticed. Every edit goes through one function per kind,
writes atomically, and is recorded for undo/redo:

- in a project, the durable layer is `overrides.json` (`prep.overrides`): the caption is also
  written into the images folder so the view and the dataset agree at once, and `loraprep run`
  re-applies it after every rerun;
- in a plain folder, the durable layer is the caption beside the image (the user's own file).

The server holds nothing that is not on disk except the undo/redo stacks of this session.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from captioning.captionfile import UnreadableCaption, read_user_caption
from captioning.identity import IdentityRules
from captioning.lint import (
    BOILERPLATE,
    ENCODERS,
    encoder_for,
    is_tag_caption,
    is_trigger_only,
    prose_identity_candidates,
    token_counter,
)
from captioning.tags import normalize, split_caption
from prep import overrides as ovr
from prep.check import QUALITY_KINDS
from prep.dataset import discover
from prep.fsutil import atomic_write_text
from prep.project import ProjectDirs
from prep.trigger import trigger_pattern

LINT_CODES = (
    "no_caption", "empty", "unreadable", "trigger_missing", "trigger_not_first", "trigger_repeated",
    "duplicate_tags", "over_budget", "identity_tags", "boilerplate", "trigger_only",
)
"""Lint codes the studio recomputes live after each edit (the same rules as `caption lint`)."""
CHECK_KINDS = ("corrupt", "small", "transparent", "exif_rotated", "animated", *QUALITY_KINDS)
"""prep check findings shown as `check:KIND` badges and filters (quality and identity flags included)."""


class EditRefused(ValueError):
    """An edit that cannot be made (read-only, unknown image, bad regex): shown to the user."""


@dataclass
class Entry:
    """One image as the studio shows it."""

    id: str
    path: Path
    source_id: str
    source_path: Path | None
    text: str | None = None
    caption_error: str | None = None
    findings: dict[str, str] = field(default_factory=dict)
    """Finding key (`crop:no_face`, `check:small`, `dup:KEEP`, `lint:CODE`) -> message."""
    crop: dict[str, Any] | None = None
    rejected: bool = False
    edited: bool = False
    rating: str | None = None
    """The WD tagger's rating (general/sensitive/questionable/explicit) from the caption records."""

    @property
    def tags(self) -> list[str]:
        return split_caption(self.text or "")

    @property
    def norm_tags(self) -> set[str]:
        return {normalize(t) for t in self.tags}

    @property
    def caption_path(self) -> Path:
        return self.path.with_suffix(".txt")

    def version(self) -> str:
        """A short hash of the caption as shown: a page sends it back so a concurrent edit is noticed."""
        return hashlib.sha1((self.text or "").encode("utf-8")).hexdigest()[:12]


@dataclass
class Change:
    kind: str  # caption | reject | restore | crop
    id: str
    before: Any
    after: Any
    had_override: bool = True
    """Caption changes: whether a hand edit was recorded before (undo drops it when not)."""


@dataclass
class Edit:
    label: str
    changes: list[Change]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _ids(items: Iterable[Any]) -> list[str]:
    out = []
    for it in items or []:
        out.append(str(it.get("file") or it.get("id")) if isinstance(it, dict) else str(it))
    return out


class Dataset:
    """A folder of images + captions with loraprep's findings; thread-safe edits."""

    def __init__(self, folder: Path, *, trigger: str | None = None, trainer: str | None = None, read_only: bool = False,
                 lora_type: str = "character"):
        self.folder = Path(folder).resolve()
        if not self.folder.is_dir():
            raise FileNotFoundError(f"{folder}: no such folder; give a loraprep project or a folder of images")
        dirs = ProjectDirs(self.folder)
        self.project: ProjectDirs | None = dirs if dirs.file.is_file() else None
        settings: dict[str, Any] = {}
        if self.project is not None:
            try:
                settings = dict(self.project.table().get("project", {}))
            except ValueError:
                settings = {}
            self.images_dir = next((d for d in (dirs.captioned, dirs.cropped, dirs.raw) if d.is_dir()), self.folder)
            self.source_dir = dirs.raw
            self.rejected_dir = self.folder / ovr.REJECTED_DIR
        else:
            self.images_dir = self.source_dir = self.folder
            self.rejected_dir = self.folder / ovr.REJECTED_DIR
        self.trigger = trigger or settings.get("trigger") or None
        self.trainer = trainer or settings.get("trainer") or "sdxl"
        self.resolution = int(settings.get("resolution") or 1024)
        self.lora_type = lora_type
        self.read_only = read_only
        self.identity = IdentityRules()
        self._identity_memo: dict[str, bool] = {}
        self.arch, enc = encoder_for(self.trainer)
        self.budget = ENCODERS[enc].budget
        self.counters: dict[str, tuple[Callable[[str], int], bool]] = {}
        for key, e in ENCODERS.items():
            count, _desc, approx = token_counter(key)
            self.counters[e.name] = (count, approx)
        self.encoder = ENCODERS[enc].name
        self.lock = threading.RLock()
        self.undo_stack: list[Edit] = []
        self.redo_stack: list[Edit] = []
        self.entries: dict[str, Entry] = {}
        self.order: list[str] = []
        self.load()

    # -- loading ---------------------------------------------------------------------------------

    def load(self) -> None:
        """(Re)read images, captions and reports."""
        with self.lock:
            crops = self._crops()
            by_output: dict[str, dict[str, Any]] = {}
            for rec in crops.values():
                for name in rec.get("outputs") or []:
                    by_output[name] = rec
            overrides = self._overrides()
            entries: dict[str, Entry] = {}
            for it in discover(self.images_dir):
                rec = by_output.get(it.id) if self.images_dir != self.source_dir else crops.get(it.id)
                sid = str(rec["id"]) if rec else it.id
                src = self.source_dir / sid
                e = Entry(it.id, it.path, sid, src if src.is_file() else None, crop=rec)
                self._read_caption(e)
                entries[it.id] = e
            for it in discover(self.rejected_dir) if self.rejected_dir.is_dir() else []:
                key = f"{ovr.REJECTED_DIR}/{it.id}"
                if any(e.source_id == it.id for e in entries.values()):
                    continue
                e = Entry(key, it.path, it.id, it.path, crop=crops.get(it.id), rejected=True)
                self._read_caption(e)
                entries[key] = e
            rejected = set(overrides.rejected) if overrides else set()
            for e in entries.values():
                if e.source_id in rejected:
                    e.rejected = True
                e.edited = bool(overrides and e.id in overrides.captions)
            self.entries = entries
            self.order = list(entries)
            self._file_findings()
            for e in entries.values():
                self._lint(e)

    def _overrides(self) -> ovr.Overrides | None:
        if self.project is None:
            return None
        try:
            return ovr.load_overrides(self.folder)
        except ovr.OverridesError:
            return None

    def _crops(self) -> dict[str, dict[str, Any]]:
        if self.project is None:
            return {}
        out = {}
        path = self.project.cropped / "crops.jsonl"
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            return {}
        for line in lines:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and "id" in rec:
                out[str(rec["id"])] = rec
        return out

    def _read_caption(self, e: Entry) -> None:
        try:
            e.text = read_user_caption(e.caption_path)
            e.caption_error = None
        except UnreadableCaption as exc:
            e.text, e.caption_error = None, str(exc)

    def _file_findings(self) -> None:
        """Badges from loraprep's reports (crop flags, check problems, duplicate groups)."""
        by_source: dict[str, list[Entry]] = {}
        for e in self.entries.values():
            by_source.setdefault(e.source_id, []).append(e)
        for e in self.entries.values():
            if e.crop:
                for flag in e.crop.get("flags") or []:
                    e.findings[f"crop:{flag}"] = e.crop.get("reason") or flag
        if self.project is None:
            ratings = self._ratings()
            for e in self.entries.values():
                e.rating = ratings.get(e.id)
            return
        check = _read_json(self.project.reports / "check.json") or {}
        for kind in CHECK_KINDS:
            for sid in _ids((check.get("problems") or {}).get(kind, [])):
                for e in by_source.get(sid, []):
                    e.findings[f"check:{kind}"] = f"prep check: {kind.replace('_', ' ')}"
        dedupe = _read_json(self.project.reports / "dedupe.json") or {}
        for g in dedupe.get("groups") or []:
            keep = str(g.get("keep"))
            for sid in [keep, *map(str, g.get("others") or [])]:
                for e in by_source.get(sid, []):
                    e.findings[f"dup:{keep}"] = f"duplicate group of {keep}"
        ratings = self._ratings()
        for e in self.entries.values():
            e.rating = ratings.get(e.id)
        lint = _read_json(self.project.reports / "lint.json") or {}
        for issue in lint.get("issues") or []:  # codes the studio does not recompute stay as read
            code = str(issue.get("code"))
            e = self.entries.get(str(issue.get("id")))
            if e is not None and code not in LINT_CODES:
                e.findings[f"lint:{code}"] = str(issue.get("message") or code)

    def _ratings(self) -> dict[str, str]:
        """Image id -> WD rating, from the caption records (a project's 03_captions, else the folder's manifest)."""
        from prep.manifest import Manifest

        path = (self.project.captions if self.project is not None else self.images_dir) / "manifest.jsonl"
        if not path.is_file():
            return {}
        out = {}
        for (step, item_id), rec in Manifest(path).latest().items():
            rating = rec.data.get("rating") if step == "caption" else None
            if isinstance(rating, str):
                out[item_id] = rating
        return out

    # -- live lint -------------------------------------------------------------------------------

    def tokens(self, text: str) -> dict[str, tuple[int, bool]]:
        """Token count per text encoder: (count, approximate)."""
        return {name: (count(text), approx) for name, (count, approx) in self.counters.items()}

    def _lint(self, e: Entry) -> None:
        """The `caption lint` rules on one caption, recomputed after every edit."""
        for k in [k for k in e.findings if k.startswith("lint:") and k[5:] in LINT_CODES]:
            del e.findings[k]
        f = e.findings
        if e.caption_error:
            f["lint:unreadable"] = e.caption_error
            return
        if e.text is None:
            f["lint:no_caption"] = f"no caption file ({e.caption_path.name})"
            return
        text = e.text
        if not text.strip():
            f["lint:empty"] = "the caption is empty"
            return
        if self.trigger:
            hits = list(trigger_pattern(self.trigger).finditer(text))
            if not hits:
                f["lint:trigger_missing"] = f"no trigger {self.trigger!r}"
            else:
                if hits[0].start() != 0:
                    f["lint:trigger_not_first"] = f"{self.trigger!r} is not first"
                if len(hits) > 1:
                    f["lint:trigger_repeated"] = f"{self.trigger!r} appears {len(hits)} times"
        tags = split_caption(text)
        tag_style = is_tag_caption(text)
        if self.lora_type == "character" and (not self.trigger or trigger_pattern(self.trigger).search(text)) and is_trigger_only(text, self.trigger):
            f["lint:trigger_only"] = "the trigger alone or nearly so: describe what changes between images"
        if tag_style:
            dup = [t for t, c in Counter(normalize(t) for t in tags).items() if c > 1]
            if dup:
                f["lint:duplicate_tags"] = "duplicate tags: " + ", ".join(dup)
        elif BOILERPLATE.search(text):
            f["lint:boilerplate"] = "starts with boilerplate ('This image shows ...')"
        count, approx = self.counters[self.encoder]
        n = count(text)
        if n > self.budget:
            f["lint:over_budget"] = f"{'about ' if approx else ''}{n} tokens > {self.budget} for {self.encoder}"
        if self.lora_type == "character":
            cand = tags if tag_style else prose_identity_candidates(text)
            trig = normalize(self.trigger) if self.trigger else None
            left = [t for t in cand if normalize(t) != trig and self.is_identity(t)]
            if left:
                f["lint:identity_tags"] = "identity tags left: " + ", ".join(left)

    def is_identity(self, tag: str) -> bool:
        """`IdentityRules.is_identity`, memoised: a dataset repeats its tags thousands of times."""
        hit = self._identity_memo.get(tag)
        if hit is None:
            hit = self._identity_memo[tag] = self.identity.is_identity(tag)
        return hit

    def token_count(self, e: Entry) -> int:
        return self.counters[self.encoder][0](e.text or "")

    # -- queries -----------------------------------------------------------------------------------

    def select(self, query: str) -> list[Entry]:
        from loraprep.studio.filters import parse_filter

        pred = parse_filter(query)
        show_rejected = "is:rejected" in query
        with self.lock:
            return [e for e in (self.entries[i] for i in self.order) if (show_rejected or not e.rejected) and pred(e, self)]

    def tag_frequency(self, entries: Iterable[Entry]) -> Counter[str]:
        c: Counter[str] = Counter()
        for e in entries:
            c.update(dict.fromkeys(e.tags, 1))
        return c

    def finding_counts(self, entries: Iterable[Entry]) -> Counter[str]:
        c: Counter[str] = Counter()
        for e in entries:
            c.update(k if not k.startswith("dup:") else "dup" for k in e.findings)
        return c

    def layer(self, e: Entry) -> str:
        """Where the caption shown comes from (the page says it)."""
        if self.project is None:
            return f"your caption file beside the image ({e.caption_path.name})"
        if e.edited:
            return "your edit in the studio (overrides.json; loraprep run applies it after every rerun)"
        user = self.project.raw / Path(e.source_id).with_suffix(".txt")
        if user.is_file() and self.images_dir == self.project.captioned:
            return f"merged with your caption ({user.relative_to(self.folder).as_posix()})"
        if self.images_dir == self.project.captioned:
            return "generated (03_captions) with the trigger"
        return f"{self.images_dir.name}/{e.caption_path.name}"

    # -- edits ------------------------------------------------------------------------------------

    def _writable(self) -> None:
        if self.read_only:
            raise EditRefused("the studio is read-only (--read-only): nothing is written")

    def get(self, item_id: str) -> Entry:
        try:
            return self.entries[item_id]
        except KeyError:
            raise EditRefused(f"{item_id}: no such image in {self.images_dir}") from None

    def pin_trigger(self, tags: list[str]) -> list[str]:
        """The trigger first, once; other tags keep their order."""
        if not self.trigger:
            return tags
        pat = trigger_pattern(self.trigger)
        trig = [t for t in tags if pat.fullmatch(t)]
        return ([trig[0]] if trig else []) + [t for t in tags if not pat.fullmatch(t)]

    def _write_captions(self, texts: dict[str, str | None], *, unrecord: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        """Captions to their durable layer (one overrides.json write) and to the view, atomically.

        None removes the caption (undo of an edit that created one).
        """
        entries = {i: self.get(i) for i in texts}
        for e in entries.values():
            if e.rejected and e.id.startswith(f"{ovr.REJECTED_DIR}/"):
                raise EditRefused(f"{e.id}: restore the image before editing its caption")
        if self.project is not None:
            ovr.set_captions(self.folder, {i: (t.strip() if t is not None and i not in unrecord else None) for i, t in texts.items()})
        for i, text in texts.items():
            e = entries[i]
            if text is None:
                e.caption_path.unlink(missing_ok=True)
                e.text, e.edited = None, False
            else:
                atomic_write_text(e.caption_path, text.strip() + "\n")
                e.text, e.edited = text.strip(), self.project is not None and i not in unrecord
            e.caption_error = None
            self._lint(e)

    def set_captions(self, changes: dict[str, str], label: str, *, versions: dict[str, str] | None = None) -> tuple[Edit, list[str]]:
        """Write several captions as one undoable edit. Returns it and the notices (concurrent edits)."""
        self._writable()
        notices = []
        with self.lock:
            edit = Edit(label, [])
            for item_id, text in changes.items():
                e = self.get(item_id)
                self._read_caption(e)  # what is on disk now (another tab, another process)
                if versions and item_id in versions and versions[item_id] != e.version():
                    notices.append(f"{item_id}: the caption was changed elsewhere since this page loaded; your version replaced it "
                                   f"(it was: {e.text or '(none)'!s}); undo brings that back")
                before = e.text
                if (before or "") == text.strip():
                    continue
                edit.changes.append(Change("caption", item_id, before, text.strip(), had_override=e.edited))
            self._write_captions({ch.id: ch.after for ch in edit.changes})
            if edit.changes:
                self.undo_stack.append(edit)
                self.redo_stack.clear()
            return edit, notices

    def tag_op(self, item_id: str, op: str, tag: str = "", to: int | None = None, version: str | None = None) -> tuple[Edit, list[str]]:
        """add / remove / front / move (to index) on one caption's tags."""
        e = self.get(item_id)
        tags = e.tags
        tag = tag.strip()
        if op == "add":
            if tag and normalize(tag) not in e.norm_tags:
                tags.append(tag)
        elif op == "remove":
            tags = [t for t in tags if normalize(t) != normalize(tag)]
        elif op == "front":
            tags = [t for t in tags if normalize(t) == normalize(tag)] + [t for t in tags if normalize(t) != normalize(tag)]
        elif op == "move" and to is not None:
            cur = [t for t in tags if normalize(t) != normalize(tag)]
            if len(cur) != len(tags):
                cur.insert(max(0, min(len(cur), to)), next(t for t in tags if normalize(t) == normalize(tag)))
            tags = cur
        else:
            raise EditRefused(f"unknown tag operation {op!r}: add, remove, front or move")
        text = ", ".join(self.pin_trigger(tags))
        return self.set_captions({item_id: text}, f"{op} {tag!r} on {item_id}", versions={item_id: version} if version else None)

    def suggest(self, e: Entry) -> tuple[str, str] | None:
        """(what, new caption): the fix for the live lint findings that have one, or None.

        A missing trigger is added first; identity tags left in a character set are dropped.
        """
        if e.text is None or e.caption_error:
            return None
        tags, what = e.tags, []
        if self.trigger and "lint:trigger_missing" in e.findings:
            tags, what = [self.trigger, *tags], [f"add the trigger {self.trigger!r} first"]
        if "lint:identity_tags" in e.findings:
            trig = normalize(self.trigger) if self.trigger else None
            tags = [t for t in tags if normalize(t) == trig or not self.is_identity(t)]
            what.append("drop the identity tags")
        if not what:
            return None
        return " and ".join(what), ", ".join(self.pin_trigger(tags))

    def batch_plan(self, ids: list[str], op: str, tag: str = "", new: str = "", pattern: str = "", regex: bool = False) -> dict[str, tuple[str, str]]:
        """What a batch edit would change: id -> (before, after), only the captions that change."""
        out = {}
        rx = None
        if op == "replace":
            if not pattern:
                raise EditRefused("replace needs the text to find")
            try:
                rx = re.compile(pattern if regex else re.escape(pattern))
            except re.error as exc:
                raise EditRefused(f"not a valid regular expression {pattern!r}: {exc}") from None
        with self.lock:
            for i in ids:
                e = self.get(i)
                if e.caption_error or (e.rejected and i.startswith(f"{ovr.REJECTED_DIR}/")):
                    continue
                before = e.text or ""
                tags = e.tags
                key = normalize(tag)
                if op == "add":
                    if not tag.strip() or key in e.norm_tags:
                        continue
                    after = ", ".join(self.pin_trigger([*tags, tag.strip()]))
                elif op == "remove":
                    after = ", ".join(t for t in tags if normalize(t) != key)
                elif op == "rename":
                    if not new.strip():
                        raise EditRefused("rename needs the new tag name")
                    seen: set[str] = set()
                    renamed = []
                    for t in tags:
                        t2 = new.strip() if normalize(t) == key else t
                        if normalize(t2) not in seen:
                            seen.add(normalize(t2))
                            renamed.append(t2)
                    after = ", ".join(self.pin_trigger(renamed))
                elif op == "front":
                    after = ", ".join(self.pin_trigger([t for t in tags if normalize(t) == key] + [t for t in tags if normalize(t) != key]))
                elif op == "replace":
                    assert rx is not None
                    after = rx.sub(new, before)
                elif op == "fix":
                    fix = self.suggest(e)
                    if fix is None:
                        continue
                    after = fix[1]
                else:
                    raise EditRefused(f"unknown batch operation {op!r}: add, remove, rename, replace, front or fix")
                if after.strip() != before.strip():
                    out[i] = (before, after.strip())
        return out

    def batch(self, ids: list[str], op: str, **kw: Any) -> tuple[Edit, dict[str, tuple[str, str]]]:
        plan = self.batch_plan(ids, op, **kw)
        edit, _ = self.set_captions({i: a for i, (_b, a) in plan.items()}, f"{op} on {len(plan)} captions")
        return edit, plan

    def reject(self, item_id: str) -> Edit:
        self._writable()
        with self.lock:
            e = self.get(item_id)
            if e.rejected:
                raise EditRefused(f"{item_id}: already rejected")
            self._reject(e)
            edit = Edit(f"reject {item_id}", [Change("reject", item_id, None, None)])
            self.undo_stack.append(edit)
            self.redo_stack.clear()
            return edit

    def _reject(self, e: Entry) -> None:
        if self.project is not None:
            if e.source_path is None or not e.source_path.exists():
                raise EditRefused(f"{e.source_id}: the source image is not in {self.source_dir}; nothing to set aside")
            ovr.reject(self.folder, self.source_dir, e.source_id)
        else:
            ovr.move_aside(self.folder, e.id, self.rejected_dir)
            e.path = self.rejected_dir / e.id
        e.rejected = True

    def restore(self, item_id: str) -> Edit:
        self._writable()
        with self.lock:
            e = self.get(item_id)
            if not e.rejected:
                raise EditRefused(f"{item_id}: not rejected")
            self._restore(e)
            edit = Edit(f"restore {item_id}", [Change("restore", e.id, None, None)])
            self.undo_stack.append(edit)
            self.redo_stack.clear()
            return edit

    def _restore(self, e: Entry) -> None:
        try:
            if self.project is not None:
                ovr.restore(self.folder, self.source_dir, e.source_id)
                e.source_path = self.source_dir / e.source_id
            else:
                ovr.move_back(self.folder, e.source_id, self.rejected_dir)
                e.path = self.folder / e.source_id
        except FileExistsError as exc:
            raise EditRefused(str(exc)) from None
        e.rejected = False
        if e.id.startswith(f"{ovr.REJECTED_DIR}/"):  # it comes back as a source; a rerun crops it again
            e.path = (self.source_dir if self.project else self.folder) / e.source_id

    def set_crop(self, item_id: str, box: list[float] | None) -> tuple[Edit, list[float] | None, tuple[int, int] | None]:
        """A crop box (source pixels) snapped to the trainer's buckets, recorded for `prep crop`."""
        self._writable()
        if self.project is None:
            raise EditRefused("crop overrides need a loraprep project (they are applied by prep crop / loraprep run)")
        from prep.buckets import bucket_spec_for

        with self.lock:
            e = self.get(item_id)
            before = ovr.load_overrides(self.folder).crops.get(e.source_id)
            bucket = None
            if box is not None:
                size = e.crop.get("size") if e.crop else None
                if not size:
                    from PIL import Image

                    with Image.open(e.source_path or e.path) as im:
                        size = im.size
                spec = bucket_spec_for(self.arch, self.resolution)
                box, bucket = ovr.snap_box(box, (int(size[0]), int(size[1])), spec.buckets)
            ovr.set_crop(self.folder, e.source_id, box, list(bucket) if bucket else None)
            after = ovr.load_overrides(self.folder).crops.get(e.source_id)
            edit = Edit(f"crop {item_id}", [Change("crop", item_id, before, after)])
            self.undo_stack.append(edit)
            self.redo_stack.clear()
            return edit, box, bucket

    def crop_override(self, e: Entry) -> dict[str, Any] | None:
        if self.project is None:
            return None
        try:
            return ovr.load_overrides(self.folder).crops.get(e.source_id)
        except ovr.OverridesError:
            return None

    def _apply_all(self, changes: list[Change], forward: bool) -> None:
        captions = {ch.id: (ch.after if forward else ch.before) for ch in changes if ch.kind == "caption"}
        if captions:
            unrecord = set() if forward else {ch.id for ch in changes if ch.kind == "caption" and not ch.had_override}
            self._write_captions(captions, unrecord=unrecord)
        for ch in changes:
            if ch.kind != "caption":
                self._apply(ch, forward)

    def _apply(self, ch: Change, forward: bool) -> None:
        e = self.get(ch.id)
        if ch.kind in ("reject", "restore"):
            (self._reject if (ch.kind == "reject") == forward else self._restore)(e)
        elif ch.kind == "crop":
            rec = ch.after if forward else ch.before
            ovr.set_crop(self.folder, e.source_id, rec["box"] if rec else None, rec.get("bucket") if rec else None)

    def undo(self) -> Edit | None:
        self._writable()
        with self.lock:
            if not self.undo_stack:
                return None
            edit = self.undo_stack.pop()
            self._apply_all(list(reversed(edit.changes)), forward=False)
            self.redo_stack.append(edit)
            return edit

    def redo(self) -> Edit | None:
        self._writable()
        with self.lock:
            if not self.redo_stack:
                return None
            edit = self.redo_stack.pop()
            self._apply_all(edit.changes, forward=True)
            self.undo_stack.append(edit)
            return edit
