"""Benchmark: loraprep studio on a generated project of N images (default 10,000).

Starts the studio as its own process (`python -m loraprep.studio PROJECT`), drives it with
headless Chromium and plain HTTP, and reports:

  - startup: process start until the URL is printed (reading N captions and the reports);
  - first grid paint: Chromium's first-contentful-paint of the grid, cold (no thumbnails yet)
    and warm, and the time until every thumbnail of the first screen has loaded;
  - filter: the grid page for `lint:trigger_missing OR lint:identity_tags` (server response
    time and first paint in Chromium) and the same filter through /api/items;
  - thumbnail build rate: /thumb/ over HTTP for M images with 8 concurrent clients, cold
    (decode + resize + WebP encode + write) and warm (from the cache);
  - server memory: resident set (VmRSS) and peak (VmHWM) of the studio process.

Usage:
    python bench/studio_bench.py                       # 10,000 images of 384x480
    python bench/studio_bench.py --n 2000 --thumbs 500 # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from loraprep.studio.demo import make_project

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--window-size=1400,900"]


def proc_mem(pid: int) -> dict[str, float]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM"):
            out[k] = int(v.split()[0]) / 1024
    return out


def start_server(project: Path) -> tuple[subprocess.Popen, str, float]:
    t = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "loraprep.studio", str(project)], cwd=ROOT, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "COLUMNS": "400"})
    assert p.stderr is not None
    for line in p.stderr:
        m = re.search(r"(http://127\.0\.0\.1:\d+/\?token=\S+)", line)
        if m:
            return p, m.group(1), time.perf_counter() - t
    raise RuntimeError("the studio did not print its address")


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    o = webdriver.ChromeOptions()
    for f in FLAGS:
        o.add_argument(f)
    o.add_argument("--user-data-dir=" + tempfile.mkdtemp(prefix="studio-bench-"))
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=o)


def paint(d, url: str) -> dict[str, float]:
    """Navigate; first-contentful-paint, server response, and all first-screen thumbnails loaded (ms)."""
    t = time.perf_counter()
    d.get(url)
    fcp = d.execute_script("const e = performance.getEntriesByName('first-contentful-paint')[0]; return e ? e.startTime : null;")
    nav = d.execute_script("const n = performance.getEntriesByType('navigation')[0]; return [n.requestStart, n.responseEnd, n.domContentLoadedEventEnd];")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        done = d.execute_script(
            "const imgs = Array.from(document.querySelectorAll('.tile img')).filter(i => i.getBoundingClientRect().top < innerHeight);"
            "return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0);")
        if done:
            break
        time.sleep(0.02)
    out = {"response_ms": round(nav[1] - nav[0], 1), "dom_ready_ms": round(nav[2], 1), "thumbs_on_screen_ms": round((time.perf_counter() - t) * 1000, 1)}
    if fcp:
        out["first_paint_ms"] = round(fcp, 1)
    return out


def screenshots(folder: Path) -> None:
    """The docs' pictures: grid, batch preview on a filter, image page with a crop override."""
    from selenium.webdriver.common.by import By

    from loraprep.studio.app import create_app
    from loraprep.studio.data import Dataset
    from loraprep.studio.server import ServerThread

    folder.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="studio-shots-"))
    project = make_project(work / "sage", 300, size=(384, 480))
    ds = Dataset(project)
    ds.set_crop("img_00065.jpg", [40, 20, 300, 330])
    with ServerThread(create_app(ds, token="docs")) as srv:
        d = browser()
        try:
            d.get(srv.url("/?token=docs"))
            time.sleep(1.0)
            d.save_screenshot(str(folder / "grid.png"))
            d.get(srv.url("/?q=" + quote("lint:identity_tags")))
            d.find_element(By.CSS_SELECTOR, "#batch-op option[value=rename]").click()
            d.find_element(By.ID, "batch-tag").send_keys("long hair")
            d.find_element(By.ID, "batch-new").send_keys("wig")
            d.find_element(By.ID, "scope-filtered").click()
            d.find_element(By.ID, "batch-preview").click()
            time.sleep(1.0)
            d.save_screenshot(str(folder / "batch.png"))
            d.get(srv.url("/image/img_00065.jpg?q=" + quote("is:flagged")))
            time.sleep(1.0)
            d.save_screenshot(str(folder / "image.png"))
        finally:
            d.quit()
    shutil.rmtree(work, ignore_errors=True)
    print(f"screenshots in {folder}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--thumbs", type=int, default=2000, help="images whose thumbnails are built over HTTP")
    ap.add_argument("--size", default="384x480")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--screenshots", type=Path, default=None, help="only write the docs' screenshots into this folder")
    a = ap.parse_args()
    if a.screenshots:
        screenshots(a.screenshots)
        return
    w, h = (int(v) for v in a.size.split("x"))
    work = a.work or Path(tempfile.mkdtemp(prefix="studio-bench-"))
    project = work / f"project_{a.n}"
    res: dict[str, object] = {"n": a.n, "size": a.size, "cpus": os.cpu_count()}
    if not (project / "loraprep.toml").exists():
        t = time.perf_counter()
        make_project(project, a.n, size=(w, h))
        res["generate_s"] = round(time.perf_counter() - t, 1)
    shutil.rmtree(project / ".loraprep" / "thumbs", ignore_errors=True)
    proc, url, startup = start_server(project)
    res["startup_s"] = round(startup, 2)
    base, token = url.split("/?token=")
    d = browser()
    try:
        res["grid_cold"] = paint(d, url)
        res["grid_warm"] = paint(d, base + "/")
        q = "lint:trigger_missing OR lint:identity_tags"
        res["filter_page"] = paint(d, base + "/?q=" + quote(q))
    finally:
        d.quit()
    opener = lambda path: urllib.request.urlopen(base + path + ("&" if "?" in path else "?") + "token=" + token)
    t = time.perf_counter()
    items = json.loads(opener("/api/items?q=" + quote(q)).read())
    res["filter_api_ms"] = round((time.perf_counter() - t) * 1000, 1)
    res["filter_matches"] = items["total"]
    ids = [f"img_{i:05d}.jpg" for i in range(a.n - a.thumbs + 1, a.n + 1)]  # not yet built by the pages above
    for label in ("thumbs_cold_per_s", "thumbs_warm_per_s"):
        t = time.perf_counter()
        with ThreadPoolExecutor(8) as ex:
            list(ex.map(lambda i: opener("/thumb/" + i).read(), ids))
        res[label] = round(len(ids) / (time.perf_counter() - t), 1)
    res["server_mem_mb"] = {k: round(v, 1) for k, v in proc_mem(proc.pid).items()}
    proc.terminate()
    proc.wait(10)
    if a.work is None:
        shutil.rmtree(work, ignore_errors=True)
    if a.json:
        print(json.dumps(res, indent=1))
        return
    for k, v in res.items():
        print(f"{k:>20}: {v}")


if __name__ == "__main__":
    main()
