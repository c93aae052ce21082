"""The one video prober and frame reader of the project (PyAV).

Everything that needs a video's facts or pixels calls here, so every step sees the same thing:
`probe_video` demuxes the whole stream once (no decoding but the first frame) and returns a
`VideoInfo` with the real frame count, the frame rate, the display rotation (phone clips store
landscape pixels and a display matrix), the sample aspect ratio (non-square pixels) and
whether the frame rate is variable; `read_frames`/`iter_frames` give upright, square-pixel RGB
frames. Failures raise one error type, `VideoError`, whose `reason` names the problem and the
fix (corrupt, truncated, audio-only, not a regular file); a batch records it for that file and
goes on.

GIFs: an animated GIF (more than one frame) is a video here, a single-frame GIF is an image
(prep.images); `is_video_path` looks at the file to tell (our rule, see docs/video.md).
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from PIL import Image

from prep.inputs import input_problem, printable

VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".webm", ".mkv", ".m4v", ".avi", ".gif"})
"""Extensions read as video, compared lower-cased. `.gif` counts only when animated (`is_video_path`)."""

VFR_TOLERANCE = 0.25
"""A frame interval more than 25% away from the median interval is irregular (our choice)."""
VFR_SHARE = 0.01
"""A stream is variable-frame-rate when more than 1% of its intervals are irregular (our choice):
one dropped frame in a long phone clip is not VFR, a screen recording's bursts are."""

_VFR_FIX = (
    "the frame rate is variable (phone and screen recordings often are); prep clips re-times by "
    "timestamps so clips still get an even frame rate, but motion may judder where frames were "
    "dropped. To be sure, make it constant first: ffmpeg -i IN -vf fps=30 -c:v libx264 -crf 16 OUT.mp4"
)


class VideoError(Exception):
    """A video that cannot be used; `reason` says what is wrong and the fix, `path` names the file."""

    def __init__(self, path: Path | str, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{printable(self.path)}: {reason}")


@dataclass
class VideoInfo:
    """What a video is, as stored. `rotation` is the display rotation, counter-clockwise degrees
    (0, 90, 180, 270); `sar` the sample (pixel) aspect ratio; `frames` counted by demuxing."""

    path: Path
    duration: float
    fps: float
    frames: int
    width: int
    height: int
    rotation: int
    sar: tuple[int, int]
    vfr: bool
    codec: str

    @property
    def display_size(self) -> tuple[int, int]:
        """(width, height) as shown: non-square pixels made square (never losing pixels), then rotated."""
        w, h = square_size(self.width, self.height, self.sar)
        return (h, w) if self.rotation in (90, 270) else (w, h)

    @property
    def square_pixels(self) -> bool:
        return self.sar[0] == self.sar[1]

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = printable(self.path)
        d["sar"] = list(self.sar)
        d["display_size"] = list(self.display_size)
        return d


def square_size(width: int, height: int, sar: tuple[int, int]) -> tuple[int, int]:
    """Stored size with non-square pixels made square: the short pixel side is stretched, so no detail is lost."""
    n, d = sar
    if n <= 0 or d <= 0 or n == d:
        return width, height
    if n > d:
        return max(1, round(width * n / d)), height
    return width, max(1, round(height * d / n))


def is_animated_gif(path: Path | str) -> bool:
    """A GIF with more than one frame (reads only its headers; False when unreadable)."""
    if input_problem(path) is not None:
        return False
    try:
        with Image.open(path) as im:
            return bool(getattr(im, "is_animated", False)) and getattr(im, "n_frames", 1) > 1
    except Exception:
        return False


def is_video_path(path: Path | str) -> bool:
    """Is this a video by its name (and, for `.gif`, by being animated)?"""
    ext = Path(path).suffix.lower()
    if ext not in VIDEO_SUFFIXES:
        return False
    return ext != ".gif" or is_animated_gif(path)


def discover_videos(folder: Path | str, recursive: bool = False) -> list[Path]:
    """Every video under `folder`, sorted; hidden folders, `__MACOSX` and OS litter left out.

    Never probes (a FIFO or dangling link named `x.mp4` is listed; `probe_video` names its problem),
    so a folder's bad files are reported, never silently dropped.
    """
    from prep.dataset import (
        _walk,  # the one walker: same litter and hidden-folder rules as images
    )

    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"{printable(folder)}: not a folder")
    return sorted((p for p in _walk(folder, recursive) if is_video_path(p)), key=lambda p: p.as_posix())


def _normal_rotation(ccw: float) -> int:
    return int(round(ccw / 90.0)) * 90 % 360


