"""What musubi-tuner trains from a video folder, computed the way its code computes it.

musubi-tuner 30c658c4, `dataset/image_video_dataset.py` + `datasources.py` + `media_utils.py`:

- `glob_videos` finds the suffixes in `MUSUBI_VIDEO_EXTENSIONS` (exact case), sorted.
- `load_video` decodes every frame with PyAV. With `source_fps` set it keeps frame `i` when
  `int(sum of target_fps/source_fps over the previous frames)` changes (16 fps for Wan); with
  `frame_extraction = "head"` it stops at `max(target_frames)` (counted after re-timing).
- the first frame's stored size picks the bucket; caching always uses
  `BucketSelector(resolution)` (buckets on, no `bucket_no_upscale`), and training re-buckets the
  size written into the cache file name with the dataset's own `enable_bucket` /
  `bucket_no_upscale` (`VideoDataset.prepare_for_training`).
- `frame_extraction` turns a video of F frames into (start, length) windows
  (`retrieve_latent_cache_batches`): head, chunk, slide (`frame_stride`), uniform
  (`frame_sample`; `frame_sample = 1` falls back to head), full (`min(F, max_frames)` rounded
  down to 4N+1). Each window is one cache file named by start and length, so duplicate windows
  (uniform on a short video) are one item.
- training buckets are (width, height, frames); each item is added `num_repeats` times and a
  bucket gives `ceil(count / batch_size)` batches (`BucketBatchManager`).
"""

from __future__ import annotations

import glob
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from prep.buckets import BucketSpec

MUSUBI_VIDEO_EXTENSIONS = (
    ".mp4", ".webm", ".avi", ".mkv", ".mov", ".flv", ".wmv", ".m4v", ".mpg", ".mpeg",
    ".MP4", ".WEBM", ".AVI", ".MKV", ".MOV", ".FLV", ".WMV", ".M4V", ".MPG", ".MPEG",
)
WAN_FPS = 16.0
"""`VideoDataset.TARGET_FPS_WAN`: what `source_fps` re-times to."""
VAE_FRAME_STRIDE = 4
# `VideoDatasetParams` defaults (dataset/config_utils.py)
DEFAULT_TARGET_FRAMES = (1,)
DEFAULT_EXTRACTION = "head"
DEFAULT_MAX_FRAMES = 129


class VideoScanError(ValueError):
    """A video musubi-tuner could not decode; the message names the file."""


@dataclass(frozen=True)
class VideoScan:
    path: str
    frames: int
    """Frames musubi's loader yields (after re-timing and the head limit)."""
    size: tuple[int, int]
    """Stored (width, height) of the first frame: what musubi buckets."""
    fps: float | None
    """The stream's average frame rate (what `source_fps` should be)."""


def glob_videos(directory: str) -> list[str]:
    """musubi's `glob_videos`: exact-case suffixes, duplicates removed, sorted."""
    paths: set[str] = set()
    for ext in MUSUBI_VIDEO_EXTENSIONS:
        paths.update(glob.glob(os.path.join(glob.escape(directory), "*" + ext)))
    return sorted(paths)


def stream_fps(path: str) -> float | None:
    """The video stream's average frame rate from the container (no decode)."""
    import av

    try:
        with av.open(path) as c:
            if not c.streams.video:
                return None
            rate = c.streams.video[0].average_rate
            return float(rate) if rate else None
    except (av.FFmpegError, OSError) as exc:  # type: ignore[attr-defined]
        raise VideoScanError(f"{path}: cannot be opened as a video ({exc}); re-encode it (e.g. `prep clips`) or remove it") from None


_SCANS: dict[tuple[Any, ...], VideoScan] = {}
"""Scans by (path, size, mtime, re-timing, head limit): config and its estimate decode each video once."""


def scan_video(path: str, *, source_fps: float | None = None, target_fps: float | None = None, end_frame: int | None = None) -> VideoScan:
    """Decode `path` as musubi's `load_video` does and count the frames it keeps."""
    try:
        st = os.stat(path)
        key: tuple[Any, ...] | None = (os.path.abspath(path), st.st_size, st.st_mtime_ns, source_fps, target_fps, end_frame)
    except OSError:
        key = None
    if key is not None and key in _SCANS:
        return _SCANS[key]
    scan = _scan_video(path, source_fps=source_fps, target_fps=target_fps, end_frame=end_frame)
    if key is not None:
        if len(_SCANS) > 4096:
            _SCANS.clear()
        _SCANS[key] = scan
    return scan


def _scan_video(path: str, *, source_fps: float | None, target_fps: float | None, end_frame: int | None) -> VideoScan:
    import av

    delta = target_fps / source_fps if source_fps is not None and target_fps is not None else None
    kept = 0
    size: tuple[int, int] | None = None
    fps: float | None = None
    try:
        with av.open(path) as c:
            if not c.streams.video:
                raise VideoScanError(f"{path}: no video stream (audio only?); remove it from the video folder")
            stream = c.streams.video[0]
            stream.thread_type = "AUTO"
            fps = float(stream.average_rate) if stream.average_rate else None
            acc, prev = 0.0, -1
            for frame in c.decode(video=0):
                if delta is None:
                    index = kept
                else:
                    index = int(acc)
                    acc += delta
                    if index == prev:
                        continue
                    prev = index
                if end_frame is not None and index >= end_frame:
                    break
                if size is None:
                    size = (frame.width, frame.height)
                kept += 1
    except VideoScanError:
        raise
    except (av.FFmpegError, OSError, ValueError) as exc:  # type: ignore[attr-defined]
        raise VideoScanError(f"{path}: musubi-tuner cannot decode it ({exc}); re-encode it (e.g. `prep clips`) or remove it") from None
    if size is None:
        raise VideoScanError(f"{path}: no decodable frames; re-encode it (e.g. `prep clips`) or remove it")
    return VideoScan(path, kept, size, fps)


