"""launch on a run folder written by the real `train_bridge.config.write_run_config`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from fake_trainer.helpers import make_trainer_root, recorded_argv, run_cli
from PIL import Image

from train_bridge.launch import LaunchOptions, launch_run
from train_bridge.oom import advise, preset_step_down

config = pytest.importorskip("train_bridge.config")
sft = pytest.importorskip("safetensors.numpy")


def _model(path: Path, key: str) -> Path:
    sft.save_file({key: np.zeros((2, 2), dtype=np.float32)}, str(path))
    return path


def _inputs(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    ds = tmp_path / "dataset"
    ds.mkdir()
    for i in range(3):
        Image.new("RGB", (640, 768), (i * 40, 80, 120)).save(ds / f"img{i}.png")
        (ds / f"img{i}.txt").write_text("ohwx, 1girl, smile")
    models = {
        "dit": _model(tmp_path / "dit.safetensors", "blocks.0.self_attn.q_proj.weight"),
        "qwen3": _model(tmp_path / "qwen3.safetensors", "model.layers.0.self_attn.q_proj.weight"),
        "vae": _model(tmp_path / "vae.safetensors", "encoder.conv_in.weight"),
    }
    return ds, models


@pytest.fixture()
def anima_run(tmp_path: Path) -> Path:
    ds, models = _inputs(tmp_path)
    run = tmp_path / "run"
    config.write_run_config("anima", ds, run, models=models, trigger="ohwx", preset="16gb")
    return run


def test_generated_run_folder_launches_with_the_expected_argv(anima_run: Path, tmp_path: Path) -> None:
    root = make_trainer_root(tmp_path)
    res = launch_run(anima_run, LaunchOptions(trainer_dir=root, python=sys.executable, gpu_check=False, dry_run=True))
    argv = res.plan[0]["argv"]
    i = argv.index(str(root / "anima_train_network.py"))
    assert argv[1:3] == ["-m", "accelerate.commands.launch"]
    assert "--num_cpu_threads_per_process" in argv[3:i] and "--mixed_precision" in argv[3:i]  # accelerate's, before the script
    assert argv[i + 1 : i + 5] == ["--config_file", str(anima_run / "train.toml"), "--dataset_config", str(anima_run / "dataset.toml")]

    # run it (the fake reads output_dir / output_name / epochs from train.toml, as sd-scripts does)
    res = launch_run(anima_run, LaunchOptions(trainer_dir=root, python=sys.executable, gpu_check=False, accelerate=False))
    assert res.exit_code == 0, res.message
    run = json.loads((anima_run / "run.json").read_text())
    out = Path(run["output_dir"])
    assert (out / f"{run['output_name']}.safetensors").exists()
    assert res.outcomes[0].progress.total == res.outcomes[0].progress.step
    assert recorded_argv(tmp_path) == []  # nothing recorded: the generated args are the real ones


def test_oom_advice_and_step_down_for_a_generated_16gb_anima_config(anima_run: Path) -> None:
    train, ds = anima_run / "train.toml", anima_run / "dataset.toml"
    adv = advise("anima", "sd-scripts", train, ds)
    keys = [s.key for s in adv.suggestions]
    # the preset already checkpoints and caches to disk: the advice starts at block swapping
    assert keys[0] == "blocks_to_swap" and "gradient_checkpointing" not in keys
    assert "cache_latents_to_disk" not in keys and "resolution" in keys
    name, sug = preset_step_down("anima", "16gb", train, ds)  # type: ignore[misc]
    assert name == "12gb"
    assert {s.key: s.proposed for s in sug}.get("blocks_to_swap", 0) > 0


def test_one_shot_config_and_launch(tmp_path: Path) -> None:
    ds, models = _inputs(tmp_path)
    root = make_trainer_root(tmp_path)
    run = tmp_path / "oneshot"
    model_args = [a for name, p in models.items() for a in (f"--{name}", str(p))]
    common = ["--trainer-dir", str(root), "--python", sys.executable, "--no-gpu-check", "--no-accelerate"]
    r = run_cli(["launch", "anima", str(ds), *model_args, "--trigger", "ohwx", "--preset", "12gb", "-o", str(run), "--dry-run", *common], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "would write" in r.stderr and not run.exists()
    r = run_cli(["launch", "anima", str(ds), *model_args, "--trigger", "ohwx", "-p", "12gb", "--name", "mylora", "-o", str(run), *common], tmp_path)
    assert r.returncode == 0, r.stderr
    spec = json.loads((run / "run.json").read_text())
    assert spec["preset"] == "12gb" and spec["output_name"] == "mylora" and (Path(spec["output_dir"]) / f"{spec['output_name']}.safetensors").exists()
    r = run_cli(["launch", "anima", str(ds), "--dit", str(models["dit"]), "--bogus", "1", "-o", str(run), *common], tmp_path)
    assert r.returncode == 2 and "unknown option --bogus" in r.stderr
