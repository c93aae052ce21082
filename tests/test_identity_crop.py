"""`prep crop --reference` and `loraprep run --reference`: the matching face is cropped, off-model
images are flagged and set aside (moved, never deleted). Real faces, the shipped YuNet, a tiny
ONNX model with SFace's contract."""

from __future__ import annotations

import json

import pytest
from identity_tiny import astronaut, build_sface, grace_hopper, group_scene
from typer.testing import CliRunner

pytest.importorskip("onnx", reason="the tiny models are built with the onnx package (test extra)")
pytest.importorskip("skimage", reason="scikit-image's astronaut photo (test extra)")
pytest.importorskip("matplotlib", reason="matplotlib's grace_hopper.jpg sample (test extra)")

runner = CliRunner()
THRESHOLD = "0.8"
"""The tiny model's same-face cosines are ~0.95, different people ~0.6 (SFace's own 0.363 is for the real model)."""


@pytest.fixture(scope="module")
def sface_path(tmp_path_factory):
    return build_sface(tmp_path_factory.mktemp("sface") / "face_recognition_sface_2021dec.onnx")


@pytest.fixture
def mixed(tmp_path):
    """raw/: a group shot where the character (Eileen Collins) is the SMALLER face, a solo shot
    of her, and a photo of someone else (Grace Hopper); refs/: one reference of her."""
    raw, refs = tmp_path / "raw", tmp_path / "refs"
    raw.mkdir()
    refs.mkdir()
    a, g = astronaut(), grace_hopper()
    group_scene(a, g, small_width=260, large_width=440).save(raw / "group.png")
    a.save(raw / "solo.png")
    g.save(raw / "someone_else.jpg", quality=95)
    (raw / "someone_else.txt").write_text("a caption of the user's\n")
    a.resize((320, 320)).save(refs / "ref1.png")
    return raw, refs


def _lines(path):
    return {d["id"]: d for d in (json.loads(x) for x in path.read_text().splitlines())}


def _crop(args):
    from prep.cli import app

    res = runner.invoke(app, ["crop", *args, "--json"], catch_exceptions=False)
    return res.exit_code, (json.loads(res.stdout) if res.stdout.strip().startswith("{") else res.output)


def test_crop_picks_the_matching_smaller_face_and_flags_the_off_model_image(tmp_path, mixed, sface_path, digest):
    raw, refs = mixed
    before = digest(raw)
    out = tmp_path / "out"
    code, rep = _crop([str(raw), "-o", str(out), "--detector", "photo", "--resolution", "256", "--reference", str(refs),
                       "--identity-model-path", str(sface_path), "--identity-threshold", THRESHOLD, "-j", "1"])
    assert code == 0, rep
    lines = _lines(out / "crops.jsonl")
    g = lines["group.png"]
    faces = g["faces"]
    assert len(faces) == 2 and (faces[0][2] - faces[0][0]) > (faces[1][2] - faces[1][0])  # largest first
    assert g["crop_face"] == [1]  # the reference picks the smaller face
    assert g["identity"]["face"] == 1 and g["identity"]["score"] >= float(THRESHOLD) > g["identity"]["scores"][0]
    x0, _, x1, _ = g["crop"][0]
    cx = (faces[1][0] + faces[1][2]) / 2
    assert x0 <= cx <= x1 and x0 > faces[0][2] - 1  # the crop is around her face, not Grace Hopper's
    assert "off_model" not in g["flags"] and g["outputs"] == ["group.png"]
    assert lines["solo.png"]["identity"]["face"] == 0 and "off_model" not in lines["solo.png"]["flags"]
    other = lines["someone_else.jpg"]
    assert "off_model" in other["flags"] and other["status"] == "flagged" and other["identity"]["face"] is None
    assert other["outputs"] == ["someone_else.png"] and (out / "someone_else.png").is_file()  # default: crop the largest, flagged
    assert rep["off_model"] == ["someone_else.jpg"]
    assert digest(raw) == before  # originals untouched


