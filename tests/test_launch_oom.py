"""OOM advice depends on the config; retry copies change only what they say."""

from __future__ import annotations

import sys

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib
from pathlib import Path

import tomli_w

from train_bridge.oom import advise, preset_step_down, write_retry_configs


def _write(tmp: Path, train: dict, ds: dict) -> tuple[Path, Path]:
    t, d = tmp / "train.toml", tmp / "dataset.toml"
    t.write_text(tomli_w.dumps(train))
    d.write_text(tomli_w.dumps(ds))
    return t, d


DS = {
    "general": {"caption_extension": ".txt", "min_bucket_reso": 256, "max_bucket_reso": 1024},
    "datasets": [{"resolution": 1024, "subsets": [{"image_dir": "/x", "num_repeats": 1}]}],
}


def test_a_lean_config_gets_block_swap_then_resolution_then_dim(tmp_path: Path) -> None:
    train = {
        "training": {"gradient_checkpointing": True, "train_batch_size": 1, "cache_latents_to_disk": True,
                     "cache_text_encoder_outputs_to_disk": True, "network_train_unet_only": True},
        "network": {"network_dim": 32, "network_alpha": 16},
    }
    t, d = _write(tmp_path, train, DS)
    adv = advise("anima", "sd-scripts", t, d)
    assert [s.key for s in adv.suggestions] == ["blocks_to_swap", "resolution", "network_dim"]
    swap, res, dim = adv.suggestions
    assert (swap.current, swap.proposed) == (0, 8)
    assert (res.current, res.proposed, res.file) == (1024, 768, "dataset.toml")
    assert dim.changes() == {"network_dim": 16, "network_alpha": 8}  # alpha/dim ratio kept
    assert dim.set_args() == ["--set network_dim=16", "--set network_alpha=8"]


def test_block_swap_grows_to_the_architecture_limit_and_respects_offload(tmp_path: Path) -> None:
    t, d = _write(tmp_path, {"blocks_to_swap": 24, "gradient_checkpointing": True}, DS)
    swap = next(s for s in advise("anima", "sd-scripts", t, d).suggestions if s.key == "blocks_to_swap")
    assert swap.proposed == 26
    t, d = _write(tmp_path, {"blocks_to_swap": 26, "gradient_checkpointing": True}, DS)
    assert "blocks_to_swap" not in [s.key for s in advise("anima", "sd-scripts", t, d).suggestions]
    t, d = _write(tmp_path, {"cpu_offload_checkpointing": True, "gradient_checkpointing": True}, DS)
    swap = next(s for s in advise("anima", "sd-scripts", t, d).suggestions if s.key == "blocks_to_swap")
    assert swap.also == {"cpu_offload_checkpointing": False}
    t, d = _write(tmp_path, {"gradient_checkpointing": True}, DS)
    assert "blocks_to_swap" not in [s.key for s in advise("sdxl", "sd-scripts", t, d).suggestions]


def test_te_cache_advice_adds_unet_only_and_is_skipped_with_shuffle(tmp_path: Path) -> None:
    t, d = _write(tmp_path, {"gradient_checkpointing": True, "cache_latents_to_disk": True}, DS)
    te = next(s for s in advise("anima", "sd-scripts", t, d).suggestions if s.key == "cache_text_encoder_outputs_to_disk")
    assert te.also == {"network_train_unet_only": True}
    t, d = _write(tmp_path, {"gradient_checkpointing": True, "shuffle_caption": True}, DS)
    assert "cache_text_encoder_outputs_to_disk" not in [s.key for s in advise("anima", "sd-scripts", t, d).suggestions]


def test_host_oom_advice(tmp_path: Path) -> None:
    t, d = _write(tmp_path, {"cache_latents": True, "blocks_to_swap": 16, "persistent_data_loader_workers": True}, DS)
    adv = advise("anima", "sd-scripts", t, d, kind="host")
    keys = [s.key for s in adv.suggestions]
    assert keys == ["max_data_loader_n_workers", "persistent_data_loader_workers", "cache_latents_to_disk", "blocks_to_swap"]
    assert adv.suggestions[-1].proposed == 8 and "RAM" in adv.headline


def test_retry_copy_changes_resolution_everywhere_it_is_read(tmp_path: Path) -> None:
    train = {"training": {"resolution": "1024,1024", "gradient_checkpointing": True}}
    ds = {"general": {"resolution": 1024, "min_bucket_reso": 1024, "max_bucket_reso": 2048}, "datasets": [{"subsets": [{"image_dir": "/x"}]}]}
    t, d = _write(tmp_path, train, ds)
    res = next(s for s in advise("sdxl", "sd-scripts", t, d).suggestions if s.key == "resolution")
    new_t, new_d, applied = write_retry_configs(t, d, [res], tmp_path, "oom-retry1")
    assert applied == {"dataset.resolution": 768}
    assert new_t is not None and new_d is not None
    got_t = tomllib.loads(new_t.read_text())
    got_d = tomllib.loads(new_d.read_text())
    assert got_t["training"]["resolution"] == "768,768"  # string in the training TOML
    assert got_d["general"]["resolution"] == 768 and got_d["general"]["min_bucket_reso"] == 768
    assert tomllib.loads(t.read_text()) == train and tomllib.loads(d.read_text()) == ds


def test_preset_step_down_moves_only_memory_levers_that_are_leaner(tmp_path: Path) -> None:
    train = {"training": {"gradient_checkpointing": True, "learning_rate": 3e-4}, "network": {"network_dim": 32, "network_alpha": 16}}
    ds = {"general": {"min_bucket_reso": 256}, "datasets": [{"resolution": 1024, "batch_size": 2, "subsets": [{"image_dir": "/x"}]}]}
    t, d = _write(tmp_path, train, ds)
    name, sug = preset_step_down("anima", "24gb", t, d)  # anima 16gb: 768 px, batch 1, dim 20, no swap
    assert name == "16gb"
    got = {s.key: s.proposed for s in sug}
    assert got == {"resolution": 768, "batch_size": 1, "network_dim": 20}
    dim = next(s for s in sug if s.key == "network_dim")
    assert dim.also == {"network_alpha": 10}  # alpha/dim ratio kept (LR stays right)
    batch = next(s for s in sug if s.key == "batch_size")
    assert batch.file == "dataset.toml" and batch.set_args() == ["--set dataset.batch_size=1", "--set gradient_accumulation_steps=2"]
    assert preset_step_down("anima", "8gb", t, d) is None  # already the smallest
    assert preset_step_down("anima", "custom", t, d) is None
