"""The studio's run page in real headless Chromium, watching a real `train_bridge launch` of the
fake trainer (tests/fake_trainer): the step and loss update in the page as the log grows, a
sample written into output/sample appears in its prompt's row, Stop stops the run the way
Ctrl-C does (status `interrupted`, launcher exit 130), Resume continues it from the saved state
to the end. Skipped with the reason when Chromium or its driver is not installed.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_trainer.helpers import (
    cli_env,
    launch_args,
    make_run,
    make_trainer_root,
    recorded_argv,
)

from loraprep.studio.app import create_run_app
from loraprep.studio.server import ServerThread

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver packages (apt-get install chromium chromium-driver)")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--window-size=1400,1000"]
TOKEN = "runpage-token"


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="studio-runpage-")
    opts = webdriver.ChromeOptions()
    for f in FLAGS:
        opts.add_argument(f)
    opts.add_argument(f"--user-data-dir={profile}")
    opts.binary_location = CHROMIUM
    drv = webdriver.Chrome(service=Service(DRIVER), options=opts)
    drv.implicitly_wait(0)
    try:
        yield drv
    finally:
        drv.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(cond, timeout: float = 20.0, what: str = "condition"):
    from selenium.common.exceptions import (
        NoSuchElementException,
        StaleElementReferenceException,
    )

    deadline = time.monotonic() + timeout
    while True:
        try:
            v = cond()
        except (NoSuchElementException, StaleElementReferenceException):  # htmx swapped the element meanwhile
            v = None
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def text(drv, css: str) -> str:
    from selenium.webdriver.common.by import By

    return drv.find_element(By.CSS_SELECTOR, css).text


def click(drv, css: str) -> None:
    """Click once the (re-rendered) button is enabled."""
    from selenium.webdriver.common.by import By

    def go() -> bool:
        b = drv.find_element(By.CSS_SELECTOR, css)
        if not b.is_enabled():
            return False
        b.click()
        return True

    wait_for(go, what=f"{css} enabled")


def step_of(drv) -> int:
    raw = text(drv, "#run-step").split("/")[0].strip()
    return int(raw) if raw.isdigit() else -1


def sample_png(path: Path, color: tuple[int, int, int]) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (96, 96), color).save(path)


def test_run_page_follows_a_fake_run_stop_and_resume(browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    run = make_run(tmp_path, fake_args=["--sleep", "0.7"], epochs=3, steps_per_epoch=4)
    root = make_trainer_root(tmp_path)
    extra = ["--trainer-dir", str(root), "--python", sys.executable, "--no-gpu-check"]
    app = create_run_app(run, token=TOKEN, launch_args=extra, poll_s=0.4)
    log = (tmp_path / "launch.out").open("wb")  # the launcher writes it until the finally
    proc = subprocess.Popen([sys.executable, "-m", "train_bridge.cli", *launch_args(run, root)], env=cli_env(tmp_path),
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        with ServerThread(app) as srv:
            browser.get(srv.url(f"/run?token={TOKEN}"))
            # live: the step climbs and the chart gains points without a reload
            wait_for(lambda: step_of(browser) >= 1, what="a first step in the page")
            first = step_of(browser)
            loss_first = text(browser, "#run-loss")
            wait_for(lambda: step_of(browser) >= first + 2, what="the step to advance live")
            assert text(browser, "#run-loss") != loss_first  # the fake's loss falls every step
            pts = int(browser.find_element(By.ID, "loss-chart").get_attribute("data-points"))
            assert pts >= first + 2
            assert browser.find_elements(By.CSS_SELECTOR, "#loss-chart polyline.raw") and browser.find_elements(By.CSS_SELECTOR, "#loss-chart polyline.smooth")
            assert "running" in text(browser, "#run-state")
            # a sample the trainer writes shows up in its prompt's row
            sample_png(tmp_path / "output" / "sample" / "lora_000002_00_20260101000001_42.png", (200, 40, 40))
            wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, '#run-samples .prompt-row[data-prompt="0"] img[src*="lora_000002_00"]'),
                     what="the new sample in the gallery")
            # Stop: the launcher stops the trainer cleanly and offers the resume command
            wait_for(lambda: step_of(browser) >= 5, what="step 5 (past the first epoch's state)")
            click(browser, "#run-stop")
            assert proc.wait(timeout=60) == 130
            wait_for(lambda: "interrupted" in text(browser, "#run-state"), what="state interrupted")
            stopped_at = step_of(browser)
            assert 5 <= stopped_at < 12
            assert "--resume" in text(browser, "#run-message")
            # Resume: continues from the epoch-1 state to the end
            click(browser, "#run-resume")
            wait_for(lambda: "running" in text(browser, "#run-state") or "done" in text(browser, "#run-state"), what="resumed")
            wait_for(lambda: "done" in text(browser, "#run-state"), timeout=60, what="the resumed run to finish")
            assert step_of(browser) == 12
            assert int(browser.find_element(By.ID, "loss-chart").get_attribute("data-points")) == 12
            argvs = recorded_argv(tmp_path)
            assert len(argvs) == 2 and "--resume" in argvs[1] and "--resume" not in argvs[0]
            assert browser.find_element(By.ID, "run-resume").get_attribute("disabled")  # finished: nothing to resume
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