def test_off_model_skip_and_set_aside(tmp_path, mixed, sface_path, digest):
    raw, refs = mixed
    before = digest(raw)
    base = [str(raw), "--detector", "photo", "--resolution", "256", "--reference", str(refs),
            "--identity-model-path", str(sface_path), "--identity-threshold", THRESHOLD, "-j", "1"]
    code, rep = _crop([*base, "-o", str(tmp_path / "skip"), "--off-model", "skip"])
    assert code == 0, rep
    line = _lines(tmp_path / "skip" / "crops.jsonl")["someone_else.jpg"]
    assert line["status"] == "skipped" and line["outputs"] == [] and not (tmp_path / "skip" / "someone_else.png").exists()

    aside = tmp_path / "aside"
    code, rep = _crop([*base, "-o", str(tmp_path / "moved"), "--off-model", "set-aside", "--set-aside", str(aside)])
    assert code == 0, rep
    line = _lines(tmp_path / "moved" / "crops.jsonl")["someone_else.jpg"]
    assert line["outputs"] == [] and line["set_aside"] == [str(aside / "someone_else.png")]
    assert (aside / "someone_else.png").is_file() and (aside / "someone_else.txt").read_text() == "a caption of the user's\n"
    assert not (tmp_path / "moved" / "someone_else.png").exists() and not (tmp_path / "moved" / "someone_else.txt").exists()
    assert (tmp_path / "moved" / "group.png").is_file() and not (aside / "group.png").exists()
    assert digest(raw) == before

    # without --set-aside: a folder beside the output
    code, rep = _crop([*base, "-o", str(tmp_path / "beside"), "--off-model", "set-aside"])
    assert code == 0, rep
    assert (tmp_path / "beside_off_model" / "someone_else.png").is_file() and not (tmp_path / "beside" / "someone_else.png").exists()


def test_embeddings_are_cached_so_a_redo_runs_no_inference(tmp_path, mixed, sface_path):
    raw, refs = mixed
    out = tmp_path / "out"
    base = [str(raw), "-o", str(out), "--detector", "photo", "--resolution", "256", "--reference", str(refs),
            "--identity-threshold", THRESHOLD, "-j", "1"]
    code, rep = _crop([*base, "--identity-model-path", str(sface_path)])
    assert code == 0, rep
    first = {k: v["identity"] for k, v in _lines(out / "crops.jsonl").items()}
    cached = list((out / ".loraprep" / "embeddings" / "sface").rglob("*.npy"))
    assert len(cached) == 5  # 1 reference + 2 + 1 + 1 faces
    # every image redone with a model file that cannot run: only cache hits can succeed
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx model")
    code, rep = _crop([*base, "--identity-model-path", str(broken), "--overwrite"])
    assert code == 0, rep
    assert {k: v["identity"] for k, v in _lines(out / "crops.jsonl").items()} == first
    assert len(list((out / ".loraprep" / "embeddings" / "sface").rglob("*.npy"))) == 5


def test_dry_run_writes_nothing(tmp_path, mixed, sface_path):
    raw, refs = mixed
    out = tmp_path / "out"
    code, rep = _crop([str(raw), "-o", str(out), "--detector", "photo", "--resolution", "256", "--reference", str(refs),
                       "--identity-model-path", str(sface_path), "--identity-threshold", THRESHOLD, "--off-model", "set-aside", "--dry-run"])
    assert code == 0, rep
    assert rep["off_model"] == ["someone_else.jpg"]
    assert not out.exists() and not (tmp_path / "out_off_model").exists()


def test_bad_reference_folder_is_a_usage_error_naming_the_fix(tmp_path, mixed, sface_path):
    raw, _ = mixed
    empty = tmp_path / "norefs"
    empty.mkdir()
    code, out = _crop([str(raw), "-o", str(tmp_path / "out"), "--detector", "photo", "--reference", str(empty),
                       "--identity-model-path", str(sface_path)])
    assert code == 2
    assert "no images in the reference folder" in out
    assert not (tmp_path / "out" / "crops.jsonl").exists()


