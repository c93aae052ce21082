"""Issue 12 (inputs): one bad file never aborts, hangs or reaches a dataset, and originals never change.

A hostile folder (tests/badimages.write_hostile_folder: symlink loop, dangling symlink, a link to
/dev/zero, a FIFO and a device named like images, a FIFO and a folder named like captions, a
name that is not UTF-8, a 250-byte name, rich markup in a name, a 5 MB caption, truncated,
corrupt and zero-byte images, HEIC, AVIF/JFIF and a user's own `contact_sheet.jpg`) goes
through every command as a subprocess with a timeout, so a hang fails the test instead of
stalling the suite. Each run asserts the exit code, that every bad file is named with a
reason, and that the sha256 of the source folder is unchanged.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from badimages import (
    LONG_NAME,
    MARKUP_NAME,
    NON_UTF8_NAME,
    NON_UTF8_SHOWN,
    hostile_digest,
    write_hostile_folder,
)
from hardening import figure, within
from PIL import Image
from wd_tiny import build_tiny_wd14

from prep.inputs import printable

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="FIFOs, symlink loops and non-UTF-8 names are POSIX features")

TIMEOUT = 120
"""Seconds one command may take; a command that opens a FIFO waits forever and fails here."""
DISCOVERY_KINDS = {"symlink loop", "dangling symlink", "symlink to a device", "FIFO", "device", "unsupported"}
IMAGE_KINDS = {"zero-byte", "truncated", "corrupt"}
CAPTION_KINDS = {"caption is a FIFO", "caption is a folder", "caption not UTF-8"}
CONTROLS = {"red.png", "blue.jpg"}
"""The plain images of the hostile folder; every other entry is a bad or awkward input."""
CLI = {
    "prep": "from prep.cli import app; app(prog_name='prep')",
    "caption": "from captioning.cli import app; app(prog_name='caption')",
    "loraprep": "from loraprep.cli import app; app(prog_name='loraprep')",
}


def cli(tool: str, *args: Any, cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "LORAPREP_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1", "COLUMNS": "400", "NO_COLOR": "1"}
    try:
        return subprocess.run([sys.executable, "-c", CLI[tool], *map(str, args)], capture_output=True, timeout=TIMEOUT, env=env, cwd=cwd, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"`{tool} {' '.join(map(str, args))}` hung for {TIMEOUT} s (did it open a FIFO or device?)")


def doc(res: subprocess.CompletedProcess[bytes]) -> dict[str, Any]:
    try:
        return json.loads(res.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"no JSON on stdout (exit {res.returncode}):\n{res.stderr.decode(errors='replace')[-3000:]}")


def shown(name: str) -> str:
    return printable(name)




@pytest.fixture()
def hostile(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    raw = tmp_path / "raw"
    kinds = write_hostile_folder(raw)
    return raw, kinds


@pytest.fixture(scope="module")
def wd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_wd14(tmp_path_factory.mktemp("wd") / "m", batch=2)


def names(kinds: dict[str, str], wanted: set[str]) -> set[str]:
    return {shown(n) for n, k in kinds.items() if k in wanted}


def tally(kinds: dict[str, str], command: str) -> None:
    """Count for docs/reliability.md: every entry of the folder went through `command` (reached only after its assertions held)."""
    bad = [n for n in kinds if n not in CONTROLS]
    figure("bad_input", len(bad), len(bad), note=f"hostile folder through {command}")
    figure("originals", len(kinds), len(kinds), note=f"hostile folder through {command} (sha256 unchanged)")


# --- the shared pieces ----------------------------------------------------------------------


def test_discovery_names_every_special_file_and_never_opens_one(hostile) -> None:
    from prep.dataset import discover

    raw, kinds = hostile
    found = within(30, discover, raw)
    assert {i.id for i in found} == names(kinds, {"ok"} | IMAGE_KINDS | CAPTION_KINDS)
    skipped = {s.id: s.reason for s in found.skipped}
    assert set(skipped) == names(kinds, DISCOVERY_KINDS)
    assert "symlink loop" in skipped["loop.jpg"] and "dangling symlink" in skipped["dangling.png"]
    assert "character device" in skipped["devzero.jpg"] and "FIFO" in skipped["pipe.jpg"]
    assert "pillow-heif" in skipped["phone.heic"]
    # names as the OS gives them; shown with escapes
    item = next(i for i in found if i.id == NON_UTF8_SHOWN)
    assert item.path.name == NON_UTF8_NAME and os.fsencode(item.path.name) == b"caf\xe9_photo.png"


def test_the_loader_and_caption_reader_refuse_special_files_without_blocking(hostile) -> None:
    from prep.dataset import UnreadableCaption, read_caption
    from prep.images import ImageLoadError, load_image, probe_image

    raw, _ = hostile
    for name, words in (("pipe.jpg", "FIFO"), ("devzero.jpg", "character device"), ("loop.jpg", "symlink loop")):
        for fn in (load_image, probe_image):
            with pytest.raises(ImageLoadError) as err:
                within(10, fn, raw / name)
            assert words in err.value.reason and name in str(err.value)
    for name, words in (("capfifo.txt", "FIFO"), ("capdir.txt", "a folder")):
        with pytest.raises(UnreadableCaption) as cerr:
            within(10, read_caption, raw / name)
        assert words in str(cerr.value) and name in str(cerr.value)
    with pytest.raises(UnreadableCaption) as cerr:
        read_caption(raw / "latin1.txt")
    assert cerr.value.encoding and "CP1252" in cerr.value.encoding and "iconv -f CP1252" in str(cerr.value)
    os.symlink("nowhere.txt", raw / "dangle.txt")
    with pytest.raises(UnreadableCaption, match="dangling symlink"):
        read_caption(raw / "dangle.txt")
    assert read_caption(raw / "no-such-caption.txt") is None


def test_formats_users_bring(tmp_path: Path) -> None:
    from prep.dataset import discover
    from prep.images import (
        IMAGE_EXTENSIONS,
        avif_supported,
        load_image,
        unsupported_reason,
    )

    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "a.jfif", "JPEG")
    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "b.JPE", "JPEG")
    (tmp_path / "c.heic").write_bytes(b"\x00\x00\x00\x18ftypheic" + b"\x00" * 32)
    (tmp_path / "d.dng").write_bytes(b"II*\x00")
    assert load_image(tmp_path / "a.jfif").size == (40, 30)
    found = discover(tmp_path)
    assert [i.id for i in found] == ["a.jfif", "b.JPE"]
    if ".heic" not in IMAGE_EXTENSIONS:  # no HEIF plugin in this environment: named with the fix
        assert {s.id for s in found.skipped} == {"c.heic", "d.dng"}
        assert "pillow-heif" in unsupported_reason(Path("x.HEIC")) and "convert" in unsupported_reason(Path("x.heic"))
    if avif_supported():
        Image.new("RGB", (40, 30), (10, 200, 10)).save(tmp_path / "e.avif", "AVIF")
        assert load_image(tmp_path / "e.avif").size == (40, 30)
    else:
        assert "pillow>=11.3" in unsupported_reason(Path("e.avif"))


def test_report_files_are_reserved_by_location_not_by_name(tmp_path: Path) -> None:
    from prep.dataset import discover, record_report_files

    Image.new("RGB", (8, 8)).save(tmp_path / "contact_sheet.jpg")
    Image.new("RGB", (8, 8)).save(tmp_path / "contact_sheet_002.jpg")
    assert [i.id for i in discover(tmp_path)] == ["contact_sheet.jpg", "contact_sheet_002.jpg"]
    record_report_files(tmp_path, ["contact_sheet_002.jpg"], written_by="test")
    assert [i.id for i in discover(tmp_path)] == ["contact_sheet.jpg"]
    legacy = tmp_path / "old_crops"
    legacy.mkdir()
    Image.new("RGB", (8, 8)).save(legacy / "contact_sheet.jpg")
    Image.new("RGB", (8, 8)).save(legacy / "a.png")
    (legacy / "crops.jsonl").write_text("")
    assert [i.id for i in discover(legacy)] == ["a.png"]  # a crop output folder written before reports were recorded


# --- every command over the hostile folder ---------------------------------------------------


def test_check_names_every_bad_file(hostile) -> None:
    raw, kinds = hostile
    before = hostile_digest(raw)
    res = cli("prep", "check", raw, "--json")
    assert res.returncode == 0, res.stderr.decode(errors="replace")
    rep = doc(res)
    corrupt = {e["file"] for e in rep["problems"]["corrupt"]}
    assert corrupt == names(kinds, DISCOVERY_KINDS | IMAGE_KINDS)
    unreadable = {e["file"] for e in rep["problems"]["caption_unreadable"]}
    assert unreadable == {"capfifo.txt", "capdir.txt", "latin1.txt"}
    assert {i["id"] for i in rep["images"]} == names(kinds, {"ok"} | CAPTION_KINDS)
    assert MARKUP_NAME in {i["id"] for i in rep["images"]} and NON_UTF8_SHOWN in {i["id"] for i in rep["images"]}
    assert cli("prep", "check", raw, "--strict").returncode == 1
    assert hostile_digest(raw) == before
    tally(kinds, "prep check")


def test_layout_keeps_every_unreadable_file_out_of_the_dataset(hostile, tmp_path: Path) -> None:
    from prep.images import load_image

    raw, kinds = hostile
    before = hostile_digest(raw)
    ds = tmp_path / "ds"
    res = cli("prep", "layout", raw, "-o", ds, "--trigger", "sage", "--json")
    assert res.returncode == 3, res.stderr.decode(errors="replace")
    rep = doc(res)
    failed = {i["id"]: i["reason"] for i in rep["items"] if i["method"] == "failed"}
    assert set(failed) == names(kinds, DISCOVERY_KINDS | IMAGE_KINDS | CAPTION_KINDS)
    assert "kept out of the dataset" in failed["truncated.jpg"] and "empty file" in failed["empty.jpg"]
    assert "not UTF-8" in failed["latin1.png"] and "iconv" in failed["latin1.png"]
    assert hostile_digest(raw) == before
    images = [p for p in Path(rep["image_dir"]).iterdir() if p.suffix != ".txt"]
    assert len(images) == rep["n_images"] == len(names(kinds, {"ok"}))
    for p in images:  # only what the one loader opens reached the dataset
        load_image(p)
    tally(kinds, "prep layout")
    sources = {i["source"] for i in rep["items"] if i["method"] != "failed"}
    assert str(raw / "contact_sheet.jpg") in sources  # the user's image of that name is trained on
    assert str(raw / NON_UTF8_SHOWN) in sources
    # a rerun after the user fixes one file: the fixed image joins, the rest is still named
    fixed = raw / "truncated.jpg"
    fixed.unlink()
    Image.new("RGB", (64, 64), (1, 1, 1)).save(fixed, "JPEG")
    assert hostile_digest(raw) != before  # (the user's fix, not ours)
    before = hostile_digest(raw)
    rep2 = doc(cli("prep", "layout", raw, "-o", ds, "--trigger", "sage", "--json"))
    assert rep2["n_images"] == rep["n_images"] + 1
    assert hostile_digest(raw) == before


def test_layout_drops_a_file_that_became_unreadable_since_the_last_layout(tmp_path: Path) -> None:
    from prep.layout import LayoutOptions, layout_dataset

    raw = tmp_path / "raw"
    raw.mkdir()
    Image.new("RGB", (64, 64), (9, 9, 9)).save(raw / "a.png")
    Image.new("RGB", (64, 64), (90, 9, 9)).save(raw / "b.png")
    opts = LayoutOptions(trigger="sage", link="copy")
    first = layout_dataset(raw, tmp_path / "ds", opts)
    assert first.n_images == 2
    (raw / "b.png").write_bytes((raw / "b.png").read_bytes()[:40])  # the user's copy got truncated
    again = layout_dataset(raw, tmp_path / "ds", opts)
    assert again.n_images == 1 and [i.id for i in again.failed] == ["b.png"]
    assert sorted(p.name for p in Path(again.image_dir).iterdir()) == ["sage_0001.png", "sage_0001.txt"]


def test_caption_names_every_bad_file_and_never_touches_a_user_caption(hostile, wd: Path, tmp_path: Path) -> None:
    raw, kinds = hostile
    before = hostile_digest(raw)
    res = cli("caption", raw, "-o", tmp_path / "caps", "--model", wd, "--trigger", "sage", "--json")
    assert res.returncode == 3, res.stderr.decode(errors="replace")
    rep = doc(res)
    assert {p["id"] for p in rep["problems"]} == names(kinds, DISCOVERY_KINDS | IMAGE_KINDS)
    assert rep["counts"]["ok"] == len(names(kinds, {"ok"} | CAPTION_KINDS))
    assert hostile_digest(raw) == before
    tally(kinds, "caption -o")

    # in place (the default), skip mode: captions that are a FIFO, a folder or not UTF-8 stay as they are
    inplace = tmp_path / "inplace"
    kinds2 = write_hostile_folder(inplace)
    res = cli("caption", inplace, "--model", wd, "--trigger", "sage", "--json")
    assert res.returncode == 3, res.stderr.decode(errors="replace")
    problems = {p["id"]: p["reason"] for p in doc(res)["problems"]}
    assert set(problems) == names(kinds2, DISCOVERY_KINDS | IMAGE_KINDS | CAPTION_KINDS)
    assert "CP1252" in problems["latin1.png"]
    assert (inplace / "latin1.txt").read_bytes() == "caf\xe9, 1girl".encode("latin-1")
    assert (inplace / "capdir.txt").is_dir() and (inplace / "capdir.txt" / "inner.txt").read_text() == "not a caption"
    assert (inplace / "red.txt").read_text().startswith("sage, ")
    tally(kinds2, "caption in place")
    assert (inplace / (NON_UTF8_NAME[:-4] + ".txt")).read_text().startswith("sage, ")  # beside the image, its own name


def test_caption_shows_markup_and_undecodable_names_literally(wd: Path, tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    Image.new("RGB", (32, 32), (255, 0, 0)).save(d / "fine.png")
    (d / MARKUP_NAME).write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (d / NON_UTF8_NAME).write_bytes(b"")
    res = cli("caption", d, "--model", wd, "-o", tmp_path / "o")
    err = res.stderr.decode("utf-8")
    assert res.returncode == 3, err
    assert MARKUP_NAME in err and NON_UTF8_SHOWN in err


def test_lint_names_every_bad_file_and_reads_a_5_mb_caption(hostile) -> None:
    raw, kinds = hostile
    before = hostile_digest(raw)
    res = cli("caption", "lint", raw, "--trigger", "sage", "--json")
    assert res.returncode == 0, res.stderr.decode(errors="replace")
    rep = doc(res)
    unreadable = {i["id"] for i in rep["issues"] if i["code"] == "unreadable"}
    assert unreadable == names(kinds, DISCOVERY_KINDS | CAPTION_KINDS)
    assert any(i["id"] == "big.png" and i["code"] == "over_budget" for i in rep["issues"])
    assert hostile_digest(raw) == before
    tally(kinds, "caption lint")


def test_trigger_step_names_every_bad_file(hostile, tmp_path: Path) -> None:
    from prep.trigger_step import STAGE, TriggerOptions

    raw, kinds = hostile
    before = hostile_digest(raw)
    rep = within(60, STAGE.run, raw, tmp_path / "t", TriggerOptions(trigger="sage"))
    named = " ".join(rep.errors)
    for n in names(kinds, DISCOVERY_KINDS) | {"capfifo.txt", "capdir.txt", "latin1.txt"}:
        assert n in named
    assert (tmp_path / "t" / "blue.txt").read_text() == "sage, 1girl, solo\n"
    assert hostile_digest(raw) == before
    tally(kinds, "prep trigger")


def test_crop_names_every_bad_file_and_crops_the_rest(hostile, yunet_model: Path, tmp_path: Path) -> None:
    raw, kinds = hostile
    before = hostile_digest(raw)
    out = tmp_path / "crop"
    args = ["crop", raw, "-o", out, "--detector", "photo", "--detector-model", yunet_model, "--resolution", "256", "-j", "2", "--json"]
    res = cli("prep", *args)
    assert res.returncode == 3, res.stderr.decode(errors="replace")
    rep = doc(res)
    by_id = {i["id"]: i for i in rep["images"]}
    assert {i for i, r in by_id.items() if r["status"] == "failed"} == names(kinds, DISCOVERY_KINDS | IMAGE_KINDS)
    assert by_id["contact_sheet.jpg"]["outputs"] == ["contact_sheet_img.png"]
    assert "caption_unreadable" in by_id["latin1.png"]["flags"] and "CP1252" in by_id["latin1.png"]["reason"]
    assert any(len(o.encode()) <= 255 for o in by_id[LONG_NAME]["outputs"])
    assert hostile_digest(raw) == before
    # crops.jsonl and the manifest are valid UTF-8 JSON lines naming the undecodable file with escapes
    lines = [json.loads(line) for line in (out / "crops.jsonl").read_text(encoding="utf-8").splitlines()]
    assert NON_UTF8_SHOWN in {line["id"] for line in lines}
    # the crop folder's own contact sheet is a report there; the user's became a crop like any other
    from prep.dataset import discover

    ids = {i.id for i in discover(out)}
    assert "contact_sheet.jpg" not in ids and "contact_sheet_img.png" in ids
    again = doc(cli("prep", *args))
    assert again["summary"]["resumed"] == len(names(kinds, {"ok"} | CAPTION_KINDS))
    assert hostile_digest(raw) == before
    tally(kinds, "prep crop")


def test_loraprep_run_names_the_bad_files_and_finishes(hostile, wd: Path, yunet_model: Path, tmp_path: Path) -> None:
    raw, kinds = hostile
    before = hostile_digest(raw)
    models = tmp_path / "models"
    res = cli(
        "loraprep", "run", raw, "-o", tmp_path / "project", "--trigger", "sage", "--trainer", "anima", "--resolution", "256",
        "--caption-model", wd, "--detector", "photo", "--detector-model", yunet_model, "--workers", "2",
        "--dit", models / "a.safetensors", "--qwen3", models / "q.safetensors", "--vae", models / "v.safetensors", "--json",
    )
    out = res.stdout.decode("utf-8", "replace") + res.stderr.decode("utf-8", "replace")
    assert "Traceback" not in out, out[-3000:]
    assert res.returncode == 3, out[-3000:]
    for n in names(kinds, DISCOVERY_KINDS | IMAGE_KINDS):
        assert n in out
    assert hostile_digest(raw) == before


# --- triggers ---------------------------------------------------------------------------------


def test_a_trigger_is_literal_text() -> None:
    from prep.trigger import apply_trigger

    trig = r"sa\1ge\g<0>"
    assert apply_trigger("[trigger] is a woman", trig) == rf"{trig} is a woman"
    assert apply_trigger("1girl, smile", trig) == rf"{trig}, 1girl, smile"
    assert apply_trigger(rf"1girl, {trig}, smile", trig) == rf"{trig}, 1girl, smile"


@pytest.mark.parametrize("bad", ["sage\nchar", "sage\rx", "sa\x07ge", "sage --n low quality", "--sage", "sa\u200bge"])
def test_a_trigger_that_would_break_captions_or_prompts_is_refused_everywhere(bad: str, tmp_path: Path) -> None:
    from captioning.lint import LintOptions, lint_folder
    from captioning.pipeline import CaptionStageOptions
    from prep.layout import LayoutOptions
    from prep.options import OptionsError, load_options
    from prep.trigger import apply_trigger
    from prep.trigger_step import TriggerOptions, apply_trigger_to_folder

    for cls in (LayoutOptions, TriggerOptions, LintOptions, CaptionStageOptions):
        with pytest.raises(OptionsError, match="trigger"):
            load_options(cls, {"trigger": bad}, where="loraprep.toml [x]")
    with pytest.raises(ValueError, match="refused"):
        apply_trigger("1girl", bad)
    with pytest.raises(ValueError, match="refused"):
        apply_trigger_to_folder(tmp_path, bad)
    with pytest.raises(ValueError, match="refused"):
        lint_folder(tmp_path, trigger=bad)


def test_a_refused_trigger_on_the_command_line_is_a_usage_error(tmp_path: Path) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    res = cli("prep", "layout", tmp_path, "-o", tmp_path / "ds", "--trigger", "sage --n blurry")
    assert res.returncode == 2 and "sample-prompt option" in res.stderr.decode()
    assert not (tmp_path / "ds").exists()


def test_cli_helpers_show_names_literally(capsys: pytest.CaptureFixture[str]) -> None:
    from prep.cli.common import emit_json, show

    assert show("[bold]x.png") == r"\[bold]x.png" and show(NON_UTF8_NAME) == NON_UTF8_SHOWN
    emit_json({"id": NON_UTF8_NAME})
    assert json.loads(capsys.readouterr().out) == {"id": NON_UTF8_NAME}  # round-trips to the OS's name


def test_recursive_discovery_survives_a_folder_symlink_loop(tmp_path: Path) -> None:
    from prep.dataset import discover

    sub = tmp_path / "sub"
    sub.mkdir()
    Image.new("RGB", (8, 8)).save(sub / "a.png")
    os.symlink("..", sub / "up")  # following it would walk forever
    os.symlink("sub", tmp_path / "again")
    found = within(30, discover, tmp_path, recursive=True)
    assert [i.id for i in found] == ["sub/a.png"] and not found.skipped


def test_a_contact_sheet_is_a_report_only_in_the_folder_it_was_written_to(tmp_path: Path) -> None:
    from prep.contact_sheet import Tile, write_contact_sheet
    from prep.dataset import discover

    out = tmp_path / "varied"
    write_contact_sheet([[Tile(Image.new("RGB", (16, 16)), "a")]], out / "contact_sheet.jpg", written_by="test")
    Image.new("RGB", (16, 16)).save(out / "render.png")
    assert [i.id for i in discover(out)] == ["render.png"]
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "contact_sheet.jpg").write_bytes((out / "contact_sheet.jpg").read_bytes())
    assert [i.id for i in discover(tmp_path / "user")] == ["contact_sheet.jpg"]


def test_emit_json_streams_a_large_report_in_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 100k-image report is written piece by piece, never held as one text (and its copy)."""
    import io

    from prep.cli.common import emit_json

    class Out(io.StringIO):
        writes: list[int] = []

        def write(self, s: str) -> int:
            self.writes.append(len(s))
            return super().write(s)

    out = Out()
    monkeypatch.setattr(sys, "stdout", out)
    data = {"images": [{"id": f"img_{i:06d}.jpg", "flags": ["blurry"], "size": [320, 240]} for i in range(5000)] + [{"id": NON_UTF8_NAME}]}
    emit_json(data)
    text = out.getvalue()
    assert json.loads(text) == data and text == json.dumps(data, indent=2, ensure_ascii=False).encode("utf-8", "backslashreplace").decode("utf-8") + "\n"
    assert len(out.writes) > 5 and max(out.writes) < 2 * (1 << 16)
