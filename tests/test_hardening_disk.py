"""A full disk loses nothing (issue 12): on a small real tmpfs, every writer and every command
stops with "no space left on <path>", leaves no partial or temp file, records nothing done that
is not, and after space is freed the rerun finishes the whole job without redoing what was done.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hardening import figure, fill, leftovers, records, resize, tmpfs, torn_lines
from PIL import Image
from typer.testing import CliRunner

from prep.fsutil import DiskFull, atomic_write_bytes, atomic_write_text, link_or_copy
from prep.manifest import Manifest, Record

runner = CliRunner()


@pytest.fixture
def disk(tmp_path):
    with tmpfs(tmp_path / "disk", "2m") as d:
        yield d


def noise_png(path: Path, size: int = 300, seed: int = 0) -> Path:
    """An incompressible PNG of about size*size*3 bytes."""
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)
    return path


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def outputs(folder: Path, suffixes=(".png", ".jpg", ".webp", ".txt")) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): sha(p) for p in sorted(folder.rglob("*")) if p.is_file() and p.suffix in suffixes and p.name != "filler.bin"}


def said_no_space(res, disk: Path) -> bool:
    text = res.output + (str(res.exception) if res.exception and not isinstance(res.exception, SystemExit) else "")
    return "no space left on " + str(disk) in text


# -- the writers -----------------------------------------------------------------------------


def test_atomic_write_on_a_full_disk_names_the_path_and_keeps_the_old_file(disk):
    target = disk / "caption.txt"
    atomic_write_text(target, "old caption\n")
    with pytest.raises(DiskFull) as ei:
        atomic_write_bytes(target, b"x" * (3 << 20))
    assert str(ei.value).startswith(f"no space left on {target}")
    assert isinstance(ei.value, OSError) and ei.value.errno == 28
    assert target.read_text() == "old caption\n"  # never a torn file
    assert leftovers(disk) == []
    with pytest.raises(DiskFull):
        atomic_write_bytes(disk / "new.bin", b"x" * (3 << 20))
    assert not (disk / "new.bin").exists() and leftovers(disk) == []
    figure("fault", 2, 2, note="atomic write on a full disk")


def test_link_or_copy_across_devices_on_a_full_disk(tmp_path, disk):
    src = tmp_path / "big.png"
    src.write_bytes(b"\x89PNG" + b"y" * (3 << 20))
    before = sha(src)
    with pytest.raises(DiskFull, match=f"no space left on {disk / 'img' / 'big.png'}"):
        link_or_copy(src, disk / "img" / "big.png")  # another device: a copy
    assert not (disk / "img" / "big.png").exists() and leftovers(disk) == []
    assert sha(src) == before
    figure("fault", 1, 1, note="link_or_copy on a full disk")


def test_manifest_append_is_whole_or_absent_on_a_full_disk(disk):
    m = Manifest.in_folder(disk)
    m.append(Record("crop", "a.png", "ok", outputs=["a.png"]))
    before = m.path.read_bytes()
    fill(disk, 0)
    big = Record("crop", "b.png", "ok", outputs=["b.png"], data={"pad": "z" * 20000})  # more than the page's slack
    with pytest.raises(DiskFull, match="no space left on"):
        m.append(big)
    assert m.path.read_bytes() == before  # the short write was cut away: no torn record
    assert torn_lines(m.path) == []
    figure("fault", 1, 1, note="manifest append on a full disk")


def test_a_torn_last_line_never_swallows_the_next_record(tmp_path):
    m = Manifest.in_folder(tmp_path)
    m.append(Record("crop", "a.png", "ok"))
    with open(m.path, "ab") as fh:
        fh.write(b'{"step": "crop", "id": "b.p')  # kill -9 in the middle of a write
    Manifest(m.path).append(Record("crop", "c.png", "ok"))
    got = {r.id for r in Manifest(m.path).records()}
    assert got == {"a.png", "c.png"}
    assert torn_lines(m.path) == []  # the torn tail was cut away, not left behind
    whole = m.path.read_bytes()
    with open(m.path, "ab") as fh:
        fh.write(b'{"id": "d.png", "status": "ok", "step": "crop"}')  # whole, only its newline lost
    Manifest(m.path).append(Record("crop", "e.png", "ok"))
    assert {r.id for r in Manifest(m.path).records()} == {"a.png", "c.png", "d.png", "e.png"}
    assert m.path.read_bytes().startswith(whole)
    figure("fault", 1, 1, note="torn manifest line then append")


def test_manifest_keeps_names_that_are_not_utf8(tmp_path):
    name = "bad\udcff.png"  # how Python gives a Latin-1 file name byte 0xff
    m = Manifest.in_folder(tmp_path)
    m.append(Record("crop", name, "ok"))
    assert Manifest(m.path).get("crop", name) is not None
    assert torn_lines(m.path) == []
    figure("bad_input", 1, 1, note="non-UTF-8 name in a manifest record")


# -- the commands ----------------------------------------------------------------------------


def _sprites(anime_dir: Path, dst: Path, n: int = 8) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for p in sorted(anime_dir.glob("sylvie_*.png"))[:n]:
        shutil.copy(p, dst / p.name)
    return dst


def _ok_records_are_true(folder: Path) -> None:
    """Every record of done work names outputs that exist whole."""
    for r in records(folder / "manifest.jsonl"):
        if r["status"] in ("ok", "flagged"):
            for o in r.get("outputs", []):
                p = Path(o) if o.startswith("/") else folder / o
                assert p.is_file(), f"{r['id']} recorded done but {o} is missing"
                if p.suffix in (".png", ".jpg", ".webp"):
                    Image.open(p).load()  # whole, not torn


def _no_work_twice(folder: Path, step: str) -> None:
    done = Counter(r["id"] for r in records(folder / "manifest.jsonl") if r["step"] == step and r["status"] in ("ok", "flagged"))
    assert all(n == 1 for n in done.values()), f"redone after the rerun: {[k for k, n in done.items() if n > 1]}"


def test_import_on_a_full_disk_then_after_space_is_freed(tmp_path, disk):
    from prep.cli import app

    src = tmp_path / "raw"
    src.mkdir()
    for i in range(12):
        noise_png(src / f"img{i:02d}.png", seed=i)
    res = runner.invoke(app, ["import", str(src), "-o", str(disk / "raw"), "--json"])
    assert res.exit_code != 0
    assert said_no_space(res, disk)
    assert leftovers(disk) == []
    _ok_records_are_true(disk / "raw")
    kept = sorted(p.name for p in (disk / "raw").glob("*.png"))
    assert 0 < len(kept) < 12
    for name in kept:  # what is there is whole
        assert sha(disk / "raw" / name) == sha(src / name)
    resize(disk, "16m")
    res = runner.invoke(app, ["import", str(src), "-o", str(disk / "raw"), "--json"])
    assert res.exit_code == 0, res.output
    assert outputs(disk / "raw") == outputs(src)
    figure("fault", 1, 1, note="import on a full disk")
    figure("lost", 12, len(outputs(disk / "raw")), note="import after a full disk")


@pytest.fixture
def crop_args(yunet_model):
    return ["--detector", "photo", "--detector-model", str(yunet_model), "--resolution", "512", "--framing", "bust", "--workers", "2"]


@pytest.mark.parametrize("spill", [False, True], ids=["in-memory", "spilled-results"])
def test_crop_on_a_full_disk_then_after_space_is_freed(tmp_path, disk, anime_dir, crop_args, spill, monkeypatch):
    from prep.cli import app

    if spill:  # the report's results go to a file in the output folder, on the full disk too
        monkeypatch.setattr("prep.results.SPILL_AT", 1)

    src = _sprites(anime_dir, tmp_path / "src")
    ref = runner.invoke(app, ["crop", str(src), "-o", str(tmp_path / "ref"), *crop_args])
    assert ref.exit_code == 0, ref.output
    filler = fill(disk, 700_000)
    res = runner.invoke(app, ["crop", str(src), "-o", str(disk / "crops"), *crop_args])
    assert res.exit_code != 0 and said_no_space(res, disk), res.output
    assert leftovers(disk) == [] and torn_lines(disk / "crops" / "manifest.jsonl") == []
    _ok_records_are_true(disk / "crops")
    filler.unlink()
    res = runner.invoke(app, ["crop", str(src), "-o", str(disk / "crops"), *crop_args])
    assert res.exit_code == 0, res.output
    assert outputs(disk / "crops", (".png", ".webp")) == outputs(tmp_path / "ref", (".png", ".webp"))
    _no_work_twice(disk / "crops", "crop")
    figure("fault", 1, 1, note="crop on a full disk")
    figure("lost", len(outputs(tmp_path / "ref", (".png", ".webp"))), len(outputs(disk / "crops", (".png", ".webp"))), note="crop after a full disk")


def test_caption_on_a_full_disk_then_after_space_is_freed(tmp_path, disk):
    from wd_tiny import build_tiny_wd14

    from captioning.cli import app

    model = build_tiny_wd14(tmp_path / "wd", batch=None)
    src = tmp_path / "imgs"
    src.mkdir()
    for i in range(12):
        Image.new("RGB", (64, 64), (20 * i, 200 - 10 * i, 90)).save(src / f"c{i:02d}.png")
    args = ["--model", str(model), "--trigger", "sage", "--json"]
    assert runner.invoke(app, [str(src), "-o", str(tmp_path / "ref"), *args]).exit_code == 0
    filler = fill(disk, 6 * 4096)
    res = runner.invoke(app, [str(src), "-o", str(disk / "caps"), *args])
    assert res.exit_code != 0 and said_no_space(res, disk), res.output
    assert leftovers(disk) == [] and torn_lines(disk / "caps" / "manifest.jsonl") == []
    _ok_records_are_true(disk / "caps")
    filler.unlink()
    res = runner.invoke(app, [str(src), "-o", str(disk / "caps"), *args])
    assert res.exit_code == 0, res.output
    assert outputs(disk / "caps") == outputs(tmp_path / "ref")
    _no_work_twice(disk / "caps", "caption")
    figure("fault", 1, 1, note="caption on a full disk")
    figure("lost", 12, len(outputs(disk / "caps")), note="caption after a full disk")


def test_layout_on_a_full_disk_then_after_space_is_freed(tmp_path, disk):
    from prep.cli import app

    src = tmp_path / "captioned"
    src.mkdir()
    for i in range(12):
        noise_png(src / f"l{i:02d}.png", size=256, seed=i)
        (src / f"l{i:02d}.txt").write_text(f"ohwx, picture {i}\n")
    args = ["--trigger", "ohwx", "--repeats", "4", "--json"]
    assert runner.invoke(app, ["layout", str(src), "-o", str(tmp_path / "ref"), *args]).exit_code == 0
    res = runner.invoke(app, ["layout", str(src), "-o", str(disk / "ds"), *args])  # another device: copies
    assert res.exit_code != 0 and said_no_space(res, disk), res.output
    assert leftovers(disk) == [] and torn_lines(disk / "ds" / "manifest.jsonl") == []
    _ok_records_are_true(disk / "ds")
    resize(disk, "16m")
    res = runner.invoke(app, ["layout", str(src), "-o", str(disk / "ds"), *args])
    assert res.exit_code == 0, res.output
    assert outputs(disk / "ds") == outputs(tmp_path / "ref")
    figure("fault", 1, 1, note="layout on a full disk")
    figure("lost", 24, len(outputs(disk / "ds")), note="layout after a full disk")


def test_loraprep_run_on_a_full_disk_loses_nothing(tmp_path, disk, anime_dir, yunet_model):
    """The issue's case: 12 images, the disk fills during import; after space is freed the
    rerun finishes with all 12, not "ok" with the 4 that fitted."""
    from wd_tiny import build_tiny_wd14

    from loraprep.cli import app

    raw = _sprites(anime_dir, tmp_path / "raw")
    for p in sorted(anime_dir.glob("bg_*.jpg")):
        shutil.copy(p, raw / p.name)
    assert len(list(raw.iterdir())) == 12
    before_raw = outputs(raw)
    wd = build_tiny_wd14(tmp_path / "wd", batch=None)
    models = tmp_path / "models"

    def run(project: Path):
        args = [
            "run", str(raw), "-o", str(project), "--trigger", "sylvie_char", "--trainer", "anima", "--framing", "bust",
            "--resolution", "512", "--caption-model", str(wd), "--detector", "photo", "--detector-model", str(yunet_model),
            "--dit", str(models / "d.safetensors"), "--qwen3", str(models / "q.safetensors"), "--vae", str(models / "v.safetensors"),
            "--workers", "2", "--no-dedupe", "--json",
        ]
        res = runner.invoke(app, args, catch_exceptions=False)
        return res.exit_code, json.loads(res.stdout), res

    code, ref, _ = run(tmp_path / "ref")
    assert code == 0, ref
    want = outputs(tmp_path / "ref" / "dataset")

    code, rep, _ = run(disk / "project")
    assert code != 0
    assert rep["stop_reason"] and "no space left on " + str(disk) in rep["stop_reason"], rep
    assert leftovers(disk) == []
    state = json.loads((disk / "project" / ".loraprep" / "stages.json").read_text()) if (disk / "project" / ".loraprep" / "stages.json").exists() else {}
    assert "import" not in state, "import recorded as done although copies failed"

    resize(disk, "64m")
    code, rep, _ = run(disk / "project")
    assert code == 0, rep
    assert outputs(disk / "project" / "dataset") == want  # all 12, the same bytes as an uninterrupted run
    assert len([k for k in want if k.endswith(".txt")]) == 12
    assert outputs(raw) == before_raw
    figure("originals", 12, 12, note="loraprep run sources")
    figure("fault", 1, 1, note="loraprep run on a full disk")
    figure("lost", 12, len([k for k in outputs(disk / "project" / "dataset") if k.endswith(".txt")]), note="loraprep run after a full disk")


def test_spilled_results_on_a_full_disk_name_the_folder(disk):
    from prep.executor import Result
    from prep.results import ResultList

    filler = fill(disk, 64 * 1024)
    rl = ResultList(spill_at=1, dir=disk)
    with pytest.raises(DiskFull, match="no space left on .*free some space"):
        for i in range(40):
            rl.append(Result(f"{i}.png", "ok", data={"blob": "x" * 50_000}))
        list(rl)  # a read writes what is pending first
    filler.unlink()
    assert leftovers(disk) == []  # the spill file had no name: nothing to clean up
