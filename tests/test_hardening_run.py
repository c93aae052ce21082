"""Issue 12: files honour the umask, temp files stay within the name limit and a killed run's are
swept, a rerun whose only remaining images are blocked exits 3, and no option puts a trainer
file outside the run folder unless the user gave an absolute path."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from hardening import figure, leftovers
from PIL import Image
from typer.testing import CliRunner

from prep.fsutil import (
    NAME_MAX,
    TEMP_PREFIX,
    atomic_write_text,
    link_or_copy,
    sweep_stale_temps,
    temp_name,
)
from prep.manifest import Manifest, Record

runner = CliRunner()


@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield lambda m: os.umask(m)
    os.umask(old)


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


# -- umask ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mask, want", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_honour_the_umask(tmp_path, umask, mask, want):
    umask(mask)
    atomic_write_text(tmp_path / "a.txt", "x\n")
    src = tmp_path / "src.png"
    src.write_bytes(b"png")
    os.chmod(src, 0o400)  # a read-only original: its copy is still the user's usual mode
    link_or_copy(src, tmp_path / "sub" / "copy.png", link=False)
    Manifest.in_folder(tmp_path).append(Record("crop", "a", "ok"))
    assert mode(tmp_path / "a.txt") == want
    assert mode(tmp_path / "sub" / "copy.png") == want
    assert mode(tmp_path / "manifest.jsonl") == want
    figure("fault", 1, 1, note=f"umask {mask:o}")


def test_a_command_writes_with_the_umask(tmp_path, umask):
    from prep.cli import app

    umask(0o022)
    src = tmp_path / "src"
    src.mkdir()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(src / "a.png")
    (src / "a.txt").write_text("ohwx, a\n")
    res = runner.invoke(app, ["layout", str(src), "-o", str(tmp_path / "ds"), "--trigger", "ohwx", "--copy"])
    assert res.exit_code == 0, res.output
    files = [p for p in (tmp_path / "ds").rglob("*") if p.is_file()]
    assert files and {mode(p) for p in files} == {0o644}, {p.name: oct(mode(p)) for p in files}


# -- temp files ---------------------------------------------------------------------------------


def test_temp_names_stay_within_the_name_limit(tmp_path):
    long_name = "é" * 120 + ".png"  # 244 bytes: the target fits, a naive ".NAME.xxxx.tmp" does not
    assert len(long_name.encode()) <= NAME_MAX
    t = temp_name(long_name)
    assert t.startswith(TEMP_PREFIX) and len(os.fsencode(t)) <= NAME_MAX
    atomic_write_text(tmp_path / long_name, "ok\n")
    link_or_copy(tmp_path / long_name, tmp_path / "d" / long_name, link=False)
    assert (tmp_path / "d" / long_name).read_text() == "ok\n"
    bad = os.fsdecode(b"caf\xe9" * 60 + b".png")  # a Latin-1 name, 244 bytes, not UTF-8
    atomic_write_text(tmp_path / bad, "latin\n")
    assert (tmp_path / bad).read_text() == "latin\n" and leftovers(tmp_path) == []
    figure("bad_input", 2, 2, note="target names near the 255-byte limit")


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_temps_of_a_killed_run_are_swept_and_live_ones_kept(tmp_path):
    dead = tmp_path / f"{TEMP_PREFIX}{_dead_pid()}-0badcafe-a.png.tmp"
    alive = tmp_path / f"{TEMP_PREFIX}{os.getppid()}-0badcafe-b.png.tmp"  # our parent is running
    mine = tmp_path / ".notes.tmp"  # a user file that merely looks temporary
    for p in (dead, alive, mine):
        p.write_bytes(b"partial")
    atomic_write_text(tmp_path / "c.txt", "c\n")  # the first write into the folder sweeps it
    assert not dead.exists() and alive.exists() and mine.exists()
    assert sweep_stale_temps(tmp_path) == []  # once per folder per process
    figure("fault", 1, 1, note="stale temp from a killed writer")


# -- a rerun with only blocked images left ----------------------------------------------------


def test_a_rerun_with_only_blocked_images_left_exits_3_like_the_first(tmp_path, monkeypatch):
    pytest.importorskip("google.genai")
    from stubs.gemini_stub import GeminiStub

    from captioning.cli import app

    raw = tmp_path / "raw"
    raw.mkdir()
    Image.new("RGB", (90, 60), (220, 20, 20)).save(raw / "a_red.png")
    for i in range(3):
        Image.new("RGB", (90, 60), (20, 60 + 40 * i, 200)).save(raw / f"img{i}.png")

    def is_red(jpeg: bytes) -> bool:
        import io

        r, g, _ = Image.open(io.BytesIO(jpeg)).convert("RGB").resize((1, 1)).getpixel((0, 0))
        return r > 150 and g < 80

    monkeypatch.setenv("GEMINI_API_KEY", "AIzaFAKE-hardening-0000")
    with GeminiStub(block_if=is_red) as stub:
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", stub.url)
        args = [str(raw), "--backend", "gemini", "--trigger", "sage", "--set", "backoff_base=0.01", "--json"]
        first = runner.invoke(app, args, catch_exceptions=False)
        assert first.exit_code == 3, first.output
        n = len(stub.requests)
        again = runner.invoke(app, args, catch_exceptions=False)
        assert len(stub.requests) == n  # nothing asked again
        figure("paid", 4, 4, note="caption rerun after a safety block: no image asked twice")
        assert again.exit_code == 3, again.output  # still partial: the blocked image has no caption
        assert json.loads(again.stdout)["counts"]["blocked"] == 1
    figure("fault", 1, 1, note="rerun with only safety-blocked images left")


# -- options that name files outside the run folder --------------------------------------------

REFUSED = [
    "output_name=../x", "output_name=a/b", "output_name=/tmp/x", "output_name=..\\x",
    "output_dir=../elsewhere", "logging_dir=logs/../../up", "sample_prompts=../prompts.txt", "output_dir=~/loras",
]
ALLOWED = ["output_name=my_lora", "output_dir=/srv/loras", "logging_dir=logs2", "output_dir=out/../out2"]


@pytest.mark.parametrize("item", REFUSED)
def test_an_option_naming_a_file_outside_the_run_folder_is_refused(item):
    from train_bridge.config import ConfigError, split_overrides
    from train_bridge.options import load_option_list
    from train_bridge.trainers import get_arch

    spec = get_arch("anima")
    with pytest.raises(ConfigError) as ei:
        split_overrides(spec, [item], load_option_list(spec.options_key))
    key = item.partition("=")[0]
    assert key in str(ei.value) and ("absolute" in str(ei.value) or "not a path" in str(ei.value))
    figure("bad_input", 1, 1, note=f"--set {item}")


@pytest.mark.parametrize("item", ALLOWED)
def test_an_absolute_path_or_one_inside_the_run_folder_is_kept(item):
    from train_bridge.config import split_overrides
    from train_bridge.options import load_option_list
    from train_bridge.trainers import get_arch

    spec = get_arch("anima")
    train, _, _ = split_overrides(spec, [item], load_option_list(spec.options_key))
    k, _, v = item.partition("=")
    assert train[k] == v


def test_loraprep_run_refuses_set_output_name_outside_before_running(tmp_path):
    from loraprep.cli import app

    raw = tmp_path / "raw"
    raw.mkdir()
    Image.new("RGB", (64, 64)).save(raw / "a.png")
    res = runner.invoke(app, ["run", str(raw), "-o", str(tmp_path / "p"), "--trigger", "t", "--trainer", "anima", "--set", "output_name=../x"])
    assert res.exit_code == 2 and "output_name" in res.output and "nothing was run" in res.output
    assert not (tmp_path / "p").exists()


def test_train_bridge_config_name_outside_is_refused(tmp_path):
    from train_bridge.config import ConfigError, write_run_config

    ds = tmp_path / "ds" / "img" / "10_t"
    ds.mkdir(parents=True)
    Image.new("RGB", (64, 64)).save(ds / "a.png")
    (ds / "a.txt").write_text("t\n")
    with pytest.raises(ConfigError, match="output_name"):
        write_run_config("anima", tmp_path / "ds", tmp_path / "run", models={}, output_name="../../x", trigger="t", dry_run=True)
    figure("bad_input", 1, 1, note="train_bridge config --name ../../x")


def test_a_rerun_with_nothing_to_redo_still_sweeps_a_killed_runs_temps(tmp_path):
    """crop resumes every image (writes no image), yet the killed run's temp goes."""
    from prep.fsutil import _swept

    out = tmp_path / "out"
    out.mkdir()
    stale = out / f"{TEMP_PREFIX}{_dead_pid()}-00ff00ff-a.png.tmp"
    stale.write_bytes(b"half an image")
    _swept.pop(os.path.abspath(out), None)  # as in a fresh process
    Manifest.in_folder(out)
    assert not stale.exists()
    figure("fault", 1, 1, note="stale temp in a folder the rerun only reads")
