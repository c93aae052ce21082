"""Issue 12 follow-ups: rich markup in a file name is printed literally by every command, a trigger
that would break captions or sample prompts is refused everywhere, and `prep dedupe` names what
discovery skipped.

File names cannot hold '/', so `[bold]x[/bold].png` is written as `[bold]x[bold].png`; rich would
print both test names as `x.png` / `y.png` if it read them as markup.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from bridge_helpers import make_dataset, make_models
from PIL import Image
from typer.testing import CliRunner

from prep.cli import app as prep_app
from prep.cli import common

BOLD = "[bold]x[bold].png"
RED = "[red]y.png"
NAMES = (BOLD, RED)

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="'[' and ']' names and symlinks are POSIX features here")


@pytest.fixture(autouse=True)
def _wide(monkeypatch: pytest.MonkeyPatch) -> None:
    """A wide console, so a name is never wrapped across lines (the test looks for it whole)."""
    monkeypatch.setattr(common.console, "_width", 400)  # undone to the default (None: follow the terminal)
    monkeypatch.setenv("LORAPREP_NO_PROGRESS", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _image(path: Path, color: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (96, 96)) -> Path:
    Image.new("RGB", size, color).save(path, format="PNG")
    return path


def _corrupt(folder: Path) -> None:
    for n in NAMES:
        (folder / n).write_bytes(b"\x89PNG\r\n\x1a\n broken")


def _invoke(app, args: list[str]) -> tuple[int, str]:
    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    return res.exit_code, res.stderr


def _assert_literal(err: str) -> None:
    for n in NAMES:
        assert n in err, f"{n!r} not shown literally in:\n{err}"


def test_check_shows_names_literally_and_says_caption_unreadable(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _corrupt(src)
    _image(src / "ok.png")
    (src / "ok.txt").mkdir()  # a caption path that is a folder: not "not UTF-8"
    code, err = _invoke(prep_app, ["check", src])
    assert code == 0
    _assert_literal(err)
    assert "caption unreadable" in err and "caption not UTF-8" not in err


def test_crop_table_shows_names_literally(tmp_path: Path, yunet_model: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _corrupt(src)
    _image(src / "ok.png", size=(256, 256))
    code, err = _invoke(prep_app, ["crop", src, "-o", tmp_path / "out", "--resolution", "256"])
    assert code == 3
    _assert_literal(err)


def test_layout_failures_show_names_literally(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _corrupt(src)
    for n in NAMES:
        (src / n).with_suffix(".txt").write_text("a photo", encoding="utf-8")
    _image(src / "ok.png")
    (src / "ok.txt").write_text("a photo", encoding="utf-8")
    code, err = _invoke(prep_app, ["layout", src, "-o", tmp_path / "ds", "--trigger", "sks", "--repeats", "2"])
    assert code == 3
    _assert_literal(err)


def test_trigger_changed_list_shows_names_literally(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i, n in enumerate(NAMES):
        _image(src / n, (40 * i, 0, 0))
        (src / n).with_suffix(".txt").write_text("a photo of a woman", encoding="utf-8")
    code, err = _invoke(prep_app, ["trigger", src, "--trigger", "sks", "--dry-run"])
    assert code == 0
    _assert_literal(err)


def test_caption_lint_shows_names_literally(tmp_path: Path) -> None:
    from captioning.cli import app as caption_app

    src = tmp_path / "src"
    src.mkdir()
    for i, n in enumerate(NAMES):
        _image(src / n, (40 * i, 0, 0))
        (src / n).with_suffix(".txt").write_text("a photo of a woman", encoding="utf-8")
    code, err = _invoke(caption_app, ["lint", src, "--trigger", "sks"])
    assert code == 0  # lint reports; only --strict fails
    assert "trigger_missing" in err
    _assert_literal(err)


def test_dedupe_names_literally_and_reports_skipped(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _image(src / BOLD, (10, 200, 10))
    _image(src / "copy.png", (10, 200, 10))
    os.symlink(src / "nowhere.png", src / RED)  # dangling: discovery skips it with the reason
    code, err = _invoke(prep_app, ["dedupe", src])
    assert code == 3, err
    _assert_literal(err)
    res = CliRunner().invoke(prep_app, ["dedupe", str(src), "--json"])
    rep = json.loads(res.stdout)
    assert [s["file"] for s in rep["skipped"]] == [RED] and rep["skipped"][0]["reason"]
    assert rep["images"] == 2 and rep["duplicates"] == 1


def test_dedupe_report_counts_skipped_as_failed(tmp_path: Path) -> None:
    from prep.dedupe import dedupe_folder

    os.symlink(tmp_path / "loop.png", tmp_path / "loop.png")
    _image(tmp_path / "a.png")
    rep = dedupe_folder(tmp_path, workers=1)
    assert [s.id for s in rep.skipped] == ["loop.png"] and rep.n_failed == 1


# -- the Trigger type everywhere a trigger is taken ------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, str]]]:
    root = tmp_path_factory.mktemp("names_bridge")
    return make_dataset(root, repeats=2, n_reg=0), make_models(root / "models")


def test_train_bridge_config_refuses_a_trigger_with_sample_options(world, tmp_path: Path) -> None:
    from train_bridge.cli import app as bridge_app

    ds, models = world
    m = models["anima"]
    run = tmp_path / "run"
    args = ["config", "anima", ds, "-o", run, "--dit", m["dit"], "--qwen3", m["qwen3"], "--vae", m["vae"]]
    code, err = _invoke(bridge_app, [*args, "--trigger", "x --w 64"])
    assert code == 2
    assert "' --'" in err and "sample-prompt option" in err and "x --w 64" in err
    assert not run.exists()
    code, err = _invoke(bridge_app, [*args, "--trigger", "[bold]sks"])
    assert code == 0, err
    prompts = (run / "sample_prompts.txt").read_text(encoding="utf-8")
    lines = [ln for ln in prompts.splitlines() if ln.strip() and not ln.startswith("#")]
    assert lines and all(ln.startswith("[bold]sks, ") for ln in lines)


def test_write_run_config_refuses_newline_trigger_for_every_caller(world, tmp_path: Path) -> None:
    from train_bridge.config import ConfigError, write_run_config

    ds, models = world
    with pytest.raises(ConfigError, match="line break"):
        write_run_config("anima", ds, tmp_path / "run", models=models["anima"], trigger="sks\n--n bad", dry_run=True)
    with pytest.raises(ConfigError, match="U\\+0007"):
        write_run_config("anima", ds, tmp_path / "run", models=models["anima"], trigger="sks\x07", dry_run=True)


def test_loraprep_toml_refuses_a_trigger_with_a_newline(tmp_path: Path) -> None:
    from loraprep.project import Project
    from prep.options import OptionsError

    path = tmp_path / "loraprep.toml"
    path.write_text('[project]\nsource = "raw"\ntrigger = "sks\\nwoman"\n', encoding="utf-8")
    with pytest.raises(OptionsError) as exc:
        Project.load(path)
    text = str(exc.value)
    assert str(path) in text and "[project] trigger" in text and "line break" in text
    path.write_text('[project]\nsource = "raw"\ntrigger = " sks "\n', encoding="utf-8")
    assert Project.load(path).trigger == "sks"


def test_import_problems_show_names_literally(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _image(src / BOLD)
    os.symlink(src / "nowhere.png", src / RED)  # refused by name
    (tmp_path / "out").mkdir()
    _image(tmp_path / "out" / BOLD, (1, 2, 3))  # a clash: renamed, both names printed
    code, err = _invoke(prep_app, ["import", src, "-o", tmp_path / "out"])
    assert code == 3
    _assert_literal(err)
    assert "renamed" in err
