"""Every generated config against the REAL trainers (skipped unless checkouts are given).

    LORAPREP_SD_SCRIPTS=/path/sd-scripts LORAPREP_SD_SCRIPTS_PYTHON=/venv/bin/python \
    LORAPREP_MUSUBI=/path/musubi-tuner LORAPREP_MUSUBI_PYTHON=/venv2/bin/python \
    python -m pytest tests/test_bridge_check_real.py -q

Pinned commits: sd-scripts 48d368fa (v0.10.1), musubi-tuner 30c658c4. Each architecture x
preset config must pass the trainer's own parser (no unknown keys, values it would have
accepted on the CLI) and dataset validator, and the trainer's step count must equal ours.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import tomli_w
from bridge_helpers import make_dataset, make_models

from train_bridge.check import probe_jobs_for_run, run_probes
from train_bridge.config import write_run_config
from train_bridge.estimate import estimate_from, estimate_run
from train_bridge.presets import PRESETS
from train_bridge.runspec import RunSpec
from train_bridge.trainers import REGISTRY, get_arch

SD = os.environ.get("LORAPREP_SD_SCRIPTS")
MUSUBI = os.environ.get("LORAPREP_MUSUBI")


def _matrix(root: Path, trainer: str) -> list[tuple[str, dict, int, int]]:
    ds = make_dataset(root, repeats=3, n_reg=5)
    models = make_models(root / "models")
    out = []
    for arch, spec in REGISTRY.items():
        if spec.trainer != trainer:
            continue
        for p in PRESETS:
            run_dir = root / "runs" / f"{arch}_{p}"
            write_run_config(arch, ds, run_dir, models=models[arch], preset=p)
            est = estimate_run(run_dir, budget=None)
            for job in probe_jobs_for_run(RunSpec.load(run_dir)):
                job["script"] = Path(spec.train_script).stem
                out.append((f"{arch}_{p}:{job['name']}", job, est.steps_per_epoch, est.total_steps))
    return out


def _assert_all_pass(trainer: str, checkout: str, python: str | None, tmp_path: Path) -> None:
    rows = _matrix(tmp_path, trainer)
    spec = get_arch("anima" if trainer == "sd-scripts" else "wan22-t2v")
    results = run_probes(spec, Path(checkout), [r[1] for r in rows], python=python, timeout=1800)
    failures = []
    for (label, _, spe, total), res in zip(rows, results):
        if res["errors"] or res["unknown_keys"] or (res.get("steps_per_epoch"), res.get("total_steps")) != (spe, total):
            failures.append((label, res["errors"], res.get("steps_per_epoch"), res.get("total_steps"), spe, total))
    assert not failures, failures
    assert len(results) == len(rows) >= 24


@pytest.mark.slow
@pytest.mark.skipif(not SD, reason="set LORAPREP_SD_SCRIPTS to an sd-scripts checkout (48d368fa) to run its parser")
def test_sd_scripts_accepts_every_config(tmp_path: Path) -> None:
    _assert_all_pass("sd-scripts", SD, os.environ.get("LORAPREP_SD_SCRIPTS_PYTHON"), tmp_path)


@pytest.mark.slow
@pytest.mark.skipif(not MUSUBI, reason="set LORAPREP_MUSUBI to a musubi-tuner checkout (30c658c4) to run its parser")
def test_musubi_accepts_every_config(tmp_path: Path) -> None:
    _assert_all_pass("musubi-tuner", MUSUBI, os.environ.get("LORAPREP_MUSUBI_PYTHON"), tmp_path)


@pytest.mark.slow
@pytest.mark.skipif(not SD, reason="set LORAPREP_SD_SCRIPTS to an sd-scripts checkout (48d368fa)")
def test_sd_scripts_step_rules(tmp_path: Path) -> None:
    """The estimator's unit cases (bucket rounding, reg balancing, EXIF, gif) against the trainer."""
    import test_estimate as te
    from PIL import Image

    base = {
        "model": {"pretrained_model_name_or_path": "/m/dit.safetensors", "qwen3": "/m/q.safetensors", "vae": "/m/v.safetensors"},
        "network": {"network_module": "networks.lora_anima", "network_train_unet_only": True},
        "training": {"mixed_precision": "bf16", "cache_latents": True},
        "output": {"output_dir": str(tmp_path / "o"), "save_state": True},
    }
    cases = {
        "buckets_b2": (te._doc(tmp_path / "c1", [(1024, 1024)] * 3 + [(832, 1216)] * 3 + [(1216, 832)], batch=2), {"max_train_epochs": 4}),
        "reg_balance": (te._doc(tmp_path / "c2", [(1024, 1024)] * 4, [(1024, 1024), (832, 1216), (1216, 832)], repeats=5), {"max_train_epochs": 1}),
        "reg_excess": (te._doc(tmp_path / "c3", [(1024, 1024)] * 2, [(832, 1216)] * 5), {"max_train_epochs": 1}),
        "ga4": (te._doc(tmp_path / "c4", [(1024, 1024)] * 5, repeats=2), {"max_train_epochs": 3, "gradient_accumulation_steps": 4}),
    }
    doc5 = te._doc(tmp_path / "c5", [(1216, 832)])
    d = Path(doc5["datasets"][0]["subsets"][0]["image_dir"])
    Image.new("RGB", (64, 64)).save(d / "anim.gif")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (1216, 832)).save(d / "rot.jpg", exif=exif)
    cases["exif_gif"] = (doc5, {"max_train_epochs": 1})
    jobs, ours = [], []
    for name, (doc, extra) in cases.items():
        dsp = tmp_path / f"{name}_ds.toml"
        dsp.write_text(tomli_w.dumps(doc))
        t = {**base, "training": {**base["training"], **extra}, "dataset": {"dataset_config": str(dsp)}}
        tp = tmp_path / f"{name}_train.toml"
        tp.write_text(tomli_w.dumps(t))
        jobs.append({"script": "anima_train_network", "train": str(tp), "args": []})
        flat = {k: v for s in t.values() for k, v in s.items()}
        e = estimate_from(get_arch("anima"), doc, flat)
        ours.append((name, e.steps_per_epoch, e.total_steps))
    results = run_probes(get_arch("anima"), Path(SD), jobs, python=os.environ.get("LORAPREP_SD_SCRIPTS_PYTHON"))
    for (name, spe, total), res in zip(ours, results):
        assert not res["errors"], (name, res["errors"])
        assert (res["steps_per_epoch"], res["total_steps"]) == (spe, total), name


