"""Find the subsets of a dataset folder (the `prep layout` shape, or kohya `N_name` folders).

sd-scripts ignores the `N_` prefix once `--dataset_config` is used (reference §3.3), so the
repeat count and class tokens are read here and written explicitly into the dataset TOML.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from prep.dataset import discover

LAYOUT_FILE = "layout.json"
_REPEAT_DIR = re.compile(r"^(\d+)_(.+)$")
VIDEO_EXTENSIONS = (".mp4", ".webm", ".avi", ".mkv", ".mov", ".flv", ".wmv", ".m4v", ".mpg", ".mpeg")
"""musubi-tuner's `VIDEO_EXTENSIONS` (dataset/media_utils.py), compared lower-cased here; the exact-case
glob the trainer uses is `train_bridge.video_items.glob_videos`."""


@dataclass
class Subset:
    image_dir: Path
    num_repeats: int
    class_tokens: str | None
    is_reg: bool
    n_images: int
    n_videos: int = 0


@dataclass
class DatasetInfo:
    root: Path
    subsets: list[Subset]
    trigger: str | None
    class_token: str | None

    @property
    def train_subsets(self) -> list[Subset]:
        return [s for s in self.subsets if not s.is_reg]

    @property
    def reg_subsets(self) -> list[Subset]:
        return [s for s in self.subsets if s.is_reg]


def _count(folder: Path) -> tuple[int, int]:
    n_img = len(discover(folder))
    n_vid = sum(1 for p in folder.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
    return n_img, n_vid


def _repeat_dirs(parent: Path, is_reg: bool) -> list[Subset]:
    out = []
    for d in sorted(p for p in parent.iterdir() if p.is_dir() and not p.name.startswith(".")):
        m = _REPEAT_DIR.match(d.name)
        if not m:
            continue
        n_img, n_vid = _count(d)
        out.append(Subset(d.resolve(), int(m.group(1)), m.group(2), is_reg, n_img, n_vid))
    return out


def read_dataset(root: Path | str, *, repeats: int | None = None) -> DatasetInfo:
    """Subsets of `root`: `img/N_x` and `reg/N_y` folders, `N_x` folders, or a flat folder."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: dataset folder not found")
    meta: dict = {}
    if (root / LAYOUT_FILE).is_file():
        meta = json.loads((root / LAYOUT_FILE).read_text(encoding="utf-8"))
    subsets: list[Subset] = []
    if (root / "img").is_dir():
        subsets += _repeat_dirs(root / "img", False)
        if (root / "reg").is_dir():
            subsets += _repeat_dirs(root / "reg", True)
    else:
        subsets += _repeat_dirs(root, False)
    if not subsets:
        n_img, n_vid = _count(root)
        subsets.append(Subset(root, repeats or 1, None, False, n_img, n_vid))
    elif repeats is not None:
        for s in subsets:
            if not s.is_reg:
                s.num_repeats = repeats
    trigger = meta.get("trigger")
    class_token = meta.get("class_token")
    if trigger is None and subsets[0].class_tokens:
        trigger = subsets[0].class_tokens.split(" ")[0]
    return DatasetInfo(root, subsets, trigger, class_token)
