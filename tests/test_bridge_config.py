"""train_bridge config: golden configs per architecture and preset, and the §8 traps avoided.

Goldens live in tests/golden/bridge/<arch>_<preset>.json (every written file, paths made
relative). Regenerate with LORAPREP_UPDATE_GOLDEN=1 after a deliberate change; the same
configs were accepted by the real sd-scripts 48d368fa / musubi-tuner 30c658c4 parsers
(tests/test_bridge_check_real.py).
"""

from __future__ import annotations

import sys

import datetime as dt
import json
import os
if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib
from pathlib import Path

import pytest
from bridge_helpers import make_dataset, make_models, write_safetensors
from typer.testing import CliRunner

from train_bridge.cli import app
from train_bridge.config import ConfigError, write_run_config
from train_bridge.presets import PRESETS
from train_bridge.trainers import REGISTRY

GOLDEN = Path(__file__).parent / "golden" / "bridge"
NOW = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, dict[str, str]]]:
    root = tmp_path_factory.mktemp("bridge")
    ds = make_dataset(root, repeats=3, n_reg=5)
    return root, ds, make_models(root / "models")


def _files(run: Path, root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(run.iterdir()):
        if p.is_file():
            out[p.name] = p.read_text(encoding="utf-8").replace(str(root), "<ROOT>")
    return out


@pytest.mark.parametrize("arch", list(REGISTRY))
@pytest.mark.parametrize("preset", PRESETS)
def test_golden(world, arch: str, preset: str) -> None:
    root, ds, models = world
    run = root / "runs" / f"{arch}_{preset}"
    write_run_config(arch, ds, run, models=models[arch], preset=preset, now=NOW)
    got = _files(run, root)
    path = GOLDEN / f"{arch}_{preset}.json"
    assert_golden(path, got)


def assert_golden(path: Path, got: dict[str, str]) -> None:
    """Compare with the golden file; only LORAPREP_UPDATE_GOLDEN=1 writes one (a missing one fails)."""
    if os.environ.get("LORAPREP_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    if not path.exists():
        pytest.fail(f"missing golden {path}: write it deliberately with LORAPREP_UPDATE_GOLDEN=1 and review the diff")
    want = json.loads(path.read_text(encoding="utf-8"))
    assert got == want


def test_a_missing_golden_fails_and_is_not_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LORAPREP_UPDATE_GOLDEN", raising=False)
    monkeypatch.delenv("CI", raising=False)
    path = tmp_path / "absent.json"
    with pytest.raises(pytest.fail.Exception, match="missing golden"):
        assert_golden(path, {"a": "b"})
    assert not path.exists()


def _run(world, arch: str, name: str, **kw):
    root, ds, models = world
    return write_run_config(arch, ds, root / "t" / name, models=kw.pop("models", models[arch]), now=NOW, **kw)


def test_sd_scripts_traps_avoided(world) -> None:
    rc = _run(world, "anima", "anima")
    train = tomllib.loads((rc.run_dir / "train.toml").read_text())
    flat = {k: v for sec in train.values() for k, v in sec.items()}
    assert flat["cache_text_encoder_outputs"] and flat["network_train_unet_only"] is True
    assert "resolution" not in flat and isinstance(flat["network_alpha"], float)
    assert flat["save_state"] is True and flat["output_dir"].startswith(str(rc.run_dir))
    assert flat["logging_dir"].startswith(str(rc.run_dir)) and flat["mixed_precision"] == "bf16"
    assert not set(flat) & {"noise_offset", "fp8_base", "min_timestep", "max_timestep"}
    ds = tomllib.loads((rc.run_dir / "dataset.toml").read_text())
    assert ds["general"]["caption_extension"] == ".txt"
    assert ds["general"]["bucket_reso_steps"] % 16 == 0
    subs = ds["datasets"][0]["subsets"]
    assert [s["num_repeats"] for s in subs] == [3, 1] and subs[1]["is_reg"] is True
    prompts = (rc.run_dir / "sample_prompts.txt").read_text()
    assert all(line.startswith("sage_character") for line in prompts.splitlines() if not line.startswith("#"))
    run = json.loads((rc.run_dir / "run.json").read_text())
    assert run["commands"] == [
        {
            "name": "train",
            "script": "anima_train_network.py",
            "args": ["--config_file", str(rc.run_dir / "train.toml"), "--dataset_config", str(rc.run_dir / "dataset.toml")],
            "accelerate": True,
            "accelerate_args": ["--num_cpu_threads_per_process", "1", "--mixed_precision", "bf16"],
        }
    ]
    for key in ("version", "trainer", "arch", "preset", "created", "dataset", "trigger", "output_dir", "output_name", "logging_dir", "save_state", "max_train_steps", "max_train_epochs", "estimate", "asked", "derived"):
        assert key in run
    assert run["max_train_steps"] is None and run["max_train_epochs"] == 10


def test_set_overrides_are_typed_and_routed(world) -> None:
    rc = _run(world, "sdxl", "sdxl", overrides=["learning_rate=5e-5", "network_dim=8", "resolution=896,1152", "train_batch_size=2", "dataset.flip_aug=true"])
    assert rc.train["train"]["learning_rate"] == 5e-5 and rc.train["train"]["network_dim"] == 8
    d = rc.dataset["datasets"][0]
    assert d["resolution"] == [896, 1152] and d["batch_size"] == 2
    assert d["subsets"][0]["flip_aug"] is True
    assert "resolution" not in rc.train["train"]


@pytest.mark.parametrize(
    "arch,overrides,msg",
    [
        ("anima", ["max_train_epoch=3"], "did you mean max_train_epochs"),
        ("anima", ["noise_offset=0.05"], "never uses it"),
        ("flux", ["mixed_precision=fp16"], "bf16"),
        ("anima", ["blocks_to_swap=30"], "at most 26"),
        ("sdxl", ["cache_text_encoder_outputs=true", "network_train_unet_only=false"], "network_train_unet_only"),
        ("sdxl", ["dataset.caption_dropout_rate=0.1"], "incompatible with cache_text_encoder_outputs"),
        ("anima", ["dataset.bucket_reso_steps=40"], "divisible by 16"),
        ("anima", ["caption_extension=.caption"], ".txt"),
        ("wan22-t2v", ["dataset.target_frames=1,20"], "N\\*4\\+1"),
        ("anima", ["dataset.resolution=4096", "dataset.max_bucket_reso=1024"], "max_bucket_reso"),
    ],
)
def test_rejected_overrides(world, arch: str, overrides: list[str], msg: str) -> None:
    with pytest.raises(ConfigError, match=msg):
        _run(world, arch, "bad", overrides=overrides)


def test_training_the_text_encoder_drops_te_caching(world) -> None:
    rc = _run(world, "sdxl", "sdxl_te", overrides=["network_train_unet_only=false"])
    t = rc.train["train"]
    assert t["network_train_unet_only"] is False and "cache_text_encoder_outputs" not in t
    assert "cache_text_encoder_outputs" in rc.run["derived"]


def test_missing_models_are_named(world) -> None:
    with pytest.raises(ConfigError) as ei:
        _run(world, "flux", "nomodels", models={"dit": "/x/flux.safetensors"})
    text = str(ei.value)
    assert "clip_l" in text and "t5xxl" in text and "ae" in text


def test_wan22_two_experts_and_three_steps(world) -> None:
    rc = _run(world, "wan22-i2v", "wan22i")
    names = [c["name"] for c in rc.run["commands"]]
    assert names == ["cache_latents", "cache_text_encoder", "train_high", "train_low"]
    lat = rc.run["commands"][0]
    assert lat["script"] == "src/musubi_tuner/wan_cache_latents.py" and "--i2v" in lat["args"] and not lat["accelerate"]
    hi, lo = rc.train["train_high"], rc.train["train_low"]
    assert (hi["min_timestep"], hi["max_timestep"], lo["min_timestep"], lo["max_timestep"]) == (900, 1000, 0, 900)
    assert hi["preserve_distribution_shape"] and lo["preserve_distribution_shape"]
    assert hi["dit"].endswith("high_noise_14B_fp16.safetensors") and lo["dit"].endswith("low_noise_14B_fp16.safetensors")
    assert hi["task"] == "i2v-A14B" and hi["mixed_precision"] == "fp16"  # from the DiT's F16 header
    assert (hi["network_dim"], lo["network_dim"]) == (8, 42) and hi["discrete_flow_shift"] == 5.0
    ds = rc.dataset
    assert set(ds["general"]) == {"resolution", "caption_extension", "batch_size", "enable_bucket", "bucket_no_upscale"}
    caches = [d["cache_directory"] for d in ds["datasets"]]
    assert len(set(caches)) == len(caches) and all(c.startswith(str(rc.run_dir)) for c in caches)
    assert any("regularisation" in w for w in rc.warnings)


def test_wan21_i2v_caches_with_clip_and_t2v_boundary(world) -> None:
    rc = _run(world, "wan21-i2v", "wan21i")
    lat = rc.run["commands"][0]["args"]
    assert "--clip" in lat and lat[lat.index("--clip") + 1].endswith(".pth")
    rc = _run(world, "wan22-t2v", "wan22t")
    assert rc.train["train_high"]["min_timestep"] == 875 and rc.train["train_low"]["max_timestep"] == 875


def test_wan_precision_and_size_follow_the_dit(world, tmp_path: Path) -> None:
    root, _, models = world
    small = write_safetensors(tmp_path / "wan2.1_t2v_1.3B_fp16.safetensors", {f"blocks.{i}.self_attn.q.weight": [2, 2] for i in range(30)}, "F16")
    rc = _run(world, "wan21-t2v", "wan13", models={**models["wan21-t2v"], "dit": str(small)}, preset="8gb")
    t = rc.train["train"]
    assert t["task"] == "t2v-1.3B" and t["mixed_precision"] == "fp16" and t["blocks_to_swap"] <= 29
    assert rc.run["commands"][-1]["accelerate_args"][-1] == "fp16"


def test_video_dataset_frames(world, tmp_path: Path) -> None:
    vids = tmp_path / "vids"
    vids.mkdir()
    (vids / "clip.mp4").write_bytes(b"\0" * 16)
    (vids / "clip.txt").write_text("ohwx walking")
    _, _, models = world
    rc = write_run_config("wan21-t2v", vids, tmp_path / "run", models=models["wan21-t2v"], trigger="ohwx", overrides=["dataset.target_frames=1,17,33", "dataset.source_fps=16"], now=NOW)
    d = rc.dataset["datasets"][0]
    assert d["video_directory"] == str(vids) and d["target_frames"] == [1, 17, 33]
    assert d["source_fps"] == 16.0 and isinstance(d["source_fps"], float)


def test_cli_config_and_dry_run(world, tmp_path: Path) -> None:
    root, ds, models = world
    m = models["anima"]
    args = ["config", "anima", str(ds), "-o", str(tmp_path / "run"), "--dit", m["dit"], "--qwen3", m["qwen3"], "--vae", m["vae"], "--preset", "12gb"]
    res = CliRunner().invoke(app, args + ["--dry-run"])
    assert res.exit_code == 0, res.output
    assert not (tmp_path / "run").exists()
    res = CliRunner().invoke(app, args + ["--json"])
    assert res.exit_code == 0
    assert json.loads(res.stdout)["preset"] == "12gb"
    res = CliRunner().invoke(app, args + ["--set", "max_train_epoch=3"])
    assert res.exit_code == 2 and "did you mean max_train_epochs" in " ".join(res.output.split())
