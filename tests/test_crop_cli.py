"""`prep crop` on the command line: exit codes, --json on stdout, --dry-run, sources untouched."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image
from typer.testing import CliRunner

from prep.cli import app

runner = CliRunner()


def _src(tmp_path: Path, astronaut: Image.Image) -> Path:
    src = tmp_path / "raw"
    src.mkdir()
    astronaut.resize((1024, 1024)).save(src / "astro.jpg", quality=92)
    Image.new("RGB", (640, 480), (10, 200, 10)).save(src / "green.png")
    return src


def test_cli_json_report_and_exit_codes(tmp_path: Path, astronaut: Image.Image, yunet_model: Path, digest) -> None:
    src = _src(tmp_path, astronaut)
    before = digest(src)
    out = tmp_path / "out"
    args = ["crop", str(src), "-o", str(out), "--detector", "photo", "--detector-model", str(yunet_model), "--resolution", "512", "--framing", "bust", "--format", "webp", "-j", "2"]
    res = runner.invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["summary"]["total"] == 2 and doc["summary"]["outputs"] == 2
    by_id = {d["id"]: d for d in doc["images"]}
    assert by_id["astro.jpg"]["outputs"] == ["astro.webp"] and by_id["green.png"]["flags"] == ["no_face"]
    with Image.open(out / "astro.webp") as im:
        assert im.size == tuple(by_id["astro.jpg"]["bucket"])
    assert (out / "crops.jsonl").is_file() and (out / "contact_sheet.jpg").is_file()

    # a broken file: the others are done, exit 3 (partial), the file is named
    (src / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    res = runner.invoke(app, args)
    assert res.exit_code == 3
    assert "bad.png" in res.output
    (src / "bad.png").unlink()
    assert digest(src) == before


def test_cli_dry_run_and_usage_errors(tmp_path: Path, astronaut: Image.Image, yunet_model: Path) -> None:
    src = _src(tmp_path, astronaut)
    out = tmp_path / "out"
    base = ["crop", str(src), "-o", str(out), "--detector", "photo", "--detector-model", str(yunet_model)]
    res = runner.invoke(app, [*base, "--dry-run", "--json", "--resolution", "512"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["dry_run"] is True and not out.exists()
    res = runner.invoke(app, [*base, "--framing", "knees"])
    assert res.exit_code == 2 and "unknown framing" in res.output
    res = runner.invoke(app, [*base, "--trainer", "sdxl", "--bucket-step", "16"])
    assert res.exit_code == 2
    res = runner.invoke(app, ["crop", str(src), "-o", str(out), "--detector", "photo", "--detector-model", str(tmp_path / "missing.onnx")])
    assert res.exit_code == 1 and "missing.onnx" in res.output
