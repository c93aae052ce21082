"""prep trigger: captions a user already has get the trigger first, exactly once; idempotent."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from badimages import gradient
from prep.cli import app

runner = CliRunner()


def _folder(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    for i, cap in enumerate(["1girl, solo", "[trigger], smiling", "Sage_Char, 1girl, sage_char", None, "A photo of sage_char in a park"]):
        gradient(32, 32, seed=i).save(d / f"{i}.png")
        if cap is not None:
            (d / f"{i}.txt").write_text(cap + "\n", encoding="utf-8")
    return d


def test_trigger_first_once_idempotent_and_reported(tmp_path):
    d = _folder(tmp_path)
    res = runner.invoke(app, ["trigger", str(d), "--trigger", "sage_char", "--json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    assert rep["changed"] == ["0.png", "1.png", "2.png", "4.png"] and rep["missing"] == ["3.png"]
    caps = {p.stem: p.read_text().strip() for p in d.glob("*.txt")}
    assert caps == {
        "0": "sage_char, 1girl, solo",
        "1": "sage_char, smiling",
        "2": "sage_char, 1girl",
        "4": "sage_char, A photo of the subject in a park",
    }
    res2 = runner.invoke(app, ["trigger", str(d), "--trigger", "sage_char", "--json"])
    assert json.loads(res2.stdout)["changed"] == []  # idempotent
    assert {p.stem: p.read_text().strip() for p in d.glob("*.txt")} == caps


def test_dry_run_changes_nothing_and_create_missing(tmp_path, digest):
    d = _folder(tmp_path)
    before = digest(d)
    res = runner.invoke(app, ["trigger", str(d), "--trigger", "sage_char", "--dry-run"])
    assert res.exit_code == 0 and digest(d) == before
    runner.invoke(app, ["trigger", str(d), "--trigger", "sage_char", "--create-missing"])
    assert (d / "3.txt").read_text().strip() == "sage_char"
