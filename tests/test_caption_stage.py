"""The caption and lint stages: options declared once, the CLI generated from them, project folders,
undecodable captions never overwritten, prep's executor and ONNX session builder, prep.archs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from captioning.backends.base import CaptionOptions, CaptionResult
from captioning.backends.wd14 import WD14Backend
from captioning.cli import app
from captioning.lint import STAGE as LINT_STAGE
from captioning.lint import LintOptions, lint_folder
from captioning.pipeline import STAGE, CaptionReport, CaptionStageOptions, caption_folder
from prep.options import OptionsError, load_options
from prep.stage import StageReport
from wd_tiny import build_tiny_wd14, solid

runner = CliRunner()
CP1252 = "caf\u00e9, cr\u00e8me".encode("cp1252")


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return build_tiny_wd14(tmp_path_factory.mktemp("wd") / "m")


@pytest.fixture()
def data(tmp_path) -> Path:
    d = tmp_path / "imgs"
    d.mkdir()
    solid((255, 0, 0), (64, 64)).save(d / "a_red.png")
    solid((0, 0, 255), (64, 64)).save(d / "c_blue.png")
    return d


# -- options declared once ------------------------------------------------------------------------


def test_stage_options_refuse_wrong_types_and_unknown_keys_naming_the_file():
    with pytest.raises(OptionsError) as exc:
        load_options(CaptionStageOptions, {"mcut": "no", "modee": "skip"}, where="p/loraprep.toml")
    msg = str(exc.value)
    assert "p/loraprep.toml: mcut" in msg and "p/loraprep.toml: modee: unknown key" in msg
    with pytest.raises(OptionsError, match="replace"):
        load_options(CaptionStageOptions, {"replace": ["noequals"]}, where="x.toml")
    with pytest.raises(OptionsError, match="identity_groups"):
        load_options(CaptionStageOptions, {"identity_groups": ["hair,nope"]}, where="x.toml")
    opts = load_options(CaptionStageOptions, {"general_threshold": 0.5, "exclude": ["solo"]}, where="x.toml")
    assert opts.tag_rules().thresholds.general == 0.5 and opts.tag_rules().exclude == ("solo",)


def test_caption_flags_are_generated_from_the_options_class():
    """Every field of CaptionStageOptions (except project-file-only ones) is a flag of `caption`, and only those."""
    res = runner.invoke(app, ["-h"], env={"COLUMNS": "250", "TERMINAL_WIDTH": "250"})
    assert res.exit_code == 0
    for flag in ("--backend", "--trigger", "--mode", "--general-threshold", "--character-threshold", "--mcut",
                 "--prune-identity", "--prune-core", "--exclude", "--replace", "--workers", "--no-resume",
                 "--no-character-first", "--set", "--identity-groups", "--output", "--dry-run", "--json"):
        assert flag in res.output, flag
    assert "--keep-apart" not in res.output
    assert "Usage: caption [OPTIONS] [FOLDER]" in " ".join(res.output.split()).replace("[folder]", "[FOLDER]")
    assert "caption lint" in res.output  # the subcommand is named


def test_stage_satisfies_the_protocol_and_cli_runs_the_same_code(model, data, tmp_path):
    opts = CaptionStageOptions(model=str(model), trigger="sage_character", exclude=["solo"])
    rep = STAGE.run(data, tmp_path / "lib", opts)
    assert isinstance(rep, CaptionReport) and isinstance(rep, StageReport) and rep.n_failed == 0
    assert STAGE.name == "caption" and STAGE.Options is CaptionStageOptions
    res = runner.invoke(app, [str(data), "--model", str(model), "-t", "sage_character", "-x", "solo", "-o", str(tmp_path / "cli")])
    assert res.exit_code == 0, res.output
    for name in ("a_red.txt", "c_blue.txt"):
        assert (tmp_path / "cli" / name).read_text() == (tmp_path / "lib" / name).read_text()
    assert "solo" not in (tmp_path / "cli" / "a_red.txt").read_text()


def test_wrong_flag_value_is_a_usage_error_naming_the_flag(model, data):
    res = runner.invoke(app, [str(data), "--prune-core", "1.5", "--model", str(model)])
    assert res.exit_code == 2 and "--prune-core" in res.output
    res = runner.invoke(app, [str(data), "--preprocess", "bogus", "--model", str(model)])
    assert res.exit_code == 2 and "--preprocess" in res.output


# -- project folders --------------------------------------------------------------------------------


def _project(tmp_path: Path, model: Path) -> Path:
    root = tmp_path / "proj"
    (root / "02_cropped").mkdir(parents=True)
    solid((255, 0, 0), (64, 64)).save(root / "02_cropped" / "a_red.png")
    solid((0, 0, 255), (64, 64)).save(root / "02_cropped" / "c_blue.png")
    (root / "02_cropped" / "c_blue.txt").write_text("users own caption\n", encoding="utf-8")
    (root / "loraprep.toml").write_text(
        '[project]\nsource = "raw"\ntrigger = "sage_character"\n\n'
        f'[caption]\nbackend = "wd14"\nmodel = "{model.as_posix()}"\nprune_identity = true\nmode = "skip"\nexclude = ["solo"]\n',
        encoding="utf-8",
    )
    return root


def test_caption_inside_a_project_captions_its_crops_apart(model, tmp_path, monkeypatch):
    root = _project(tmp_path, model)
    monkeypatch.chdir(root / "02_cropped")  # anywhere inside the project
    res = runner.invoke(app, ["--backend", "wd14", "--trigger", "sage_character", "--json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    assert rep["output"] == str(root / "03_captions") and rep["counts"]["ok"] == 1 and rep["counts"]["skipped"] == 1
    text = (root / "03_captions" / "a_red.txt").read_text()
    assert text.startswith("sage_character, ") and "solo" not in text and "long hair" not in text  # project settings applied
    assert not (root / "03_captions" / "c_blue.txt").exists()  # the user's caption is kept, not captioned in skip mode
    assert (root / "02_cropped" / "c_blue.txt").read_text() == "users own caption\n"
    assert not (root / "02_cropped" / "a_red.txt").exists()  # generated captions kept apart


def test_caption_without_folder_outside_a_project_says_which_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, ["--backend", "wd14", "--trigger", "sage_character"], env={"COLUMNS": "300", "TERMINAL_WIDTH": "300"})
    assert res.exit_code == 2
    out = " ".join(res.output.split())
    assert "caption needs a folder of images" in out and "loraprep.toml" in out


# -- undecodable captions ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["skip", "overwrite", "append", "prepend"])
def test_undecodable_caption_is_never_overwritten(model, data, mode):
    (data / "a_red.txt").write_bytes(CP1252)
    rep = caption_folder(data, "wd14", CaptionOptions(model=str(model)), mode=mode)
    assert (data / "a_red.txt").read_bytes() == CP1252
    bad = {o.id: o for o in rep.problems}
    assert set(bad) == {"a_red.png"} and rep.n_failed == 1 and rep.exit_code() == 3
    reason = bad["a_red.png"].reason
    assert "a_red.txt" in reason and "CP1252" in reason and "iconv -f CP1252 -t UTF-8" in reason
    assert (data / "c_blue.txt").exists()  # the others are captioned


def test_undecodable_caption_beside_image_is_reported_with_output_folder(model, data, tmp_path):
    (data / "a_red.txt").write_bytes("\ufeffhi".encode("utf-16-le"))
    rep = caption_folder(data, "wd14", CaptionOptions(model=str(model)), mode="append", output=tmp_path / "o")
    assert [o.id for o in rep.problems] == ["a_red.png"] and "UTF-16LE" in rep.problems[0].reason
    assert not (tmp_path / "o" / "a_red.txt").exists()


def test_lint_reports_the_encoding_guess(data):
    (data / "a_red.txt").write_bytes(CP1252)
    rep = lint_folder(data)
    unread = [i for i in rep.issues if i.code == "unreadable"]
    assert len(unread) == 1 and "CP1252" in unread[0].message and rep.n_failed == 1


# -- prep's executor and ONNX session --------------------------------------------------------------


class BatchFails(WD14Backend):
    """A real WD14 backend whose multi-image calls raise: the executor retries image by image."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []

    def caption_batch(self, items, options):
        self.calls.append(len(items))
        if len(items) > 1:
            raise RuntimeError("batch blew up")
        if items[0].id == "c_blue.png":
            raise RuntimeError("this one is broken")
        return super().caption_batch(items, options)


