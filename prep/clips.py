"""`prep clips`: raw videos in, training clips out (Wan / musubi-tuner video datasets).

For each video: probe it (prep.video), optionally split it at scene cuts (PySceneDetect's
ContentDetector), re-time it to the trainer's frame rate by timestamps (16 fps for Wan:
`ArchSpec.video_fps`), cut back-to-back clips of exactly `frames` frames (4N+1, Wan's VAE rule:
`ArchSpec.video_frame_step`), turn rotated and non-square-pixel frames upright and square, crop
letterbox bars, resize and centre-crop to the musubi bucket the clip falls in (so musubi trains
it unchanged), and encode it with PyAV. Each clip gets a contact sheet of the frames that train
(`contact_sheets/<clip>.jpg`), a record in `clips.jsonl`, and an empty caption slot
(`<clip>.txt` is not written; `caption` fills it). Originals are only read.

Resume: every clip is recorded in the output's manifest with the plan it was cut by; a rerun
(or one after a kill) re-encodes nothing that is finished, and a video whose clips are all
done is not decoded at all. A bad video is reported with the reason and the fix; the batch goes on.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from bisect import bisect_left
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydantic import Field, field_validator, model_validator

from prep.archs import ALIASES, ARCH_NAMES, get_arch
from prep.buckets import BucketSpec, bucket_spec_for, write_bucket_record
from prep.contact_sheet import Tile, write_contact_sheet
from prep.executor import Progress
from prep.fsutil import DiskFull, atomic_open, atomic_write_text, safe_component
from prep.inputs import printable
from prep.lock import output_lock
from prep.manifest import Manifest, Record, stat_key
from prep.options import ArchName, StageOptions
from prep.video import (
    VideoError,
    VideoInfo,
    discover_videos,
    iter_frames,
    probe_video,
    scan_video,
)

CLIPS_JSONL = "clips.jsonl"
SHEETS_DIR = "contact_sheets"
STEP_VIDEO = "clips"
STEP_CLIP = "clip"
STEP_SCENES = "scenes"
CLIP_EXT = ".mp4"
LETTERBOX_LUMA = 24
"""A row/column is a bar when its brightest pixel (99th percentile) stays below this in every sampled frame (our choice)."""
LETTERBOX_MIN_SHARE = 0.02
"""Bars thinner than 2% of the side are left alone (encoder edge noise, our choice)."""
SHEET_COLS = 9
SHEET_CELL = 96
_RULES = 1
"""Bump when how clips are cut or drawn changes, so finished clips are cut again."""


def _cli(*flags: str) -> dict[str, Any]:
    return {"cli": flags}


def encoder_name() -> str:
    """H.264 (libx264) when this PyAV wheel has it, else MPEG-4 Part 2 (always in FFmpeg)."""
    import av

    try:
        av.codec.Codec("libx264", "w")
        return "libx264"
    except Exception:
        return "mpeg4"


class ClipsOptions(StageOptions):
    """What decides the clips `prep clips` writes (see docs/video.md)."""

    trainer: ArchName = Field("wan21-t2v", description="Video architecture whose frame rate, frame rule and buckets the clips follow: " + ", ".join(a for a in (*ARCH_NAMES, *ALIASES) if get_arch(a).video_fps) + ".")
    fps: float | None = Field(None, description="Frame rate of the clips (default: the trainer's, 16 for Wan).", gt=0)
    frames: int = Field(81, description="Frames per clip; must be 4N+1 for Wan (81 = 5 s at 16 fps).", gt=0)
    resolution: str = Field("832x480", description="Training resolution WxH (or N for NxN): clips are sized to the musubi bucket of that area they fall in.")
    split_scenes: bool = Field(False, description="Cut at scene changes (PySceneDetect ContentDetector) so no clip spans a cut.", json_schema_extra=_cli("--split-scenes/--no-split-scenes"))
    scene_threshold: float = Field(27.0, description="ContentDetector threshold (PySceneDetect's default 27; lower finds more cuts).", gt=0)
    min_scene_frames: int = Field(17, description="A scene (or video) shorter than a clip still gives one shorter 4N+1 clip when it has at least this many frames at --fps; shorter fragments are dropped.", ge=1)
    max_clips_per_video: int | None = Field(None, description="At most this many clips per video, spread evenly over it (default: all).", ge=1)
    crop_bars: bool = Field(True, description="Remove letterbox/pillarbox bars (constant dark borders).", json_schema_extra=_cli("--crop-bars/--no-crop-bars"))
    crf: int = Field(16, description="H.264 quality (CRF; lower is better, 16 is visually lossless).", ge=0, le=51)
    recursive: bool = Field(False, description="Include subfolders.", json_schema_extra=_cli("--recursive", "-r"))
    overwrite: bool = Field(False, description="Cut again clips a previous run finished.", json_schema_extra=_cli("--overwrite"))
    dry_run: bool = Field(False, description="Probe and plan, write nothing.", json_schema_extra=_cli("--dry-run"))
    contact_sheet: bool = Field(True, description="Write contact_sheets/<clip>.jpg: every frame that trains.", json_schema_extra=_cli("--sheet/--no-sheet"))

    @field_validator("resolution")
    @classmethod
    def _resolution(cls, v: str) -> str:
        parse_resolution(v)
        return v

    @model_validator(mode="after")
    def _video_arch(self) -> ClipsOptions:
        arch = get_arch(self.trainer)
        if not arch.video_fps:
            video = ", ".join(a for a in ARCH_NAMES if get_arch(a).video_fps)
            raise ValueError(f"{self.trainer} does not train video: use one of {video}")
        step = arch.video_frame_step or 1
        if (self.frames - 1) % step:
            lo = (self.frames - 1) // step * step + 1
            raise ValueError(f"frames {self.frames} is not {step}N+1 ({arch.name}'s VAE needs it): use {lo} or {lo + step}")
        return self

    @property
    def target_fps(self) -> float:
        return float(self.fps or get_arch(self.trainer).video_fps or 16.0)

    def spec(self) -> BucketSpec:
        return bucket_spec_for(self.trainer, parse_resolution(self.resolution))

    def key(self) -> str:
        """Fingerprint of what changes a clip's pixels or frames."""
        skip = {"overwrite", "dry_run", "recursive", "max_clips_per_video", "contact_sheet"}
        d = {k: v for k, v in self.model_dump().items() if k not in skip}
        d.update(_rules=_RULES, fps=self.target_fps, arch=get_arch(self.trainer).name, buckets=list(self.spec().resolution))
        d.pop("trainer")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def parse_resolution(v: str) -> tuple[int, int]:
    s = v.lower().replace(" ", "")
    try:
        parts = [int(x) for x in s.split("x")] if "x" in s else [int(s)] * 2
    except ValueError:
        parts = []
    if len(parts) != 2 or min(parts) < 64:
        raise ValueError(f"resolution {v!r}: use WxH (e.g. 832x480) or N, sides at least 64")
    return parts[0], parts[1]