def _open(path: Path):
    import av

    problem = input_problem(path, what="video file")
    if problem is not None:
        raise VideoError(path, problem)
    try:
        return av.open(os.fspath(path), "r")
    except av.error.FFmpegError as exc:
        raise VideoError(path, _open_reason(exc, path)) from None
    except (OSError, ValueError) as exc:
        raise VideoError(path, f"cannot open it ({exc}): check the file") from None


def _mp4_index_missing(path: Path) -> bool:
    """An ISO-BMFF file (mp4/mov/m4v) whose top-level boxes run past the end or lack `moov`."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(12)
            if head[4:8] != b"ftyp":
                return False
            size, pos, seen = os.fstat(fh.fileno()).st_size, 0, set()
            while pos + 8 <= size:
                fh.seek(pos)
                hdr = fh.read(16)
                n, kind = int.from_bytes(hdr[:4], "big"), hdr[4:8]
                if n == 1 and len(hdr) >= 16:
                    n = int.from_bytes(hdr[8:16], "big")
                if n == 0:
                    n = size - pos
                if n < 8 or pos + n > size:
                    return True
                seen.add(kind)
                pos += n
            return b"moov" not in seen
    except OSError:
        return False


def _open_reason(exc: Exception, path: Path) -> str:
    msg = str(getattr(exc, "strerror", None) or exc)
    if "moov atom not found" in msg or _mp4_index_missing(path):
        return ("truncated: the mp4/mov index (moov atom) is missing, so the copy was cut short "
                "(interrupted transfer or recording); copy or export it again from the original")
    return (f"not a readable video ({msg}): the file is corrupt, truncated or not a video; "
            "export or download it again, or convert it: ffmpeg -i IN -c:v libx264 -crf 16 OUT.mp4")


def probe_video(path: Path | str) -> VideoInfo:
    """Facts of the first video stream, counted by demuxing every packet. Raises VideoError."""
    import av

    path = Path(path)
    container = _open(path)
    try:
        if not container.streams.video:
            what = "audio-only file" if container.streams.audio else "no video stream"
            raise VideoError(path, f"{what}: it holds no pictures to train on; use the video file itself (not its soundtrack)")
        stream = container.streams.video[0]
        cc = stream.codec_context
        tb = stream.time_base or Fraction(1, 1000)
        pts: list[int] = []
        try:
            for packet in container.demux(stream):
                if packet.size and packet.pts is not None:
                    pts.append(packet.pts)
        except av.error.FFmpegError as exc:
            raise VideoError(path, f"truncated or corrupt after {len(pts)} frames ({exc}); export or download it again") from None
        if not pts:
            raise VideoError(path, "the video stream holds no frames: the file is empty or truncated; export or download it again")
        declared = int(stream.frames or 0)
        if declared and len(pts) < declared * 0.95:
            raise VideoError(path, f"truncated: it holds {len(pts)} of the {declared} frames its header declares; "
                                   "copy or export it again from the original")
        pts.sort()
        deltas = [b - a for a, b in zip(pts, pts[1:]) if b > a]
        median = statistics.median(deltas) if deltas else 0
        irregular = sum(1 for d in deltas if median and abs(d - median) > VFR_TOLERANCE * median)
        vfr = bool(deltas) and irregular > max(0, VFR_SHARE * len(deltas))
        span = float((pts[-1] - pts[0] + median) * tb) if median else 0.0
        measured = len(pts) / span if span > 0 else 0.0
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate and (not measured or abs(float(rate) - measured) <= 0.02 * measured) else measured
        if not fps or not math.isfinite(fps):
            fps = measured or 0.0
        duration = span if span > 0 else (len(pts) / fps if fps else 0.0)
        sar_f = stream.sample_aspect_ratio or cc.sample_aspect_ratio
        sar = (sar_f.numerator, sar_f.denominator) if sar_f and sar_f > 0 else (1, 1)
        rotation = _first_frame_rotation(path, stream.metadata)
        return VideoInfo(
            path=path, duration=round(duration, 6), fps=round(fps, 6), frames=len(pts),
            width=int(cc.width or stream.width), height=int(cc.height or stream.height),
            rotation=rotation, sar=sar, vfr=vfr, codec=str(cc.name),
        )
    finally:
        container.close()


def _first_frame_rotation(path: Path, metadata: dict[str, str]) -> int:
    """Display rotation from the first decoded frame's display matrix (or an old `rotate` tag)."""
    import av

    if metadata.get("rotate"):  # older muxers: clockwise degrees
        try:
            return _normal_rotation(-float(metadata["rotate"]))
        except ValueError:
            pass
    container = _open(path)
    try:
        for frame in container.decode(video=0):
            return _normal_rotation(frame.rotation or 0)
    except av.error.FFmpegError as exc:
        raise VideoError(path, f"the first frame does not decode ({exc}): the file is corrupt; export or download it again") from None
    finally:
        container.close()
    raise VideoError(path, "no frame decodes: the file is corrupt or truncated; export or download it again")