def _musubi_python() -> str:
    import sys

    return os.environ.get("LORAPREP_MUSUBI_PYTHON") or sys.executable


@pytest.mark.slow
@pytest.mark.skipif(not MUSUBI, reason="set LORAPREP_MUSUBI to a musubi-tuner checkout (30c658c4); its Python needs toml, voluptuous, torch, av, cv2")
def test_musubi_video_datasets_schema_and_counts(tmp_path: Path) -> None:
    """Video dataset TOMLs (ours from `config`, and every frame_extraction mode) through musubi's own
    ConfigSanitizer, BlueprintGenerator, VideoDataset caching loop and BucketBatchManager:
    the batches must equal our estimate, bucket for bucket."""
    import json
    import subprocess

    import test_bridge_video as tv

    d = tmp_path / "v"
    d.mkdir()
    tv.clip(d / "a.mp4", 45)
    tv.clip(d / "b.mp4", 25, size=(64, 96))
    tv.clip(d / "c.mp4", 9)
    tv.clip(d / "fast.mp4", 61, fps=30)
    docs = {
        name: tv.doc(d, **keys)
        for name, keys in {
            "head": {"frame_extraction": "head", "target_frames": [1, 21]},
            "chunk": {"frame_extraction": "chunk", "target_frames": [9, 13], "num_repeats": 2, "batch_size": 2},
            "slide": {"frame_extraction": "slide", "target_frames": [21], "frame_stride": 4},
            "uniform": {"frame_extraction": "uniform", "target_frames": [5, 21], "frame_sample": 4},
            "full": {"frame_extraction": "full", "max_frames": 33, "source_fps": 30.0},
            "head_fps": {"frame_extraction": "head", "target_frames": [17, 29], "source_fps": 30.0},
        }.items()
    }
    # and what `config` writes for a mixed folder
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    tv.clip(mixed / "walk.mp4", 33)
    tv.clip(mixed / "run.mp4", 49, size=(64, 96))
    from PIL import Image

    for i in range(3):
        Image.new("RGB", (512, 384), (i * 40, 90, 90)).save(mixed / f"img{i}.png")
        (mixed / f"img{i}.txt").write_text("sage_walk, standing")
    models = make_models(tmp_path / "models")
    rc = write_run_config("wan22-t2v", mixed, tmp_path / "run", models=models["wan22-t2v"], trigger="sage_walk", preset="24gb")
    docs["config_mixed"] = rc.dataset
    for name, doc in docs.items():
        for ds in doc["datasets"]:
            ds["cache_directory"] = str(tmp_path / "caches" / name / Path(ds["cache_directory"]).name)
        p = tmp_path / f"{name}.toml"
        p.write_text(tomli_w.dumps(doc))
        out = tmp_path / f"{name}.json"
        res = subprocess.run([_musubi_python(), str(Path(__file__).with_name("musubi_video_count.py")), MUSUBI, str(p), str(out)], capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, (name, res.stderr[-3000:])
        theirs = json.loads(out.read_text())
        ours = estimate_from(get_arch("wan22-t2v"), doc, {"max_train_epochs": 1})
        assert sum(r["batches"] for r in theirs) == ours.batches_per_epoch, (name, theirs, ours.buckets)
        theirs_buckets: dict[str, int] = {}
        for r in theirs:
            for k, v in r["buckets"].items():
                theirs_buckets[k] = theirs_buckets.get(k, 0) + v
        assert theirs_buckets == ours.buckets, (name, theirs_buckets, ours.buckets)
