"""Studio edits survive `loraprep run`: a real project (tiny WD model, real YuNet), edited in the
studio, rerun; the dataset reflects every edit (caption, batch rename, reject, crop override)."""

from __future__ import annotations

import json
import shutil

from PIL import Image
from starlette.testclient import TestClient
from typer.testing import CliRunner
from wd_tiny import build_tiny_wd14

from loraprep.cli import app
from loraprep.studio.app import create_app
from loraprep.studio.data import Dataset
from prep import overrides as ovr

TRIGGER = "sylvie_char"


def _run(args: list[str]) -> dict:
    res = CliRunner().invoke(app, ["run", *args, "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_edits_in_the_studio_survive_a_rerun(tmp_path, anime_dir, yunet_model):
    raw = tmp_path / "raw"
    raw.mkdir()
    for p in sorted(anime_dir.glob("sylvie_*.png"))[:4]:
        shutil.copy(p, raw / p.name)
    shutil.copy(anime_dir / "bg_meadow.jpg", raw / "meadow.jpg")
    wd = build_tiny_wd14(tmp_path / "wd", batch=None)
    models = tmp_path / "models"
    models.mkdir()
    project = tmp_path / "project"
    args = [str(raw), "-o", str(project), "--trigger", TRIGGER, "--trainer", "anima", "--framing", "bust", "--resolution", "256",
            "--caption-model", str(wd), "--detector", "photo", "--detector-model", str(yunet_model),
            "--dit", str(models / "a.safetensors"), "--qwen3", str(models / "q.safetensors"), "--vae", str(models / "v.safetensors"), "--workers", "1"]
    _run(args)
    ds = Dataset(project)
    ids = sorted(ds.entries)
    c = TestClient(create_app(ds, token=None))
    edited, rejected, cropped = ids[1], ids[2], "meadow.png"
    assert c.post("/api/caption", data={"id": edited, "text": f"{TRIGGER}, hand written caption"}).status_code == 200
    assert c.post("/api/batch", data={"scope": "filtered", "q": "", "op": "add", "tag": "studio_tag"}).status_code == 200
    assert c.post("/api/reject", data={"id": rejected}).status_code == 200
    r = c.post("/api/crop", data={"id": cropped, "x0": "100", "y0": "100", "x1": "500", "y1": "600"})
    assert r.status_code == 200, r.text
    box = ovr.load_overrides(project).crops["meadow.jpg"]

    _run(args)  # the rejected source changed 01_raw: crop, merge and the rest rerun

    captions = [p.read_text(encoding="utf-8").strip() for p in (project / "dataset").rglob("*.txt")]
    assert len(captions) == len(ids) - 1  # the rejected image is gone from the dataset
    assert f"{TRIGGER}, hand written caption, studio_tag" in captions
    assert sum("studio_tag" in t for t in captions) == len(ids) - 1
    assert (project / "rejected" / rejected).exists()
    rec = next(json.loads(line) for line in (project / "02_cropped" / "crops.jsonl").read_text().splitlines() if json.loads(line)["id"] == "meadow.jpg")
    assert rec["crop"][0] == [round(v) for v in box["box"]]
    with Image.open(project / "02_cropped" / "meadow.png") as im:
        assert list(im.size) == rec["bucket"]