# -- planning -----------------------------------------------------------------------------------


@dataclass
class ClipPlan:
    """One clip: target frame numbers [start, start+frames) of the re-timed video, inside one scene."""

    name: str
    scene: int
    start: int
    frames: int
    sources: list[int]
    """Source frame index for each of the clip's frames (nearest in time, never across a cut)."""


def retime(times: list[float], fps: float, duration: float) -> list[int]:
    """Source frame for each target frame k at time k/fps: the nearest by timestamp (ties: earlier)."""
    n = max(0, int(math.floor(duration * fps + 1e-6)))
    out: list[int] = []
    for k in range(n):
        t = k / fps
        j = bisect_left(times, t)
        if j >= len(times):
            j = len(times) - 1
        elif j > 0 and (t - times[j - 1]) <= (times[j] - t):
            j -= 1
        out.append(j)
    return out


def plan_clips(stem: str, mapping: list[int], scenes: list[tuple[int, int]], options: ClipsOptions) -> tuple[list[ClipPlan], int]:
    """Cut each scene's target frames into back-to-back clips; returns (clips, target frames dropped)."""
    frames = options.frames
    step = get_arch(options.trainer).video_frame_step or 1
    clips: list[ClipPlan] = []
    dropped = 0
    for si, (s0, s1) in enumerate(scenes):
        ks = [k for k, j in enumerate(mapping) if s0 <= j < s1]
        n = len(ks)
        lengths: list[int] = [frames] * (n // frames)
        if not lengths and n >= options.min_scene_frames:
            short = (n - 1) // step * step + 1
            if short >= 1:
                lengths = [short]
        used = 0
        for length in lengths:
            seg = ks[used:used + length]
            clips.append(ClipPlan("", si, seg[0], length, [mapping[k] for k in seg]))
            used += length
        dropped += n - used
    if options.max_clips_per_video and len(clips) > options.max_clips_per_video:
        m = options.max_clips_per_video
        keep = sorted({round(i * (len(clips) - 1) / max(1, m - 1)) for i in range(m)}) if m > 1 else [0]
        dropped += sum(c.frames for i, c in enumerate(clips) if i not in keep)
        clips = [clips[i] for i in keep]
    for c in clips:
        c.name = f"{stem}_s{c.scene + 1:02d}_f{c.start:05d}"
    return clips, dropped


SCENE_WIDTH = 256
"""Frames are scaled to this width for scene detection (PySceneDetect's own auto-downscale aims at 256 too)."""


class SceneCuts:
    """PySceneDetect's ContentDetector fed from our own decoding pass (`scan_video(each=...)`), so
    finding cuts costs no second decode; `scenes(n)` gives [start, end) frame ranges."""

    def __init__(self, path: Path, info: VideoInfo, threshold: float, min_len: int = 1):
        from scenedetect import ContentDetector

        self.path, self.fps = path, info.fps or 30.0
        self.detector = ContentDetector(threshold=threshold, min_scene_len=max(1, min_len))
        w, h = info.width, info.height
        self.size = (SCENE_WIDTH, max(2, round(h * SCENE_WIDTH / w) // 2 * 2)) if w > SCENE_WIDTH else (w, h)
        self.cuts: list[int] = []
        self.last = -1

    def __call__(self, i: int, frame: Any) -> None:
        from scenedetect import FrameTimecode

        img = frame.reformat(width=self.size[0], height=self.size[1], format="bgr24").to_ndarray()
        try:
            found = self.detector.process_frame(FrameTimecode(i, self.fps), img)
        except Exception as exc:  # noqa: BLE001 - a detector failure names the video, the batch goes on
            raise VideoError(self.path, f"scene detection failed ({type(exc).__name__}: {exc}); run without --split-scenes") from None
        self.cuts += [int(c.frame_num) for c in found]
        self.last = i

    def scenes(self, n: int) -> list[tuple[int, int]]:
        from scenedetect import FrameTimecode

        if self.last >= 0:
            self.cuts += [int(c.frame_num) for c in self.detector.post_process(FrameTimecode(self.last, self.fps))]
        edges = [0, *sorted({c for c in self.cuts if 0 < c < n}), n]
        return [(a, b) for a, b in zip(edges, edges[1:]) if b > a]


def detect_scenes(path: Path, info: VideoInfo, threshold: float, min_len: int = 1) -> list[tuple[int, int]]:
    """Scene ranges [start, end) in source frame indices (PySceneDetect ContentDetector), one decode."""
    cuts = SceneCuts(path, info, threshold, min_len)
    times, _ = scan_video(path, info, samples=0, each=cuts)
    return cuts.scenes(len(times))


def letterbox_box(samples: list[Image.Image]) -> tuple[int, int, int, int] | None:
    """(left, top, right, bottom) of the picture inside constant dark borders, or None when there are none."""
    if not samples:
        return None
    w, h = samples[0].size
    if any(s.size != (w, h) for s in samples):
        return None
    lum = np.stack([np.asarray(s.convert("L"), dtype=np.uint8) for s in samples])  # (n, h, w)
    rows = np.percentile(lum, 99, axis=2).max(axis=0)  # brightest of each row over every sample
    cols = np.percentile(lum, 99, axis=1).max(axis=0)

    def span(v: np.ndarray) -> tuple[int, int]:
        lit = np.nonzero(v >= LETTERBOX_LUMA)[0]
        return (0, len(v)) if lit.size == 0 else (int(lit[0]), int(lit[-1]) + 1)

    top, bottom = span(rows)
    left, right = span(cols)
    if bottom - top < h * 0.4 or right - left < w * 0.4:
        return None  # a dark video, not bars
    if top < h * LETTERBOX_MIN_SHARE:
        top = 0
    if h - bottom < h * LETTERBOX_MIN_SHARE:
        bottom = h
    if left < w * LETTERBOX_MIN_SHARE:
        left = 0
    if w - right < w * LETTERBOX_MIN_SHARE:
        right = w
    box = (left, top, right, bottom)
    return None if box == (0, 0, w, h) else box


def fit_to_bucket(image: Image.Image, bucket: tuple[int, int]) -> Image.Image:
    """musubi's resize_image_to_bucket: scale to cover the bucket, centre-crop (floor of half)."""
    bw, bh = bucket
    if image.size == (bw, bh):
        return image
    scale = max(bw / image.width, bh / image.height)
    rw, rh = int(image.width * scale + 0.5), int(image.height * scale + 0.5)
    image = image.resize((rw, rh), Image.Resampling.LANCZOS)
    left, top = (rw - bw) // 2, (rh - bh) // 2
    return image.crop((left, top, left + bw, top + bh))


# -- the report ---------------------------------------------------------------------------------


@dataclass
class VideoResult:
    id: str
    status: str  # ok | skipped (all done before) | failed | empty (no clip fits)
    reason: str | None = None
    clips: list[dict[str, Any]] = field(default_factory=list)
    encoded: int = 0
    reused: int = 0
    dropped_frames: int = 0
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        d = {"file": self.id, "status": self.status, "clips": [c["clip"] for c in self.clips], "encoded": self.encoded,
             "reused": self.reused, "dropped_frames": self.dropped_frames, "warnings": self.warnings}
        if self.reason:
            d["reason"] = self.reason
        return d


@dataclass
class ClipsReport:
    out: Path
    options: ClipsOptions
    encoder: str
    items: list[VideoResult] = field(default_factory=list)
    dry_run: bool = False

    @property
    def n_failed(self) -> int:
        return sum(1 for r in self.items if r.status == "failed")

    @property
    def failed(self) -> list[VideoResult]:
        return [r for r in self.items if r.status == "failed"]

    @property
    def clips(self) -> list[dict[str, Any]]:
        return [c for r in self.items for c in r.clips]

    @property
    def encoded(self) -> int:
        return sum(r.encoded for r in self.items)

    @property
    def reused(self) -> int:
        return sum(r.reused for r in self.items)

    def to_json(self) -> dict[str, Any]:
        return {
            "out": printable(self.out), "dry_run": self.dry_run, "encoder": self.encoder,
            "fps": self.options.target_fps, "frames": self.options.frames,
            "summary": {"videos": len(self.items), "failed": self.n_failed, "clips": len(self.clips),
                        "encoded": self.encoded, "reused": self.reused},
            "videos": [r.to_json() for r in self.items], "clips": self.clips,
        }


# -- the stage ----------------------------------------------------------------------------------


def _stems(src: Path, videos: list[Path]) -> dict[Path, str]:
    """A flat, safe, unique output stem per video (sub/a.mp4 -> sub_a; a.mp4 and a.mov -> a_mp4, a_mov)."""
    base = {p: safe_component(p.relative_to(src).with_suffix("").as_posix().replace("/", "_")) for p in videos}
    counts: dict[str, int] = {}
    for s in base.values():
        counts[s.lower()] = counts.get(s.lower(), 0) + 1
    return {p: (f"{s}_{p.suffix.lower().lstrip('.')}" if counts[s.lower()] > 1 else s) for p, s in base.items()}


def _clip_key(stat: list[int], options_key: str, plan: ClipPlan, size: tuple[int, int], box: Any) -> str:
    d = {"stat": stat, "opts": options_key, "sources": plan.sources, "size": list(size), "box": box}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:20]


def clips_folder(src: Path | str, out: Path | str, options: ClipsOptions | None = None, *, progress: Progress | None = None) -> ClipsReport:
    """Cut every video of `src` into training clips in `out` (see the module doc)."""
    options = options or ClipsOptions()
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise ValueError(f"{printable(src)}: not a folder of videos")
    if src.resolve() == out.resolve():
        raise ValueError(f"{printable(out)}: the output folder must differ from the input (originals are never overwritten)")
    out_real = os.path.realpath(out)
    videos = [p for p in discover_videos(src, options.recursive) if not os.path.realpath(p).startswith(out_real + os.sep)]
    report = ClipsReport(out, options, encoder_name(), dry_run=options.dry_run)
    if options.dry_run:
        for p in videos:
            report.items.append(_plan_only(src, p, _stems(src, videos)[p], options))
        return report
    with output_lock(out, "prep clips"):
        manifest = Manifest.in_folder(out)
        stems = _stems(src, videos)
        spec = options.spec()
        if progress:
            progress.start(len(videos), "clips")
        try:
            for p in videos:
                report.items.append(_one_video(src, out, p, stems[p], options, spec, manifest, report.encoder))
                if progress:
                    progress.advance()
        finally:
            if progress:
                progress.stop()
        write_bucket_record(out, spec, arch=get_arch(options.trainer).name, written_by="prep clips")
        _write_clips_jsonl(out, report)
    return report


def _plan_only(src: Path, path: Path, stem: str, options: ClipsOptions) -> VideoResult:
    rel = printable(path.relative_to(src).as_posix())
    try:
        info = probe_video(path)
        cuts = SceneCuts(path, info, options.scene_threshold) if options.split_scenes else None
        times, _ = scan_video(path, info, samples=0, each=cuts)
        mapping = retime(times, options.target_fps, info.duration)
        scenes = cuts.scenes(len(times)) if cuts else [(0, len(times))]
        plans, dropped = plan_clips(stem, mapping, scenes, options)
    except VideoError as exc:
        return VideoResult(rel, "failed", exc.reason)
    return VideoResult(rel, "ok" if plans else "empty", clips=[{"clip": c.name + CLIP_EXT, "frames": c.frames} for c in plans], dropped_frames=dropped)


def _one_video(src: Path, out: Path, path: Path, stem: str, options: ClipsOptions, spec: BucketSpec, manifest: Manifest, encoder: str) -> VideoResult:
    rel = printable(path.relative_to(src).as_posix())
    okey = options.key()
    try:
        stat = stat_key(path)
    except OSError:
        stat = None
    prev = manifest.get(STEP_VIDEO, rel)
    if (not options.overwrite and prev is not None and prev.status == "ok" and stat is not None
            and prev.data.get("source_stat") == stat and prev.data.get("key") == okey
            and prev.data.get("max_clips") == options.max_clips_per_video
            and all((out / o).exists() for o in prev.outputs)):
        recs = [manifest.get(STEP_CLIP, c) for c in prev.data.get("clips", [])]
        return VideoResult(rel, "skipped", clips=[r.data["record"] for r in recs if r is not None],
                           reused=len(recs), dropped_frames=int(prev.data.get("dropped_frames", 0)),
                           warnings=list(prev.data.get("warnings", [])))
    try:
        result = _cut(src, out, path, rel, stem, stat or [], okey, options, spec, manifest, encoder)
    except DiskFull:
        raise
    except VideoError as exc:
        result = VideoResult(rel, "failed", exc.reason)
    except Exception as exc:  # one bad video never aborts the batch
        result = VideoResult(rel, "failed", f"{type(exc).__name__}: {exc}; re-export the video (ffmpeg -i IN -c:v libx264 -crf 16 OUT.mp4) and run again")
    names = [c["clip"] for c in result.clips]
    old = prev.data.get("clips", []) if prev is not None else []
    if result.status != "failed":
        for stale in set(old) - set(names):  # clips an earlier plan of this video cut (our own output folder)
            for f in (out / stale, out / SHEETS_DIR / (Path(stale).stem + ".jpg")):
                if f.is_file():
                    f.unlink()
    sheets = [f"{SHEETS_DIR}/{Path(n).stem}.jpg" for n in names if (out / SHEETS_DIR / (Path(n).stem + ".jpg")).is_file()]
    manifest.append(Record(
        STEP_VIDEO, rel, "failed" if result.status == "failed" else "ok", source=rel, outputs=names + sheets,
        reason=result.reason, data={"source_stat": stat, "key": okey, "clips": names, "dropped_frames": result.dropped_frames,
                                    "max_clips": options.max_clips_per_video, "warnings": result.warnings},
    ))
    return result


def _scene_key(stat: list[int], options: ClipsOptions) -> str:
    return hashlib.sha256(json.dumps([stat, options.scene_threshold, SCENE_WIDTH]).encode()).hexdigest()[:16]


def _cut(src: Path, out: Path, path: Path, rel: str, stem: str, stat: list[int], okey: str, options: ClipsOptions,
         spec: BucketSpec, manifest: Manifest, encoder: str) -> VideoResult:
    info = probe_video(path)
    fps = options.target_fps
    scene_rec = manifest.get(STEP_SCENES, rel) if options.split_scenes else None
    known = scene_rec is not None and scene_rec.data.get("key") == _scene_key(stat, options)
    cuts = SceneCuts(path, info, options.scene_threshold) if options.split_scenes and not known else None
    times, samples = scan_video(path, info, samples=12, each=cuts)
    if not options.split_scenes:
        scenes = [(0, len(times))]
    elif cuts is None:
        scenes = [(int(a), int(b)) for a, b in scene_rec.data["scenes"]]  # type: ignore[union-attr]
    else:
        scenes = cuts.scenes(len(times))
        manifest.append(Record(STEP_SCENES, rel, "ok", source=rel, data={"key": _scene_key(stat, options), "scenes": [list(s) for s in scenes]}))
    warnings: list[str] = []
    if info.vfr:
        warnings.append("variable frame rate: re-timed by timestamps")
    box = letterbox_box(list(samples.values())) if options.crop_bars else None
    w, h = info.display_size
    if box is not None:
        warnings.append(f"letterbox bars removed: kept {box[2] - box[0]}x{box[3] - box[1]} of {w}x{h}")
        w, h = box[2] - box[0], box[3] - box[1]
    bucket = spec.select(w, h).bucket
    mapping = retime(times, fps, info.duration)
    plans, dropped = plan_clips(stem, mapping, scenes, options)
    if not plans:
        return VideoResult(rel, "empty", f"{info.duration:.2f} s gives {len(mapping)} frames at {fps:g} fps: no clip of at least "
                           f"{options.min_scene_frames} frames (lower --min-scene-frames or --frames)", dropped_frames=dropped, warnings=warnings)
    result = VideoResult(rel, "ok", dropped_frames=dropped, warnings=warnings)
    todo: list[tuple[ClipPlan, str, dict[str, Any]]] = []
    for c in plans:
        name = c.name + CLIP_EXT
        ck = _clip_key(stat, okey, c, bucket, box)
        t0 = times[c.sources[0]]
        record = {
            "clip": name, "source": rel, "start": round(c.start / fps, 4), "end": round((c.start + c.frames) / fps, 4),
            "source_start": round(t0, 4), "source_end": round(times[c.sources[-1]] + (1 / info.fps if info.fps else 0), 4),
            "fps": fps, "frames": c.frames, "width": bucket[0], "height": bucket[1], "scene": c.scene + 1,
            "source_fps": info.fps, "source_size": [info.width, info.height], "rotation": info.rotation,
            "sar": list(info.sar), "vfr": info.vfr, "letterbox": list(box) if box else None, "encoder": encoder,
        }
        rec = manifest.get(STEP_CLIP, name)
        sheet_ok = not options.contact_sheet or (out / SHEETS_DIR / f"{c.name}.jpg").is_file()
        if not options.overwrite and rec is not None and rec.status == "ok" and rec.data.get("key") == ck and (out / name).is_file() and sheet_ok:
            result.reused += 1
        else:
            todo.append((c, ck, record))
        result.clips.append(record)
    if todo:
        _encode(path, info, out, box, bucket, todo, options, manifest, encoder)
        result.encoded = len(todo)
    return result


def _encode(path: Path, info: VideoInfo, out: Path, box: Any, bucket: tuple[int, int], todo: list[tuple[ClipPlan, str, dict[str, Any]]],
            options: ClipsOptions, manifest: Manifest, encoder: str) -> None:
    """One decoding pass feeding the clips still to do, in order (clips never overlap)."""
    wanted: dict[int, list[tuple[int, int]]] = {}  # source frame -> [(clip no, position)]
    for ci, (c, _, _) in enumerate(todo):
        for pos, j in enumerate(c.sources):
            wanted.setdefault(j, []).append((ci, pos))
    last = max(wanted)
    frames: list[dict[int, Image.Image]] = [{} for _ in todo]
    done = [False] * len(todo)
    for j, _t, img in iter_frames(path, info, only=set(wanted)):
        if j in wanted:
            if box is not None:
                img = img.crop(box)
            img = fit_to_bucket(img, bucket)
            for ci, pos in wanted[j]:
                frames[ci][pos] = img
                c = todo[ci][0]
                if len(frames[ci]) == c.frames and not done[ci]:
                    _write_clip(out, todo[ci], [frames[ci][p] for p in range(c.frames)], options, manifest, encoder)
                    frames[ci] = {}
                    done[ci] = True
        if j >= last:
            break
    missing = [todo[i][0].name for i, d in enumerate(done) if not d]
    if missing:
        raise VideoError(path, f"the video ended before clip {missing[0]} was complete: it is truncated; export or download it again")


def _write_clip(out: Path, item: tuple[ClipPlan, str, dict[str, Any]], images: list[Image.Image], options: ClipsOptions,
                manifest: Manifest, encoder: str) -> None:
    import av

    plan, ck, record = item
    name = record["clip"]
    rate = Fraction(options.target_fps).limit_denominator(1001)
    w, h = images[0].size
    with atomic_open(out / name, "wb") as fh:
        with av.open(fh, "w", format="mp4") as c:
            s = c.add_stream(encoder, rate=rate)
            s.width, s.height, s.pix_fmt = w, h, "yuv420p"
            s.codec_context.sample_aspect_ratio = Fraction(1, 1)
            s.thread_type = "FRAME"
            if encoder == "libx264":
                s.options = {"crf": str(options.crf), "preset": "medium"}
            else:  # mpeg4: a generous bit rate (about 0.5 bits per pixel, our choice) instead of CRF
                s.bit_rate = max(2_000_000, int(w * h * float(rate) * 0.5))
            for i, im in enumerate(images):
                f = av.VideoFrame.from_image(im.convert("RGB"))
                f.pts = i
                for p in s.encode(f):
                    c.mux(p)
            for p in s.encode():
                c.mux(p)
    if options.contact_sheet:
        rows, line = [], []
        for i, im in enumerate(images):
            thumb = im.copy()
            thumb.thumbnail((SHEET_CELL, SHEET_CELL))
            line.append(Tile(thumb, label=f"{i} {i / float(rate):.2f}s"))
            if len(line) == SHEET_COLS:
                rows.append(line)
                line = []
        if line:
            rows.append(line)
        write_contact_sheet(rows, out / SHEETS_DIR / f"{Path(name).stem}.jpg", written_by="prep clips", cell=SHEET_CELL, max_cols=SHEET_COLS)
    manifest.append(Record(STEP_CLIP, name, "ok", source=record["source"], outputs=[name], data={"key": ck, "record": record}))


def _write_clips_jsonl(out: Path, report: ClipsReport) -> None:
    """clips.jsonl: one line per clip of this run's videos (failed videos keep their finished clips)."""
    manifest = Manifest.in_folder(out)
    lines: list[str] = []
    seen: set[str] = set()
    for r in report.items:
        clips = r.clips
        if r.status == "failed":
            prev = [rec for rec in manifest.step_records(STEP_CLIP) if rec.source == r.id and (out / rec.id).is_file()]
            clips = [rec.data["record"] for rec in prev]
        for c in clips:
            if c["clip"] not in seen and (out / c["clip"]).is_file():
                seen.add(c["clip"])
                lines.append(json.dumps(c, ensure_ascii=False, sort_keys=True))
    atomic_write_text(out / CLIPS_JSONL, "".join(line + "\n" for line in lines))


def read_clips_jsonl(folder: Path | str) -> list[dict[str, Any]]:
    """The clip records of a `prep clips` output folder ([] when it has none)."""
    path = Path(folder) / CLIPS_JSONL
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


class ClipsStage:
    name = "clips"
    Options = ClipsOptions

    def run(self, src: Path, out: Path, options: ClipsOptions, *, progress: Progress | None = None) -> ClipsReport:
        return clips_folder(src, out, options, progress=progress)


STAGE = ClipsStage()

