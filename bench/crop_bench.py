"""Benchmark `prep crop` on 12 MP JPEGs with YuNet against the decode-only bound and autocrop.

    python bench/crop_bench.py --n 24 [--autocrop-python /tmp/acvenv/bin/python] [--rerun] [--in-process]

Makes N synthetic 4000x3000 JPEGs (a real face from skimage's astronaut pasted at a random
place and size onto a textured background with sensor-like grain, so entropy decoding costs
what it does on phone photos, ~4.4 MB each; a quarter of them EXIF-rotated), then measures,
each as a whole process (interpreter start, imports and writing every file included), the
wall time and the CPU time (user + sys of the child) per image of:
- the decode-only bound: `load_image` of every image at full size, one thread;
- `prep crop --workers 1` and with all cores: the defaults (PNG, contact sheet), then each
  `--format`, `--no-sheet`, and `--decode draft` (which decodes twice);
- autocrop 2.0 (`Cropper.crop` + its own `cli.output`, so it writes its files) when a Python
  with it installed is given (its own venv: it pins OpenCV);
- with `--in-process`, also the old in-process table (crop_folder, contact sheets off);
- with `--rerun`: a first run with contact sheets, the rerun with nothing to do, and the rerun
  after one source changed.
"After start-up" is the marginal cost, (N images - 1 image) / (N - 1), each tool run once on a
one-image folder too: the interpreter, imports and model load are paid once per run, not per
image. Prints Markdown tables. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
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
    grain = np.random.default_rng(seed + 1)
    paths = []
    for i in range(n):
        im = texture.copy()
        side = rng.randint(1400, 3000)  # astronaut 512 px holds a ~110 px face: faces of 300-650 px
        x, y = rng.randint(0, 4000 - side), rng.randint(0, 3000 - side)
        im.paste(face.resize((side, side), Image.Resampling.BILINEAR), (x, y))
        noise = grain.integers(-12, 13, size=(3000, 4000, 1), dtype=np.int16)
        im = Image.fromarray(np.clip(np.asarray(im, dtype=np.int16) + noise, 0, 255).astype(np.uint8))
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
from autocrop.cli import output
paths = sorted(Path(sys.argv[1]).glob('*.jpg'))
out = Path(sys.argv[2])
c = Cropper(width=832, height=1216, face_percent=35)
t = time.perf_counter(); found = 0
for p in paths:
    r = c.crop(str(p))
    img = getattr(r, 'image', r)
    if img is not None:
        found += 1
        output(str(p), str(out / (p.stem + '.png')), img)  # autocrop's own writer (PNG, Pillow's default level)
dt = time.perf_counter() - t
print(json.dumps({'ips': len(paths) / dt, 'found': found}))
"""

DECODE_SCRIPT = r"""
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from prep.images import load_image
for p in sorted(Path(sys.argv[1]).glob('*.jpg')):
    load_image(p)
"""


