"""Issue 12 follow-ups: the importer on prep.inputs (a FIFO caption never opened, non-UTF-8
names made safe), tree_signature on links that go nowhere, a full disk during import named as
such, and one writer per output folder for crop, layout, render-variations and `loraprep run`
(two real processes)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hardening import leftovers, tmpfs, within
from PIL import Image

from prep.lock import LOCK_NAME, OutputLocked, output_lock

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="FIFOs, symlink loops and non-UTF-8 names are POSIX features")

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]), "LORAPREP_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1", "COLUMNS": "300"}
NON_UTF8 = os.fsdecode(b"caf\xe9.png")




def png(path: Path, color: tuple[int, int, int] = (200, 30, 30), size: int = 64) -> Path:
    Image.new("RGB", (size, size), color).save(path)
    return path


# --- 1. the importer reads a folder only through prep.inputs ------------------------------------


def test_import_never_opens_a_fifo_caption_and_keeps_a_non_utf8_name(tmp_path: Path) -> None:
    from prep.importer import import_source

    src = tmp_path / "src"
    src.mkdir()
    png(src / "a.png")
    os.mkfifo(src / "a.txt")  # a FIFO named like a.png's caption: opening it waits for a writer forever
    png(src / NON_UTF8, (10, 200, 10))
    os.mkfifo(src / "pipe.png")
    rep = within(20, import_source, src, tmp_path / "out")
    by = {e.source: e for e in rep.entries}
    assert by["a.txt"].status == "refused" and "FIFO" in (by["a.txt"].reason or "")
    assert by["pipe.png"].status == "refused" and "FIFO" in (by["pipe.png"].reason or "")
    assert by["a.png"].status == "ok"
    shown = "caf\\xe9.png"  # the name as reports show it (escaped), and it was imported under a safe name
    assert by[shown].status == "renamed" and by[shown].output == "caf_xe9.png"
    assert (tmp_path / "out" / "caf_xe9.png").read_bytes() == (src / NON_UTF8).read_bytes()
    import json

    json.dumps(rep.to_json(), ensure_ascii=False).encode("utf-8")  # the report can be written as UTF-8


def test_safe_component_escapes_bytes_that_are_not_utf8() -> None:
    from prep.fsutil import safe_component

    out = safe_component(NON_UTF8)
    assert out == "caf_xe9.png"
    out.encode("utf-8")  # writable, showable, JSON-able anywhere
    assert safe_component("plain name.png") == "plain name.png"


def test_import_names_an_unsupported_image_format_with_the_fix(tmp_path: Path) -> None:
    from prep.images import IMAGE_EXTENSIONS
    from prep.importer import import_source

    if ".heic" in IMAGE_EXTENSIONS:
        pytest.skip("this Pillow reads HEIC (pillow-heif installed): nothing to refuse")
    src = tmp_path / "src"
    src.mkdir()
    png(src / "a.png")
    (src / "phone.heic").write_bytes(b"\0\0\0\x18ftypheic")
    rep = import_source(src, tmp_path / "out")
    e = next(e for e in rep.entries if e.source == "phone.heic")
    assert e.status == "refused" and "pillow-heif" in (e.reason or "")


# --- 2. tree_signature --------------------------------------------------------------------------


def test_tree_signature_survives_dangling_links_and_loops(tmp_path: Path) -> None:
    from loraprep.stages import tree_signature

    folder = tmp_path / "raw"
    folder.mkdir()
    png(folder / "a.png")
    os.symlink("missing.png", folder / "dangling.png")
    os.symlink("loop.jpg", folder / "loop.jpg")
    os.symlink(".", folder / "sub")  # a folder link back to itself: never followed
    (folder / NON_UTF8).write_bytes(b"x")
    first = tree_signature(folder)
    assert isinstance(first, str) and first == tree_signature(folder)
    os.unlink(folder / "dangling.png")
    os.symlink("elsewhere-but-longer.png", folder / "dangling.png")
    assert tree_signature(folder) != first  # the link's own stat counts: a changed link is a change
    os.symlink("nowhere", tmp_path / "gone")
    assert tree_signature(tmp_path / "gone") == "missing"


# --- 3. a full disk during import is a full disk, not a damaged archive ------------------------


@pytest.fixture
def disk(tmp_path: Path):
    with tmpfs(tmp_path / "disk", "1m") as d:
        yield d


def _noise(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (300, 300, 3), dtype=np.uint8)).save(path)
    return path


def test_import_from_a_zip_on_a_full_disk_raises_diskfull(tmp_path: Path, disk: Path) -> None:
    from prep.fsutil import DiskFull
    from prep.importer import import_source

    archive = tmp_path / "in.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(6):
            zf.write(_noise(tmp_path / f"img{i}.png", i), f"img{i}.png")
    with pytest.raises(DiskFull) as err:
        import_source(archive, disk / "raw")
    assert "no space left on" in str(err.value) and str(disk) in str(err.value)
    assert leftovers(disk) == []
    assert not (disk / "raw" / LOCK_NAME).exists()  # the lock went with the failed run


# --- 4. one writer per output folder ------------------------------------------------------------

HOLD = """
import sys, time
from pathlib import Path
from prep.lock import output_lock
with output_lock(Path(sys.argv[1]), sys.argv[2]):
    print("held", flush=True)
    while not Path(sys.argv[3]).exists():
        time.sleep(0.02)
