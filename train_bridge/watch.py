"""Notice checkpoints, state folders and sample images as the trainer writes them.

The log names checkpoints but not samples, and a state folder only shows up on disk, so the
output folder is polled (cheap: one directory listing per second).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

CHECKPOINT_EXT = {".safetensors", ".ckpt", ".pt", ".pth"}
SAMPLE_EXT = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".mp4", ".webm", ".avi"}


def list_outputs(output_dir: Path) -> dict[str, list[Path]]:
    """Checkpoints, state folders and samples under output_dir, each sorted by mtime."""
    out: dict[str, list[Path]] = {"checkpoints": [], "states": [], "samples": []}
    d = Path(output_dir)
    if d.is_dir():
        for p in d.iterdir():
            if p.is_dir() and p.name.endswith("-state"):
                out["states"].append(p)
            elif p.is_file() and p.suffix.lower() in CHECKPOINT_EXT:
                out["checkpoints"].append(p)
        sample_dir = d / "sample"
        if sample_dir.is_dir():
            out["samples"] = [p for p in sample_dir.rglob("*") if p.is_file() and p.suffix.lower() in SAMPLE_EXT]

    def mtime(p: Path) -> float:
        try:
            return p.stat().st_mtime
        except OSError:
            return 0.0

    return {k: sorted(v, key=lambda p: (mtime(p), p.name)) for k, v in out.items()}


@dataclass
class OutputWatcher:
    output_dir: Path
    seen: set[Path] = field(default_factory=set)

    def __post_init__(self) -> None:
        for paths in list_outputs(self.output_dir).values():
            self.seen.update(paths)

    def poll(self) -> list[tuple[str, Path]]:
        """(kind, path) for every file or state folder that appeared since the last poll."""
        new: list[tuple[str, Path]] = []
        for kind, paths in list_outputs(self.output_dir).items():
            for p in paths:
                if p not in self.seen:
                    self.seen.add(p)
                    new.append((kind[:-1], p))  # "checkpoint", "state", "sample"
        return new
