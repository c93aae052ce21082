"""`prep layout`: a kohya-ready dataset folder from a folder of images and captions.

Writes `out/img/{repeats}_{trigger}[ {class}]/` (and `out/reg/{r}_{class}/` for
regularisation images) with every image hard-linked where the filesystem allows, else copied;
originals are never moved or changed. Names are `{trigger}_{nnnn}.ext` with fewer than five
underscore tokens (sd-scripts parses the last four `_` tokens of a name as face coordinates
when `face_crop_aug_range` is set), ASCII-only and unique by stem regardless of case or
extension (trainer caches are keyed by stem). Extensions the trainers skip (`.gif`, `.tif`,
mixed case like `.Jpg`) are fixed: re-encoded to PNG or linked under a lower-case name.
Stale trainer caches (`*.npz`, `metadata_cache.json`) in the folders it writes are removed,
because a cache from an earlier dataset silently trains on the old pixels/captions.

Videos (the clips of `prep clips`, or any mp4/mov/webm/mkv/m4v/avi) go into the same subset
folder with their captions, trigger first, named `{trigger}_{nnnn}.mp4` from the same counter
as the images, so no image and video share a stem (musubi-tuner's text-encoder caches are named
by stem). Each is probed first: an unreadable video is kept out and named, and one that is not
4N+1 frames at the trainer's fps (not cut by `prep clips`) is laid out with a warning. GIFs stay
images (their first frame, as before); an animated one gets a note to cut it with `prep clips`.
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pydantic import Field, field_validator

from prep.buckets import BUCKET_RECORD, read_bucket_record
from prep.dataset import ImageItem, discover, read_caption
from prep.fsutil import atomic_write_bytes, atomic_write_text, link_or_copy, safe_component, sha256_file
from prep.images import ImageLoadError, load_image, save_image, verify_image
from prep.inputs import printable
from prep.lock import output_lock
from prep.manifest import Manifest, Record, stat_key
from prep.options import StageOptions
from prep.trigger import Trigger, apply_trigger
from prep.video import VideoError, discover_videos, is_4n1, probe_video

STEP = "layout"
LAYOUT_FILE = "layout.json"
TRAINER_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
VIDEO_TRAINER_EXTENSIONS = {".mp4", ".mov", ".webm", ".mkv", ".m4v", ".avi"}
"""Videos laid out as they are: all in musubi-tuner's media_utils.VIDEO_EXTENSIONS (GIF is not)."""
_CACHE_FILES = re.compile(r"(\.npz|^metadata_cache\.json)$")


class LayoutOptions(StageOptions):
    """The options of `prep layout` (its flags and `loraprep.toml`'s [layout]), declared once."""

    trigger: Trigger = Field("", description="Trigger word; first in every caption and in the folder name (inside a project: its [project] trigger).", json_schema_extra={"cli": ("--trigger", "-t")})
    repeats: int = Field(10, ge=1, description="Repeats per epoch for the training images.", json_schema_extra={"cli": ("--repeats", "-n")})
    class_token: str | None = Field(None, description="Class word (folder '{repeats}_{trigger} {class}'); needed with --reg.", json_schema_extra={"cli": ("--class-token", "-c")})
    reg_dir: str | None = Field(None, description="Folder of regularisation images (reg/{r}_{class}/).", json_schema_extra={"cli": ("--reg",)})
    reg_repeats: int = Field(1, ge=1, description="Repeats for regularisation images.")
    names: str = Field("trigger", description="trigger: {trigger}_{nnnn}.ext; keep: the original names made safe.")
    link: str = Field("auto", description="auto: hard links where the filesystem allows, else copies; copy: always copy (same as --copy).")
    recursive: bool = Field(False, description="Include subfolders of SRC.", json_schema_extra={"cli": ("--recursive", "-r")})
    buckets_from: str | None = Field(None, description="Folder whose buckets.json (written by prep crop) the dataset carries (default: SRC).")
    dry_run: bool = Field(False, description="Plan only; write and delete nothing.", json_schema_extra={"cli": ("--dry-run",)})

    @field_validator("reg_dir", "buckets_from", mode="before")
    @classmethod
    def _path(cls, v: object) -> object:
        return str(v) if isinstance(v, os.PathLike) else v

    @field_validator("names")
    @classmethod
    def _names(cls, v: str) -> str:
        if v not in ("trigger", "keep"):
            raise ValueError(f"--names {v!r}: use trigger or keep")
        return v

    @field_validator("link")
    @classmethod
    def _link(cls, v: str) -> str:
        if v not in ("auto", "copy"):
            raise ValueError(f"--link {v!r}: use auto or copy")
        return v


