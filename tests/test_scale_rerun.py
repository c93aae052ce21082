"""Reruns trust nothing deleted by hand: a stage whose outputs are gone (or edited) is redone."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner
from wd_tiny import build_tiny_wd14

from loraprep.cli import app

runner = CliRunner()


def _run(args: list[str]) -> tuple[int, dict[str, str]]:
    res = runner.invoke(app, ["run", *args, "--json"], catch_exceptions=False)
    try:
        data = json.loads(res.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"no JSON on stdout (exit {res.exit_code}):\n{res.output}")
    return res.exit_code, {s["name"]: s["status"] for s in data["stages"]}


@pytest.fixture
def project(tmp_path, anime_dir, yunet_model):
    raw = tmp_path / "raw"
    raw.mkdir()
    for p in sorted(anime_dir.glob("sylvie_*.png"))[:2]:
        shutil.copy(p, raw / p.name)
    wd = build_tiny_wd14(tmp_path / "wd", batch=None)
    models = tmp_path / "models"
    models.mkdir()
    args = [
        str(raw), "-o", str(tmp_path / "project"), "--trigger", "sylvie_char", "--trainer", "anima", "--resolution", "512",
        "--caption-model", str(wd), "--detector", "photo", "--detector-model", str(yunet_model),
        "--dit", str(models / "a.safetensors"), "--qwen3", str(models / "q.safetensors"), "--vae", str(models / "v.safetensors"), "--workers", "1",
    ]
    code, st = _run(args)
    assert code == 0 and set(st.values()) == {"done"}, st
    return tmp_path / "project", args


def _done(st: dict[str, str]) -> list[str]:
    return [k for k, v in st.items() if v == "done"]


def test_deleted_dataset_is_laid_out_again(project):
    root, args = project
    shutil.rmtree(root / "dataset")  # by hand: before, layout counted as up to date and config crashed
    code, st = _run(args)
    assert code == 0, st
    assert _done(st) == ["layout", "config", "estimate"]
    assert list((root / "dataset").rglob("*.txt"))
    code, st = _run(args)  # and then nothing again
    assert code == 0 and set(st.values()) == {"up-to-date"}, st


def test_deleted_run_folder_is_configured_again(project):
    root, args = project
    shutil.rmtree(root / "run")
    code, st = _run(args)
    assert code == 0, st
    assert _done(st) == ["config", "estimate"]
    assert (root / "run" / "train.toml").is_file()


def test_trainer_caches_and_training_files_are_not_a_reason_to_redo(project):
    root, args = project
    img = next((root / "dataset").rglob("*.txt")).parent
    (img / "x_anima.npz").write_bytes(b"cache")  # what a trainer writes beside the images
    (root / "run" / "logs").mkdir(exist_ok=True)
    (root / "run" / "status.json").write_text("{}")
    code, st = _run(args)
    assert code == 0 and set(st.values()) == {"up-to-date"}, st


def test_a_deleted_crop_is_made_again(project):
    root, args = project
    crop = min((root / "02_cropped").glob("sylvie_*.png"))
    crop.unlink()
    code, st = _run(args)
    assert code == 0, st
    assert st["crop"] == "done" and crop.is_file()
    assert all(st[s] == "up-to-date" for s in ("import", "check", "dedupe"))