"""


def _hold(folder: Path, command: str, release: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), command, str(release)], cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def _cli(tool: str, *args: Any) -> subprocess.CompletedProcess[str]:
    code = {"prep": "from prep.cli import app; app(prog_name='prep')", "loraprep": "from loraprep.cli import app; app(prog_name='loraprep')"}[tool]
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)


def test_loraprep_run_refuses_while_another_holds_the_project(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    png(raw / "a.png")
    project, release = tmp_path / "project", tmp_path / "release"
    holder = _hold(project, "loraprep run", release)
    try:
        res = _cli("loraprep", "run", raw, "-o", project, "--trigger", "sage", "--no-dedupe")
        assert res.returncode == 2, res.stderr[-2000:]
        assert f"pid {holder.pid}" in res.stderr and "loraprep run" in res.stderr
        assert not (project / "01_raw").exists()  # nothing ran
        dry = _cli("loraprep", "run", raw, "-o", project, "--trigger", "sage", "--dry-run")
        assert dry.returncode == 0, dry.stderr[-2000:]  # a dry run writes nothing: it needs no lock
    finally:
        release.touch()
        holder.wait(timeout=30)


def test_crop_refuses_while_another_crop_holds_the_folder(tmp_path: Path, yunet_model: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    png(src / "a.png", size=300)
    out, release = tmp_path / "out", tmp_path / "release"
    args = ("crop", src, "-o", out, "--detector", "photo", "--detector-model", yunet_model, "--resolution", "256", "--workers", "1")
    holder = _hold(out, "prep crop", release)
    try:
        res = _cli("prep", *args)
        assert res.returncode == 2, res.stderr[-2000:]
        assert f"pid {holder.pid}" in res.stderr and "prep crop" in res.stderr
        assert not (out / "crops.jsonl").exists() and not (out / "manifest.jsonl").exists()
        assert _cli("prep", *args, "--dry-run").returncode in (0, 3)  # plans without the lock
    finally:
        release.touch()
        holder.wait(timeout=30)
    res = _cli("prep", *args)
    assert res.returncode in (0, 3), res.stderr[-2000:]
    assert (out / "crops.jsonl").exists() and not (out / LOCK_NAME).exists()


def test_layout_and_render_variations_take_the_output_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("replicate")
    from prep.layout import LayoutOptions, layout_dataset
    from prep.variations.run import VariationOptions, render_variations

    src = tmp_path / "src"
    src.mkdir()
    png(src / "a.png")
    (src / "a.txt").write_text("1girl\n")
    monkeypatch.setenv("REPLICATE_API_TOKEN", "r8_not_a_real_token")  # the client is built, nothing is sent: the lock refuses first
    ds, var, release = tmp_path / "ds", tmp_path / "var", tmp_path / "release"
    holders = [_hold(ds, "prep layout", release), _hold(var, "prep render-variations", release)]
    try:
        with pytest.raises(OutputLocked, match=f"pid {holders[0].pid}"):
            layout_dataset(src, ds, LayoutOptions(trigger="sage"))
        assert layout_dataset(src, ds, LayoutOptions(trigger="sage", dry_run=True)).dry_run
        with pytest.raises(OutputLocked, match=f"pid {holders[1].pid}"):
            render_variations(src, var, VariationOptions(trigger="sage"))
        assert render_variations(src, var, VariationOptions(trigger="sage", dry_run=True)).dry_run
    finally:
        release.touch()
        for h in holders:
            h.wait(timeout=30)
    rep = layout_dataset(src, ds, LayoutOptions(trigger="sage"))
    assert rep.n_images == 1 and not (ds / LOCK_NAME).exists()


def test_the_project_lock_and_the_stage_locks_nest_without_deadlock(tmp_path: Path) -> None:
    """`loraprep run` holds the project; its stages lock subfolders (and may lock the same one)."""
    from prep.layout import LayoutOptions, layout_dataset

    src = tmp_path / "src"
    src.mkdir()
    png(src / "a.png")
    project = tmp_path / "project"
    t = time.monotonic()
    with output_lock(project, "loraprep run"):
        layout_dataset(src, project / "dataset", LayoutOptions(trigger="sage"))
        with output_lock(project, "nested"):
            pass
        assert (project / LOCK_NAME).exists()
    assert time.monotonic() - t < 30 and not (project / LOCK_NAME).exists()
