"""A generated loraprep project of N images, for trying the studio, its benchmark and its tests.

It has what a real run leaves behind (01_raw sources, 02_cropped/crops.jsonl with faces, crop
boxes and flags, 04_captioned captions, reports/check.json and dedupe.json) with known
problems mixed in at fixed rates: captions without the trigger, identity tags left, no face,
several faces, small sources, duplicate pairs. No model is needed.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

from prep.fsutil import atomic_write_text

TRIGGER = "demo_char"
TAGS = ["1girl", "solo", "smile", "looking at viewer", "outdoors", "indoors", "standing", "sitting", "upper body", "full body",
        "simple background", "white background", "dress", "shirt", "jacket", "hat", "holding", "open mouth", "closed eyes", "day",
        "night", "flower", "tree", "sky", "cloud", "window", "chair", "book", "cup", "from side"]
IDENTITY = ["long hair", "blue eyes", "blonde hair", "twintails"]


def make_project(root: Path, n: int, *, size: tuple[int, int] = (320, 400), seed: int = 0, every: dict[str, int] | None = None) -> Path:
    """Write a project of `n` images under `root` (which must not exist or be empty)."""
    rates = {"no_trigger": 7, "identity": 5, "no_face": 11, "multi_face": 13, "small": 17, "dup": 19, **(every or {})}
    rng = random.Random(seed)
    raw, cropped, captioned, reports = (root / d for d in ("01_raw", "02_cropped", "04_captioned", "reports"))
    for d in (raw, cropped, captioned, reports):
        d.mkdir(parents=True, exist_ok=True)
    atomic_write_text(root / "loraprep.toml", "[project]\n"
                      f'source = "{(root / "source").as_posix()}"\ntrigger = "{TRIGGER}"\ntrainer = "anima"\nresolution = 512\n')
    w, h = size
    crops, small, groups = [], [], []
    for i in range(1, n + 1):
        name = f"img_{i:05d}.jpg"
        colour = tuple(rng.randrange(40, 220) for _ in range(3))
        im = Image.new("RGB", (w, h), colour)
        dr = ImageDraw.Draw(im)
        fx, fy, fs = w * 0.3 + rng.random() * w * 0.1, h * 0.12, w * 0.35
        dr.ellipse((fx, fy, fx + fs, fy + fs * 1.2), fill=(240, 210, 190))
        dr.rectangle((w * 0.2, h * 0.5, w * 0.8, h), fill=tuple(255 - c for c in colour))
        im.save(raw / name, quality=85)
        im.crop((int(w * 0.1), 0, int(w * 0.9), int(h * 0.9))).save(captioned / name, quality=85)
        tags = rng.sample(TAGS, 8)
        if i % rates["identity"] == 0:
            tags[2:2] = rng.sample(IDENTITY, 2)
        if i % rates["no_trigger"] != 0:
            tags.insert(0, TRIGGER)
        (captioned / f"img_{i:05d}.txt").write_text(", ".join(tags) + "\n", encoding="utf-8")  # generated: no fsync per file
        flags, faces = [], [[fx, fy, fx + fs, fy + fs * 1.2, 0.93]]
        if i % rates["no_face"] == 0:
            flags, faces = ["no_face"], []
        elif i % rates["multi_face"] == 0:
            flags, faces = ["multi_face"], faces + [[w * 0.7, h * 0.2, w * 0.95, h * 0.45, 0.8]]
        if i % rates["small"] == 0:
            flags.append("small_source")
            small.append(name)
        if i % rates["dup"] == 0 and i > 1:
            groups.append({"keep": f"img_{i - 1:05d}.jpg", "others": [name], "distances": {name: 2}, "mirrored": []})
        crops.append({"id": name, "source": str(raw / name), "outputs": [name], "faces": faces, "crop": [[w * 0.1, 0, w * 0.9, h * 0.9]],
                      "bucket": [448, 512], "status": "flagged" if flags else "ok", "reason": "; ".join(flags) or None, "flags": flags,
                      "size": [w, h]})
    atomic_write_text(cropped / "crops.jsonl", "".join(json.dumps(c) + "\n" for c in crops))
    atomic_write_text(reports / "check.json", json.dumps({"problems": {"small": small, "corrupt": [], "transparent": []}}))
    atomic_write_text(reports / "dedupe.json", json.dumps({"groups": groups}))
    return root
