"""Build run folders (run.json per the config contract, train.toml, dataset.toml) around the fake trainer.

The run is real enough for launch's preflight (the checks of `train_bridge check`): tiny
safetensors model files with the tensor names each role expects, and an image folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import tomli_w

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


# One tensor name of each Anima role, as prep.archs' ModelArg.expect patterns want.
ANIMA_TENSORS = {
    "dit": "blocks.0.self_attn.q_proj.weight",
    "qwen3": "model.layers.0.self_attn.q_proj.weight",
    "vae": "encoder.conv_in.weight",
}


def write_safetensors(path: Path, tensor: str) -> Path:
    """A complete one-tensor safetensors file (8-byte header length, JSON header, data)."""
    header = json.dumps({tensor: {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    header += b" " * (-len(header) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 8)
    return path


def make_models(tmp: Path) -> dict[str, Path]:
    return {role: write_safetensors(tmp / "models" / f"{role}.safetensors", t) for role, t in ANIMA_TENSORS.items()}


def make_images(folder: Path, n: int = 2) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (64, 64), (40 * i, 80, 120)).save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text("ohwx, 1girl", encoding="utf-8")
    return folder


def make_trainer_root(tmp: Path) -> Path:
    """A stand-in trainer checkout: the fake script under the names run.json uses."""
    root = tmp / "trainer"
    root.mkdir(parents=True, exist_ok=True)
    for name in ("anima_train_network.py", "wan_cache_latents.py", "wan_cache_text_encoder_outputs.py", "wan_train_network.py"):
        shutil.copy(HERE / "fake_train.py", root / name)
    return root


def make_run(
    tmp: Path,
    *,
    fake_args: list[str] | None = None,
    train: dict[str, Any] | None = None,
    dataset: dict[str, Any] | None = None,
    trainer: str = "sd-scripts",
    commands: list[dict[str, Any]] | None = None,
    preset: str = "16gb",
    epochs: int = 3,
    steps_per_epoch: int = 4,
    accelerate: bool = False,
) -> Path:
    run = tmp / "run"
    run.mkdir(parents=True, exist_ok=True)
    out = tmp / "output"
    models = make_models(tmp)
    make_images(tmp / "images")
    train_cfg = train if train is not None else {
        "model": {"pretrained_model_name_or_path": str(models["dit"]), "qwen3": str(models["qwen3"]), "vae": str(models["vae"])},
        "network": {"network_module": "networks.lora_anima", "network_dim": 16, "network_alpha": 16},
        "training": {"train_batch_size": 2, "gradient_checkpointing": False, "mixed_precision": "bf16", "save_state": True},
    }
    ds = dataset if dataset is not None else {
        "general": {"enable_bucket": True, "caption_extension": ".txt", "min_bucket_reso": 256, "max_bucket_reso": 1024},
        "datasets": [{"resolution": 1024, "subsets": [{"image_dir": str(tmp / "images"), "num_repeats": 2}]}],
    }
    (run / "train.toml").write_text(tomli_w.dumps(train_cfg), encoding="utf-8")
    (run / "dataset.toml").write_text(tomli_w.dumps(ds), encoding="utf-8")
    (run / "sample_prompts.txt").write_text("ohwx, 1girl --w 512 --h 512\n", encoding="utf-8")
    base = [
        "--config_file", str(run / "train.toml"), "--dataset_config", str(run / "dataset.toml"),
        "--output_dir", str(out), "--output_name", "lora",
        "--epochs", str(epochs), "--steps_per_epoch", str(steps_per_epoch), "--save_state", "--samples",
        "--record_argv", str(tmp / "argv.jsonl"),
    ]
    if commands is None:
        commands = [
            {
                "name": "train",
                "script": "anima_train_network.py",
                "args": base + (fake_args or []),
                "accelerate": accelerate,
                "accelerate_args": ["--num_cpu_threads_per_process", "1"],
            }
        ]
    else:
        for c in commands:
            c["args"] = [a.replace("{base}", "") for a in c.get("args", [])]
            if c.pop("base", False):
                c["args"] = base + c["args"]
    run_json = {
        "version": 1,
        "trainer": trainer,
        "arch": "anima" if trainer == "sd-scripts" else "wan22",
        "preset": preset,
        "dataset": str(tmp / "images"),
        "trigger": "ohwx",
        "commands": commands,
        "output_dir": str(out),
        "output_name": "lora",
        "logging_dir": str(run / "logs"),
        "save_state": True,
        "max_train_steps": None,
        "max_train_epochs": epochs,
        "estimate": {"steps_per_epoch": steps_per_epoch, "total_steps": steps_per_epoch * epochs},
        "asked": {},
        "derived": {},
    }
    (run / "run.json").write_text(json.dumps(run_json, indent=2), encoding="utf-8")
    return run


def recorded_argv(tmp: Path) -> list[list[str]]:
    p = tmp / "argv.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []


def cli_env(tmp: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(LORAPREP_HOME=str(tmp / "home"), LORAPREP_NO_PROGRESS="1", COLUMNS="200", **extra)
    return env


def run_cli(args: list[str], tmp: Path, timeout: float = 60, **extra: str) -> subprocess.CompletedProcess[str]:
    """Run `train_bridge ARGS` in-process (typer's CliRunner): same code path, no interpreter start-up."""
    from typer.testing import CliRunner

    from train_bridge.cli import app

    env = {"LORAPREP_HOME": str(tmp / "home"), "LORAPREP_NO_PROGRESS": "1", "COLUMNS": "200", **extra}
    res = CliRunner().invoke(app, args, env=env, catch_exceptions=False)
    return subprocess.CompletedProcess(args, res.exit_code, res.stdout, res.stderr)


def launch_args(run: Path, trainer_root: Path, *more: str) -> list[str]:
    return ["launch", str(run), "--trainer-dir", str(trainer_root), "--python", sys.executable, "--no-gpu-check", *more]
