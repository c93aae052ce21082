"""Make docs/studio/run.png: the run page watching a real `train_bridge launch` of the fake trainer.

The fake trainer (tests/fake_trainer/fake_train.py) prints sd-scripts' progress bar and saves
checkpoints and states; this script plays the trainer's sampler beside it, writing a sample per
prompt every 20 steps under sd-scripts' names (pictures that sharpen as the step grows), and
photographs the page in headless Chromium mid-run.

    .venv/bin/python docs/studio/run_screenshot.py [OUT.png]
    .venv/bin/python docs/studio/run_screenshot.py OUT.png --run RUN_DIR   # an existing run, as it is

docs/studio/run-real.png is the second form on the real sd-scripts Anima run of
`bench/real_train.py anima` (random full-size weights on CPU, 4 steps then --resume to 8: its
loss, its per-epoch samples of noise, its checkpoint and state).
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from fake_trainer.helpers import cli_env, launch_args, make_run, make_trainer_root
from PIL import Image, ImageDraw, ImageFilter

from loraprep.studio.app import create_run_app
from loraprep.studio.server import ServerThread

EVERY, SPE, EPOCHS = 20, 20, 8
PROMPTS = ["ohwx, 1girl, red hair, smile, outdoors --w 512 --h 512 --d 42", "ohwx, portrait, looking at viewer, simple background --w 512 --h 512 --d 42",
           "ohwx, full body, standing outdoors, daylight --w 512 --h 512 --d 42"]


def sample(step: int, prompt: int, path: Path) -> None:
    """A stand-in sample: a figure that gets sharper and closer to the 'subject' as training goes on."""
    rng = random.Random(prompt * 1000 + step)
    t = min(1.0, step / (EVERY * 6))
    im = Image.new("RGB", (256, 256), (40 + prompt * 50, 90, 140 - prompt * 30))
    d = ImageDraw.Draw(im)
    if prompt == 2:
        d.rectangle((0, 170, 256, 256), fill=(60, 120, 60))
        d.ellipse((108, 40, 148, 80), fill=(240, 200, 170))
        d.rectangle((112, 80, 144, 170), fill=(200, 40, 60))
    else:
        d.ellipse((58, 40, 198, 200), fill=(240, 200, 170))
        d.pieslice((40, 20, 216, 150), 180, 360, fill=(int(120 + 110 * t), 40, 30))
        d.ellipse((95, 100, 115, 118), fill=(40, 60, 120))
        d.ellipse((141, 100, 161, 118), fill=(40, 60, 120))
        d.arc((100, 130, 156, 170), 20, 160, fill=(150, 40, 40), width=3)
    for _ in range(int(900 * (1 - t))):
        x, y = rng.randrange(256), rng.randrange(256)
        d.point((x, y), fill=(rng.randrange(256),) * 3)
    im = im.filter(ImageFilter.GaussianBlur(radius=4 * (1 - t) + 0.3))
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


def _driver(height: int = 1750):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for f in ("--headless", "--no-sandbox", "--disable-gpu", f"--window-size=1280,{height}", "--hide-scrollbars"):
        opts.add_argument(f)
    opts.binary_location = shutil.which("chromium") or "chromium"
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)


def shoot_existing(run: Path, out: Path) -> None:
    """The run page of a run folder as it stands (a finished real run)."""
    drv = _driver(1100)
    try:
        with ServerThread(create_run_app(run, poll_s=0.5)) as srv:
            drv.get(srv.url("/run"))
            time.sleep(2.5)
            drv.save_screenshot(str(out))
    finally:
        drv.quit()
    print(f"wrote {out}")


def main(out: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    tmp = Path(tempfile.mkdtemp(prefix="runshot-"))
    run = make_run(tmp, fake_args=["--sleep", "0.15"], epochs=EPOCHS, steps_per_epoch=SPE)
    doc = json.loads((run / "run.json").read_text())
    doc["commands"][0]["args"] = [a for a in doc["commands"][0]["args"] if a != "--samples"]  # this script samples
    doc["output_name"] = "lora"
    (run / "run.json").write_text(json.dumps(doc, indent=2))
    (run / "train.toml").write_text((run / "train.toml").read_text() + '\n[optimizer]\nlearning_rate = 0.0001\nlr_scheduler = "cosine"\n')
    (run / "sample_prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    root = make_trainer_root(tmp)
    proc = subprocess.Popen([sys.executable, "-m", "train_bridge.cli", *launch_args(run, root)], env=cli_env(tmp),
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    opts = webdriver.ChromeOptions()
    for f in ("--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,1750", "--hide-scrollbars"):
        opts.add_argument(f)
    opts.binary_location = shutil.which("chromium") or "chromium"
    drv = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    try:
        with ServerThread(create_run_app(run, poll_s=0.5)) as srv:
            drv.get(srv.url("/run"))
            made = set()
            while True:
                st = json.loads((run / "status.json").read_text()) if (run / "status.json").exists() else {}
                step = (st.get("progress") or {}).get("step") or 0
                for s in range(EVERY, step + 1, EVERY):
                    if s not in made:
                        made.add(s)
                        for p in range(len(PROMPTS)):
                            sample(s, p, tmp / "output" / "sample" / f"lora_{s:06d}_{p:02d}_20260101{s:06d}_42.png")
                if step >= 110:
                    break
                time.sleep(0.1)
            drv.refresh()  # the checkpoint grid is drawn at page load
            time.sleep(2.5)
            drv.save_screenshot(str(out))
    finally:
        drv.quit()
        proc.terminate()
        proc.wait(timeout=60)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    if "--run" in sys.argv:
        i = sys.argv.index("--run")
        shoot_existing(Path(sys.argv[i + 1]), Path(sys.argv[1]) if i > 1 else Path(__file__).with_name("run-real.png"))
    else:
        main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("run.png"))
