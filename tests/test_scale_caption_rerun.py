"""Issue 17: a caption rerun reads nothing twice — an unchanged stat trusts the recorded hash."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from wd_tiny import build_tiny_wd14, solid

from captioning import pipeline
from captioning.backends.base import CaptionOptions
from captioning.backends.wd14 import WD14Backend
from captioning.pipeline import caption_folder
from prep.manifest import Manifest, stat_key


class Counting(WD14Backend):
    """The real WD14 backend, noting which images it was asked to caption."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def caption_batch(self, items, options):
        self.seen += [i.id for i in items]
        return super().caption_batch(items, options)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return build_tiny_wd14(tmp_path_factory.mktemp("wd") / "m")


@pytest.fixture()
def hashed(monkeypatch) -> list[Path]:
    """Every source the pipeline hashes (our sha256_file, wrapped and still doing its work)."""
    seen: list[Path] = []
    original = pipeline.sha256_file

    def counting(path, *a, **kw):
        seen.append(Path(path))
        return original(path, *a, **kw)

    monkeypatch.setattr(pipeline, "sha256_file", counting)
    return seen


def test_rerun_hashes_only_what_changed(model, tmp_path, hashed):
    d = tmp_path / "imgs"
    d.mkdir()
    for name, rgb in (("a_red", (255, 0, 0)), ("b_green", (0, 255, 0)), ("c_blue", (0, 0, 255))):
        solid(rgb, (64, 64)).save(d / f"{name}.png")
    opts = CaptionOptions(model=str(model), batch_size=2)

    first = caption_folder(d, "wd14", opts, mode="overwrite")
    assert first.count("ok") == 3 and len(hashed) == 3  # the first run hashes each source once

    hashed.clear()  # nothing changed: nothing read
    backend = Counting()
    rep = caption_folder(d, "wd14", opts, mode="overwrite", backend=backend)
    assert rep.count("resumed") == 3 and backend.seen == [] and hashed == []

    red = d / "a_red.png"  # touched, same bytes: hashed once, not captioned, its new stat kept
    st = red.stat()
    os.utime(red, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    backend = Counting()
    rep = caption_folder(d, "wd14", opts, mode="overwrite", backend=backend)
    assert rep.count("resumed") == 3 and backend.seen == [] and hashed == [red]
    assert Manifest(d / "manifest.jsonl").get(pipeline.STEP, first.outcomes[0].id).data["source_stat"] == stat_key(red)
    hashed.clear()
    rep = caption_folder(d, "wd14", opts, mode="overwrite", backend=Counting())
    assert rep.count("resumed") == 3 and hashed == []  # the touch is trusted from now on

    solid((0, 0, 255), (64, 64)).save(red)  # new bytes: captioned again, and blue now
    os.utime(red, ns=(st.st_atime_ns, st.st_mtime_ns + 9_000_000_000))
    backend = Counting()
    rep = caption_folder(d, "wd14", opts, mode="overwrite", backend=backend)
    assert backend.seen == [first.outcomes[0].id] and rep.count("ok") == 1 and rep.count("resumed") == 2
    assert "blue theme" in (d / "a_red.txt").read_text(encoding="utf-8")
