"""train_bridge check: the reference's broken configs are rejected; real problems are named."""

from __future__ import annotations

import sys

import json
import shutil
if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib
from pathlib import Path

import pytest
import tomli_w
from bridge_helpers import make_dataset, make_models, write_safetensors
from typer.testing import CliRunner

from train_bridge.check import check_config_files, check_run
from train_bridge.cli import app
from train_bridge.config import write_run_config
from train_bridge.runspec import read_train_toml


@pytest.fixture()
def world(tmp_path: Path):
    ds = make_dataset(tmp_path, repeats=2, n_reg=0, sizes=[(1024, 1024), (832, 1216), (1216, 832)])
    return tmp_path, ds, make_models(tmp_path / "models")


def _msgs(report) -> str:
    return "\n".join(i.message for i in report.errors)


def test_generated_run_passes(world) -> None:
    root, ds, models = world
    write_run_config("anima", ds, root / "run", models=models["anima"])
    rep = check_run(root / "run")
    assert rep.ok, _msgs(rep)
    assert any("all known to anima_train_network.py" in i.message for i in rep.items)
    assert any("trigger in all" in i.message for i in rep.items)


def test_reference_broken_configs_are_rejected(shared_dir: Path) -> None:
    ex = shared_dir / "reference" / "examples"
    rep = check_config_files("anima", ex / "broken" / "bad_train.toml", ex / "broken" / "bad_dataset.toml")
    text = _msgs(rep)
    for needle in (
        "learning_rate: numeric option given as str",
        "mixed_precision: 'bf17' is not one of",
        "max_train_epoch: unknown key",
        "did you mean max_train_epochs",
        "optimizer_args: must be a TOML array",
        "cache_text_encoder_outputs needs network_train_unet_only",
        "log_with = tensorboard needs logging_dir",
        "output_dir is not set",
        "validation_split: expected float",
        "extra key 'resolution' not allowed",
        "bucket_reso_steps=8: must be divisible by 16",
        "shuffle_caption cannot be used with cache_text_encoder_outputs",
    ):
        assert needle in text, needle
    rep = check_config_files("anima", ex / "broken" / "res_int.toml", ex / "anima_dataset.toml")
    assert 'resolution: expects a string, got int 1024 (write "W,H" as a string)' in _msgs(rep)
    # the good examples have no config errors (only their /data paths are missing here)
    for train, ds, arch in (("anima_train.toml", "anima_dataset.toml", "anima"), ("wan22_t2v_low.toml", "wan22_dataset.toml", "wan22-t2v")):
        rep = check_config_files(arch, ex / train, ex / ds)
        assert not [i for i in rep.errors if i.area == "config"], _msgs(rep)


def test_wrong_and_broken_model_files(world) -> None:
    root, ds, models = world
    m = dict(models["anima"])
    m["dit"] = m["vae"]  # a VAE passed as the DiT
    write_run_config("anima", ds, root / "run", models=m)
    trunc = Path(models["anima"]["qwen3"])
    trunc.write_bytes(trunc.read_bytes()[:-4])  # truncated download
    rep = check_run(root / "run")
    text = _msgs(rep)
    assert "is not the expected Anima DiT" in text
    assert "truncated" in text
    Path(models["anima"]["vae"]).write_bytes(b"<html>404</html>")
    assert "not a .safetensors file" in _msgs(check_run(root / "run"))
    Path(models["anima"]["vae"]).unlink()
    assert "does not exist" in _msgs(check_run(root / "run"))


def test_captions_and_trigger(world) -> None:
    root, ds, models = world
    write_run_config("anima", ds, root / "run", models=models["anima"])
    folder = next((ds / "img").iterdir())
    caps = sorted(folder.glob("*.txt"))
    caps[0].unlink()
    caps[1].write_text("a woman without the word", encoding="utf-8")
    (folder / "x_0001_anima.npz").write_bytes(b"0")
    rep = check_run(root / "run")
    text = _msgs(rep)
    assert "1 image(s) without a .txt caption" in text
    assert "trigger 'sage_character' missing from 1 caption(s)" in text
    assert any("trainer cache file" in w.message for w in rep.warnings)