def test_failed_batch_falls_back_to_one_by_one_on_prep_executor(model, data):
    backend = BatchFails()
    rep = caption_folder(data, "wd14", CaptionOptions(model=str(model), batch_size=8), backend=backend)
    assert backend.calls == [2, 1, 1]
    assert rep.count("ok") == 1 and (data / "a_red.txt").exists()
    assert "c_blue.png" in rep.problems[0].reason and "this one is broken" in rep.problems[0].reason


class NoResult:
    name = "none"
    needs_key = None
    kind = "text"

    def caption_batch(self, items, options):
        return [CaptionResult(items[0].id, "ok", text="a caption")]

    def estimate(self, n, options):
        raise AssertionError


def test_backend_dropping_an_image_is_a_failure(data):
    rep = caption_folder(data, "none", CaptionOptions(batch_size=2), backend=NoResult())
    assert rep.count("ok") == 1 and "returned no result" in rep.problems[0].reason


def test_wd14_builds_its_session_with_prep_onnx(model):
    import prep.detectors
    import prep.onnx

    assert prep.detectors.onnx_session is prep.onnx.onnx_session
    m = WD14Backend().model(CaptionOptions(model=str(model), device="cpu"))
    assert m.providers == ["CPUExecutionProvider"]


# -- lint from prep.archs -------------------------------------------------------------------------


@pytest.mark.parametrize(("trainer", "encoder", "budget"), [("wan", "T5", 512), ("wan22", "T5", 512), ("wan21-i2v", "T5", 512),
                                                             ("sd3", "CLIP", 75), ("anima", "Qwen3", 512), ("flux", "T5", 512)])
def test_lint_reads_the_text_encoder_from_prep_archs(data, trainer, encoder, budget):
    from prep.archs import get_arch

    rep = LINT_STAGE.run(data, data, LintOptions(trainer=trainer))
    assert rep.encoder == encoder and rep.budget == budget and rep.trainer == get_arch(trainer).name


def test_lint_unknown_trainer_names_prep_archs_choices(data):
    res = runner.invoke(app, ["lint", str(data), "--trainer", "sd15"], env={"COLUMNS": "300", "TERMINAL_WIDTH": "300"})
    assert res.exit_code == 2 and "anima" in res.output and "wan22-t2v" in res.output
