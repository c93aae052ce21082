"""Tried as a new user would: `train_bridge models get anima`, then `loraprep run ... --trainer anima` with no model paths.

The download goes to a stand-in Hub on 127.0.0.1 in a fresh process (tests/test_models_get.py
explains why); `loraprep run` then runs here, offline, on four real sprites with the tiny WD
model and the shipped YuNet detector, and its config stage fills the three Anima roles from the
cache.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from test_models_get import _anima_catalogue, hub, run_tb  # noqa: F401  (hub is a fixture)
from typer.testing import CliRunner
from wd_tiny import build_tiny_wd14

from loraprep.cli import app

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def test_models_get_then_loraprep_run_needs_no_model_paths(tmp_path: Path, hub, anime_dir, yunet_model, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    cat = _anima_catalogue(tmp_path, hub)
    got = run_tb(tmp_path, hub, "models", "get", "anima", extra={"LORAPREP_WEIGHTS": str(cat)})
    assert got.returncode == 0, got.stderr

    raw = tmp_path / "raw"
    raw.mkdir()
    for p in sorted(anime_dir.glob("sylvie_*.png"))[:4]:
        shutil.copy(p, raw / p.name)
    wd = build_tiny_wd14(tmp_path / "wd", batch=None)
    for k, v in {"HF_HUB_CACHE": tmp_path / "hf-cache", "LORAPREP_HOME": tmp_path / "loraprep-home", "LORAPREP_WEIGHTS": cat}.items():
        monkeypatch.setenv(k, str(v))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    project = tmp_path / "project"
    args = [
        "run", str(raw), "-o", str(project), "--trigger", "sylvie_char", "--trainer", "anima", "--framing", "bust",
        "--resolution", "512", "--caption-model", str(wd), "--detector", "photo", "--detector-model", str(yunet_model), "--json",
    ]
    res = CliRunner().invoke(app, args, catch_exceptions=False)
    rep = json.loads(res.stdout)
    assert res.exit_code == 0, res.output
    assert {s["name"]: s["status"] for s in rep["stages"]}["config"] == "done"
    run = json.loads((project / "run" / "run.json").read_text())
    train = tomllib.loads((project / "run" / "train.toml").read_text())
    flat = {k: v for sec in train.values() if isinstance(sec, dict) for k, v in sec.items()}
    for role, key in (("dit", "pretrained_model_name_or_path"), ("qwen3", "qwen3"), ("vae", "vae")):
        assert run["derived"]["models"][role].startswith("filled from the Hugging Face cache: circlestone-labs/Anima/")
        assert Path(flat[key]).is_file() and str(tmp_path / "hf-cache") in flat[key]
