"""`prep crop` reruns read nothing twice: a source is known by its stat before any hashing, only
what changed is hashed (once), and contact sheets and crops.jsonl are rebuilt only when their
rows changed. Counted with counters wrapped around the real hash and decode functions."""

from __future__ import annotations

import os
import shutil
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

import prep.crop as crop_mod
from prep.crop import CropOptions, crop_folder, write_sheets
from prep.manifest import Manifest


@pytest.fixture
def counted(monkeypatch) -> Counter:
    """How often each source is hashed and decoded (the real functions still run)."""
    seen: Counter = Counter()
    real_sha, real_load = crop_mod.sha256_file, crop_mod.load_image

    def sha(path, *a, **k):
        seen["sha:" + Path(path).name] += 1
        return real_sha(path, *a, **k)

    def load(path, *a, **k):
        seen["load:" + Path(path).name] += 1
        return real_load(path, *a, **k)

    monkeypatch.setattr(crop_mod, "sha256_file", sha)
    monkeypatch.setattr(crop_mod, "load_image", load)
    return seen


@pytest.fixture
def sprites(tmp_path: Path, anime_dir: Path) -> Path:
    src = tmp_path / "raw"
    src.mkdir()
    for p in sorted(anime_dir.glob("sylvie_*.png"))[:3]:
        shutil.copy(p, src / p.name)
    return src


def _opts(yunet_model: Path) -> CropOptions:
    return CropOptions(detector="photo", detector_model=str(yunet_model), resolution=512, workers=2)


def _mtimes(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file() and p.name != "manifest.jsonl"}


def test_rerun_with_nothing_to_do_hashes_decodes_and_writes_nothing(tmp_path, sprites, yunet_model, counted):
    out = tmp_path / "out"
    first = crop_folder(sprites, out, _opts(yunet_model))
    assert first.contact_sheets and first.summary()["outputs"] == 3
    before = _mtimes(out)
    counted.clear()
    again = crop_folder(sprites, out, _opts(yunet_model))
    assert again.summary()["resumed"] == 3
    assert not counted, counted  # no hash, no decode (the sheet is not drawn again)
    assert _mtimes(out) == before  # crops, crops.jsonl, contact sheet, captions: untouched
    assert again.contact_sheets == first.contact_sheets


def test_one_changed_source_is_hashed_once_and_only_it(tmp_path, sprites, yunet_model, counted):
    out = tmp_path / "out"
    crop_folder(sprites, out, _opts(yunet_model))
    changed = min(sprites.glob("*.png"))
    im = Image.open(changed).convert("RGB")
    im.putpixel((0, 0), (1, 2, 3))
    im.save(changed)
    counted.clear()
    rep = crop_folder(sprites, out, _opts(yunet_model))
    assert rep.summary()["resumed"] == 2
    assert [k for k in counted if k.startswith("sha:")] == ["sha:" + changed.name]
    assert counted["sha:" + changed.name] == 1  # the driver's hash is handed to the step, not read again


def test_touched_source_with_the_same_bytes_is_hashed_once_then_known_by_its_stat(tmp_path, sprites, yunet_model, counted):
    out = tmp_path / "out"
    crop_folder(sprites, out, _opts(yunet_model))
    touched = sorted(sprites.glob("*.png"))[1]
    st = touched.stat()
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    before = _mtimes(out)
    counted.clear()
    rep = crop_folder(sprites, out, _opts(yunet_model))
    assert rep.summary()["resumed"] == 3  # same bytes: not cropped again
    assert dict(counted) == {"sha:" + touched.name: 1}
    assert {k: v for k, v in _mtimes(out).items() if not k.startswith("contact_sheet")} == {k: v for k, v in before.items() if not k.startswith("contact_sheet")}
    counted.clear()
    crop_folder(sprites, out, _opts(yunet_model))
    assert not counted, counted  # its new stat was recorded


def test_only_the_sheet_page_whose_rows_changed_is_drawn_again(tmp_path, sprites, yunet_model):
    out = tmp_path / "out"
    rep = crop_folder(sprites, out, _opts(yunet_model).model_copy(update={"contact_sheet": False}))
    rows = sorted(rep.results, key=lambda r: r.id)
    pages = write_sheets(rows, out, rows_per_page=1, manifest=Manifest.in_folder(out))
    assert len(pages) == 3
    stamps = {p.name: p.stat().st_mtime_ns for p in pages}
    assert write_sheets(rows, out, rows_per_page=1, manifest=Manifest.in_folder(out)) == pages
    assert {p.name: p.stat().st_mtime_ns for p in pages} == stamps  # nothing changed: nothing drawn

    crop = out / rows[1].outputs[0]
    Image.open(crop).convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(crop)  # a crop edited by hand
    pages[0].unlink()  # and a page deleted by hand
    write_sheets(rows, out, rows_per_page=1, manifest=Manifest.in_folder(out))
    now = {p.name: p.stat().st_mtime_ns for p in pages}
    assert pages[0].is_file()
    assert now[pages[1].name] != stamps[pages[1].name]
    assert now[pages[2].name] == stamps[pages[2].name]
