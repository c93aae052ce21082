"""train_bridge estimate: exact steps by sd-scripts' and musubi-tuner's bucket rules.

The expected numbers for the mixed-aspect dataset below were produced by the real trainers
(sd-scripts 48d368fa `generate_dataset_group_by_blueprint` + `len(train_dataset_group)`,
musubi-tuner 30c658c4 `BucketSelector` + `BucketBatchManager`) through
`train_bridge check --sd-scripts/--musubi` on exactly this dataset; see docs/train_bridge.md.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from bridge_helpers import SIZES, make_dataset, make_models
from PIL import Image
from typer.testing import CliRunner

from train_bridge.cli import app
from train_bridge.config import write_run_config
from train_bridge.estimate import estimate_from, estimate_run, musubi_buckets
from train_bridge.trainers import get_arch


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("est")
    return root, make_dataset(root, repeats=3, n_reg=5), make_models(root / "models")


# (arch, preset) -> (steps per epoch, total) as computed by the real trainer on this dataset
REAL_TRAINER = {
    ("anima", "16gb"): (66, 660),  # 768 px, batch 1: 11 imgs x 3 + 33 reg samples
    ("anima", "48gb"): (19, 190),  # 1024 px, batch 4: per-bucket ceil (naive ceil(66/4) = 17)
    ("anima", "80gb"): (12, 120),  # batch 8
    ("flux", "48gb"): (35, 350),  # batch 2
    ("sdxl", "24gb"): (35, 350),
    ("sd3", "80gb"): (19, 190),
    ("wan22-t2v", "16gb"): (33, 330),  # musubi: no reg subsets
    ("wan21-i2v", "80gb"): (21, 210),  # 960 px, batch 2
}


@pytest.mark.parametrize("arch,preset", list(REAL_TRAINER))
def test_matches_real_trainer(world, arch: str, preset: str) -> None:
    root, ds, models = world
    run = root / "runs" / f"{arch}_{preset}"
    rc = write_run_config(arch, ds, run, models=models[arch], preset=preset)
    est = estimate_run(run, budget=None)
    assert (est.steps_per_epoch, est.total_steps) == REAL_TRAINER[(arch, preset)]
    assert rc.run["estimate"] == {"steps_per_epoch": est.steps_per_epoch, "total_steps": est.total_steps}


def _doc(tmp: Path, train: list[tuple[int, int]], reg: list[tuple[int, int]] = (), *, repeats: int = 1, reg_repeats: int = 1, batch: int = 1, res: int = 1024) -> dict:
    subs = []
    for name, sizes, r, is_reg in (("train", train, repeats, False), ("reg", reg, reg_repeats, True)):
        if not sizes:
            continue
        d = tmp / name
        d.mkdir(parents=True, exist_ok=True)
        for i, (w, h) in enumerate(sizes):
            Image.new("RGB", (w, h)).save(d / f"{i:03d}.png")
        subs.append({"image_dir": str(d), "num_repeats": r, **({"is_reg": True} if is_reg else {})})
    return {
        "general": {"enable_bucket": True, "bucket_reso_steps": 64, "min_bucket_reso": 256, "max_bucket_reso": 2048, "caption_extension": ".txt"},
        "datasets": [{"resolution": res, "batch_size": batch, "subsets": subs}],
    }


ANIMA = get_arch("anima")


def test_each_bucket_rounds_up(tmp_path: Path) -> None:
    # 3 square + 3 portrait + 1 landscape, batch 2: 2 + 2 + 1 = 5 batches (naive ceil(7/2) = 4)
    doc = _doc(tmp_path, [(1024, 1024)] * 3 + [(832, 1216)] * 3 + [(1216, 832)], batch=2)
    est = estimate_from(ANIMA, doc, {"max_train_epochs": 4})
    assert est.batches_per_epoch == 5 and est.total_steps == 20
    assert math.ceil(7 / 2) * 4 != est.total_steps
    assert est.buckets == {"1024x1024": 3, "832x1216": 3, "1216x832": 1}


def test_gradient_accumulation_and_step_fallback(tmp_path: Path) -> None:
    doc = _doc(tmp_path, [(1024, 1024)] * 5, repeats=2)
    assert estimate_from(ANIMA, doc, {"max_train_epochs": 3, "gradient_accumulation_steps": 4}).steps_per_epoch == 3
    est = estimate_from(ANIMA, doc, {})
    assert est.total_steps == 1600 and any("max_train_steps" in w for w in est.warnings)


def test_regularisation_doubles_and_balances(tmp_path: Path) -> None:
    # 4 train x 5 repeats = 20; 3 reg images cycled round-robin to 20 samples
    doc = _doc(tmp_path / "a", [(1024, 1024)] * 4, [(1024, 1024), (832, 1216), (1216, 832)], repeats=5)
    est = estimate_from(ANIMA, doc, {"max_train_epochs": 1})
    assert est.images_with_repeats == 20 and est.reg_images_with_repeats == 20
    assert est.steps_per_epoch == 40
    assert est.buckets == {"1024x1024": 27, "832x1216": 7, "1216x832": 6}
    # more reg images than training samples: only the first ones are used
    doc = _doc(tmp_path / "b", [(1024, 1024)] * 2, [(832, 1216)] * 5)
    est = estimate_from(ANIMA, doc, {"max_train_epochs": 1})
    assert est.reg_images_with_repeats == 2 and est.steps_per_epoch == 4


def test_trainer_skipped_files_and_exif(tmp_path: Path) -> None:
    doc = _doc(tmp_path, [(1216, 832)])
    d = Path(doc["datasets"][0]["subsets"][0]["image_dir"])
    Image.new("RGB", (64, 64)).save(d / "anim.gif")  # sd-scripts ignores .gif
    Image.new("RGB", (64, 64)).save(d / "mixed.Jpg", format="JPEG")  # and mixed-case suffixes
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: upright it is portrait, but trainers read the stored landscape size
    Image.new("RGB", (1216, 832)).save(d / "rot.jpg", exif=exif)
    est = estimate_from(ANIMA, doc, {"max_train_epochs": 1})
    assert est.images_with_repeats == 2 and est.buckets == {"1216x832": 2}


def test_budget_warning(tmp_path: Path) -> None:
    doc = _doc(tmp_path, [(1024, 1024)] * 10, repeats=20)
    est = estimate_from(ANIMA, doc, {"max_train_epochs": 10}, budget=1000)
    assert est.total_steps == 2000 and est.over_budget
    assert any("max_train_epochs=5" in w for w in est.warnings)
    assert est.time_hours["T4"] > est.time_hours["H100"] > 0


def test_musubi_buckets_and_uncaptioned(tmp_path: Path) -> None:
    b = musubi_buckets((960, 960))
    assert (960, 960) in b and all(w % 16 == 0 and h % 16 == 0 for w, h in b)
    d = tmp_path / "imgs"
    d.mkdir()
    for i, (w, h) in enumerate(SIZES[:4]):
        Image.new("RGB", (w, h)).save(d / f"{i}.png")
        if i != 3:
            (d / f"{i}.txt").write_text("x")
    doc = {"general": {"resolution": [960, 960], "caption_extension": ".txt", "batch_size": 1, "enable_bucket": True}, "datasets": [{"image_directory": str(d), "cache_directory": str(tmp_path / "c"), "num_repeats": 2}]}
    est = estimate_from(get_arch("wan21-t2v"), doc, {"max_train_epochs": 1})
    assert est.images_with_repeats == 6 and est.steps_per_epoch == 6
    assert any("without a .txt caption" in w for w in est.warnings)


def test_cli_estimate(world) -> None:
    root, ds, models = world
    run = root / "runs" / "cli"
    write_run_config("anima", ds, run, models=models["anima"], preset="48gb")
    res = CliRunner().invoke(app, ["estimate", str(run), "--json", "--max-steps", "100"])
    assert res.exit_code == 0, res.output
    import json

    data = json.loads(res.stdout)
    assert data["total_steps"] == 190 and data["over_budget"] is True
