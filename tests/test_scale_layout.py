"""`prep layout` reruns hash only what changed: an unchanged source is known by its stat."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from PIL import Image

import prep.layout as layout_mod
from prep.layout import LayoutOptions, layout_dataset


def test_rerun_hashes_only_the_changed_source(tmp_path: Path, monkeypatch) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        Image.new("RGB", (64, 64), (i * 40, 0, 0)).save(src / f"img{i}.png")
    seen: Counter = Counter()
    real = layout_mod.sha256_file
    monkeypatch.setattr(layout_mod, "sha256_file", lambda p, *a, **k: (seen.update([Path(p).name]), real(p, *a, **k))[1])
    opts = LayoutOptions(trigger="ohwx", repeats=2, link="copy")
    layout_dataset(src, tmp_path / "ds", opts)
    assert sum(seen.values()) == 3
    seen.clear()
    rep = layout_dataset(src, tmp_path / "ds", opts)
    assert not seen and rep.count("skipped") == 3  # nothing read: each known by its stat

    Image.new("RGB", (64, 64), (0, 255, 0)).save(src / "img1.png")
    rep = layout_dataset(src, tmp_path / "ds", opts)
    assert dict(seen) == {"img1.png": 1} and rep.count("skipped") == 2