@dataclass
class LayoutItem:
    id: str
    source: str
    target: str
    caption: str
    method: str  # hardlink | copy | convert | skipped | failed
    reason: str | None = None
    reg: bool = False
    kind: str = "image"  # image | video


@dataclass
class LayoutReport:
    out: str
    image_dir: str
    reg_dir: str | None
    items: list[LayoutItem] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    dry_run: bool = False
    bucket_record: str | None = None
    """The dataset's `buckets.json` (carried from the crops), which `train_bridge config` reads."""

    def count(self, method: str, reg: bool | None = None) -> int:
        return sum(1 for i in self.items if i.method == method and (reg is None or i.reg == reg))

    @property
    def failed(self) -> list[LayoutItem]:
        return [i for i in self.items if i.method == "failed"]

    @property
    def n_images(self) -> int:
        return sum(1 for i in self.items if i.method != "failed" and not i.reg and i.kind == "image")

    @property
    def n_videos(self) -> int:
        return sum(1 for i in self.items if i.method != "failed" and not i.reg and i.kind == "video")

    @property
    def n_reg(self) -> int:
        return sum(1 for i in self.items if i.method != "failed" and i.reg)

    @property
    def n_failed(self) -> int:
        return len(self.failed)

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update({"n_images": self.n_images, "n_videos": self.n_videos, "n_reg": self.n_reg, "n_failed": len(self.failed)})
        return d

    def to_json(self) -> dict:
        return self.as_dict()


def ascii_slug(text: str) -> str:
    """ASCII letters, digits, `-` and `_` only (accents folded, the rest becomes `-`)."""
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    s = re.sub(r"[^A-Za-z0-9_-]+", "-", folded).strip("-_")
    return s or "img"


def safe_stem(stem: str, max_tokens: int = 4) -> str:
    """A stem with at most `max_tokens` underscore tokens (extra underscores become `-`)."""
    s = ascii_slug(stem)
    tokens = s.split("_")
    if len(tokens) > max_tokens:
        s = "_".join(tokens[: max_tokens - 1]) + "_" + "-".join(tokens[max_tokens - 1 :])
    return s


def subset_folder_name(repeats: int, name: str, class_token: str | None = None) -> str:
    label = f"{name} {class_token}" if class_token else name
    return safe_component(f"{repeats}_{label}")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _target_names(items: list[ImageItem], prefix: str, names: str) -> list[str]:
    """Stems unique case-insensitively, with < 5 underscore tokens."""
    out: list[str] = []
    taken: set[str] = set()
    width = max(4, len(str(len(items))))
    base = safe_stem(prefix, 3)
    for n, it in enumerate(items, 1):
        stem = f"{base}_{n:0{width}d}" if names == "trigger" else safe_stem(Path(it.id).stem.replace("/", "-"))
        cand, k = stem, 2
        while cand.lower() in taken:
            cand = f"{stem}-{k}"
            k += 1
        taken.add(cand.lower())
        out.append(cand)
    return out


