"""loraprep run end to end on real sprites with the tiny WD model and the real YuNet model."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
from typer.testing import CliRunner

from loraprep.cli import app
from loraprep.project import Project
from wd_tiny import build_tiny_wd14

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

runner = CliRunner()
TRIGGER = "sylvie_char"


def _statuses(report: dict) -> dict[str, str]:
    return {s["name"]: s["status"] for s in report["stages"]}


def _run(args: list[str]) -> tuple[int, dict]:
    res = runner.invoke(app, ["run", *args, "--json"], catch_exceptions=False)
    try:
        data = json.loads(res.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"no JSON on stdout (exit {res.exit_code}):\n{res.output}")
    return res.exit_code, data


@pytest.fixture
def setup(tmp_path, anime_dir, yunet_model):
    raw = tmp_path / "raw"
    raw.mkdir()
    for p in sorted(anime_dir.glob("sylvie_*.png"))[:4]:
        shutil.copy(p, raw / p.name)
    shutil.copy(anime_dir / "bg_meadow.jpg", raw / "meadow.jpg")  # a scene with no face
    (raw / "meadow.txt").write_text("scenery, meadow, no humans\n")  # a caption of the user's
    wd = build_tiny_wd14(tmp_path / "wd", batch=None)
    models = tmp_path / "models"
    models.mkdir()
    base = [
        str(raw), "-o", str(tmp_path / "project"), "--trigger", TRIGGER, "--trainer", "anima", "--framing", "bust",
        "--resolution", "512", "--caption-model", str(wd), "--detector", "photo", "--detector-model", str(yunet_model),
        "--dit", str(models / "anima.safetensors"), "--qwen3", str(models / "qwen3.safetensors"), "--vae", str(models / "vae.safetensors"),
        "--workers", "2",
    ]
    return raw, tmp_path / "project", base


def test_whole_job_then_nothing_then_only_what_changed(setup, digest):
    raw, project, base = setup
    before = digest(raw)

    code, rep = _run(base)
    assert code == 0, rep
    assert set(_statuses(rep).values()) == {"done"}
    assert rep["next_command"] == ["train_bridge", "launch", str(project / "run")]
    assert digest(raw) == before  # originals untouched
    check = json.loads((project / "reports" / "check.json").read_text(encoding="utf-8"))  # written in pieces (prep.jsonout)
    assert [i["id"] for i in check["images"]] == sorted(p.name for p in raw.iterdir() if p.suffix in (".png", ".jpg"))
    assert check["summary"]["readable"] == 5 and isinstance(check["problems"]["small"], list)

    # the run folder is complete and the dataset is kohya-ready
    for f in ("train.toml", "dataset.toml", "sample_prompts.txt", "run.json"):
        assert (project / "run" / f).is_file(), f
    ds = tomllib.loads((project / "run" / "dataset.toml").read_text())
    assert ds["general"]["caption_extension"] == ".txt"
    assert ds["datasets"][0]["resolution"] == 512  # the resolution the crops were made for
    img_dir = project / "dataset" / "img" / f"10_{TRIGGER}"
    caps = sorted(img_dir.glob("*.txt"))
    assert len(caps) == 5
    texts = [c.read_text().strip() for c in caps]
    assert all(t.startswith(TRIGGER) and t.count(TRIGGER) == 1 for t in texts)
    assert any("meadow" in t for t in texts)  # the user's caption was kept, trigger added
    stages = {s["name"]: s for s in rep["stages"]}
    assert stages["caption"]["summary"]["user_captions_kept"] == 1
    assert stages["caption"]["summary"]["captioned"] == 4
    assert stages["estimate"]["summary"]["total_steps"] > 0
    assert stages["crop"]["summary"]["outputs"] == 5
    assert (project / "02_cropped" / "contact_sheet.jpg").is_file() or list((project / "02_cropped").glob("contact_sheet*.jpg"))
    proj = Project.load(project / "loraprep.toml")
    assert proj.trigger == TRIGGER and proj.resolution == 512 and proj.train.models["dit"].endswith("anima.safetensors")

    # training writes into run/: that is not a reason to redo anything
    (project / "run" / "logs").mkdir(exist_ok=True)
    (project / "run" / "logs" / "train.log").write_text("steps: 1/800")
    (project / "run" / "output").mkdir(exist_ok=True)
    (project / "run" / "output" / "x-state").mkdir()
    (project / "run" / "status.json").write_text("{}")

    # second identical run: no work at all
    stamp = {p: p.stat().st_mtime_ns for p in project.rglob("*") if p.is_file() and "reports" not in p.parts}
    code, rep2 = _run(base)
    assert code == 0
    assert set(_statuses(rep2).values()) == {"up-to-date"}
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp

    # reproducible from the project file alone
    code, rep3 = _run(["--config", str(project / "loraprep.toml")])
    assert code == 0 and set(_statuses(rep3).values()) == {"up-to-date"}

    # a trainer setting redoes only config and estimate
    code, rep4 = _run([*base, "--set", "network_dim=8"])
    st = _statuses(rep4)
    assert code == 0, rep4
    assert [k for k, v in st.items() if v == "done"] == ["config", "estimate"]
    assert "network_dim = 8" in (project / "run" / "train.toml").read_text()

    # a caption threshold redoes caption and what follows, not import/check/dedupe/crop
    proj = Project.load(project / "loraprep.toml")
    proj.caption.general_threshold = 0.9
    proj.save(project / "loraprep.toml")
    code, rep5 = _run(["--config", str(project / "loraprep.toml")])
    st = _statuses(rep5)
    assert code == 0, rep5
    assert all(st[s] == "up-to-date" for s in ("import", "check", "dedupe", "crop"))
    assert st["caption"] == "done"
    assert {s["name"]: s for s in rep5["stages"]}["caption"]["summary"]["captioned"] == 4


def test_stops_with_a_clear_report_at_the_first_stage_to_fix(setup):
    raw, project, base = setup
    no_models = [a for i, a in enumerate(base) if not (a in ("--dit", "--qwen3", "--vae") or (i and base[i - 1] in ("--dit", "--qwen3", "--vae")))]
    code, rep = _run(no_models)
    assert code == 1
    assert rep["stopped_at"] == "config"
    assert "dit" in rep["stop_reason"] and "--model" in rep["stop_reason"]
    # the dataset is there; only config and estimate remain
    assert (project / "dataset" / "img" / f"10_{TRIGGER}").is_dir()
    code, rep2 = _run(base)  # the user fixes it: earlier stages are not redone
    st = _statuses(rep2)
    assert code == 0 and st["crop"] == "up-to-date" and st["config"] == "done"


def test_usage_errors(tmp_path):
    res = runner.invoke(app, ["run", str(tmp_path)])
    assert res.exit_code == 2
    res = runner.invoke(app, ["run", str(tmp_path), "-o", str(tmp_path / "p"), "--trigger", "x", "--redo", "nope"])
    assert res.exit_code == 2


def test_zip_with_a_top_folder(tmp_path, anime_dir, yunet_model):
    """Zips usually hold a folder: the run flattens it and goes all the way."""
    import zipfile

    z = tmp_path / "shoot.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for p in sorted(anime_dir.glob("sylvie_green_*.png"))[:2]:
            zf.write(p, f"My Shoot/{p.name}")
        zf.writestr("__MACOSX/My Shoot/._x.png", b"junk")
    wd = build_tiny_wd14(tmp_path / "wd", batch=4)  # a fixed-batch model this time
    code, rep = _run([
        str(z), "-o", str(tmp_path / "p"), "--trigger", "Green", "--resolution", "512", "--caption-model", str(wd),
        "--detector", "photo", "--detector-model", str(yunet_model), "--model", "dit=d.safetensors", "--model", "qwen3=q/x/q.safetensors",
        "--vae", "v.safetensors", "--repeats", "3", "--class-token", "girl",
    ])
    assert code == 0, rep
    assert sorted(p.name for p in (tmp_path / "p" / "01_raw").glob("*.png")) == ["sylvie_green_giggle.png", "sylvie_green_normal.png"]
    caps = sorted((tmp_path / "p" / "dataset" / "img" / "3_Green girl").glob("*.txt"))
    assert len(caps) == 2 and all(c.read_text().startswith("Green") for c in caps)


def test_wan_run_crops_to_musubi_buckets(tmp_path, anime_dir, yunet_model):
    """Wan goes through musubi-tuner: crops are fixed points of its bucket rule, config takes the resolution."""
    from PIL import Image

    from prep.buckets import BucketSpec, read_bucket_record

    raw = tmp_path / "raw"
    raw.mkdir()
    for p in sorted(anime_dir.glob("sylvie_blue_*.png"))[:2]:
        shutil.copy(p, raw / p.name)
    wd = build_tiny_wd14(tmp_path / "wd", batch=None)
    code, rep = _run([
        str(raw), "-o", str(tmp_path / "p"), "--trigger", "sylvie", "--trainer", "wan22-t2v", "--resolution", "512",
        "--caption-model", str(wd), "--detector", "photo", "--detector-model", str(yunet_model),
        "--dit", "low.safetensors", "--model", "dit_high=high.safetensors", "--vae", "vae.safetensors", "--model", "t5=t5.pth",
    ])
    assert code == 0, rep
    run = tmp_path / "p" / "run"
    assert (run / "train_high.toml").is_file() and (run / "train_low.toml").is_file()
    ds = tomllib.loads((run / "dataset.toml").read_text())
    assert ds["general"]["resolution"] == [512, 512]
    # the sprites are smaller than the 512 buckets: written at their no-upscale bucket, and the
    # dataset tells musubi to keep them so (its BucketSelector has the same no_upscale rule)
    assert read_bucket_record(tmp_path / "p" / "dataset").spec.no_upscale
    assert ds["general"]["bucket_no_upscale"] is True
    spec = BucketSpec(resolution=(512, 512), steps=16, family="musubi", no_upscale=True)
    sizes = {Image.open(p).size for p in (tmp_path / "p" / "02_cropped").glob("sylvie_*.png")}
    assert sizes and all(spec.is_fixed_point(s) for s in sizes)
    assert not all(BucketSpec(resolution=(512, 512), steps=16, family="musubi").is_fixed_point(s) for s in sizes)
    est = {s["name"]: s for s in rep["stages"]}["estimate"]["summary"]
    assert set(est["buckets"]) == {f"{w}x{h}" for w, h in sizes}
