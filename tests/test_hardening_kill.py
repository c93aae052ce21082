"""kill -9 at seeded random points (issue 12): crop, caption, layout and `loraprep run` are each
killed a few times, then run to the end; no temp file is left, no record is torn, and the
result equals an uninterrupted run's, with no finished image redone.

Bounded: LORAPREP_KILLS kills per command (default 3), seed LORAPREP_KILL_SEED (default 12).
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from hardening import figure, leftovers, records, torn_lines
from PIL import Image

BIN = Path(sys.executable).parent
KILLS = int(os.environ.get("LORAPREP_KILLS", "3"))
SEED = int(os.environ.get("LORAPREP_KILL_SEED", "12"))
ENV = {**os.environ, "LORAPREP_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1"}


def _tool(name: str) -> str:
    exe = BIN / name
    if not exe.exists():
        pytest.skip(f"the {name} console script is not installed in {BIN} (pip install -e .)")
    return str(exe)


def _run(argv: list[str], timeout: float = 120) -> tuple[int, float]:
    t = time.perf_counter()
    p = subprocess.run(argv, env=ENV, capture_output=True, text=True, timeout=timeout, check=False)
    assert p.returncode in (0, 3), f"{argv[0]} exit {p.returncode}:\n{p.stderr[-3000:]}"
    return p.returncode, time.perf_counter() - t


def _kill_at(argv: list[str], delay: float) -> bool:
    """Start the command, SIGKILL it after `delay` seconds; True if it was still running."""
    p = subprocess.Popen(argv, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        p.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)  # the command and any worker it started
        p.wait()
        return True


def _digest(folder: Path, suffixes=(".png", ".jpg", ".webp", ".txt")) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file() and p.suffix in suffixes}


def _torn(folder: Path) -> list[str]:
    return [f"{p}: {t}" for p in folder.rglob("*.jsonl") for t in torn_lines(p)]


def _redone(manifest: Path, step: str) -> list[str]:
    done = Counter(r["id"] for r in records(manifest) if r.get("step") == step and r.get("status") in ("ok", "flagged"))
    return [k for k, n in done.items() if n > 1]


def kill_loop(name: str, argv: list[str], out: Path, ref_argv: list[str], ref_out: Path, compare: Path, ref_compare: Path, rng: random.Random) -> int:
    """Reference run, then KILLS killed runs at random points, then one to the end. Returns kills."""
    src = Path(argv[2]) if len(argv) > 2 and Path(argv[2]).is_dir() else None
    before = _digest(src) if src else {}
    _, t_ref = _run(ref_argv)
    kills = 0
    for _ in range(KILLS):
        kills += _kill_at(argv, rng.uniform(0.05, t_ref))
    _run(argv)  # the rerun that completes
    assert leftovers(out) == [], f"{name}: temp files after the rerun"
    assert _torn(out) == [], f"{name}: torn records"
    want, got = _digest(ref_compare), _digest(compare)
    assert got == want, f"{name}: the result differs from an uninterrupted run"
    if src:
        assert _digest(src) == before, f"{name}: an original changed"
        figure("originals", len(before), len(before), note=f"sources of {name}")
    figure("fault", kills, kills, note=f"kill -9 during {name}")
    figure("lost", len(want), sum(got.get(k) == v for k, v in want.items()), note=f"outputs after kills during {name}")
    return kills


@pytest.fixture
def rng(request):
    return random.Random(f"{SEED}-{request.node.name}")


@pytest.fixture
def sprites(tmp_path, anime_dir):
    d = tmp_path / "src"
    d.mkdir()
    for p in sorted(anime_dir.glob("sylvie_*.png")):
        shutil.copy(p, d / p.name)
    return d


def _crop_args(yunet_model: Path) -> list[str]:
    return ["--detector", "photo", "--detector-model", str(yunet_model), "--resolution", "512", "--framing", "bust", "--workers", "2"]


def test_kill_loop_crop(tmp_path, sprites, yunet_model, rng):
    prep = _tool("prep")
    base = [prep, "crop", str(sprites), *_crop_args(yunet_model)]
    out, ref = tmp_path / "crops", tmp_path / "ref"
    kill_loop("crop", [*base, "-o", str(out)], out, [*base, "-o", str(ref)], ref, out, ref, rng)
    assert _redone(out / "manifest.jsonl", "crop") == []


def test_kill_loop_caption(tmp_path, rng):
    from wd_tiny import build_tiny_wd14

    caption = _tool("caption")
    model = build_tiny_wd14(tmp_path / "wd", batch=None)
    src = tmp_path / "imgs"
    src.mkdir()
    for i in range(40):
        Image.new("RGB", (96, 96), (6 * i, 240 - 5 * i, 60 + 3 * i)).save(src / f"c{i:02d}.png")
    base = [caption, str(src), "--model", str(model), "--trigger", "sage", "--batch-size", "1", "--workers", "1"]
    out, ref = tmp_path / "caps", tmp_path / "ref"
    kill_loop("caption", [*base, "-o", str(out)], out, [*base, "-o", str(ref)], ref, out, ref, rng)
    assert _redone(out / "manifest.jsonl", "caption") == []


def test_kill_loop_layout(tmp_path, rng):
    prep = _tool("prep")
    src = tmp_path / "captioned"
    src.mkdir()
    for i in range(60):
        Image.new("RGB", (128, 128), (4 * i, 100, 200 - 3 * i)).save(src / f"l{i:02d}.png")
        (src / f"l{i:02d}.txt").write_text(f"ohwx, picture {i}\n")
    base = [prep, "layout", str(src), "--trigger", "ohwx", "--repeats", "4", "--copy"]
    out, ref = tmp_path / "ds", tmp_path / "ref"
    kill_loop("layout", [*base, "-o", str(out)], out, [*base, "-o", str(ref)], ref, out, ref, rng)


def test_kill_loop_loraprep_run(tmp_path, sprites, yunet_model, rng):
    from wd_tiny import build_tiny_wd14

    loraprep = _tool("loraprep")
    wd = build_tiny_wd14(tmp_path / "wd", batch=None)
    models = tmp_path / "models"
    common = [
        "--trigger", "sylvie_char", "--trainer", "anima", "--caption-model", str(wd), "--dit", str(models / "d.safetensors"),
        "--qwen3", str(models / "q.safetensors"), "--vae", str(models / "v.safetensors"), *_crop_args(yunet_model),
    ]
    out, ref = tmp_path / "project", tmp_path / "ref"
    kill_loop("loraprep run", [loraprep, "run", str(sprites), "-o", str(out), *common], out,
              [loraprep, "run", str(sprites), "-o", str(ref), *common], ref, out / "dataset", ref / "dataset", rng)
    assert _redone(out / "02_cropped" / "manifest.jsonl", "crop") == []
    assert (out / "run" / "train.toml").is_file()