def _write_subset(
    items: list[ImageItem],
    folder: Path,
    prefix: str,
    caption_for: Callable[[ImageItem], str],
    opts: LayoutOptions,
    manifest: Manifest | None,
    report: LayoutReport,
    out_root: Path,
) -> set[str]:
    written: set[str] = set()
    stems = _target_names(items, prefix, opts.names)
    for it, stem in zip(items, stems):
        ext = it.path.suffix.lower()
        video = it.flags.get("kind") == "video"
        convert = not video and ext not in TRAINER_EXTENSIONS
        kind = "video" if video else "image"
        dst = folder / f"{stem}{'.png' if convert else ext}"
        cap_dst = dst.with_suffix(".txt")
        rel = dst.relative_to(out_root).as_posix()
        source = printable(it.path)
        try:
            caption = caption_for(it)
        except ValueError as exc:  # the caption is left untouched and the image kept out
            report.items.append(LayoutItem(it.id, source, rel, "", "failed", str(exc), kind=kind))
            continue
        written.update({dst.name, cap_dst.name})
        if opts.dry_run:
            try:
                _verify_video(it, report) if video else verify_image(it.path)
            except (ImageLoadError, VideoError) as exc:
                report.items.append(LayoutItem(it.id, source, rel, caption, "failed", f"{exc}; it is kept out of the dataset", kind=kind))
                continue
            report.items.append(LayoutItem(it.id, source, rel, caption, "convert" if convert else ("copy" if opts.link == "copy" else "hardlink"), kind=kind))
            continue
        try:
            rec_id = f"{folder.name}/{it.id}"
            prev = manifest.get(STEP, rec_id) if manifest else None
            st = stat_key(it.path)  # an unchanged stat: the recorded hash, no read
            sha = (manifest.recorded_sha256(STEP, rec_id, st) if manifest else None) or sha256_file(it.path)
            if (
                prev is not None
                and prev.status == "ok"
                and prev.source_sha256 == sha
                and dst.is_file()
                and prev.outputs[:1] == [rel]
                and cap_dst.is_file()
                and read_caption(cap_dst) == caption
            ):
                if manifest and prev.data.get("source_stat") != st:  # touched, same bytes: known by its stat next time
                    manifest.append(Record(STEP, rec_id, "ok", prev.source, sha, list(prev.outputs), data={**prev.data, "source_stat": st}))
                report.items.append(LayoutItem(it.id, source, rel, caption, "skipped", kind=kind))
                continue
            if video:  # only a video the one prober reads reaches a dataset
                _verify_video(it, report)
                method = "hardlink" if _same_file(it.path, dst) else link_or_copy(it.path, dst, link=opts.link == "auto")
                atomic_write_text(cap_dst, caption + "\n")
                if manifest:
                    manifest.append(Record(STEP, rec_id, "ok", source, sha, [rel, cap_dst.relative_to(out_root).as_posix()], data={"method": method, "source_stat": st, "kind": kind}))
                report.items.append(LayoutItem(it.id, source, rel, caption, method, kind=kind))
                continue
            # only what the one loader can decode reaches a dataset (truncated, corrupt, empty files do not)
            verified = verify_image(it.path)
            if verified.n_frames > 1 and it.path.suffix.lower() == ".gif":
                report.warnings.append(f"{it.id}: animated GIF laid out as its first frame; to train its motion, cut it with `prep clips` and lay out the clips")
            if convert:
                loaded = load_image(it.path)
                save_image(loaded.image, dst, fmt="png")
                method = "convert"
            elif _same_file(it.path, dst):
                method = "hardlink"
            else:
                method = link_or_copy(it.path, dst, link=opts.link == "auto")
                if verified.exif_rotated:
                    report.warnings.append(f"{it.id}: EXIF-rotated; trainers ignore EXIF, so it trains sideways (bake it with `prep crop` or `prep import`)")
            atomic_write_text(cap_dst, caption + "\n")
            if manifest:
                manifest.append(Record(STEP, rec_id, "ok", source, sha, [rel, cap_dst.relative_to(out_root).as_posix()], data={"method": method, "source_stat": st}))
            report.items.append(LayoutItem(it.id, source, rel, caption, method))
        except (OSError, ImageLoadError, VideoError) as exc:
            if isinstance(exc, (ImageLoadError, VideoError)):
                reason = f"{exc}; it is kept out of the dataset"
            else:
                reason = f"{printable(str(exc))}; check the file is readable and the output disk has space"
            for stale in (dst, cap_dst):  # an earlier layout's copy of a file that no longer reads
                if isinstance(exc, (ImageLoadError, VideoError)) and stale.is_file():
                    stale.unlink()
            if manifest:
                manifest.append(Record(STEP, f"{folder.name}/{it.id}", "failed", source, None, [], reason))
            report.items.append(LayoutItem(it.id, source, rel, caption, "failed", reason, kind=kind))
    return written


def _verify_video(it: ImageItem, report: LayoutReport) -> None:
    """Probe a video (VideoError when unreadable); warn when it is not what the trainer trains as is."""
    info = probe_video(it.path)
    fps = it.flags.get("fps")
    if not is_4n1(info.frames) or (fps and abs(info.fps - fps) > 0.01):
        report.warnings.append(
            f"{it.id}: {info.frames} frames at {info.fps:g} fps, not a 4N+1-frame clip at {fps or 16:g} fps: musubi-tuner "
            "trims it to 4N+1 frames and trains them at their own speed; cut it with `prep clips` first"
        )


