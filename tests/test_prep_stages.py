"""Issue 18, prep side: options declared once, one stage protocol, crop records that training
reads, small sources kept at their size, and the commands' folders inside and outside a project."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from typer.main import get_command
from typer.testing import CliRunner

from prep.archs import ALIASES, ARCH_NAMES
from prep.buckets import BUCKET_RECORD, bucket_spec_for, read_bucket_record
from prep.check import CheckOptions, check_folder
from prep.cli import app
from prep.crop import CropOptions, crop_folder
from prep.dataset import discover
from prep.importer import ImportOptions
from prep.layout import LayoutOptions, layout_dataset
from prep.options import OptionsError, StageOptions, load_options
from prep.project import PROJECT_FILE, ProjectDirs
from prep.trigger_step import TriggerOptions
from prep.variations import VariationOptions

runner = CliRunner()

STAGES = {
    "import": ("prep.importer", ImportOptions, "import"),
    "check": ("prep.check", CheckOptions, "check"),
    "crop": ("prep.crop", CropOptions, "crop"),
    "layout": ("prep.layout", LayoutOptions, "layout"),
    "trigger": ("prep.trigger_step", TriggerOptions, "trigger"),
    "render-variations": ("prep.variations.run", VariationOptions, "render-variations"),
}


def _command(name: str):
    return get_command(app).commands[name]  # type: ignore[attr-defined]


@pytest.mark.parametrize("stage", list(STAGES))
def test_each_stage_declares_its_options_once_and_runs_through_one_protocol(stage: str) -> None:
    import importlib

    mod_name, cls, cmd = STAGES[stage]
    mod = importlib.import_module(mod_name)
    assert issubclass(cls, StageOptions)
    st = mod.STAGE
    assert st.name == stage and st.Options is cls and callable(st.run)
    # every option on the command line is a field of the class, with the field's help
    params = {p.name: p for p in _command(cmd).params}
    for name, f in cls.model_fields.items():
        extra = f.json_schema_extra if isinstance(f.json_schema_extra, dict) else {}
        if "cli" in extra and extra["cli"] is None:
            continue
        assert name in params, f"{stage}: --{name} missing"
        assert (f.description or "").split("(")[0].strip()[:30] in (params[name].help or ""), name
    # strict: wrong types and unknown keys refused, naming the key and the file
    with pytest.raises(OptionsError) as ei:
        load_options(cls, {"no_such_key": 1}, where="loraprep.toml [x]")
    assert "loraprep.toml [x]: no_such_key: unknown key" in str(ei.value)


def test_wrong_types_are_refused_not_coerced() -> None:
    for cls, key, bad in [(CropOptions, "upscale", "no"), (CropOptions, "resolution", "big"), (CheckOptions, "resolution", "1024"), (LayoutOptions, "repeats", 2.5), (ImportOptions, "flatten", "yes")]:
        with pytest.raises(OptionsError, match=key):
            load_options(cls, {key: bad}, where="loraprep.toml")
    with pytest.raises(ValueError, match="sd15"):
        CropOptions(trainer="sd15")
    assert LayoutOptions(trigger="x", reg_dir=Path("/tmp")).reg_dir == "/tmp"  # callers passing a Path still work


def test_flags_users_have_today_are_kept(tmp_path: Path) -> None:
    flags = {name: {o for p in _command(name).params for o in (*p.opts, *getattr(p, "secondary_opts", []))} for name in ("crop", "check", "layout", "import", "trigger", "render-variations")}
    assert {"-o", "--out", "-f", "--framing", "-d", "--threshold", "--no-sheet", "-j", "-r", "--upscale", "--all-faces", "--trainer", "--json", "--dry-run"} <= flags["crop"]
    assert {"--resolution", "--min-side", "--bucket-steps", "--max-bucket-reso", "-r", "-j", "--dup-threshold", "--strict", "--json", "--trainer"} <= flags["check"]
    assert {"-o", "-t", "-n", "-c", "--reg", "--reg-repeats", "--names", "--copy", "-r", "--dry-run", "--json"} <= flags["layout"]
    assert {"-o", "--output", "--flatten", "--no-captions", "--max-files", "--max-total-size", "--dry-run", "--json"} <= flags["import"]
    assert {"-t", "--trigger", "-r", "--create-missing", "--dry-run", "--json"} <= flags["trigger"]
    assert {"-o", "-s", "--styles", "--styles-file", "-n", "--strength", "-b", "-m", "-t", "--max-synthetic-share", "--no-contact-sheet", "--input", "--json"} <= flags["render-variations"]


# -- crop records and small sources ----------------------------------------------------------


def _small_folder(folder: Path, n: int = 4) -> Path:
    folder.mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", (300 + 40 * i, 400 - 20 * i), (30 * i, 120, 90)).save(folder / f"s{i}.png")
    return folder


def _crop_opts(yunet_model: Path, **kw) -> CropOptions:
    return CropOptions(detector="photo", detector_model=str(yunet_model), workers=1, contact_sheet=False, **kw)


def test_small_sources_are_written_at_their_no_upscale_bucket_and_recorded(tmp_path: Path, yunet_model: Path) -> None:
    src = _small_folder(tmp_path / "raw")
    out = tmp_path / "crops"
    rep = crop_folder(src, out, _crop_opts(yunet_model, resolution=1024, trainer="anima"))
    assert rep.summary()["outputs"] == 4  # a folder of small images never yields zero crops
    nu = bucket_spec_for("anima", 1024, no_upscale=True)
    full = bucket_spec_for("anima", 1024)
    for r in rep.results:
        assert "small_source" in r.data["flags"] and r.status == "flagged"
        with Image.open(out / r.outputs[0]) as im:
            size = im.size
        src_w, src_h = r.data["size"]
        assert size[0] <= src_w and size[1] <= src_h  # never upscaled
        assert size[0] % nu.steps == 0 and size[1] % nu.steps == 0
        assert nu.is_fixed_point(size) and not full.is_fixed_point(size)
    record = read_bucket_record(out)
    assert record is not None and record.arch == "anima" and record.written_by == "prep crop"
    assert record.spec.no_upscale is True and record.spec.resolution == (1024, 1024)
    assert rep.suggested_resolution is not None and rep.suggested_resolution < 1024 and rep.suggested_resolution % 64 == 0
    assert rep.to_json()["suggested_resolution"] == rep.suggested_resolution
    assert [i.id for i in discover(out)] == sorted(r.outputs[0] for r in rep.results)  # buckets.json is no image

    # --upscale still gives the target bucket size, and the record says the trainer may upscale
    up = tmp_path / "up"
    rep2 = crop_folder(src, up, _crop_opts(yunet_model, resolution=1024, trainer="anima", upscale=True))
    for r in rep2.results:
        with Image.open(up / r.outputs[0]) as im:
            assert list(im.size) == r.data["target"][0] and full.is_fixed_point(im.size)
        assert "upscaled" in r.data["flags"]
    assert read_bucket_record(up).spec.no_upscale is False and rep2.suggested_resolution is None


@pytest.mark.parametrize("arch", [*ARCH_NAMES, *ALIASES])
@pytest.mark.parametrize("resolution", [512, 768, 1024])
def test_full_size_crops_are_fixed_points_under_no_upscale_too(arch: str, resolution: int) -> None:
    """Why one folder may mix full-size and small crops under bucket_no_upscale = true."""
    spec = bucket_spec_for(arch, resolution)
    nu = bucket_spec_for(arch, resolution, no_upscale=True)
    for b in spec.buckets:
        assert spec.is_fixed_point(b) and nu.is_fixed_point(b), (arch, b)


def test_crop_trainer_takes_arch_names_and_the_record_reaches_the_dataset(tmp_path: Path, yunet_model: Path) -> None:
    src = tmp_path / "raw"
    src.mkdir()
    Image.new("RGB", (1400, 1000), (200, 180, 160)).save(src / "big.png")
    (src / "big.txt").write_text("a wall", encoding="utf-8")
    out = tmp_path / "crops"
    res = runner.invoke(app, ["crop", str(src), "-o", str(out), "--trainer", "wan", "--resolution", "512", "-d", "photo", "--detector-model", str(yunet_model), "--json"])
    assert res.exit_code == 0, res.output
    rec = read_bucket_record(out)
    assert rec.arch == "wan21-t2v" and rec.spec.family == "musubi" and rec.spec.steps == 16 and rec.spec.no_upscale is False
    doc = json.loads(res.stdout)
    assert doc["bucket_record"] == str(out / BUCKET_RECORD) and doc["no_upscale"] is False
    res = runner.invoke(app, ["crop", str(src), "-o", str(tmp_path / "x"), "--trainer", "sd15"])
    assert res.exit_code == 2 and "sd15" in res.output and not (tmp_path / "x").exists()

    ds = tmp_path / "dataset"
    lrep = layout_dataset(out, ds, LayoutOptions(trigger="wall_char"))
    assert lrep.bucket_record == str(ds / BUCKET_RECORD)
    assert (ds / BUCKET_RECORD).read_bytes() == (out / BUCKET_RECORD).read_bytes()
    assert read_bucket_record(ds).spec == rec.spec
    # crops from elsewhere, no record: the dataset's old record goes, it described other crops
    plain = tmp_path / "plain"
    plain.mkdir()
    Image.new("RGB", (512, 512)).save(plain / "a.png")
    lrep = layout_dataset(plain, ds, LayoutOptions(trigger="wall_char"))
    assert lrep.bucket_record is None and not (ds / BUCKET_RECORD).exists()


def test_check_buckets_follow_the_architecture(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (700, 500)).save(folder / "a.png")
    for arch in ("wan", "anima", "sdxl"):
        rep = check_folder(folder, CheckOptions(resolution=512, trainer=arch, workers=1))
        assert rep.images[0].bucket == bucket_spec_for(arch, 512).select(700, 500).bucket
    assert check_folder(folder, CheckOptions(resolution=512, trainer="wan")).images[0].bucket != check_folder(folder, CheckOptions(resolution=512)).images[0].bucket
    res = runner.invoke(app, ["check", str(folder), "--trainer", "wan22", "--resolution", "512", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["images"][0]["bucket"] == list(bucket_spec_for("wan22", 512).select(700, 500).bucket) and doc["bucket_spec"]["family"] == "musubi"


# -- folders: inside a project and outside one --------------------------------------------------


def _project(root: Path, **top: object) -> ProjectDirs:
    root.mkdir(parents=True, exist_ok=True)
    fields = {"source": "photos", "trigger": "sage_char", "trainer": "anima", "resolution": 512, **top}
    lines = ["[project]", *(f"{k} = {json.dumps(v)}" for k, v in fields.items()), "", "[crop]", 'framing = "full"', "enabled = true", "", "[layout]", "repeats = 3"]
    (root / PROJECT_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return ProjectDirs(root)


def test_crop_outside_a_project_defaults_to_cropped_never_inside_the_input(tmp_path: Path, yunet_model: Path, monkeypatch) -> None:
    work = tmp_path / "work"
    _small_folder(work / "raw", 2)
    monkeypatch.chdir(work)
    base = ["-d", "photo", "--detector-model", str(yunet_model), "--no-sheet"]
    res = runner.invoke(app, ["crop", "./raw", *base])
    assert res.exit_code == 0, res.output
    assert (work / "cropped" / BUCKET_RECORD).is_file() and len(discover(work / "cropped")) == 2
    monkeypatch.chdir(work / "raw")
    res = runner.invoke(app, ["crop", ".", *base])
    said = " ".join(res.output.split())
    assert res.exit_code == 2 and "inside the input folder" in said and "--out" in said
    assert not (work / "raw" / "cropped").exists()
    res = runner.invoke(app, ["crop", *base])
    assert res.exit_code == 2 and "needs a folder of images" in " ".join(res.output.split())


def test_commands_inside_a_project_use_its_folders_and_settings(tmp_path: Path, yunet_model: Path, monkeypatch) -> None:
    p = _project(tmp_path / "proj")
    _small_folder(p.raw, 2)
    sub = p.root / "notes"
    sub.mkdir()
    monkeypatch.chdir(sub)  # found from a subfolder too
    res = runner.invoke(app, ["crop", "-d", "photo", "--detector-model", str(yunet_model), "--json"])
    assert res.exit_code == 0, res.output
    rec = read_bucket_record(p.cropped)
    assert rec.arch == "anima" and rec.spec.resolution == (512, 512)  # the project's trainer and resolution
    assert all(i["crop"] for i in json.loads(res.stdout)["images"])
    # the command line wins over the project file
    res = runner.invoke(app, ["crop", "-d", "photo", "--detector-model", str(yunet_model), "--resolution", "256", "-o", str(tmp_path / "c256")])
    assert res.exit_code == 0, res.output
    assert read_bucket_record(tmp_path / "c256").spec.resolution == (256, 256)

    res = runner.invoke(app, ["check", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["folder"] == str(p.raw) and json.loads(res.stdout)["trainer"] == "anima"

    # layout: the project's captioned folder into its dataset, trigger and repeats from the file,
    # the crops' bucket record carried along
    p.captioned.mkdir()
    for img in discover(p.cropped):
        (p.captioned / img.id).write_bytes(img.path.read_bytes())
    res = runner.invoke(app, ["layout", "--json"])
    assert res.exit_code == 0, res.output
    assert (p.dataset / "img" / "3_sage_char").is_dir()
    assert (p.dataset / BUCKET_RECORD).read_bytes() == (p.cropped / BUCKET_RECORD).read_bytes()

    # render-variations: the project's raw folder into its renders folder
    res = runner.invoke(app, ["render-variations", "--dry-run", "--json", "--max-synthetic-share", "1"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["sources"] == 2 and all(v["caption"].startswith("sage_char, ") for v in doc["variations"])


def test_a_bad_project_value_is_refused_naming_the_file(tmp_path: Path, monkeypatch) -> None:
    p = _project(tmp_path / "proj", resolution="big")
    _small_folder(p.raw, 1)
    monkeypatch.chdir(p.root)
    res = runner.invoke(app, ["check"])
    assert res.exit_code == 2 and PROJECT_FILE in res.output and "resolution" in res.output


def test_outside_a_project_each_command_says_which_folder_it_needs(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    for args, needs in [(["check"], "folder of images"), (["layout", "-t", "x"], "captioned images"), (["render-variations"], "3D renders")]:
        res = runner.invoke(app, args)
        assert res.exit_code == 2 and needs in " ".join(res.output.split()), (args, res.output)
    src = _small_folder(tmp_path / "caps", 1)
    res = runner.invoke(app, ["layout", str(src), "-t", "x"])
    assert res.exit_code == 2 and "--out" in res.output


def test_trigger_stage_writes_into_another_folder_leaving_the_source(tmp_path: Path, digest) -> None:
    from prep.trigger_step import STAGE

    src = tmp_path / "crops"
    src.mkdir()
    Image.new("RGB", (64, 64)).save(src / "a.png")
    (src / "a.txt").write_text("1girl, smiling\n", encoding="utf-8")
    Image.new("RGB", (64, 64)).save(src / "b.png")
    before = digest(src)
    out = tmp_path / "captioned"
    rep = STAGE.run(src, out, TriggerOptions(trigger="sage_char", create_missing=True))
    assert digest(src) == before and rep.n_failed == 0
    assert (out / "a.txt").read_text(encoding="utf-8") == "sage_char, 1girl, smiling\n"
    assert (out / "b.txt").read_text(encoding="utf-8") == "sage_char\n" and (out / "a.png").is_file()
    with pytest.raises(ValueError, match="--trigger"):
        STAGE.run(src, out, TriggerOptions())