def whole_process(argv: list[str], n: int) -> tuple[float, float, str]:
    """(wall s per image, CPU s per image, stdout) of one child process, start-up included."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    res = subprocess.run(argv, capture_output=True, text=True, timeout=1800, check=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall / n, cpu / n, res.stdout


def bench_autocrop(python: str, src: Path, n: int) -> tuple[float, float, int] | None:
    out = Path(tempfile.mkdtemp(prefix="cropbench_ac_"))
    try:
        wall, cpu, stdout = whole_process([python, "-c", AUTOCROP_SCRIPT, str(src), str(out)], n)
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"autocrop skipped: {exc}", file=sys.stderr)
        return None
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return wall, cpu, json.loads(stdout.strip().splitlines()[-1])["found"]


def bench_cli(src: Path, yunet: Path, n: int, flags: list[str]) -> tuple[float, float, int]:
    """`prep crop` as a user runs it (its console script's module), every file written."""
    out = Path(tempfile.mkdtemp(prefix="cropbench_cli_"))
    try:
        argv = [sys.executable, "-m", "prep.cli", "crop", str(src), "-o", str(out / "o"), "--detector", "photo",
                "--detector-model", str(yunet), "--upscale", "--json", *flags]
        wall, cpu, stdout = whole_process(argv, n)
        found = sum(1 for r in json.loads(stdout)["images"] if r["faces"])
        return wall, cpu, found
    finally:
        shutil.rmtree(out, ignore_errors=True)


def marginal(total_n: float, n: int, total_1: float) -> float:
    """Per-image cost without the process start-up: (cost of N images - cost of 1) / (N - 1)."""
    return (total_n * n - total_1) / max(1, n - 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=24)
    ap.add_argument("--yunet", type=Path, default=Path(__file__).resolve().parents[2] / "shared/models/face_detection_yunet_2023mar.onnx")
    ap.add_argument("--framing", default="bust")
    ap.add_argument("--formats", default="png,webp-lossless,jpg", help="output formats to time (comma-separated)")
    ap.add_argument("--rerun", action="store_true", help="also time reruns (nothing to do; one source changed)")
    ap.add_argument("--in-process", action="store_true", help="also the in-process crop_folder table (sheets off)")
    ap.add_argument("--autocrop-python", default=None, help="a Python that has autocrop==2.0.0 installed (its own venv)")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    root = str(Path(__file__).resolve().parents[1])
    src = Path(tempfile.mkdtemp(prefix="cropbench_src_"))
    try:
        paths = make_images(src, args.n)
        mb = sum(p.stat().st_size for p in paths) / len(paths) / 1e6
        n = args.n
        one = Path(tempfile.mkdtemp(prefix="cropbench_one_"))  # one image: the start-up cost
        shutil.copy(paths[0], one / paths[0].name)
        dw, dc, _ = whole_process([sys.executable, "-c", DECODE_SCRIPT, str(src), root], n)
        _, dc1, _ = whole_process([sys.executable, "-c", DECODE_SCRIPT, str(one), root], 1)
        dm = marginal(dc, n, dc1)
        rows = [("decode-only bound (`load_image` full size, 1 thread)", dw, dc, dm, "-")]
        base = ["--framing", args.framing]
        runs = [("prep crop --workers 1 (defaults: png, contact sheet)", [*base, "--workers", "1"])]
        runs += [(f"prep crop --workers 1 --format {f} --no-sheet", [*base, "--workers", "1", "--format", f, "--no-sheet"]) for f in args.formats.split(",")]
        runs += [("prep crop --workers 1 --no-sheet --decode draft (two decodes)", [*base, "--workers", "1", "--no-sheet", "--decode", "draft"])]
        if cores > 1:
            runs += [(f"prep crop --workers {cores} (defaults)", [*base, "--workers", str(cores)])]
        for name, flags in runs:
            w, c, found = bench_cli(src, args.yunet, n, flags)
            _, c1, _ = bench_cli(one, args.yunet, 1, flags)
            rows.append((name, w, c, marginal(c, n, c1), f"{found}/{n}"))
        if args.autocrop_python:
            r, r1 = bench_autocrop(args.autocrop_python, src, n), bench_autocrop(args.autocrop_python, one, 1)
            if r and r1:
                rows.append(("autocrop 2.0.0 `Cropper.crop` + `cli.output` (832x1216 PNG, face 35 %), 1 process", r[0], r[1], marginal(r[1], n, r1[1]), f"{r[2]}/{n}"))
        shutil.rmtree(one, ignore_errors=True)
        print(f"\n{n} JPEGs, 4000x3000 (12 MP), {mb:.1f} MB each, quality 90; {cores} cores; python {sys.version.split()[0]}\n")
        print("| whole process | wall ms/image | CPU ms/image | CPU vs decode-only | CPU ms/image after start-up | vs decode-only | faces found |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name, w, c, m, found in rows:
            print(f"| {name} | {w * 1000:.0f} | {c * 1000:.0f} | {c / dc:.2f}x | {m * 1000:.0f} | {m / dm:.2f}x | {found} |")
        if args.in_process:
            print("\n| in process (crop_folder, sheets off) | images/s | faces found |\n|---|---:|---:|")
            print(f"| decode-only bound, 1 thread | {bench_decode(paths):.2f} | - |")
            for workers in sorted({1, cores}):
                for decode in ("full", "draft"):
                    ips, found = bench_prep(src, args.yunet, workers, decode, args.framing, "png")
                    print(f"| prep crop, decode={decode}, {workers} worker(s) | {ips:.2f} | {found}/{n} |")
        if args.rerun:
            print(f"\n| prep crop, {cores} worker(s) | seconds |\n|---|---:|")
            for name, secs in bench_rerun(src, args.yunet, cores, "png"):
                print(f"| {name} | {secs:.2f} |")
    finally:
        shutil.rmtree(src, ignore_errors=True)


if __name__ == "__main__":
    main()
