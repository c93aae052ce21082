"""loraprep studio in real headless Chromium (Debian's chromium + chromium-driver, driven by selenium).

A 2,000-image generated project: scroll the grid, filter by a lint code, batch-rename a tag,
undo it with the keyboard, reject an image, draw a crop override; and the keyboard flow on
the image page. Skipped with the reason when Chromium or its driver is not installed.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from loraprep.studio.app import PAGE_SIZE, create_app
from loraprep.studio.data import Dataset
from loraprep.studio.demo import TRIGGER, make_project
from loraprep.studio.server import ServerThread
from prep import overrides as ovr

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver packages (apt-get install chromium chromium-driver)")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--window-size=1400,900"]
TOKEN = "browser-token"


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="studio-chromium-")
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


def wait_for(cond, timeout: float = 5.0, what: str = "condition"):
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
        time.sleep(0.05)


def caption(root: Path, name: str) -> str:
    return (root / "04_captioned" / name).with_suffix(".txt").read_text(encoding="utf-8").strip()


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Path:
    return make_project(tmp_path_factory.mktemp("studio") / "big", 2000, size=(64, 80))


def test_2000_images_scroll_filter_rename_undo_reject_crop(browser, big):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    d = browser
    ds = Dataset(big)
    with ServerThread(create_app(ds, token=TOKEN)) as srv:
        d.get(srv.url(f"/?token={TOKEN}"))
        tiles = lambda: d.find_elements(By.CSS_SELECTOR, ".tile")
        assert len(tiles()) == PAGE_SIZE
        # scrolling to the end loads the next page (htmx 'revealed')
        d.execute_script("window.scrollTo(0, document.body.scrollHeight)")
        wait_for(lambda: len(tiles()) > PAGE_SIZE, what="the next page of tiles")
        # filter by a lint code through the form; it lands in the URL
        box = d.find_element(By.ID, "q")
        box.clear()
        box.send_keys("lint:identity_tags", Keys.ENTER)
        wait_for(lambda: "q=lint%3Aidentity_tags" in d.current_url, what="the filter in the URL")
        n = len(ds.select("lint:identity_tags"))
        assert d.find_element(By.ID, "count").text.startswith(f"{n} of 2000")
        # batch-rename "long hair" to "wig" on the whole filtered set: preview, then apply
        victims = [e.id for e in ds.select('tag:"long hair"') if not e.rejected]
        assert victims
        d.find_element(By.CSS_SELECTOR, "#batch-op option[value=rename]").click()
        d.find_element(By.ID, "batch-tag").send_keys("long hair")
        d.find_element(By.ID, "batch-new").send_keys("wig")
        d.find_element(By.ID, "scope-filtered").click()
        d.find_element(By.ID, "batch-preview").click()
        wait_for(lambda: d.find_elements(By.ID, "preview"), what="the preview")
        assert "wig" not in caption(big, victims[0])  # a preview writes nothing
        d.find_element(By.ID, "batch-apply").click()
        wait_for(lambda: d.find_elements(By.ID, "batch-done"), what="the batch result")
        assert all("wig" in caption(big, v).split(", ") for v in victims)
        # undo with the keyboard
        d.find_element(By.TAG_NAME, "body").send_keys("z")
        wait_for(lambda: "long hair" in caption(big, victims[0]).split(", "), what="undo")
        assert not any("wig" in caption(big, v) for v in victims)
        # open an image, reject it with 'x'
        d.get(srv.url("/image/img_00003.jpg"))
        d.find_element(By.TAG_NAME, "body").send_keys("x")
        wait_for(lambda: d.find_elements(By.CSS_SELECTOR, '#reject-state[data-rejected="true"]'), what="the reject")
        assert (big / "rejected" / "img_00003.jpg").exists() and not (big / "01_raw" / "img_00003.jpg").exists()
        # draw a crop override by dragging on the source image
        d.get(srv.url("/image/img_00006.jpg"))
        svg = d.find_element(By.ID, "overlay")
        w, h = svg.size["width"], svg.size["height"]
        ActionChains(d).move_to_element_with_offset(svg, int(-w * 0.3), int(-h * 0.3)).click_and_hold().move_by_offset(int(w * 0.4), int(h * 0.5)).release().perform()
        wait_for(lambda: d.find_elements(By.ID, "crop-state"), what="the crop override")
        rec = ovr.load_overrides(big).crops["img_00006.jpg"]
        x0, y0, x1, y1 = rec["box"]
        assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 80
        bw, bh = rec["bucket"]
        assert abs((x1 - x0) / (y1 - y0) - bw / bh) < 0.05
        assert json.loads((big / "overrides.json").read_text())["rejected"]["img_00003.jpg"]


def test_keyboard_flow_on_the_image_page(browser, tmp_path):
    from selenium.webdriver.common.by import By

    d = browser
    root = make_project(tmp_path / "kb", 30, size=(64, 80))
    with ServerThread(create_app(Dataset(root), token=TOKEN)) as srv:
        d.get(srv.url(f"/image/img_00001.jpg?token={TOKEN}"))
        body = lambda: d.find_element(By.TAG_NAME, "body")
        body().send_keys("j")
        wait_for(lambda: "/image/img_00002.jpg" in d.current_url, what="next")
        body().send_keys("k")
        wait_for(lambda: "/image/img_00001.jpg" in d.current_url, what="previous")
        body().send_keys("n")  # the next flagged one: img_00005 has identity tags
        wait_for(lambda: "/image/img_00005.jpg" in d.current_url, what="next flagged")
        d.get(srv.url("/image/img_00007.jpg"))  # no trigger: the suggestion adds it
        body().send_keys("a")
        wait_for(lambda: caption(root, "img_00007.jpg").startswith(TRIGGER + ", "), what="accepting the suggestion")
        wait_for(lambda: not d.find_elements(By.ID, "accept") or "trigger" not in d.find_element(By.ID, "accept").text, what="the caption refreshed")
        body().send_keys("z")
        wait_for(lambda: not caption(root, "img_00007.jpg").startswith(TRIGGER), what="undo")
        # the caption on the page follows the undo
        wait_for(lambda: TRIGGER not in d.find_element(By.ID, "caption-text").get_attribute("value"), what="the caption re-rendered")
        # drag the last chip onto the second (HTML5 drag and drop events, as the browser sends them)
        tags = caption(root, "img_00007.jpg").split(", ")
        d.execute_script(
            "const chips = document.querySelectorAll('.chip'); const dt = new DataTransfer();"
            "const fire = (el, type) => el.dispatchEvent(new DragEvent(type, {bubbles: true, cancelable: true, dataTransfer: dt}));"
            "fire(chips[chips.length - 1], 'dragstart'); fire(chips[1], 'dragover'); fire(chips[1], 'drop');")
        wait_for(lambda: caption(root, "img_00007.jpg").split(", ") == [tags[0], tags[-1], *tags[1:-1]], what="the chip moved")


def test_two_tabs_show_the_notice(browser, tmp_path):
    from selenium.webdriver.common.by import By

    d = browser
    root = make_project(tmp_path / "tabs", 5, size=(64, 80))
    with ServerThread(create_app(Dataset(root), token=TOKEN)) as srv:
        d.get(srv.url(f"/image/img_00002.jpg?token={TOKEN}"))
        first = d.current_window_handle
        d.switch_to.new_window("tab")
        d.get(srv.url("/image/img_00002.jpg"))
        t = d.find_element(By.ID, "caption-text")
        t.clear()
        t.send_keys("from tab two")
        d.find_element(By.ID, "save-text").click()
        wait_for(lambda: caption(root, "img_00002.jpg") == "from tab two", what="tab two's save")
        d.close()
        d.switch_to.window(first)
        t = d.find_element(By.ID, "caption-text")
        t.clear()
        t.send_keys("from tab one")
        d.find_element(By.ID, "save-text").click()
        wait_for(lambda: "changed elsewhere" in d.find_element(By.ID, "caption").text, what="the notice")
        assert caption(root, "img_00002.jpg") == "from tab one"
