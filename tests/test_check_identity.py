"""`prep check --reference` / `--identity` with tiny SFace-contract models on real faces:
off-model images flagged, the dominant identity found without references, embeddings cached
(a rerun embeds nothing), a bad reference folder refused naming the fix, nothing written in DIR."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from identity_tiny import astronaut, build_sface, grace_hopper
from PIL import Image, ImageEnhance

from prep.check import CheckOptions, check_folder

pytest.importorskip("skimage.data")
pytest.importorskip("matplotlib", reason="grace_hopper.jpg ships with matplotlib (the test extra)")

TINY_THRESHOLD = 0.8
"""The tiny model's scores: same face 0.96-0.97, Grace Hopper against Eileen Collins about 0.6."""


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    from skimage import data

    root = tmp_path_factory.mktemp("ident")
    raw, refs = root / "raw", root / "refs"
    raw.mkdir()
    refs.mkdir()
    a, g = astronaut(), grace_hopper()
    a.save(raw / "collins1.png")
    ImageEnhance.Brightness(a).enhance(1.2).crop((20, 0, 512, 500)).save(raw / "collins2.jpg", quality=92)
    ImageEnhance.Contrast(a).enhance(0.8).save(raw / "collins3.png")
    g.save(raw / "hopper.jpg", quality=92)
    Image.fromarray(data.coffee()).save(raw / "coffee.png")
    a.crop((0, 0, 400, 400)).resize((600, 600)).save(refs / "ref.png")
    return {"raw": raw, "refs": refs, "model": build_sface(root / "sface.onnx"), "cache": root / "cache"}


def _opts(world, **kw) -> CheckOptions:
    return CheckOptions(workers=2, identity_model="sface", identity_model_path=str(world["model"]), cache_dir=str(world["cache"]),
                        identity_threshold=TINY_THRESHOLD, **kw)


def _flagged(rep, kind: str) -> set[str]:
    return {e["file"] for e in rep.problems()[kind]}


def test_reference_flags_someone_else_and_no_face_and_caches(world, digest):
    before = digest(world["raw"])
    rep = check_folder(world["raw"], _opts(world, reference=str(world["refs"])))
    assert digest(world["raw"]) == before  # embeddings are cached outside DIR
    assert _flagged(rep, "off_model") == {"hopper.jpg", "coffee.png"}
    scores = {f.id: f.identity_score for f in rep.images}
    assert all(scores[f"collins{i}.{e}"] >= TINY_THRESHOLD for i, e in ((1, "png"), (2, "jpg"), (3, "png")))
    assert scores["hopper.jpg"] < TINY_THRESHOLD and scores["coffee.png"] is None
    off = {e["file"]: e for e in rep.problems()["off_model"]}
    assert "no face" in off["coffee.png"]["reason"] and off["hopper.jpg"]["score"] == round(scores["hopper.jpg"], 4)
    assert rep.identity["model"] == "sface" and rep.identity["references"][0].endswith("ref.png")
    assert rep.identity["embedded"] > 0
    again = check_folder(world["raw"], _opts(world, reference=str(world["refs"])))
    assert again.identity["embedded"] == 0 and again.identity["from_cache"] >= 5  # 4 faces + the reference
    assert {f.id: f.identity_score for f in again.images} == pytest.approx(scores)


def test_without_references_the_dominant_cluster_wins(world):
    rep = check_folder(world["raw"], _opts(world, identity=True))
    assert _flagged(rep, "outside_cluster") == {"hopper.jpg"}
    assert {f.id: f.cluster for f in rep.images if f.cluster == 0} == {"collins1.png": 0, "collins2.jpg": 0, "collins3.png": 0}
    assert "coffee.png" in _flagged(rep, "no_face") and not _flagged(rep, "off_model")
    assert rep.identity["clusters"][0] == 3


def test_default_threshold_is_the_models_published_one(world):
    rep = check_folder(world["raw"], CheckOptions(workers=1, identity_model="sface", identity_model_path=str(world["model"]),
                                                  cache_dir=str(world["cache"]), reference=str(world["refs"])))
    from prep.identity.sface import SFACE_THRESHOLD

    assert rep.identity["threshold"] == SFACE_THRESHOLD


def test_cli_json_and_a_bad_reference_folder(world, tmp_path):
    base = [sys.executable, "-m", "prep.cli", "check", str(world["raw"]), "--identity-model", "sface",
            "--identity-model-path", str(world["model"]), "--cache-dir", str(world["cache"]), "--identity-threshold", str(TINY_THRESHOLD)]
    r = subprocess.run([*base, "--reference", str(world["refs"]), "--json"], capture_output=True, text=True, timeout=180, check=False)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert {e["file"] for e in d["problems"]["off_model"]} == {"hopper.jpg", "coffee.png"}
    img = {i["id"]: i for i in d["images"]}
    assert img["collins1.png"]["identity_score"] >= TINY_THRESHOLD and "off_model" in img["hopper.jpg"]["flags"]
    empty = tmp_path / "norefs"
    empty.mkdir()
    (empty / "landscape.png").write_bytes((world["raw"] / "coffee.png").read_bytes())
    bad = subprocess.run([*base, "--reference", str(empty)], capture_output=True, text=True, timeout=180, check=False)
    assert bad.returncode == 2 and "landscape.png" in bad.stderr and "no face" in bad.stderr
