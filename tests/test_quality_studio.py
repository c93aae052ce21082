"""The quality, identity and rating findings as studio filters, through Starlette's TestClient,
on a project whose reports come from the real `prep check` and a real (tiny) WD tagger run."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from starlette.testclient import TestClient
from wd_tiny import build_tiny_wd14

from captioning.backends.base import CaptionOptions
from captioning.lint import lint_folder
from captioning.pipeline import caption_folder
from loraprep.studio.app import create_app
from loraprep.studio.data import Dataset
from loraprep.studio.demo import TRIGGER, make_project
from prep.check import CheckOptions, check_folder

TOKEN = "t0k"


def test_quality_flags_and_rating_are_filters(tmp_path: Path, astronaut: Image.Image) -> None:
    root = make_project(tmp_path / "proj", 8, size=(96, 120))
    a = np.asarray(astronaut)
    for name, im in {
        "img_00003.jpg": Image.fromarray(cv2.GaussianBlur(a, (0, 0), 4)),
        "img_00004.jpg": astronaut,
        "img_00005.jpg": astronaut.convert("L").convert("RGB"),
    }.items():
        im.save(root / "01_raw" / name, quality=92)
        im.save(root / "04_captioned" / name, quality=92)
    rep = check_folder(root / "01_raw", CheckOptions(workers=1, resolution=512))
    (root / "reports" / "check.json").write_text(json.dumps(rep.to_json()), encoding="utf-8")
    caption_folder(root / "04_captioned", "wd14", CaptionOptions(model=str(build_tiny_wd14(tmp_path / "wd"))),
                   output=root / "03_captions")
    (root / "04_captioned" / "img_00006.txt").write_text(f"{TRIGGER}, 1girl\n", encoding="utf-8")
    lint = lint_folder(root / "04_captioned", trigger=TRIGGER, trainer="anima")
    (root / "reports" / "lint.json").write_text(json.dumps(lint.to_json()), encoding="utf-8")

    c = TestClient(create_app(Dataset(root), token=TOKEN))
    assert c.get(f"/?token={TOKEN}").status_code == 200

    def ids(q: str) -> set[str]:
        r = c.get("/api/items", params={"q": q})
        assert r.status_code == 200, r.text
        return {i["id"] for i in r.json()["items"]}

    assert "img_00003.jpg" in ids("check:blurry") and "img_00004.jpg" not in ids("check:blurry")
    assert "img_00005.jpg" in ids("check:monochrome") and "img_00004.jpg" not in ids("check:monochrome")
    assert "img_00004.jpg" not in ids("check:no_face")
    assert ids("check:blurry OR check:monochrome") >= {"img_00003.jpg", "img_00005.jpg"}
    assert ids("lint:trigger_only") == {"img_00006.jpg"}
    assert ids("lint:near_identical") >= {"img_00004.jpg", "img_00005.jpg"}  # the photo and its grey copy: one shot
    assert len(ids("rating:general")) == 8 and ids("rating:explicit") == set()
    assert c.get("/api/items", params={"q": "rating:spicy"}).status_code == 400
    page = c.get("/").text
    assert "check:blurry" in page  # the finding is offered on the grid