def _clean_folder(folder: Path, keep: set[str], report: LayoutReport, dry_run: bool) -> None:
    """Remove trainer caches and files from earlier layouts that this run did not write."""
    if not folder.is_dir():
        return
    for p in sorted(folder.iterdir()):
        if not p.is_file() or p.name in keep:
            continue
        if _CACHE_FILES.search(p.name) or p.suffix.lower() in TRAINER_EXTENSIONS | VIDEO_TRAINER_EXTENSIONS | {".txt"} or p.name.startswith("."):
            report.removed.append(str(p))
            if not dry_run:
                p.unlink()


def layout_dataset(src: Path | str, out: Path | str, options: LayoutOptions) -> LayoutReport:
    """Lay `src` out under `out` for kohya trainers; returns what was (or would be) done.

    A real run holds `out` (prep.lock): a second layout into the same dataset refuses
    (OutputLocked) instead of cleaning files the first is writing.
    """
    with ExitStack() as held:
        return _layout_dataset(src, out, options, held)


def _layout_dataset(src: Path | str, out: Path | str, options: LayoutOptions, held: ExitStack) -> LayoutReport:
    src, out = Path(src).resolve(), Path(out).resolve()
    opts = options
    if not opts.trigger or not opts.trigger.strip():
        raise ValueError("a trigger word is required: pass --trigger/-t WORD (inside a loraprep project: [project] trigger)")
    if opts.repeats < 1 or opts.reg_repeats < 1:
        raise ValueError("repeats must be at least 1")
    if out == src:
        raise ValueError("the output folder must differ from the input folder")
    if opts.reg_dir is not None and not Path(opts.reg_dir).is_dir():
        raise ValueError(f"--reg {opts.reg_dir}: not a folder; pass the folder of regularisation images")
    if opts.reg_dir is not None and not opts.class_token:
        raise ValueError("regularisation images need --class-token (the reg folder is named {repeats}_{class})")
    for what, folder in (("the input folder", src), ("--reg", Path(opts.reg_dir).resolve() if opts.reg_dir else None)):
        if folder is not None and folder.is_relative_to(out):
            # layout renames into and cleans the subset folders: its own inputs would be overwritten or deleted
            raise ValueError(f"{what} {folder} is inside the output folder {out}: point it at the original images, outside {out}")
    trigger = opts.trigger.strip()
    items = discover(src, recursive=opts.recursive, exclude=[out])
    videos = _video_items(src, out, opts.recursive)
    if not items and not videos:
        named = "; ".join(f"{s.id}: {s.reason}" for s in items.skipped[:5])
        raise ValueError(f"{src}: no images or videos found" + (f" that can be read ({named})" if named else ""))
    if not opts.dry_run:
        held.enter_context(output_lock(out, "prep layout"))
    img_folder = out / "img" / subset_folder_name(opts.repeats, trigger, opts.class_token)
    reg_folder = out / "reg" / subset_folder_name(opts.reg_repeats, opts.class_token or "") if opts.reg_dir else None
    report = LayoutReport(str(out), str(img_folder), str(reg_folder) if reg_folder else None, dry_run=opts.dry_run)

    prev_meta: dict = {}
    if (out / LAYOUT_FILE).is_file():
        try:
            prev_meta = json.loads((out / LAYOUT_FILE).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            prev_meta = {}
    for old in prev_meta.get("subset_dirs", []):
        old_p = out / old
        if old_p not in (img_folder, reg_folder) and old_p.is_dir():
            _clean_folder(old_p, set(), report, opts.dry_run)
            report.warnings.append(f"removed the earlier subset folder {old} (repeats or names changed)")
            if not opts.dry_run:
                try:
                    old_p.rmdir()
                except OSError:
                    report.warnings.append(f"{old_p}: not empty, left in place; delete it or the trainer will read it")
    for parent, mine in ((out / "img", img_folder), (out / "reg", reg_folder)):
        if mine is not None and parent.is_dir():
            for d in parent.iterdir():
                if d.is_dir() and d != mine and re.match(r"^\d+_", d.name) and str(d.relative_to(out)) not in prev_meta.get("subset_dirs", []):
                    report.warnings.append(f"{d}: another subset folder; `train_bridge config` will train on it too")

    manifest = None if opts.dry_run else Manifest.in_folder(out)
    if not opts.dry_run:
        out.mkdir(parents=True, exist_ok=True)

    missing = 0

    def train_caption(it: ImageItem) -> str:
        nonlocal missing
        text = it.read_caption()
        if not text:
            missing += 1
            text = ""
        return apply_trigger(text, trigger) if text else trigger

    report.items.extend(LayoutItem(s.id, printable(s.path), "", "", "failed", s.message) for s in items.skipped)
    keep = _write_subset([*items, *videos], img_folder, trigger, train_caption, opts, manifest, report, out)
    _clean_folder(img_folder, keep, report, opts.dry_run)
    if missing:
        report.warnings.append(f"{missing} image(s) or video(s) had no caption; they got the trigger alone (caption them for better results)")

    if reg_folder is not None and opts.reg_dir is not None:
        reg_items = discover(Path(opts.reg_dir), recursive=opts.recursive)
        if not reg_items:
            report.warnings.append(f"{opts.reg_dir}: no regularisation images found")
        cls = opts.class_token or ""

        def reg_caption(it: ImageItem) -> str:
            return it.read_caption() or cls

        start = len(report.items)
        report.items.extend(LayoutItem(s.id, printable(s.path), "", "", "failed", s.message) for s in reg_items.skipped)
        keep_r = _write_subset(reg_items, reg_folder, cls, reg_caption, opts, manifest, report, out)
        for it in report.items[start:]:
            it.reg = True
        _clean_folder(reg_folder, keep_r, report, opts.dry_run)

    if not opts.dry_run:
        subset_dirs = [img_folder.relative_to(out).as_posix()] + ([reg_folder.relative_to(out).as_posix()] if reg_folder else [])
        meta = {
            "version": 1,
            "trigger": trigger,
            "class_token": opts.class_token,
            "repeats": opts.repeats,
            "reg_repeats": opts.reg_repeats if reg_folder else None,
            "source": str(src),
            "reg_source": str(Path(opts.reg_dir).resolve()) if opts.reg_dir else None,
            "subset_dirs": subset_dirs,
            "images": {i.target: i.source for i in report.items if i.method != "failed" and i.kind == "image"},
            "videos": {i.target: i.source for i in report.items if i.method != "failed" and i.kind == "video"},
        }
        atomic_write_text(out / LAYOUT_FILE, json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    _carry_bucket_record(Path(opts.buckets_from).resolve() if opts.buckets_from else src, out, report)
    return report


def _video_items(src: Path, out: Path, recursive: bool) -> list[ImageItem]:
    """The videos of `src` as dataset items (GIFs stay images); `fps` is the clips' when `prep clips` made them."""
    from prep.clips import read_clips_jsonl

    fps = {c["clip"]: c.get("fps") for c in read_clips_jsonl(src)}
    out_real = os.path.realpath(out)
    found = []
    for p in discover_videos(src, recursive):
        if p.suffix.lower() not in VIDEO_TRAINER_EXTENSIONS or os.path.realpath(p).startswith(out_real + os.sep):
            continue
        rel = printable(p.relative_to(src).as_posix())
        found.append(ImageItem(id=rel, path=p, caption_path=p.with_suffix(".txt"), flags={"kind": "video", "fps": fps.get(rel)}))
    return found


def _carry_bucket_record(src: Path, out: Path, report: LayoutReport) -> None:
    """Copy the crops' `buckets.json` into the dataset root, where `train_bridge config` reads it.

    Without one in `src` an earlier copy in the dataset is removed: it would describe other crops.
    """
    record = read_bucket_record(src)  # a broken record raises ValueError naming it
    dest = out / BUCKET_RECORD
    if record is None:
        if dest.is_file():
            report.warnings.append(f"{src}: no {BUCKET_RECORD}; removed the dataset's earlier one (it described other crops)")
            if not report.dry_run:
                dest.unlink()
        return
    report.bucket_record = str(dest)
    if not report.dry_run:
        atomic_write_bytes(dest, record.path.read_bytes())


class LayoutStage:
    """`prep layout` as a stage: the CLI command and `loraprep run` both call `run`."""

    name = "layout"
    Options = LayoutOptions

    def run(self, src: Path, out: Path, options: LayoutOptions, *, progress: object = None) -> LayoutReport:
        return layout_dataset(src, out, options)


STAGE = LayoutStage()