def test_wan_dtype_and_toml_edits(world) -> None:
    root, ds, models = world
    write_run_config("wan22-t2v", ds, root / "run", models=models["wan22-t2v"])
    assert check_run(root / "run").ok
    # the user swaps in a bf16 DiT without reconfiguring: musubi would assert on the dtype
    write_safetensors(Path(models["wan22-t2v"]["dit"]), {f"blocks.{i}.self_attn.q.weight": [2, 2] for i in range(40)}, "BF16")
    assert "musubi asserts they match" in _msgs(check_run(root / "run"))
    # hand edits the trainer would silently accept
    low = root / "run" / "train_low.toml"
    low.write_text(low.read_text().replace("sdpa = true", "spda = true"))
    text = _msgs(check_run(root / "run"))
    assert "spda: unknown key" in text and "did you mean sdpa" in text
    assert "one attention flag" in text


def test_musubi_dataset_rules(tmp_path: Path) -> None:
    ds = tmp_path / "ds.toml"
    ds.write_text(
        '[general]\nresolution = [960, 544]\ncaption_extension = ".txt"\nfoo = 1\n'
        '[[datasets]]\nimage_directory = "/a"\ncache_directory = "/c"\nsource_fps = 30.0\n'
        '[[datasets]]\nvideo_directory = "/v"\ncache_directory = "/c"\ntarget_frames = [1, 20]\nsource_fps = 30\n'
    )
    text = _msgs(check_config_files("wan21-t2v", None, ds))
    assert "extra key 'foo'" in text
    assert "extra key 'source_fps' not allowed" in text  # image datasets have no fps
    assert "shared with another dataset" in text
    assert "20 is not N*4+1" in text
    assert "source_fps: expected float, got 30" in text


def test_cli_check_exit_codes(world, shared_dir: Path) -> None:
    root, ds, models = world
    write_run_config("sdxl", ds, root / "run", models=models["sdxl"])
    res = CliRunner().invoke(app, ["check", str(root / "run"), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["ok"] is True
    bad = shared_dir / "reference" / "examples" / "broken" / "bad_train.toml"
    res = CliRunner().invoke(app, ["check", str(bad), "--arch", "anima", "--dataset-config", str(bad.with_name("bad_dataset.toml"))])
    assert res.exit_code == 1
    res = CliRunner().invoke(app, ["check", str(bad)])
    assert res.exit_code == 2


def test_probe_failure_is_reported(world, tmp_path: Path) -> None:
    """A checkout that is not sd-scripts: the probe's failure is an error, not a crash."""
    root, ds, models = world
    write_run_config("anima", ds, root / "run", models=models["anima"])
    fake = tmp_path / "not-sd-scripts"
    fake.mkdir()
    rep = check_run(root / "run", sd_scripts=fake)
    assert any(i.area == "trainer" for i in rep.errors)
    shutil.rmtree(fake)


def test_run_check_sees_dataset_options_that_clash_with_caching(world) -> None:
    # `check RUN` must judge the dataset against the run's own train.toml, as `check --config` does
    root, ds, models = world
    write_run_config("anima", ds, root / "run", models=models["anima"])
    flat, _ = read_train_toml(root / "run" / "train.toml")
    assert flat.get("cache_text_encoder_outputs") or flat.get("cache_text_encoder_outputs_to_disk")
    ds_toml = root / "run" / "dataset.toml"
    doc = tomllib.loads(ds_toml.read_text(encoding="utf-8"))
    doc["datasets"][0]["subsets"][0]["shuffle_caption"] = True
    ds_toml.write_text(tomli_w.dumps(doc), encoding="utf-8")
    assert "shuffle_caption cannot be used with cache_text_encoder_outputs" in _msgs(check_run(root / "run"))


def test_check_of_a_broken_run_json_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "run.json").write_text("{not json", encoding="utf-8")
    res = CliRunner().invoke(app, ["check", str(tmp_path)])
    assert res.exit_code == 2
    assert "run.json is not valid JSON" in " ".join(res.output.split())