def upright(image: Image.Image, info: VideoInfo) -> Image.Image:
    """A stored frame as shown: square pixels (LANCZOS stretch of the short pixel side), then rotated."""
    size = square_size(image.width, image.height, info.sar)
    if size != image.size:
        image = image.resize(size, Image.Resampling.LANCZOS)
    if info.rotation == 90:
        image = image.transpose(Image.Transpose.ROTATE_90)
    elif info.rotation == 180:
        image = image.transpose(Image.Transpose.ROTATE_180)
    elif info.rotation == 270:
        image = image.transpose(Image.Transpose.ROTATE_270)
    return image


def iter_frames(path: Path | str, info: VideoInfo | None = None, *, raw: bool = False,
                only: set[int] | None = None) -> Iterator[tuple[int, float, Image.Image]]:
    """(index, seconds from the first frame, RGB frame) in presentation order; upright and square unless `raw`.

    With `only`, just those frames are converted and yielded (the rest are decoded and skipped),
    ending after the last one. A decode error part-way raises VideoError naming how far it got.
    """
    import av

    path = Path(path)
    info = info or probe_video(path)
    container = _open(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        tb = stream.time_base or Fraction(1, 1000)
        first: int | None = None
        i = -1
        last = max(only, default=-1) if only is not None else -1
        try:
            for frame in container.decode(stream):
                i += 1
                pts = frame.pts if frame.pts is not None else i
                if first is None:
                    first = pts
                t = float((pts - first) * tb) if frame.pts is not None else i / (info.fps or 1.0)
                if only is not None and i not in only:
                    if i > last:
                        break
                    continue
                img = frame.to_image()
                yield i, t, (img if raw else upright(img, info))
        except av.error.FFmpegError as exc:
            raise VideoError(path, f"decoding failed after {i + 1} frames ({exc}): the file is corrupt or truncated; "
                                   "export or download it again") from None
    finally:
        container.close()


def scan_video(path: Path | str, info: VideoInfo, *, samples: int = 12,
               each: Callable[[int, Any], None] | None = None) -> tuple[list[float], dict[int, Image.Image]]:
    """One decoding pass: every frame's time (seconds from the first frame, presentation order) and
    `samples` upright frames spread evenly over the video (for letterbox detection and previews).
    Only the sampled frames are converted to pictures, so this costs about one decode. `each(i, frame)`
    gets every decoded PyAV frame as stored (scene detection rides on this pass)."""
    import av

    path = Path(path)
    n = max(1, info.frames)
    want = {round(i * (n - 1) / max(1, samples - 1)) for i in range(min(samples, n))}
    times: list[float] = []
    picked: dict[int, Image.Image] = {}
    container = _open(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        tb = stream.time_base or Fraction(1, 1000)
        first: int | None = None
        try:
            for i, frame in enumerate(container.decode(stream)):
                if frame.pts is None:
                    t = i / (info.fps or 1.0)
                else:
                    first = frame.pts if first is None else first
                    t = float((frame.pts - first) * tb)
                times.append(t)
                if each is not None:
                    each(i, frame)
                if i in want:
                    picked[i] = upright(frame.to_image(), info)
        except av.error.FFmpegError as exc:
            raise VideoError(path, f"decoding failed after {len(times)} frames ({exc}): the file is corrupt or truncated; "
                                   "export or download it again") from None
    finally:
        container.close()
    if not times:
        raise VideoError(path, "no frame decodes: the file is corrupt or truncated; export or download it again")
    return times, picked


def read_frames(path: Path | str, indices: Iterable[int]) -> list[Image.Image]:
    """The frames at these indices (presentation order), upright with square pixels, in the order asked.

    Raises VideoError for a bad file or an index past the last frame.
    """
    wanted = list(indices)
    if not wanted:
        return []
    need = set(wanted)
    if min(need) < 0:
        raise ValueError("frame indices must be >= 0")
    got: dict[int, Image.Image] = {}
    for i, _t, img in iter_frames(path, only=need):
        got[i] = img
    missing = sorted(need - got.keys())
    if missing:
        raise VideoError(path, f"frame {missing[0]} does not exist (the video has {len(got) and max(got) + 1 or 0}+ frames)")
    return [got[i] for i in wanted]


def is_4n1(frames: int) -> bool:
    """Wan's VAE frame rule: 4N+1 frames (1, 5, 9, ... 81)."""
    return frames >= 1 and (frames - 1) % 4 == 0


def floor_4n1(frames: int) -> int:
    """The largest 4N+1 count not above `frames` (0 when `frames` < 1)."""
    return 0 if frames < 1 else ((frames - 1) // 4) * 4 + 1


def retimed_frames(info: VideoInfo, fps: float) -> int:
    """How many frames the video gives when sampled at `fps` from its timestamps."""
    return max(0, int(math.floor(info.duration * fps + 1e-6))) if info.duration > 0 else 0


def clip_plan(total: int, frames: int) -> tuple[int, int]:
    """(clips, frames dropped) when `total` frames are cut into back-to-back clips of `frames`."""
    if frames <= 0:
        return 0, total
    n = total // frames
    return n, total - n * frames


def check_videos(folder: Path | str, recursive: bool = False, *, fps: float = 16, frames: int = 81) -> dict[str, Any]:
    """What `prep check` shows for the videos of `folder`: each video's facts, what cutting it into
    `frames`-frame clips at `fps` gives and drops, warnings, and the errors by file. Writes nothing."""
    folder = Path(folder)
    videos: list[dict[str, Any]] = []
    errors: list[dict[str, str]] = []
    clip_seconds = frames / fps if fps else 0.0
    totals = {"videos": 0, "ok": 0, "errors": 0, "seconds": 0.0, "clips": 0, "dropped_seconds": 0.0, "too_short": 0}
    for p in discover_videos(folder, recursive):
        rel = printable(p.relative_to(folder).as_posix())
        totals["videos"] += 1
        try:
            info = probe_video(p)
        except VideoError as exc:
            errors.append({"file": rel, "reason": exc.reason})
            totals["errors"] += 1
            continue
        total = retimed_frames(info, fps)
        n, dropped = clip_plan(total, frames)
        warnings: list[str] = []
        if info.vfr:
            warnings.append(_VFR_FIX)
        if info.rotation:
            warnings.append(f"rotated {info.rotation} degrees for display (phone clip): prep clips turns the pixels upright")
        if not info.square_pixels:
            sw, sh = square_size(info.width, info.height, info.sar)
            warnings.append(f"non-square pixels (sample aspect ratio {info.sar[0]}:{info.sar[1]}): prep clips makes them square, "
                            f"{info.width}x{info.height} shows as {sw}x{sh}")
        if info.fps and info.fps < fps - 0.01:
            warnings.append(f"{info.fps:g} fps is below the training {fps:g} fps: frames would repeat; "
                            f"use --fps {math.floor(info.fps)} or a smoother source")
        if n == 0:
            best = floor_4n1(total)
            totals["too_short"] += 1
            warnings.append(f"{info.duration:.2f} s is shorter than one {frames}-frame clip at {fps:g} fps ({clip_seconds:.2f} s): "
                            f"it gives no clip; use --frames {best} (4N+1) or a longer video" if best else
                            f"{info.duration:.2f} s is too short to give any clip at {fps:g} fps")
        elif dropped:
            warnings.append(f"{dropped} frames ({dropped / fps:.2f} s) at the end fit no {frames}-frame clip and are dropped")
        videos.append({
            "file": rel, **{k: v for k, v in info.to_json().items() if k != "path"},
            "frames_at_fps": total, "clips": n, "dropped_frames": dropped,
            "dropped_seconds": round(dropped / fps, 3) if fps else 0.0, "warnings": warnings,
        })
        totals["ok"] += 1
        totals["seconds"] += info.duration
        totals["clips"] += n
        totals["dropped_seconds"] += dropped / fps if fps else 0.0
    totals["seconds"] = round(totals["seconds"], 3)
    totals["dropped_seconds"] = round(totals["dropped_seconds"], 3)
    target_warning = None if is_4n1(frames) else (
        f"--frames {frames} is not 4N+1: Wan's VAE needs 4N+1 frames; use {floor_4n1(frames)} or {floor_4n1(frames) + 4}")
    return {
        "target": {"fps": fps, "frames": frames, "clip_seconds": round(clip_seconds, 4), "warning": target_warning},
        "videos": videos, "errors": errors, "summary": totals,
    }
