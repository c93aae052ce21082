"""`train_bridge config`: samples every N steps with a checkpoint at each, the default sample
prompt from the dataset's tags, the use-case presets and the per-architecture step range."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from bridge_helpers import make_dataset, make_models
from typer.testing import CliRunner

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from train_bridge import presets
from train_bridge.cli import app
from train_bridge.config import ConfigError, write_run_config
from train_bridge.options import load_option_list
from train_bridge.trainers import get_arch

CAPTIONS = [
    "sage_character, 1girl, red hair, smile, outdoors",
    "sage_character, 1girl, red hair, smile",
    "sage_character, 1girl, red hair, a long sentence that is not a tag at all",
    "sage_character, 1girl, blue dress, --w 4096",
    "sage_character, red hair, woman",
]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("uc")
    ds = make_dataset(root, repeats=3, n_reg=0)
    caps = sorted((ds / "img").rglob("*.txt"))
    for i, cap in enumerate(caps):
        cap.write_text(CAPTIONS[i % len(CAPTIONS)], encoding="utf-8")
    return root, ds, make_models(root / "models")


def flat(run: Path, name: str = "train.toml") -> dict:
    out: dict = {}
    for section in tomllib.loads((run / name).read_text(encoding="utf-8")).values():
        out.update(section)
    return out


def test_samples_every_n_steps_with_a_checkpoint_at_each(world) -> None:
    root, ds, models = world
    rc = write_run_config("anima", ds, root / "r1", models=models["anima"], repeats=60)  # 11 images x 60 x 10 epochs
    t = flat(root / "r1")
    total = rc.run["estimate"]["total_steps"]
    assert total >= 4 * 250 and t["sample_every_n_steps"] == 250 == presets.sample_every("16gb", total)
    assert t["save_every_n_steps"] == 250 and "sample_every_n_epochs" not in t and "save_every_n_epochs" not in t
    assert t["sample_prompts"] == str(root / "r1" / "sample_prompts.txt") and t["save_state"] is True
    opts = load_option_list(get_arch("anima").options_key)
    assert all(opts.get(k) is not None for k in t), [k for k in t if opts.get(k) is None]  # only keys the parser accepts
    assert rc.run["derived"]["sampling"]["sample_every_n_steps"] == 250
    # 8 GB samples half as often; a short run still gets four sampling points
    assert flat(write_run_config("anima", ds, root / "r2", models=models["anima"], preset="8gb", repeats=60).run_dir)["sample_every_n_steps"] == 500
    short = write_run_config("anima", ds, root / "r3", models=models["anima"], repeats=1)
    n = flat(root / "r3")["sample_every_n_steps"]
    assert short.run["estimate"]["total_steps"] // n >= 4 and n in (1, 2, 5, 10, 20, 25, 50, 100, 125, 200)


def test_what_set_asks_for_sampling_wins(world) -> None:
    root, ds, models = world
    write_run_config("sdxl", ds, root / "s1", models=models["sdxl"], overrides=["sample_every_n_epochs=2"])
    t = flat(root / "s1")
    assert t["sample_every_n_epochs"] == 2 and "sample_every_n_steps" not in t and t["save_every_n_epochs"] == 1
    write_run_config("sdxl", ds, root / "s2", models=models["sdxl"], overrides=["sample_every_n_steps=100", "save_every_n_epochs=2"])
    t = flat(root / "s2")
    assert t["sample_every_n_steps"] == 100 and t["save_every_n_epochs"] == 2 and "save_every_n_steps" not in t
    # musubi-tuner's Wan runs sample nothing by default: no sampling keys appear
    write_run_config("wan21-t2v", ds, root / "s3", models=models["wan21-t2v"])
    assert not any(k.startswith("sample_") for k in flat(root / "s3"))


def test_default_sample_prompt_is_the_trigger_and_the_commonest_tags(world) -> None:
    root, ds, models = world
    write_run_config("anima", ds, root / "p1", models=models["anima"])
    lines = [ln for ln in (root / "p1" / "sample_prompts.txt").read_text(encoding="utf-8").splitlines() if ln and not ln.startswith("#")]
    first = lines[0].split(" --", 1)[0]
    # by count (1girl and red hair 9 of 11, smile 5, outdoors 3), ties alphabetically; no trigger repeat,
    # no sentence, nothing with ' --' (it would start a sample option)
    assert first == "sage_character, 1girl, red hair, smile, outdoors, blue dress, woman"
    assert len(lines) == 3 and all(ln.endswith("--d 42") for ln in lines)  # one seed: samples differ only by step
    write_run_config("anima", ds, root / "p2", models=models["anima"], use_case="face")
    lines = (root / "p2" / "sample_prompts.txt").read_text(encoding="utf-8").splitlines()
    assert any("close-up portrait" in ln for ln in lines) and lines[1].startswith("sage_character, 1girl")


@pytest.mark.parametrize(("arch", "use_case", "dim", "alpha", "lr"), [
    ("sdxl", "anime", 48, 24.0, 8e-5), ("sdxl", "face", 32, 16.0, 1e-4), ("flux", "full-body", 16, 16.0, 1e-4),
    ("anima", "3d-to-photo", 32, 32.0, 1e-4), ("wan21-t2v", "video-ready", 24, 24.0, 8e-5),
])
def test_use_case_sets_dim_alpha_lr(world, arch: str, use_case: str, dim: int, alpha: float, lr: float) -> None:
    root, ds, models = world
    rc = write_run_config(arch, ds, root / f"u_{arch}_{use_case}", models=models[arch], use_case=use_case)
    t = rc.train["train"]
    assert (t["network_dim"], t["network_alpha"], t["learning_rate"]) == (dim, alpha, lr)
    assert rc.run["asked"]["use_case"] == use_case and rc.run["derived"]["use_case"]["source"]


def test_set_beats_the_use_case_and_keeps_its_alpha_ratio(world) -> None:
    root, ds, models = world
    rc = write_run_config("sdxl", ds, root / "u2", models=models["sdxl"], use_case="anime", overrides=["network_dim=64"])
    assert rc.train["train"]["network_dim"] == 64 and rc.train["train"]["network_alpha"] == 32.0
    with pytest.raises(ConfigError, match="unknown use case 'portrait'.*face, full-body"):
        write_run_config("sdxl", ds, root / "u3", models=models["sdxl"], use_case="portrait")


def test_step_range_per_architecture_and_use_case(world) -> None:
    root, ds, models = world
    small = write_run_config("sdxl", ds, root / "w1", models=models["sdxl"], use_case="face", repeats=1)  # 110 steps
    assert any("below the 1500-3000 steps guides give for sdxl face" in w for w in small.warnings)
    big = write_run_config("sdxl", ds, root / "w2", models=models["sdxl"], use_case="face", repeats=40)  # 4400 steps
    w = [x for x in big.warnings if "above the 1500-3000" in x]
    assert w and "max_train_epochs=6" in w[0]  # 3000 // 440 steps per epoch
    ok = write_run_config("flux", ds, root / "w3", models=models["flux"], repeats=20)  # inside FLUX's 500-4000 (ai-toolkit)
    assert not any("steps guides give" in x for x in ok.warnings)
    assert ok.run["derived"]["step_target"] == {"low": 500, "high": 4000, "source": presets.step_target(get_arch("flux")).source}
    assert not any("above the budget of 1000" in x for x in ok.warnings)  # no single 1000-step rule


def test_cli_use_case_estimate_and_tables(world, tmp_path: Path) -> None:
    _root, ds, models = world
    m = models["sdxl"]
    res = CliRunner().invoke(app, ["config", "sdxl", str(ds), "-o", str(tmp_path / "run"), "--checkpoint", m["checkpoint"], "--use-case", "face", "--repeats", "1"])
    assert res.exit_code == 0, res.output
    assert "below the 1500-3000" in res.output
    est = CliRunner().invoke(app, ["estimate", str(tmp_path / "run")])
    assert est.exit_code == 0 and "below the 1500-3000" in est.output
    est = CliRunner().invoke(app, ["estimate", str(tmp_path / "run"), "--max-steps", "50"])
    assert "above the budget of 50" in est.output
    res = CliRunner().invoke(app, ["presets", "--use-cases", "--json"])
    rows = __import__("json").loads(res.stdout)
    assert {r["use_case"] for r in rows} == set(presets.USE_CASES) and all(r["source"] for r in rows)
