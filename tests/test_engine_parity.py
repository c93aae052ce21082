"""The local and Ray engines give byte-identical outputs and equivalent manifests for check,
dedupe, crop and caption on the same folder; a driver killed mid-run and rerun on Ray finishes
without redoing what its manifest already holds."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from wd_tiny import build_tiny_wd14

from captioning.pipeline import CaptionStageOptions, STAGE as CAPTION
from prep.check import CheckOptions, check_folder
from prep.crop import CropOptions, crop_folder
from prep.dedupe import DedupeOptions, dedupe_with

pytest.importorskip("ray", reason="Ray is not installed (pip install 'loraprep[ray]'); CI installs the extra")

RAY = {"engine": "ray", "shard_size": 4}


@pytest.fixture(scope="module")
def images(tmp_path_factory, anime_dir) -> Path:
    """Real anime sprites and scenes, plus an exact duplicate and a broken file."""
    d = tmp_path_factory.mktemp("imgs")
    srcs = sorted(p for p in anime_dir.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".webp"})[:10]
    for p in srcs:
        shutil.copy(p, d / p.name)
    shutil.copy(srcs[0], d / ("dup_" + srcs[0].name))
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return d


def _tree(root: Path, *, skip: tuple[str, ...] = ()) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and not p.name.startswith(skip)}


RUN_DEPENDENT = {"time", "ts", "seconds", "sheet", "rows", "source_stat", "stat"}
"""Manifest fields that record when and where a file was written (stat, mtime), not what."""


def _manifest(path: Path) -> list[dict]:
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    for r in rows:
        for k in RUN_DEPENDENT:
            r.pop(k, None)
            if isinstance(r.get("data"), dict):
                r["data"].pop(k, None)
    return sorted(rows, key=lambda r: (r.get("step", ""), r.get("id", "")))


def test_check_and_dedupe_agree(images, ray_session):
    local = check_folder(images, CheckOptions(faces=False)).to_json()
    ray = check_folder(images, CheckOptions(faces=False, **RAY)).to_json()
    assert local == ray
    assert local["problems"]["corrupt"] and local["problems"]["duplicates"]
    dl = dedupe_with(images, DedupeOptions(dry_run=True)).to_json()
    dr = dedupe_with(images, DedupeOptions(dry_run=True, **RAY)).to_json()
    assert dl == dr and dl["groups"]


def test_crop_outputs_are_byte_identical(images, tmp_path, ray_session, yunet_model):
    opts = {"detector": "photo", "detector_model": str(yunet_model), "resolution": 256, "framing": "bust"}
    a, b = tmp_path / "local", tmp_path / "ray"
    ra = crop_folder(images, a, CropOptions(**opts))
    rb = crop_folder(images, b, CropOptions(**opts, **RAY))
    assert ra.n_failed == rb.n_failed == 1  # the broken file, named, on both
    ta, tb = _tree(a, skip=("manifest",)), _tree(b, skip=("manifest",))
    assert ta.keys() == tb.keys() and len([k for k in ta if k.endswith((".png", ".webp", ".jpg"))]) >= 10
    assert ta == tb
    assert _manifest(a / "manifest.jsonl") == _manifest(b / "manifest.jsonl")
    # the engine is not part of what an output depends on: a local rerun of the Ray output redoes nothing
    again = crop_folder(images, b, CropOptions(**opts)).summary()
    assert again["resumed"] == ra.summary()["ok"] + ra.summary()["flagged"] > 0
    assert _tree(b, skip=("manifest",)) == tb


def test_caption_outputs_are_byte_identical(images, tmp_path, ray_session):
    model = build_tiny_wd14(tmp_path / "wd", batch=None)
    a, b = tmp_path / "a", tmp_path / "b"
    base = {"backend": "wd14", "model": str(model), "trigger": "sage_character", "keep_apart": True}
    ra = CAPTION.run(images, a, CaptionStageOptions(**base))
    rb = CAPTION.run(images, b, CaptionStageOptions(**base, **RAY))
    assert ra.to_json()["counts"] == rb.to_json()["counts"]
    assert ra.to_json()["counts"]["ok"] >= 10
    ca = {k: v for k, v in _tree(a).items() if k.endswith(".txt")}
    cb = {k: v for k, v in _tree(b).items() if k.endswith(".txt")}
    assert ca == cb and len(ca) >= 10
    assert all(v.startswith(b"sage_character") for v in ca.values())


def _n_done(manifest: Path) -> int:
    if not manifest.exists():
        return 0
    return sum(1 for x in manifest.read_text().splitlines() if '"step": "crop"' in x or '"step":"crop"' in x)


def test_a_killed_ray_driver_resumes_without_redoing_finished_shards(images, tmp_path, yunet_model):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):  # 66 images: enough shards to kill in the middle
        for p in images.iterdir():
            if p.name != "broken.png":
                shutil.copy(p, src / f"{i}_{p.name}")
    n = len(list(src.iterdir()))
    out = tmp_path / "out"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "HOME": str(tmp_path)}
    cmd = [sys.executable, "-m", "prep.cli", "crop", str(src), "-o", str(out), "--detector", "photo", "--detector-model", str(yunet_model),
           "--resolution", "256", "--engine", "ray", "--shard-size", "2", "-j", "2", "--json"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while _n_done(out / "manifest.jsonl") < 6 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None, "finished before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    done_before = _n_done(out / "manifest.jsonl")
    assert 6 <= done_before < n
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads(res.stdout)["summary"]
    assert summary["total"] == n and summary["failed"] == 0
    assert summary["resumed"] >= done_before  # what the killed run finished is not cropped again
    assert len([p for p in out.iterdir() if p.suffix in {".png", ".webp", ".jpg"} and p.stem != "contact_sheet"]) >= n


def test_loraprep_run_on_ray_lays_out_the_same_dataset(tmp_path, anime_dir, yunet_model, ray_session):
    """`loraprep run --engine ray` sends check, dedupe, crop and caption to Ray; the dataset it
    lays out is the local engine's, byte for byte."""
    from typer.testing import CliRunner

    from loraprep.cli import app
    from loraprep.project import Project

    raw = tmp_path / "raw"
    raw.mkdir()
    for p in sorted(anime_dir.glob("sylvie_*.png"))[:4]:
        shutil.copy(p, raw / p.name)
    wd = build_tiny_wd14(tmp_path / "wd", batch=None)
    models = tmp_path / "models"

    def run(name: str, *extra: str) -> Path:
        args = ["run", str(raw), "-o", str(tmp_path / name), "--trigger", "sylvie_char", "--trainer", "anima", "--resolution", "512",
                "--caption-model", str(wd), "--detector", "photo", "--detector-model", str(yunet_model), "--workers", "2",
                "--dit", str(models / "a.safetensors"), "--qwen3", str(models / "q.safetensors"), "--vae", str(models / "v.safetensors"), "--json", *extra]
        res = CliRunner().invoke(app, args, catch_exceptions=False)
        assert res.exit_code == 0, res.output
        return tmp_path / name

    a, b = run("local"), run("ray", "--engine", "ray")
    assert Project.load(b / "loraprep.toml").stage_options("crop").engine == "ray"  # saved: a rerun stays on Ray
    ta, tb = _tree(a / "dataset", skip=("manifest", "layout.json")), _tree(b / "dataset", skip=("manifest", "layout.json"))  # those two record paths and times
    assert ta == tb and any(k.endswith(".txt") for k in ta) and any(k.endswith(".png") for k in ta)
