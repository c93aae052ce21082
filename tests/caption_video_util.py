"""Tiny clips for the video caption tests, made with PyAV (libx264, yuv420p): a few dozen frames
at 64x48 px encode in milliseconds. A white block moves across a coloured background so the
frames differ; `colour(i)` picks the background of frame i (for the frame-tagging tests)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import av
import numpy as np


def make_clip(path: Path, frames: int = 24, *, fps: int = 16, size: tuple[int, int] = (64, 48),
              colour: Callable[[int], tuple[int, int, int]] | None = None, block: bool = True, noise: bool = False) -> Path:
    """`noise`: random pixels, so the file is large (above 1 MB at 320x240 x 30 frames) for upload paths."""
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"crf": "10", "preset": "ultrafast"}
        for i in range(frames):
            a = np.empty((h, w, 3), np.uint8)
            a[:, :] = colour(i) if colour else (40, 90 + (i * 5) % 100, 160)
            if noise:
                a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            if block:
                x = int(i * (w - 8) / max(1, frames - 1))
                a[h // 3: h // 3 + 8, x:x + 8] = 250
            for p in s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def corrupt_clip(path: Path) -> Path:
    path.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x17" * 300)
    return path