def test_loraprep_run_sets_off_model_images_aside_and_deletes_nothing(tmp_path, mixed, sface_path, digest, monkeypatch):
    from wd_tiny import build_tiny_wd14

    from loraprep.cli import app

    raw, refs = mixed
    astronaut().crop((96, 0, 416, 400)).save(refs / "ref2.jpg", quality=90)  # two references, as a user would bring
    before = digest(raw)
    monkeypatch.setenv("LORAPREP_SFACE_MODEL", str(sface_path))
    wd = build_tiny_wd14(tmp_path / "wd", batch=None)
    models = tmp_path / "models"
    project = tmp_path / "project"
    args = [
        "run", str(raw), "-o", str(project), "--trigger", "eileen", "--trainer", "anima", "--resolution", "256",
        "--caption-model", str(wd), "--detector", "photo", "--reference", str(refs), "--identity-threshold", THRESHOLD,
        "--dit", str(models / "a.safetensors"), "--qwen3", str(models / "q.safetensors"), "--vae", str(models / "v.safetensors"),
        "--workers", "1", "--no-dedupe", "--json",
    ]
    res = runner.invoke(app, args, catch_exceptions=False)
    rep = json.loads(res.stdout)
    assert res.exit_code == 0, res.output
    crop = next(s for s in rep["stages"] if s["name"] == "crop")
    assert crop["summary"]["off_model"] == ["someone_else.jpg"]
    assert crop["summary"]["set_aside"] == [str(project / "off_model" / "someone_else.png")]
    assert (project / "off_model" / "someone_else.png").is_file()
    assert not (project / "02_cropped" / "someone_else.png").exists()
    assert (project / "02_cropped" / "group.png").is_file() and (project / "02_cropped" / "solo.png").is_file()
    layout = next(s for s in rep["stages"] if s["name"] == "layout")
    assert layout["summary"]["images"] == 2  # it never reaches the dataset
    assert (project / "01_raw" / "someone_else.jpg").is_file()  # the imported original stays
    assert digest(raw) == before
    toml = (project / "loraprep.toml").read_text()
    assert f'reference = "{refs.resolve()}"' in toml and 'off_model = "set-aside"' in toml

    # --keep-off-model: the crop comes back among the others; the set-aside copy is not deleted
    res = runner.invoke(app, [*args[:1], "--config", str(project / "loraprep.toml"), "--keep-off-model", "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert (project / "02_cropped" / "someone_else.png").is_file()
    assert (project / "off_model" / "someone_else.png").is_file()
    rep = json.loads(res.stdout)
    assert next(s for s in rep["stages"] if s["name"] == "layout")["summary"]["images"] == 3
    assert digest(raw) == before


def test_other_references_redo_the_choice(tmp_path, mixed, sface_path):
    raw, refs = mixed
    out = tmp_path / "out"
    base = [str(raw), "-o", str(out), "--detector", "photo", "--resolution", "256", "--reference", str(refs),
            "--identity-model-path", str(sface_path), "--identity-threshold", THRESHOLD, "-j", "1"]
    assert _crop(base)[0] == 0
    assert _lines(out / "crops.jsonl")["group.png"]["crop_face"] == [1]
    grace_hopper().resize((300, 350)).save(refs / "ref1.png")  # the same file name, someone else's face
    code, rep = _crop(base)
    assert code == 0, rep
    lines = _lines(out / "crops.jsonl")
    assert not any(r.get("resumed") for r in rep["images"])
    assert lines["group.png"]["crop_face"] == [0]
    assert "off_model" in lines["solo.png"]["flags"] and "off_model" not in lines["someone_else.jpg"]["flags"]


def test_ccip_contract_through_prep_crop(tmp_path, mixed):
    from identity_tiny import build_ccip

    raw, refs = mixed
    ccip = build_ccip(tmp_path / "ccip", threshold=0.05)  # the tiny metric: (1 - cos) / 2
    out = tmp_path / "out"
    code, rep = _crop([str(raw), "-o", str(out), "--detector", "photo", "--resolution", "256", "--reference", str(refs),
                       "--identity-model", "ccip", "--identity-model-path", str(ccip), "-j", "1"])
    assert code == 0, rep
    lines = _lines(out / "crops.jsonl")
    assert lines["group.png"]["identity"]["model"] == "ccip" and lines["group.png"]["identity"]["threshold"] == 0.95
    assert lines["group.png"]["crop_face"] == [1]
    assert "off_model" in lines["someone_else.jpg"]["flags"]
    assert len(list((out / ".loraprep" / "embeddings" / "ccip").rglob("*.npy"))) == 5


def test_without_references_nothing_changes(tmp_path, mixed):
    raw, _ = mixed
    out = tmp_path / "out"
    code, rep = _crop([str(raw), "-o", str(out), "--detector", "photo", "--resolution", "256", "-j", "1"])
    assert code == 0, rep
    lines = _lines(out / "crops.jsonl")
    assert lines["group.png"]["crop_face"] == [0]  # the largest face, as always
    assert all("identity" not in d and "off_model" not in d["flags"] for d in lines.values())
    assert not (out / ".loraprep").exists()


def test_set_aside_never_overwrites_what_is_there(tmp_path, mixed, sface_path):
    raw, refs = mixed
    aside = tmp_path / "aside"
    aside.mkdir()
    (aside / "someone_else.png").write_bytes(b"a file of the user's")
    base = [str(raw), "--detector", "photo", "--resolution", "256", "--reference", str(refs), "--identity-model-path", str(sface_path),
            "--identity-threshold", THRESHOLD, "-j", "1", "--off-model", "set-aside", "--set-aside", str(aside)]
    code, rep = _crop([*base, "-o", str(tmp_path / "out")])
    assert code == 0, rep
    assert (aside / "someone_else.png").read_bytes() == b"a file of the user's"
    line = _lines(tmp_path / "out" / "crops.jsonl")["someone_else.jpg"]
    assert line["set_aside"] == [str(aside / "someone_else_2.png")] and (aside / "someone_else_2.png").is_file()
    # redone (--overwrite): the same crop is already there, no third copy
    code, rep = _crop([*base, "-o", str(tmp_path / "out"), "--overwrite"])
    assert code == 0, rep
    assert sorted(p.name for p in aside.iterdir()) == ["someone_else.png", "someone_else_2.png", "someone_else_2.txt"]