def round_4n1(n: int) -> int:
    return (n - 1) // VAE_FRAME_STRIDE * VAE_FRAME_STRIDE + 1


def effective_target_frames(target_frames: Any) -> tuple[int, ...]:
    """`VideoDataset.__init__`: deduplicated, sorted, each rounded down to N*4+1."""
    tf = sorted({int(f) for f in (target_frames if target_frames is not None else DEFAULT_TARGET_FRAMES)})
    return tuple(sorted({round_4n1(f) for f in tf}))


def effective_mode(mode: str | None, frame_sample: int | None) -> str:
    m = mode or DEFAULT_EXTRACTION
    if m == "uniform" and (frame_sample if frame_sample is not None else 1) == 1:
        return "head"
    return m


def windows(frame_count: int, mode: str, target_frames: tuple[int, ...], *, frame_stride: int = 1, frame_sample: int = 1, max_frames: int = DEFAULT_MAX_FRAMES) -> list[tuple[int, int]]:
    """(start, length) windows musubi cuts from a video of `frame_count` frames (distinct cache keys)."""
    out: list[tuple[int, int]] = []
    if mode == "head":
        out = [(0, t) for t in target_frames if frame_count >= t]
    elif mode == "chunk":
        out = [(i, t) for t in target_frames for i in range(0, frame_count, t) if i + t <= frame_count]
    elif mode == "slide":
        out = [(i, t) for t in target_frames if frame_count >= t for i in range(0, frame_count - t + 1, frame_stride)]
    elif mode == "uniform":
        for t in target_frames:
            if frame_count >= t:
                import numpy as np

                out += [(int(i), t) for i in np.linspace(0, frame_count - t, frame_sample, dtype=int)]
    elif mode == "full":
        out = [(0, round_4n1(min(frame_count, max_frames)))]
    else:
        raise ValueError(f"frame_extraction {mode!r} is not supported by musubi-tuner")
    seen: set[tuple[int, int]] = set()
    uniq = []
    for w in out:
        if w not in seen and w[1] >= 1:
            seen.add(w)
            uniq.append(w)
    return uniq


@dataclass
class VideoDatasetCount:
    """One `[[datasets]]` video entry counted."""

    directory: str
    videos: int
    items: int
    """Windows (cache files) before repeats."""
    num_repeats: int
    batch_size: int
    buckets: Counter[tuple[int, int, int]] = field(default_factory=Counter)
    """(width, height, frames) -> items with repeats."""
    uncaptioned: list[str] = field(default_factory=list)
    too_short: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    same_stem: list[str] = field(default_factory=list)
    scans: list[VideoScan] = field(default_factory=list)

    @property
    def batches(self) -> int:
        return sum(math.ceil(c / self.batch_size) for c in self.buckets.values())


def count_video_dataset(ds: dict[str, Any], general: dict[str, Any], *, steps: int = 16) -> VideoDatasetCount:
    """Count one musubi video dataset entry exactly (see the module docstring)."""

    def get(key: str, default: Any) -> Any:
        v = ds.get(key)
        if v is None:
            v = general.get(key)
        return default if v is None else v

    from train_bridge.trainers.base import resolution_value

    res = resolution_value(get("resolution", [960, 544])) or (960, 544)
    ext = get("caption_extension", None)
    repeats = int(get("num_repeats", 1))
    batch = int(get("batch_size", 1))
    frame_sample = int(get("frame_sample", 1))
    mode = effective_mode(get("frame_extraction", DEFAULT_EXTRACTION), frame_sample)
    targets = effective_target_frames(ds.get("target_frames"))
    stride = int(get("frame_stride", 1))
    max_frames = int(get("max_frames", DEFAULT_MAX_FRAMES))
    source_fps = ds.get("source_fps")
    cache_sel = BucketSpec(resolution=res, steps=steps, family="musubi", enabled=True, no_upscale=False)
    train_sel = BucketSpec(resolution=res, steps=steps, family="musubi", enabled=bool(get("enable_bucket", False)), no_upscale=bool(get("bucket_no_upscale", False)))
    d = ds["video_directory"]
    paths = glob_videos(d)
    out = VideoDatasetCount(d, len(paths), 0, repeats, batch)
    stems = Counter(os.path.splitext(os.path.basename(p))[0] for p in paths)
    out.same_stem = sorted(p for p in paths if stems[os.path.splitext(os.path.basename(p))[0]] > 1)
    for p in paths:
        if ext is not None and not os.path.exists(os.path.splitext(p)[0] + ext):
            out.uncaptioned.append(p)
            continue
        try:
            scan = scan_video(p, source_fps=source_fps, target_fps=WAN_FPS if source_fps is not None else None, end_frame=max(targets) if mode == "head" else None)
        except VideoScanError as exc:
            out.unreadable.append(str(exc))
            continue
        out.scans.append(scan)
        cached = cache_sel.select(*scan.size).bucket
        bucket = train_sel.select(*cached).bucket
        wins = windows(scan.frames, mode, targets, frame_stride=stride, frame_sample=frame_sample, max_frames=max_frames)
        if not wins:
            out.too_short.append(f"{p} ({scan.frames} frames)")
        out.items += len(wins)
        for _, n in wins:
            out.buckets[(bucket[0], bucket[1], n)] += repeats
    return out
