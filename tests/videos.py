"""Tiny videos the tests make with PyAV: colour bars with a hard cut, a rotated phone clip, a
30 fps clip, non-square pixels, letterbox bars, a corrupt and a truncated file, audio only, a
variable frame rate, an animated GIF. Each is a few dozen frames at 64-128 px so encoding and
probing take milliseconds."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

Frame = np.ndarray
RED, GREEN, BLUE, YELLOW, CYAN, MAGENTA, WHITE = (
    (230, 40, 40), (40, 200, 60), (40, 60, 230), (230, 220, 40), (40, 210, 220), (210, 40, 210), (235, 235, 235))


def bars(w: int, h: int, i: int, colours: Sequence[tuple[int, int, int]] = (RED, GREEN, BLUE, YELLOW)) -> Frame:
    """Vertical colour bars with a white block that moves one pixel per frame (so frames differ)."""
    a = np.zeros((h, w, 3), np.uint8)
    n = len(colours)
    for k, c in enumerate(colours):
        a[:, k * w // n:(k + 1) * w // n] = c
    x = (i * 2) % max(1, w - 8)
    a[h // 2 - 4:h // 2 + 4, x:x + 8] = WHITE
    return a


def write_video(path: Path, frames: int, *, fps: int | Fraction = 30, size: tuple[int, int] = (96, 64),
                draw: Callable[[int, int, int], Frame] | None = None, codec: str = "libx264",
                rotation: int | None = None, sar: tuple[int, int] | None = None,
                pts: Sequence[int] | None = None, time_base: Fraction | None = None) -> Path:
    """Encode `frames` frames drawn by `draw(w, h, i)` (colour bars by default).

    rotation: display rotation, counter-clockwise degrees (as a phone writes it, a display matrix);
    sar: sample aspect ratio; pts/time_base: explicit timestamps (variable frame rate).
    """
    w, h = size
    draw = draw or bars
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height = w, h
        s.pix_fmt = "rgb8" if codec == "gif" else "yuv420p"
        if codec == "libx264":
            s.options = {"crf": "12", "preset": "ultrafast"}
        if sar:
            s.codec_context.sample_aspect_ratio = Fraction(*sar)
        if rotation is not None:
            s.set_display_rotation(rotation)
        if time_base is not None:
            s.codec_context.time_base = time_base
        for i in range(frames):
            f = av.VideoFrame.from_ndarray(draw(w, h, i), format="rgb24")
            if pts is not None:
                f.pts = pts[i]
                f.time_base = time_base
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def cut_video(path: Path, first: int = 24, second: int = 24, **kw) -> Path:
    """Colour bars, then a hard cut to a different palette (PySceneDetect must find the cut)."""
    def draw(w: int, h: int, i: int) -> Frame:
        if i < first:
            return bars(w, h, i)
        return bars(w, h, i, (CYAN, MAGENTA, WHITE, (20, 20, 20)))
    return write_video(path, first + second, draw=draw, **kw)


def letterboxed(path: Path, frames: int = 40, *, size: tuple[int, int] = (128, 96), bar: int = 16, **kw) -> Path:
    """Bars picture with black bars `bar` px high at the top and bottom (a 16:9 film in 4:3)."""
    def draw(w: int, h: int, i: int) -> Frame:
        a = np.zeros((h, w, 3), np.uint8)
        a[bar:h - bar] = bars(w, h - 2 * bar, i)
        return a
    return write_video(path, frames, size=size, draw=draw, **kw)


def audio_only(path: Path, seconds: float = 0.5) -> Path:
    """An .mp4 holding only an AAC track (a voice memo renamed)."""
    with av.open(str(path), "w") as c:
        s = c.add_stream("aac", rate=16000)
        s.layout = "mono"
        n = int(16000 * seconds)
        t = np.arange(n, dtype=np.float32) / 16000
        samples = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :]
        f = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        f.sample_rate = 16000
        f.pts = 0
        for p in s.encode(f):
            c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def corrupt(path: Path) -> Path:
    """Bytes named .mp4 that are no video at all."""
    path.write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)))
    return path


def truncated(path: Path, good: Path, keep: float = 0.5) -> Path:
    """The first `keep` of a real mp4 (its index at the end is lost, as in a cut-short copy)."""
    data = good.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def vfr_video(path: Path, frames: int = 40, **kw) -> Path:
    """A clip whose frame intervals alternate 1/30 s and 1/10 s (a screen recording's bursts)."""
    tb = Fraction(1, 90000)
    pts, t = [], 0
    for i in range(frames):
        pts.append(t)
        t += 3000 if i % 2 else 9000
    return write_video(path, frames, pts=pts, time_base=tb, **kw)


def animated_gif(path: Path, frames: int = 12, size: tuple[int, int] = (64, 48), ms: int = 100) -> Path:
    imgs = [Image.fromarray(bars(*size, i)) for i in range(frames)]
    imgs[0].save(path, save_all=True, append_images=imgs[1:], duration=ms, loop=0)
    return path


def still_gif(path: Path, size: tuple[int, int] = (64, 48)) -> Path:
    Image.fromarray(bars(*size, 0)).save(path)
    return path
