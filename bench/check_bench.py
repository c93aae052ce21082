"""Benchmark: `prep check` against a plain Pillow loop that fully decodes every image.

Generates N distinct 12 MP JPEGs (4000x3000, real photo content from scikit-image, cropped,
flipped and tinted per image), then runs, side by side in one run, each as a whole process:

  1. baseline: a Python loop doing `Image.open(p).convert("RGB")` on every file
     (what a user's own sanity-check script does), one process;
  2. `prep check DIR --json` with 1 worker (same core budget as the baseline);
  3. `prep check DIR --json` with all cores (the default).

Reports images/s, peak RSS of each process, and the ratios. Usage:

    python bench/check_bench.py --n 2000            # the issue's size (about 3 GB of JPEGs)
    python bench/check_bench.py --n 300 --keep      # quicker; reuse the files next time
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
W, H = 4000, 3000

BASELINE = r"""
import sys
from pathlib import Path
from PIL import Image
n = 0
for p in sorted(Path(sys.argv[1]).iterdir()):
    if p.suffix.lower() == ".jpg":
        with Image.open(p) as im:
            im.convert("RGB")
        n += 1
print(n)
"""


def _make(args: tuple[int, Path]) -> None:
    i, folder = args
    from skimage import data

    srcs = [data.astronaut, data.chelsea, data.coffee, data.rocket, data.hubble_deep_field, data.immunohistochemistry]
    rng = np.random.default_rng(i)
    img = srcs[i % len(srcs)]()
    h, w = img.shape[:2]
    ch, cw = int(h * rng.uniform(0.6, 1.0)), int(w * rng.uniform(0.6, 1.0))
    y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    crop = img[y : y + ch, x : x + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    big = cv2.resize(np.ascontiguousarray(crop), (W, H), interpolation=cv2.INTER_CUBIC).astype(np.int16)
    big += rng.integers(-30, 30, size=3, dtype=np.int16)[None, None, :]
    big += rng.integers(-6, 7, size=(H // 8, W // 8, 1), dtype=np.int16).repeat(8, 0).repeat(8, 1)
    big += rng.normal(0, 5, size=(H, W, 1)).astype(np.int16)  # sensor-like grain: realistic 3-4 MB files
    bgr = np.clip(big, 0, 255).astype(np.uint8)[:, :, ::-1]
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])
    (folder / f"img_{i:05d}.jpg").write_bytes(buf.tobytes())


def generate(folder: Path, n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    have = len(list(folder.glob("img_*.jpg")))
    if have >= n:
        return
    print(f"generating {n - have} 12 MP JPEGs in {folder} ...", file=sys.stderr)
    with ProcessPoolExecutor(os.cpu_count()) as ex:
        list(ex.map(_make, [(i, folder) for i in range(have, n)], chunksize=8))


def timed(argv: list[str]) -> tuple[float, float, str]:
    """Run argv; return (seconds, peak RSS MiB of that process tree, stdout)."""
    wrapper = (
        "import resource, subprocess, sys, time, json\n"
        "t = time.perf_counter(); r = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "dt = time.perf_counter() - t\n"
        "if r.returncode: sys.stderr.write(r.stderr); sys.exit(r.returncode)\n"
        "print(json.dumps({'s': dt, 'rss': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 'out': r.stdout[-2000:]}))\n"
    )
    out = subprocess.run([sys.executable, "-c", wrapper, *argv], capture_output=True, text=True, check=True)
    import json

    d = json.loads(out.stdout)
    return d["s"], d["rss"], d["out"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--dir", type=Path, default=HERE / "_data" / "check12mp")
    ap.add_argument("--keep", action="store_true", help="keep the generated images for the next run")
    a = ap.parse_args()
    folder = a.dir
    generate(folder, a.n)
    files = sorted(folder.glob("img_*.jpg"))[: a.n]
    if len(files) < len(list(folder.glob("img_*.jpg"))):
        sub = folder.parent / f"{folder.name}_{a.n}"
        sub.mkdir(exist_ok=True)
        for f in files:
            if not (sub / f.name).exists():
                os.link(f, sub / f.name)
        folder = sub
    size_gb = sum(f.stat().st_size for f in files) / 1e9
    cores = os.cpu_count() or 1
    env = dict(os.environ, LORAPREP_NO_PROGRESS="1")
    os.environ.update(env)
    rows = []
    s, rss, out = timed([sys.executable, "-c", BASELINE, str(folder)])
    rows.append(("Pillow loop, full decode (1 process)", s, rss))
    s, rss, _ = timed([sys.executable, "-m", "prep.cli", "check", str(folder), "--json", "--workers", "1"])
    rows.append(("prep check --workers 1", s, rss))
    s, rss, _ = timed([sys.executable, "-m", "prep.cli", "check", str(folder), "--json"])
    rows.append((f"prep check (default, {cores} workers)", s, rss))
    base = rows[0][1]
    print(f"\n{len(files)} JPEGs, 4000x3000, {size_gb:.2f} GB, {cores} cores\n")
    print("| run | wall s | images/s | peak RSS MiB | speed vs Pillow loop |")
    print("|---|---:|---:|---:|---:|")
    for name, s, rss in rows:
        print(f"| {name} | {s:.1f} | {len(files) / s:.1f} | {rss:.0f} | {base / s:.1f}x |")
    if not a.keep:
        shutil.rmtree(a.dir.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
