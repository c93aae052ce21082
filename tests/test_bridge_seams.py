"""train_bridge's seams: one Trainer per family, one RunSpec, crops and training agree, handoff checks."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest
from bridge_helpers import make_dataset, make_models, write_safetensors
from PIL import Image
from typer.testing import CliRunner

from prep.buckets import bucket_spec_for, write_bucket_record
from prep.layout import LayoutOptions, layout_dataset
from train_bridge import check as check_mod
from train_bridge import config as config_mod
from train_bridge.check import check_run, preflight
from train_bridge.cli import app
from train_bridge.config import ConfigError, write_run_config
from train_bridge.estimate import estimate_run
from train_bridge.runspec import RunSpec, RunSpecError
from train_bridge.trainers import REGISTRY, TRAINERS, Trainer, trainer_for

BRIDGE = Path(config_mod.__file__).parent


@pytest.fixture()
def world(tmp_path: Path):
    ds = make_dataset(tmp_path, repeats=2, n_reg=0, sizes=[(1024, 1024), (832, 1216), (1216, 832)])
    return tmp_path, ds, make_models(tmp_path / "models")


# -- 1. the Trainer seam --------------------------------------------------------------------------


def test_every_arch_has_its_trainer_behind_one_protocol() -> None:
    for spec in REGISTRY.values():
        t = trainer_for(spec)
        assert t.name == spec.trainer and TRAINERS[spec.trainer] is t
        for attr in Trainer.__annotations__:
            assert hasattr(t, attr), (t.name, attr)
        for meth in ("preset", "dataset_toml", "commands", "count_batches", "check_train", "check_dataset_doc", "bucket_plan"):
            assert callable(getattr(t, meth))


@pytest.mark.parametrize("module", ["config.py", "check.py", "estimate.py", "presets.py", "oom.py"])
def test_no_trainer_or_family_branches_outside_the_trainers(module: str) -> None:
    """`spec.trainer == ...` / `spec.family == ...` / `trainer == "musubi-tuner"` live only in trainers/."""
    names = {"musubi-tuner", "sd-scripts", "anima", "flux", "sdxl", "sd3", "wan21", "wan22", *REGISTRY}
    tree = ast.parse((BRIDGE / module).read_text(encoding="utf-8"))
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for side in [node.left, *node.comparators]:
                consts = side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [side]
                if any(isinstance(c, ast.Constant) and c.value in names for c in consts):
                    bad.append(ast.unparse(node))
    assert bad == []


def test_no_config_estimate_import_cycle() -> None:
    for module in ("estimate.py", "check.py", "oom.py"):
        src = (BRIDGE / module).read_text(encoding="utf-8")
        assert "train_bridge.config" not in src and "import config" not in src, module
    assert not hasattr(config_mod, "load_run") and not hasattr(config_mod, "load_train_toml")


# -- 2. one RunSpec --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,needle",
    [
        ("{not json", "is not valid JSON"),
        ('{"version": 2, "trainer": "sd-scripts"}', "unsupported version 2"),
        ('{"version": 1, "trainer": "sd-scripts", "arch": "anima", "output_dir": "o"}', "no commands"),
        ('{"version": 1, "trainer": "sd-scripts", "arch": "anima", "commands": [{"name": "train", "script": "x.py", "args": []}]}', "output_dir is missing"),
        ('{"version": 1, "trainer": "sd-scripts", "arch": "nope", "output_dir": "o", "commands": [{"name": "train", "script": "x.py", "args": []}]}', "unknown architecture"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_a_malformed_run_json_is_one_clear_error_everywhere(tmp_path: Path, text: str, needle: str) -> None:
    (tmp_path / "run.json").write_text(text, encoding="utf-8")
    for fn in (estimate_run, check_run, preflight):
        with pytest.raises(RunSpecError, match=needle) as ei:
            fn(tmp_path)
        assert str(tmp_path / "run.json") in str(ei.value)
    for cmd in ("check", "estimate"):
        res = CliRunner().invoke(app, [cmd, str(tmp_path)])
        out = " ".join(res.output.split())
        assert res.exit_code == 2, (cmd, res.output)
        assert "run.json" in out and needle.split()[0] in out


def test_config_writes_what_runspec_loads_and_the_config_file_equals_form_is_read(world) -> None:
    root, ds, models = world
    rc = write_run_config("anima", ds, root / "run", models=models["anima"])
    spec = RunSpec.load(root / "run")
    assert spec.raw == rc.run and spec.arch_spec().name == "anima"
    want = estimate_run(root / "run", budget=None)
    # the `--config_file=PATH` form and a path without .toml (sd-scripts appends it)
    raw = json.loads((root / "run" / "run.json").read_text())
    args = raw["commands"][0]["args"]
    i = args.index("--config_file")
    args[i : i + 2] = ["--config_file=" + args[i + 1].removesuffix(".toml")]
    (root / "run" / "run.json").write_text(json.dumps(raw))
    got = estimate_run(root / "run", budget=None)
    assert (got.steps_per_epoch, got.total_steps) == (want.steps_per_epoch, want.total_steps)
    assert check_run(root / "run").ok


# -- 3. crops and training agree -------------------------------------------------------------------


def _cropped_dataset(root: Path, arch: str, resolution: int, *, n: int = 4) -> Path:
    """What `prep crop` then `prep layout` leave: bucket-sized images and the bucket record."""
    bs = bucket_spec_for(arch, resolution)
    src = root / "cropped"
    src.mkdir(parents=True)
    sizes = [(resolution, resolution), *sorted(b for b in bs.buckets if b[0] != b[1])[: n - 1]]
    for i, (w, h) in enumerate(sizes):
        Image.new("RGB", (w, h), (40 * i, 90, 40)).save(src / f"c{i}.png")
        (src / f"c{i}.txt").write_text("a woman", encoding="utf-8")
    out = root / "dataset_cropped"
    layout_dataset(src, out, LayoutOptions(trigger="sage_character", repeats=2))
    write_bucket_record(out, bs, arch=arch, written_by="prep crop")
    return out


def test_config_trains_at_the_crops_resolution_and_check_finds_no_rebucketing(world) -> None:
    root, _, models = world
    ds = _cropped_dataset(root, "anima", 1024)
    rc = write_run_config("anima", ds, root / "run", models=models["anima"], preset="16gb")  # the preset trains at 768
    d = rc.dataset
    assert d["datasets"][0]["resolution"] == 1024
    assert (d["general"]["bucket_reso_steps"], d["general"]["min_bucket_reso"], d["general"]["max_bucket_reso"]) == (64, 256, 2048)
    assert "buckets.json" in rc.run["derived"]["crop_record"]
    assert any("larger than preset 16gb" in w for w in rc.warnings)
    rep = check_run(root / "run")
    assert rep.ok and rep.rebucketed == []
    assert any("fit their 1024x1024 bucket exactly" in i.message for i in rep.items)


def test_a_different_resolution_is_refused_naming_the_record_and_the_flag(world) -> None:
    root, _, models = world
    ds = _cropped_dataset(root, "anima", 1024)
    with pytest.raises(ConfigError) as ei:
        write_run_config("anima", ds, root / "run", models=models["anima"], overrides=["dataset.resolution=768"])
    text = str(ei.value)
    assert str(ds / "buckets.json") in text and "--ignore-crop-record" in text and "768x768" in text
    rc = write_run_config("anima", ds, root / "run", models=models["anima"], overrides=["dataset.resolution=768"], ignore_crop_record=True)
    assert rc.dataset["datasets"][0]["resolution"] == 768 and "ignored" in rc.run["derived"]["crop_record"]
    # then check lists every image the trainer re-buckets: warning with the count, --json with all
    rep = check_run(root / "run")
    assert len(rep.rebucketed) == 4 and {r["action"] for r in rep.rebucketed} <= {"resize", "resize+crop", "crop"}
    assert any(w.message.startswith("4 of 4 image(s) are resized or cropped") for w in rep.warnings)
    res = CliRunner().invoke(app, ["check", str(root / "run"), "--json"])
    assert len(json.loads(res.stdout)["rebucketed"]) == 4
    # the same through the CLI flag
    m = models["anima"]
    args = ["config", "anima", str(ds), "-o", str(root / "run2"), "--dit", m["dit"], "--qwen3", m["qwen3"], "--vae", m["vae"], "--set", "dataset.resolution=768"]
    assert CliRunner().invoke(app, args).exit_code == 2
    assert CliRunner().invoke(app, [*args, "--ignore-crop-record"]).exit_code == 0


def test_a_record_for_another_bucket_family_is_refused(world) -> None:
    root, _, models = world
    ds = _cropped_dataset(root, "wan21-t2v", 768)
    with pytest.raises(ConfigError, match="musubi buckets.*cannot train at"):
        write_run_config("anima", ds, root / "run", models=models["anima"])
    rc = write_run_config("wan21-t2v", ds, root / "run_wan", models=models["wan21-t2v"])
    assert rc.dataset["general"]["resolution"] == [768, 768] and rc.dataset["general"]["bucket_no_upscale"] is False


def test_check_reports_the_default_rebucketing_of_uncropped_images(world) -> None:
    root, ds, models = world  # 1024x1024, 832x1216, 1216x832 sources; the 16gb preset trains at 768
    write_run_config("anima", ds, root / "run", models=models["anima"])
    rep = check_run(root / "run")
    assert len(rep.rebucketed) == 3 and all(r["action"].startswith("resize") for r in rep.rebucketed)
    assert rep.rebucketed[0]["size"] == [1024, 1024] and rep.rebucketed[0]["bucket"] == [768, 768]


# -- 4. handoff checks -----------------------------------------------------------------------------


def test_network_dim_alone_keeps_the_alpha_ratio(world) -> None:
    root, ds, models = world
    rc = write_run_config("sdxl", ds, root / "a", models=models["sdxl"], overrides=["network_dim=8"])  # 16gb: 32/16
    assert (rc.train["train"]["network_dim"], rc.train["train"]["network_alpha"]) == (8, 4.0)
    rc = write_run_config("sdxl", ds, root / "b", models=models["sdxl"], overrides=["network_dim=8", "network_alpha=8"])
    assert rc.train["train"]["network_alpha"] == 8.0
    rc = write_run_config("wan22-t2v", ds, root / "c", models=models["wan22-t2v"], overrides=["network_dim=16"])  # experts 8/8, 42/42
    assert rc.train["train_high"]["network_alpha"] == 16.0 and rc.train["train_low"]["network_alpha"] == 16.0


def test_sd3_needs_text_encoders_in_the_checkpoint_or_as_files(world) -> None:
    root, ds, models = world
    bare = write_safetensors(root / "models" / "sd3_bare.safetensors", {"model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight": [2, 2]})
    with pytest.raises(ConfigError) as ei:
        write_run_config("sd3", ds, root / "run", models={"checkpoint": str(bare)})
    assert all(f in str(ei.value) for f in ("--clip-l", "--clip-g", "--t5xxl")) and "sd3_bare.safetensors" in str(ei.value)
    te = make_models(root / "te")["flux"]
    clip_g = write_safetensors(root / "te" / "clip_g.safetensors", {"text_model.encoder.layers.0.mlp.fc1.weight": [2, 2]})
    rc = write_run_config("sd3", ds, root / "run", models={"checkpoint": str(bare), "clip_l": te["clip_l"], "clip_g": str(clip_g), "t5xxl": te["t5xxl"]})
    assert rc.train["train"]["clip_g"] == str(clip_g)
    assert preflight(root / "run") == []
    write_run_config("sd3", ds, root / "run", models=models["sd3"])  # SD3.5 with the encoders inside
    assert preflight(root / "run") == []


def test_anima_refuses_inference_only_attention(world) -> None:
    root, ds, models = world
    with pytest.raises(ConfigError, match="attn_mode.*inference only"):
        write_run_config("anima", ds, root / "run", models=models["anima"], overrides=["attn_mode=sageattn"])
    rc = write_run_config("anima", ds, root / "run", models=models["anima"], overrides=["attn_mode=xformers"])
    assert rc.train["train"]["split_attn"] is True


def test_wan_precision_contradicting_the_dit_is_refused(world) -> None:
    root, ds, models = world  # the Wan 2.2 DiTs are F16
    with pytest.raises(ConfigError) as ei:
        write_run_config("wan22-t2v", ds, root / "run", models=models["wan22-t2v"], overrides=["mixed_precision=bf16"])
    text = str(ei.value)
    assert "'bf16'" in text and "'fp16'" in text and "low_noise_14B_fp16.safetensors" in text
    rc = write_run_config("wan22-t2v", ds, root / "run", models=models["wan22-t2v"], overrides=["mixed_precision=fp16"])
    assert rc.train["train_low"]["mixed_precision"] == "fp16"


def test_relative_model_paths_resolve_against_the_working_folder(world, monkeypatch: pytest.MonkeyPatch) -> None:
    root, ds, models = world
    monkeypatch.chdir(root)
    m = {"dit": "models/anima.safetensors", "qwen3": "models/not_downloaded_yet.safetensors", "vae": "models/qwen_image_vae.safetensors"}
    rc = write_run_config("anima", ds, root / "run", models=m)
    t = rc.train["train"]
    assert t["qwen3"] == str(root / "models" / "not_downloaded_yet.safetensors")  # a path, not a Hub id
    assert rc.run["derived"]["models"]["qwen3"].startswith("local path")
    assert any("qwen3: " in i.message and "does not exist" in i.message for i in preflight(root / "run"))
    rc = write_run_config("anima", ds, root / "run", models={**m, "qwen3": "Qwen/Qwen3-0.6B"})
    assert rc.train["train"]["qwen3"] == "Qwen/Qwen3-0.6B" and rc.run["derived"]["models"]["qwen3"].startswith("Hugging Face id")


def test_config_gives_the_step_budget_warning_estimate_gives(world) -> None:
    root, ds, models = world
    rc = write_run_config("anima", ds, root / "run", models=models["anima"], repeats=150)  # 3 x 150 x 10 epochs = 4500 > 4000
    est = estimate_run(root / "run")
    over = [w for w in est.warnings if "steps guides give for anima" in w and "overfit" in w]
    assert over and over[0] in rc.warnings  # the range recorded in run.json, the same words
    capped = estimate_run(root / "run", budget=1000)
    budget = [w for w in capped.warnings if "above the budget" in w]
    assert budget and not [w for w in est.warnings if "above the budget" in w]


# -- 5. preflight ------------------------------------------------------------------------------------


def test_preflight_is_the_load_time_subset_of_check(world) -> None:
    root, ds, models = world
    write_run_config("anima", ds, root / "run", models=models["anima"])
    assert preflight(root / "run") == []
    Path(models["anima"]["vae"]).write_bytes(b"<html>404</html>")
    shutil.rmtree(next((ds / "img").iterdir()))
    errs = preflight(root / "run")
    msgs = [i.message for i in errs]
    assert any("vae:" in m and "not a .safetensors file" in m for m in msgs)
    assert any("folder does not exist" in m for m in msgs)
    full = {i.message for i in check_run(root / "run").errors}
    assert set(msgs) <= full  # the same functions produce both
    assert check_mod.preflight is preflight
