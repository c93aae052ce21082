"""The README's step-by-step commands and `loraprep run` give the same crops and the same configs.

Same folder, same detector (the real YuNet), the tiny WD model: `prep crop` -> `caption` ->
`prep layout` -> `train_bridge config` against `loraprep run`. The crops must be byte-identical
and train.toml / dataset.toml identical up to the folder names (issue 18: the README's path
cropped at 1024 while the default preset trained at 768).
"""

from __future__ import annotations

import shutil

from typer.testing import CliRunner

from captioning.cli import app as caption_app
from loraprep.cli import app as loraprep_app
from prep.cli import app as prep_app
from train_bridge.cli import app as bridge_app
from wd_tiny import build_tiny_wd14

runner = CliRunner()
TRIGGER = "sylvie_char"


def _ok(app, args):
    res = runner.invoke(app, args, catch_exceptions=False)
    assert res.exit_code == 0, f"{args[:2]} exit {res.exit_code}:\n{res.output}"
    return res


def _normalised(text: str, *pairs: tuple[str, str]) -> str:
    for path, name in sorted(pairs, key=lambda p: -len(p[0])):
        text = text.replace(path, name)
    # the config header names when it was written
    return "\n".join(line for line in text.splitlines() if not line.startswith("#"))


def test_step_by_step_and_loraprep_run_agree(tmp_path, anime_dir, yunet_model):
    raw = tmp_path / "raw"
    raw.mkdir()
    for p in sorted(anime_dir.glob("sylvie_*.png"))[:4]:
        shutil.copy(p, raw / p.name)
    wd = build_tiny_wd14(tmp_path / "wd", batch=None)
    models = tmp_path / "models"
    models.mkdir()
    files = ["--dit", str(models / "anima.safetensors"), "--qwen3", str(models / "qwen3.safetensors"), "--vae", str(models / "vae.safetensors")]
    det = ["--detector", "photo", "--detector-model", str(yunet_model)]

    steps = tmp_path / "steps"
    steps.mkdir()
    cropped, dataset, run = steps / "cropped", steps / "dataset", steps / "run"
    _ok(prep_app, ["crop", str(raw), "-o", str(cropped), "--trainer", "anima", *det])
    _ok(caption_app, [str(cropped), "--trigger", TRIGGER, "--model", str(wd)])
    _ok(prep_app, ["layout", str(cropped), "-o", str(dataset), "--trigger", TRIGGER, "--repeats", "10"])
    _ok(bridge_app, ["config", "anima", str(dataset), "-o", str(run), *files])

    project = tmp_path / "project"
    _ok(loraprep_app, ["run", str(raw), "-o", str(project), "--trigger", TRIGGER, "--trainer", "anima", "--caption-model", str(wd), *det, *files])

    crops_a = {p.name: p.read_bytes() for p in sorted(cropped.glob("*.png")) if not p.name.startswith("contact_sheet")}
    crops_b = {p.name: p.read_bytes() for p in sorted((project / "02_cropped").glob("*.png")) if not p.name.startswith("contact_sheet")}
    assert crops_a and sorted(crops_a) == sorted(crops_b)
    differ = [n for n in crops_a if crops_a[n] != crops_b[n]]
    assert not differ, f"crops differ: {differ}"

    for name in ("train.toml", "dataset.toml"):
        a = _normalised((run / name).read_text(), (str(dataset), "<DATASET>"), (str(run), "<RUN>"))
        b = _normalised((project / "run" / name).read_text(), (str(project / "dataset"), "<DATASET>"), (str(project / "run"), "<RUN>"))
        assert a == b, f"{name} differs between the README's steps and loraprep run"
