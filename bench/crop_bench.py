"""Benchmark `prep crop` on 12 MP JPEGs with YuNet against the decode-only bound (and autocrop).

    python bench/crop_bench.py --n 24 --yunet ../shared/models/face_detection_yunet_2023mar.onnx \
        [--autocrop-python /tmp/acvenv/bin/python]

Makes N synthetic 4000x3000 JPEGs (a real face from skimage's astronaut pasted at a random
place and size onto a textured background, a quarter of them EXIF-rotated), then measures
images/s for:
- decode-only bound: `load_image` at full size (what any crop tool must at least do);
- prep crop, `decode=draft` (detect on a DCT-reduced decode, decode again only as large as the
  crop needs) and `decode=full` (one full decode, reduced for detection), 1 worker and all cores;
- autocrop 2.0 (`Cropper.crop`, YuNet via cv2) when a Python with it installed is given;
- with `--rerun`: a first run with contact sheets, the rerun with nothing to do, and the rerun
  after one source changed (reruns recognise unchanged sources by their stat, redraw no sheet).
Prints a Markdown table. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prep.crop import CropOptions, crop_folder  # noqa: E402
from prep.images import load_image  # noqa: E402


def make_images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    from skimage import data

    rng = random.Random(seed)
    face = Image.fromarray(data.astronaut())
    base = np.random.default_rng(seed).integers(60, 190, size=(300, 400, 3), dtype=np.uint8)
    texture = Image.fromarray(base).resize((4000, 3000), Image.Resampling.BICUBIC)
    paths = []
    for i in range(n):
        im = texture.copy()
        side = rng.randint(1400, 3000)  # astronaut 512 px holds a ~110 px face: faces of 300-650 px
        x, y = rng.randint(0, 4000 - side), rng.randint(0, 3000 - side)
        im.paste(face.resize((side, side), Image.Resampling.BILINEAR), (x, y))
        p = folder / f"img_{i:03d}.jpg"
        if i % 4 == 3:
            exif = Image.Exif()
            exif[0x0112] = 6
            im.rotate(90, expand=True).save(p, quality=90, exif=exif)
        else:
            im.save(p, quality=90)
        paths.append(p)
    return paths


def bench_decode(paths: list[Path]) -> float:
    t = time.perf_counter()
    for p in paths:
        load_image(p)
    return len(paths) / (time.perf_counter() - t)


def bench_prep(src: Path, yunet: Path, workers: int, decode: str, framing: str, fmt: str) -> tuple[float, int]:
    out = Path(tempfile.mkdtemp(prefix="cropbench_out_"))
    try:
        opts = CropOptions(framing=framing, resolution=1024, detector="photo", detector_model=str(yunet), workers=workers, decode=decode, upscale=True, contact_sheet=False, format=fmt)
        t = time.perf_counter()
        rep = crop_folder(src, out, opts)
        dt = time.perf_counter() - t
        found = sum(1 for r in rep.results if r.data.get("faces"))
        return len(rep.results) / dt, found
    finally:
        shutil.rmtree(out, ignore_errors=True)


def bench_rerun(src: Path, yunet: Path, workers: int, fmt: str) -> list[tuple[str, float]]:
    """Seconds for a first run with contact sheets, an identical rerun, and a rerun after one edit."""
    out = Path(tempfile.mkdtemp(prefix="cropbench_rerun_"))
    try:
        opts = CropOptions(resolution=1024, detector="photo", detector_model=str(yunet), workers=workers, upscale=True, format=fmt)
        times = []
        for what in ("first run, contact sheet on", "rerun, nothing to do", "rerun, one source changed"):
            if what.endswith("changed"):
                first = min(src.glob("*.jpg"))
                im = Image.open(first)
                im.load()
                exif = im.getexif()
                im.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(first, quality=90, exif=exif)
            t = time.perf_counter()
            crop_folder(src, out, opts)
            times.append((what, time.perf_counter() - t))
        return times
    finally:
        shutil.rmtree(out, ignore_errors=True)


AUTOCROP_SCRIPT = r"""
import sys, time, json
from pathlib import Path
from autocrop import Cropper
paths = sorted(Path(sys.argv[1]).glob('*.jpg'))
c = Cropper(width=832, height=1216, face_percent=35)
t = time.perf_counter(); found = 0
for p in paths:
    r = c.crop(str(p))
    img = getattr(r, 'image', r)
    if img is not None:
        found += 1
dt = time.perf_counter() - t
print(json.dumps({'ips': len(paths) / dt, 'found': found}))
"""


def bench_autocrop(python: str, src: Path) -> dict | None:
    try:
        res = subprocess.run([python, "-c", AUTOCROP_SCRIPT, str(src)], capture_output=True, text=True, timeout=900, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"autocrop skipped: {exc}", file=sys.stderr)
        return None
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=24)
    ap.add_argument("--yunet", type=Path, default=Path(__file__).resolve().parents[2] / "shared/models/face_detection_yunet_2023mar.onnx")
    ap.add_argument("--framing", default="bust")
    ap.add_argument("--format", default="png", help="output format of the crops (png, jpg, webp)")
    ap.add_argument("--rerun", action="store_true", help="also time reruns (nothing to do; one source changed)")
    ap.add_argument("--autocrop-python", default=None, help="a Python that has autocrop==2.0.0 installed (its own venv)")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    src = Path(tempfile.mkdtemp(prefix="cropbench_src_"))
    try:
        paths = make_images(src, args.n)
        mb = sum(p.stat().st_size for p in paths) / len(paths) / 1e6
        rows = [("decode-only bound (load_image, full size), 1 thread", bench_decode(paths), "-")]
        for workers in sorted({1, cores}):
            for decode in ("draft", "full"):
                ips, found = bench_prep(src, args.yunet, workers, decode, args.framing, args.format)
                rows.append((f"prep crop --framing {args.framing} --format {args.format}, decode={decode}, {workers} worker(s)", ips, f"{found}/{args.n}"))
        reruns = bench_rerun(src, args.yunet, cores, args.format) if args.rerun else []
        if args.autocrop_python:
            r = bench_autocrop(args.autocrop_python, src)
            if r:
                rows.append(("autocrop 2.0.0 Cropper.crop (832x1216, face 35%), 1 process", r["ips"], f"{r['found']}/{args.n}"))
        print(f"\n{args.n} JPEGs, 4000x3000 (12 MP), {mb:.1f} MB each, quality 90; {cores} cores; python {sys.version.split()[0]}\n")
        print("| what | images/s | faces found |")
        print("|---|---:|---:|")
        for name, ips, found in rows:
            print(f"| {name} | {ips:.2f} | {found} |")
        if reruns:
            print(f"\n| prep crop, {cores} worker(s), --format {args.format} | seconds |\n|---|---:|")
            for name, secs in reruns:
                print(f"| {name} | {secs:.2f} |")
    finally:
        shutil.rmtree(src, ignore_errors=True)


if __name__ == "__main__":
    main()
