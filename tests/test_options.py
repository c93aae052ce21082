"""Option lists (generated from the real parsers) and `--set` validation against them."""

from __future__ import annotations

import csv

import pytest

from train_bridge.options import available, load_option_list
from train_bridge.presets import PRESETS, get_preset
from train_bridge.trainers import REGISTRY, get_arch
from train_bridge.validate import OptionError, check_value, parse_set, validate_flat

ANIMA = "sd-scripts__anima_train_network"


def test_shipped_lists_and_pins() -> None:
    keys = available()
    for spec in REGISTRY.values():
        assert spec.options_key in keys
    ol = load_option_list(ANIMA)
    assert ol.commit.startswith("48d368fa") and ol.script == "anima_train_network.py"
    assert len(ol.options) == 220
    wan = load_option_list("musubi-tuner__wan_train_network")
    assert wan.commit.startswith("30c658c4")
    assert wan.get("task").choices and "t2v-A14B" in wan.get("task").choices
    assert wan.get("timestep_boundary").type == "int"  # CLI rejects 0.875 (reference §6.4)


@pytest.mark.parametrize("script", ["anima", "flux", "sdxl", "sd3"])
def test_matches_reference_v0101_dump(shared_dir, script: str) -> None:
    """Our generator's output equals the reference dump of the same parser (names, choices)."""
    ref_path = shared_dir / "reference" / "trainer-options" / f"parser_{script}_train_network.tsv"
    ref = {r["option"].lstrip("-"): r for r in csv.DictReader(open(ref_path, encoding="utf-8"), delimiter="\t")}
    ol = load_option_list(f"sd-scripts__{script}_train_network")
    ours = {o.flags[0].lstrip("-"): o for o in ol.options.values()}
    assert set(ours) == set(ref)
    for name, r in ref.items():
        assert (r["choices"] or None) == ("|".join(map(str, ours[name].choices)) if ours[name].choices else None), name
        t = r["type"].lower()
        assert ours[name].type == {"path": "path"}.get(t, t), name


def test_unknown_key_did_you_mean() -> None:
    ol = load_option_list(ANIMA)
    with pytest.raises(OptionError) as ei:
        parse_set(["max_train_epoch=10", "text_encoder_lr1=1e-5"], ol)
    msgs = [str(i) for i in ei.value.issues]
    assert "did you mean max_train_epochs" in msgs[0]
    assert "text_encoder_lr" in msgs[1]


def test_type_coercion_and_errors() -> None:
    ol = load_option_list(ANIMA)
    got = parse_set(["learning_rate=1e-4", "network_dim=16", "network_alpha=16", "gradient_checkpointing=yes", "optimizer_args=[\"weight_decay=0.1\", \"betas=[0.9, 0.99]\"]", "lr_warmup_steps=0.1", "network_args=train_llm_adapter=True"], ol)
    assert got["learning_rate"] == 1e-4 and isinstance(got["learning_rate"], float)
    assert got["network_dim"] == 16 and isinstance(got["network_dim"], int)
    assert got["network_alpha"] == 16.0 and isinstance(got["network_alpha"], float)
    assert got["gradient_checkpointing"] is True
    assert got["optimizer_args"] == ["weight_decay=0.1", "betas=[0.9, 0.99]"]
    assert got["lr_warmup_steps"] == 0.1
    assert got["network_args"] == ["train_llm_adapter=True"]
    for bad, why in [("network_dim=1.5", "integer"), ("learning_rate=fast", "number"), ("mixed_precision=bf17", "did you mean 'bf16'"), ("cache_latents=maybe", "true or false"), ("oops", "key=value")]:
        with pytest.raises(OptionError, match=why):
            parse_set([bad], ol)


def test_check_value_catches_toml_traps() -> None:
    ol = load_option_list(ANIMA)
    assert check_value(ol.get("resolution"), 1024)  # must be "1024,1024" in the training TOML
    assert not check_value(ol.get("resolution"), "1024,1024")
    assert check_value(ol.get("learning_rate"), "1e-4")
    assert check_value(ol.get("optimizer_args"), "weight_decay=0.1")
    assert check_value(ol.get("network_dim"), 16.0)
    assert check_value(ol.get("cache_latents"), "true")
    assert not check_value(ol.get("network_alpha"), 16)  # ints are fine where argparse wants float


@pytest.mark.parametrize("arch", list(REGISTRY))
@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_key_is_real(arch: str, preset: str) -> None:
    spec = get_arch(arch)
    ol = load_option_list(spec.options_key)
    pr = get_preset(spec, preset)
    flat = dict(pr.train)
    for e in pr.experts.values():
        flat.update(e)
    issues = validate_flat(flat, ol, ignored=spec.ignored_keys)
    assert issues == [], issues
    if spec.trainer == "sd-scripts":
        assert flat["mixed_precision"] == "bf16"
        if flat.get("cache_text_encoder_outputs"):
            assert flat["network_train_unet_only"] is True
    assert "resolution" not in flat  # only in the dataset TOML
    if flat.get("blocks_to_swap"):
        assert flat["blocks_to_swap"] <= spec.max_blocks_to_swap


def test_unknown_arch_suggests() -> None:
    with pytest.raises(KeyError, match="wan22-t2v"):
        get_arch("wan22_t2v")
