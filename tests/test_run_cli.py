"""`loraprep run` ergonomics: refusals before any stage runs, --dry-run, --unset, exit codes, summaries."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from loraprep.cli import _fmt, app, render, warnings_of
from loraprep.project import Project
from loraprep.run import Pipeline, RunReport, StageResult
from loraprep.stages import Step

runner = CliRunner()


def _invoke(args: list[str]):
    return runner.invoke(app, ["run", *args], catch_exceptions=False)


def _project(tmp_path: Path, **train_set) -> Path:
    raw = tmp_path / "raw"
    raw.mkdir(exist_ok=True)
    p = Project(source=str(raw), trigger="sage")
    p.train.set = dict(train_set)
    proj = tmp_path / "proj"
    proj.mkdir()
    p.save(proj / "loraprep.toml")
    return proj


def test_unknown_trainer_refused_before_anything_runs(tmp_path):
    (tmp_path / "raw").mkdir()
    res = _invoke([str(tmp_path / "raw"), "-o", str(tmp_path / "p"), "--trigger", "x", "--trainer", "animaa"])
    assert res.exit_code == 2
    assert "did you mean 'anima'" in " ".join(res.output.split())
    assert not (tmp_path / "p").exists()


def test_bad_set_is_refused_and_not_saved(tmp_path):
    proj = _project(tmp_path)
    before = (proj / "loraprep.toml").read_bytes()
    res = _invoke(["-o", str(proj), "--set", "network_dimm=8"])
    assert res.exit_code == 2 and "network_dimm" in res.output
    res = _invoke(["-o", str(proj), "--set", "network_dim=lots"])
    assert res.exit_code == 2 and "network_dim" in res.output
    assert (proj / "loraprep.toml").read_bytes() == before
    assert not (proj / "01_raw").exists()


def test_dry_run_writes_nothing_and_says_what_would_run(tmp_path):
    proj = _project(tmp_path, network_dim=8)
    before = (proj / "loraprep.toml").read_bytes()
    res = _invoke(["-o", str(proj), "--unset", "network_dim", "--set", "network_alpha=4", "--framing", "face", "--anime-model", "head.onnx", "--dry-run", "--json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    assert rep["dry_run"] is True
    stages = {s["name"]: s for s in rep["stages"]}
    assert stages.pop("variations")["status"] == "skipped"  # only with --renders
    assert all(s["status"] == "would-run" for s in stages.values())
    assert stages["crop"]["summary"]["options"]["framing"] == "face"
    assert stages["crop"]["summary"]["options"]["anime_model"] == "head.onnx"
    assert stages["config"]["summary"]["options"]["set"] == {"network_alpha": 4}
    assert (proj / "loraprep.toml").read_bytes() == before
    assert sorted(p.name for p in proj.iterdir()) == ["loraprep.toml"]
    # without --dry-run the same options are saved, and --unset removed the earlier --set
    res = _invoke(["-o", str(proj), "--unset", "network_dim", "--set", "network_alpha=4", "--json"])
    saved = Project.load(proj / "loraprep.toml")
    assert saved.train.set == {"network_alpha": 4}
    res = _invoke(["-o", str(proj), "--unset", "network_dim"])
    assert res.exit_code == 2 and "not set" in res.output


def test_a_wrong_flag_value_is_a_usage_error_naming_the_flag(tmp_path):
    proj = _project(tmp_path)
    res = _invoke(["-o", str(proj), "--framing", "torso"])
    assert res.exit_code == 2 and "--framing" in res.output and "torso" in res.output


def test_a_stopped_stage_exits_non_zero(tmp_path):
    res = _invoke([str(tmp_path / "missing"), "-o", str(tmp_path / "p"), "--trigger", "x", "--json"])
    assert res.exit_code == 1
    rep = json.loads(res.stdout)
    assert rep["stopped_at"] == "import" and "does not exist" in rep["stop_reason"]


def test_long_lists_say_how_many_more():
    text = _fmt({"flagged": {f"img{i}": "small" for i in range(9)}, "no_face": [f"f{i}" for i in range(5)]}, ("no_face", "flagged"))
    assert "no face 5 (f0, f1, f2, +2 more)" in text
    assert "+3 more" in text


def test_a_crop_summary_names_a_few_hundred_files_not_every_flagged_one(tmp_path):
    """The summary lives in the project state and on the terminal: 100k upscaled crops put every
    id and reason in it (6 MB). It names SUMMARY_NAMES and says how many there were."""
    from prep.crop import CropReport
    from prep.executor import Result
    from loraprep.stages import SUMMARY_NAMES, _crop_summary

    results = [Result(f"img_{i:04d}.png", "flagged", outputs=[f"img_{i:04d}.png"], reason="upscaled 2.0x",
                      data={"flags": ["upscaled", *(["no_face"] if i % 2 else [])], "buckets": [[512, 512]]}) for i in range(3 * SUMMARY_NAMES)]
    s = _crop_summary(CropReport(out=tmp_path, results=results, resolution=512), {})
    assert len(s["flagged"]) == SUMMARY_NAMES and s["flagged_total"] == 3 * SUMMARY_NAMES and s["flagged"]["img_0000.png"] == "upscaled 2.0x"
    assert len(s["no_face"]) == SUMMARY_NAMES and s["no_face_total"] == 3 * SUMMARY_NAMES // 2
    assert f"+{3 * SUMMARY_NAMES - 6} more" in _fmt(s, ("flagged",)) and f"no face {3 * SUMMARY_NAMES // 2} (" in _fmt(s, ("no_face",))
    small = _crop_summary(CropReport(out=tmp_path, results=results[:5], resolution=512), {})
    assert len(small["flagged"]) == 5 and "flagged_total" not in small


def test_stage_warnings_reach_the_terminal(capsys):
    rep = RunReport(Path("p"), stages=[StageResult("crop", "done", {"warnings": ["anime head model unavailable: fell back to the photo detector"], "suggested_resolution": 512})])
    notes = warnings_of(rep)
    assert any("fell back" in n for n in notes) and any("--resolution 512" in n for n in notes)
    render(rep)
    err = capsys.readouterr().err
    assert "fell back" in err


class _Flaky:
    """A stage (the prep.stage.Stage protocol) whose report has one failed item on its first run."""

    name = "flaky"

    def __init__(self):
        from prep.options import StageOptions

        self.Options = StageOptions
        self.calls = 0

    def run(self, src, out, options, *, progress=None):
        self.calls += 1
        failed = 1 if self.calls == 1 else 0

        class Rep:
            n_failed = failed

            def to_json(self):
                return {"failed": failed}

        return Rep()


def test_a_stage_with_failed_items_is_never_up_to_date(tmp_path):
    stage = _Flaky()
    step = Step("flaky", lambda: stage, lambda p, d: tmp_path, lambda d: d.reports, lambda p, d: "same", options=lambda p, d, s: s.Options())
    p = Project(source=str(tmp_path), trigger="x")
    rep = Pipeline(p, tmp_path / "proj", steps=(step,)).run()
    assert rep.stage("flaky").status == "partial" and rep.exit_code == 3
    rep = Pipeline(p, tmp_path / "proj", steps=(step,)).run()
    assert rep.stage("flaky").status == "done" and stage.calls == 2 and rep.exit_code == 0
    rep = Pipeline(p, tmp_path / "proj", steps=(step,)).run()
    assert rep.stage("flaky").status == "up-to-date" and stage.calls == 2
