"""`caption DIR ...` and `caption lint DIR ...` end to end through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from captioning.cli import app
from wd_tiny import build_tiny_wd14, solid

runner = CliRunner()


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return build_tiny_wd14(tmp_path_factory.mktemp("wd") / "m", batch=2)


@pytest.fixture()
def data(tmp_path) -> Path:
    d = tmp_path / "cropped"
    d.mkdir()
    solid((255, 0, 0)).save(d / "r.png")
    solid((0, 0, 255)).save(d / "b.png")
    return d


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def test_default_command_captions_with_rules(model, data):
    res = invoke(data, "--model", model, "--trigger", "sage_character", "--exclude", "solo,1girl",
                 "--replace", "red_theme=crimson", "--always-first", "closed eyes", "--rating", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["counts"]["ok"] == 2 and out["keep_tokens"] == 3
    assert (data / "r.txt").read_text() == (
        'sage_character, general, closed eyes, kirisame marisa, red hair, don\'t say "lazy", crimson, long hair\n'
    )
    assert out["tag_frequency"]["closed eyes"] == 2


def test_backend_flag_and_prune_identity_report(model, data, tmp_path):
    out_dir = tmp_path / "o"
    res = invoke(data, "--backend", "wd14", "--model", model, "-t", "Sage", "--prune-identity", "-o", out_dir, "--json")
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    assert rep["pruned"]["identity"]["long hair"] == 2
    assert (out_dir / "b.txt").read_text().startswith("Sage, hatsune miku, >_<")
    assert not (data / "b.txt").exists()


def test_partial_exit_code_names_the_bad_file(model, data):
    (data / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    res = invoke(data, "--model", model, "--json")
    assert res.exit_code == 3
    rep = json.loads(res.stdout)
    assert rep["counts"]["failed"] == 1 and "bad.png" in rep["problems"][0]["reason"]


def test_all_failed_is_exit_1(model, tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    (d / "x.jpg").write_bytes(b"nope")
    assert invoke(d, "--model", model).exit_code == 1


def test_usage_errors_exit_2(model, data):
    assert invoke(data, "--mode", "bogus").exit_code == 2
    assert invoke(data, "--backend", "nosuch", "--model", model).exit_code == 2
    assert invoke(data, "--replace", "noequals", "--model", model).exit_code == 2
    assert invoke(data, "--set", "noequals").exit_code == 2


def test_missing_model_exit_1_with_hint(data, tmp_path):
    res = invoke(data, "--model", tmp_path / "nothing")
    assert res.exit_code == 1 and "model.onnx" in res.output


def test_dry_run_prints_count_and_estimate_and_writes_nothing(model, data):
    res = invoke(data, "--model", model, "--dry-run", "--json")
    assert res.exit_code == 0
    rep = json.loads(res.stdout)
    assert rep["to_caption"] == 2 and rep["estimate"]["cost_usd"] == 0.0 and rep["estimate"]["seconds"] > 0
    assert not list(data.glob("*.txt")) and not (data / "manifest.jsonl").exists()


def test_set_reaches_options_extra(model, data):
    res = invoke(data, "--model", model, "--set", "draft=false", "--set", "threads=1", "--json")
    assert res.exit_code == 0, res.output


def test_lint_subcommand_routes_and_strict(model, data):
    invoke(data, "--model", model, "--trigger", "sage_character")
    res = runner.invoke(app, ["lint", str(data), "--trigger", "sage_character", "--trainer", "anima", "--json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    assert rep["budget"] == 512 and rep["encoder"] == "Qwen3"
    assert {i["code"] for i in rep["issues"]} == {"identity_tags", "other_character"}  # the tiny tagger puts two characters in
    strict = runner.invoke(app, ["lint", str(data), "--trigger", "sage_character", "--trainer", "anima", "--strict"])
    assert strict.exit_code == 1
    assert runner.invoke(app, ["lint", str(data), "--trainer", "nope"]).exit_code == 2


def test_gpu_device_without_provider_is_a_clear_error(model, data):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed here")
    res = invoke(data, "--model", model, "--device", "cuda")
    assert res.exit_code == 1 and "onnxruntime-gpu" in res.output
    assert not list(data.glob("*.txt"))
