"""loraprep studio through Starlette's TestClient: access, grid, image page, filters, edits."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pytest
import typer
from PIL import Image
from starlette.testclient import TestClient
from typer.testing import CliRunner

from loraprep.studio.app import PAGE_SIZE, create_app
from loraprep.studio.cli import bind, check_bind, register
from loraprep.studio.data import Dataset
from loraprep.studio.demo import TRIGGER, make_project
from loraprep.studio.filters import FilterError, parse_filter
from prep import overrides as ovr

TOKEN = "t0k"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_project(tmp_path / "proj", 40, size=(96, 120))


def client_for(folder: Path, *, read_only: bool = False, token: str | None = TOKEN, **kw) -> TestClient:
    ds = Dataset(folder, read_only=read_only, **kw)
    c = TestClient(create_app(ds, token=token))
    if token:
        assert c.get(f"/?token={token}").status_code == 200  # sets the cookie
    return c


def caption(project: Path, name: str) -> str:
    return (project / "04_captioned" / name).with_suffix(".txt").read_text(encoding="utf-8").strip()


# -- access ----------------------------------------------------------------------------------


def test_token_is_required_then_kept_in_a_strict_cookie(project):
    c = TestClient(create_app(Dataset(project), token=TOKEN))
    assert c.get("/").status_code == 403
    assert c.get("/?token=wrong").status_code == 403
    r = c.get(f"/?token={TOKEN}")
    assert r.status_code == 200
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert c.get("/api/items").status_code == 200  # the cookie now
    assert c.post("/api/undo").status_code == 200


def test_loopback_server_refuses_foreign_host_headers(project):
    c = client_for(project)
    assert c.get("/api/items", headers={"host": "evil.example:8000"}).status_code == 403
    assert c.get("/api/items", headers={"host": "127.0.0.1:8000"}).status_code == 200
    assert c.get("/api/items", headers={"host": "[::1]:8000"}).status_code == 200


def test_non_loopback_bind_needs_the_token():
    with pytest.raises(ValueError, match="needs its token"):
        check_bind("0.0.0.0", token=False)
    check_bind("0.0.0.0", token=True)
    check_bind("127.0.0.1", token=False)
    with pytest.raises(ValueError):
        create_app(Dataset.__new__(Dataset), token=None, loopback=False)


def test_bind_picks_a_free_loopback_port():
    s = bind()
    try:
        host, port = s.getsockname()
        assert host == "127.0.0.1" and port > 0
        probe = socket.create_connection((host, port), timeout=2)
        probe.close()
    finally:
        s.close()


def test_cli_refuses_open_bind_without_token_and_a_missing_folder(tmp_path):
    app = typer.Typer()
    register(app)

    @app.command("other")
    def other() -> None:  # a second command, so typer keeps `studio` as a subcommand
        pass

    r = CliRunner().invoke(app, ["studio", str(tmp_path), "--host", "0.0.0.0", "--no-token"])
    assert r.exit_code == 2 and "needs its token" in r.output
    r = CliRunner().invoke(app, ["studio", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "no such folder" in r.output


# -- grid ------------------------------------------------------------------------------------


def test_grid_tiles_are_lazy_paged_and_show_tags_and_badges(tmp_path):
    proj = make_project(tmp_path / "big", PAGE_SIZE + 30, size=(48, 60))
    c = client_for(proj)
    page = c.get("/").text
    tiles = re.findall(r'<div class="tile[^"]*" data-id="([^"]+)"', page)
    assert len(tiles) == PAGE_SIZE
    assert page.count('loading="lazy"') == PAGE_SIZE
    assert 'hx-trigger="revealed"' in page and "/grid?page=1" in page
    assert c.get("/grid?page=oops").status_code == 200  # a bad page number is the first page, not an error
    more = c.get("/grid?page=1").text
    assert len(re.findall(r'class="tile', more)) == 30 and 'hx-trigger="revealed"' not in more
    # badges from crops.jsonl, check.json, dedupe.json and the live lint
    tile11 = page[page.index('data-id="img_00011.jpg"'):][:1500]
    assert "no_face" in tile11
    tile7 = page[page.index('data-id="img_00007.jpg"'):][:1500]
    assert "trigger_missing" in tile7
    tile17 = page[page.index('data-id="img_00017.jpg"'):][:1500]
    assert 'data-finding="crop:small_source"' in tile17 and 'data-finding="check:small"' in tile17
    tile19 = page[page.index('data-id="img_00019.jpg"'):][:1500]
    assert "duplicate" in tile19
    first_tags = caption(proj, "img_00001.jpg").split(", ")[:3]
    assert ", ".join(first_tags) in page


def test_thumbnails_are_made_once_and_shared_by_content(project):
    ds = Dataset(project)
    app = create_app(ds, token=None)
    c = TestClient(app)
    r = c.get("/thumb/img_00001.jpg")
    assert r.status_code == 200 and r.headers["content-type"] == "image/webp"
    assert max(Image.open(__import__("io").BytesIO(r.content)).size) <= 256
    assert app.state.thumbs.built == 1
    c.get("/thumb/img_00001.jpg")
    assert app.state.thumbs.built == 1
    files = list((project / ".loraprep" / "thumbs").rglob("*.webp"))
    assert len(files) == 1
    # the same bytes under another name reuse it
    src = project / "04_captioned" / "img_00001.jpg"
    (project / "04_captioned" / "copy.jpg").write_bytes(src.read_bytes())
    ds.load()
    c.get("/thumb/copy.jpg")
    assert app.state.thumbs.built == 1


def test_plain_folder_thumbs_go_to_the_user_cache(tmp_path, monkeypatch):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (40, 30), "red").save(folder / "a.png")
    (folder / "a.txt").write_text("cat, sofa\n")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    c = TestClient(create_app(Dataset(folder), token=None))
    assert c.get("/thumb/a.png").status_code == 200
    assert list((tmp_path / "cache" / "loraprep" / "thumbs").rglob("*.webp"))
    assert sorted(p.name for p in folder.iterdir()) == ["a.png", "a.txt"]


# -- image page ------------------------------------------------------------------------------


def test_image_page_draws_boxes_and_shows_bucket_tokens_and_layer(project):
    c = client_for(project)
    page = c.get("/image/img_00013.jpg").text  # multi_face: two faces and one crop
    assert page.count('class="box face"') == 2
    assert page.count('class="box crop"') == 1
    assert 'viewBox="0 0 96 120"' in page
    for enc in ("CLIP tokens", "T5 tokens", "Qwen3 tokens"):
        assert enc in page
    assert re.search(r'id="bucket">\d+x\d+', page)
    assert "generated" in page  # the caption's layer
    assert 'id="next"' in page and 'id="prev"' in page


def test_tag_chips_add_remove_reorder_with_the_trigger_pinned(project):
    c = client_for(project)
    cid = "img_00001.jpg"
    tags = caption(project, cid).split(", ")
    assert tags[0] == TRIGGER
    r = c.post("/api/tag", data={"id": cid, "op": "add", "tag": "red scarf"})
    assert r.status_code == 200 and "red scarf" in r.text
    assert caption(project, cid).endswith("red scarf")
    c.post("/api/tag", data={"id": cid, "op": "front", "tag": "red scarf"})
    assert caption(project, cid).split(", ")[:2] == [TRIGGER, "red scarf"]  # the trigger stays first
    c.post("/api/tag", data={"id": cid, "op": "move", "tag": "red scarf", "to": "3"})
    assert caption(project, cid).split(", ")[3] == "red scarf"
    c.post("/api/tag", data={"id": cid, "op": "remove", "tag": "red scarf"})
    assert "red scarf" not in caption(project, cid)
    c.post("/api/tag", data={"id": cid, "op": "move", "tag": TRIGGER, "to": "4"})
    assert caption(project, cid).split(", ")[0] == TRIGGER
    assert c.post("/api/tag", data={"id": cid, "op": "explode", "tag": "x"}).status_code == 400


def test_text_edit_goes_to_overrides_and_the_view(project):
    c = client_for(project)
    r = c.post("/api/caption", data={"id": "img_00002.jpg", "text": f"{TRIGGER}, a new caption"})
    assert r.status_code == 200 and "overrides.json" in r.text  # the layer shown changed
    assert caption(project, "img_00002.jpg") == f"{TRIGGER}, a new caption"
    assert ovr.load_overrides(project).caption("img_00002.jpg") == f"{TRIGGER}, a new caption"


# -- filters ---------------------------------------------------------------------------------


def test_filters_combine_and_or_not_in_the_url(project):
    c = client_for(project)

    def ids(q: str) -> set[str]:
        r = c.get("/api/items", params={"q": q})
        assert r.status_code == 200, r.text
        return {i["id"] for i in r.json()["items"]}

    everything = ids("")
    assert len(everything) == 40
    no_trig = ids("lint:trigger_missing")
    assert no_trig == {f"img_{i:05d}.jpg" for i in (7, 14, 21, 28, 35)}
    ident = ids("lint:identity_tags")
    assert ident == {f"img_{i:05d}.jpg" for i in (5, 10, 15, 20, 25, 30, 35, 40)}
    assert ids("lint:trigger_missing OR lint:identity_tags") == no_trig | ident
    assert ids("lint:trigger_missing AND lint:identity_tags") == {"img_00035.jpg"}
    assert ids("lint:trigger_missing NOT lint:identity_tags") == no_trig - ident
    assert ids("NOT (lint:trigger_missing OR lint:identity_tags)") == everything - no_trig - ident
    assert ids("crop:no_face") == {"img_00011.jpg", "img_00022.jpg", "img_00033.jpg"}
    assert ids("check:small") == {"img_00017.jpg", "img_00034.jpg"}
    assert ids("dup") == {"img_00018.jpg", "img_00019.jpg", "img_00037.jpg", "img_00038.jpg"}
    some_tag = caption(project, "img_00003.jpg").split(", ")[1]
    has = ids(f'tag:"{some_tag}"')
    assert "img_00003.jpg" in has and ids(f'-tag:"{some_tag}"') == everything - has
    assert ids("tokens>1000") == set() and ids("tokens>1") == everything
    assert ids(f"text:{TRIGGER}") == everything - no_trig
    # the page keeps the filter and shows a bad one as a message, not a server error
    page = c.get("/", params={"q": "crop:no_face"}).text
    assert 'value="crop:no_face"' in page and "<strong>3</strong>" in page
    bad = c.get("/", params={"q": "(crop:no_face"})
    assert bad.status_code == 200 and "not closed" in bad.text
    assert c.get("/api/items", params={"q": "bogus:1"}).status_code == 400
    with pytest.raises(FilterError):
        parse_filter("a OR")


def test_tag_frequency_panel_counts_the_filtered_set(project):
    c = client_for(project)
    page = c.get("/", params={"q": "lint:trigger_missing"}).text
    m = re.search(r'<li data-tag="demo_char">', page)
    assert m is None  # none of them has the trigger
    page = c.get("/").text
    n = re.search(r'<li data-tag="demo_char">.*?<span class="n">(\d+)</span>', page, re.DOTALL)
    assert n and int(n.group(1)) == 35


def test_tag_autocomplete_from_the_dataset_and_the_cached_wd_tag_list(project, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # empty: no WD tagger cached
    c = client_for(project)
    out = c.get("/api/tags", params={"prefix": "demo"}).json()
    assert out[0]["tag"] == TRIGGER and out[0]["count"] == 35
    html = c.get("/api/tags", params={"prefix": "demo", "format": "options"}).text
    assert '<option value="demo_char">' in html
    assert c.get("/api/tags", params={"prefix": "hatsune"}).json() == []
    # a WD tagger in the HF cache adds its tags with their categories
    repo = tmp_path / "hub" / "models--SmilingWolf--wd-swinv2-tagger-v3"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "selected_tags.csv").write_text("tag_id,name,category,count\n1,hatsune_miku,4,100\n2,hat,0,50\n")
    c = client_for(project)
    out = c.get("/api/tags", params={"prefix": "hatsune"}).json()
    assert out == [{"tag": "hatsune miku", "count": 0, "category": "character"}]


# -- batch edits -----------------------------------------------------------------------------


def test_batch_preview_writes_nothing_then_apply_and_undo(project):
    c = client_for(project)
    before = {p.name: p.read_text() for p in (project / "04_captioned").glob("*.txt")}
    r = c.post("/api/batch", data={"scope": "filtered", "q": "lint:trigger_missing", "op": "add", "tag": TRIGGER, "preview": "1"})
    assert r.status_code == 200 and "<strong>5</strong> of 5" in r.text
    assert {p.name: p.read_text() for p in (project / "04_captioned").glob("*.txt")} == before
    r = c.post("/api/batch", data={"scope": "filtered", "q": "lint:trigger_missing", "op": "add", "tag": TRIGGER})
    assert r.status_code == 200 and "changed 5 of 5" in r.text
    assert caption(project, "img_00007.jpg").startswith(TRIGGER + ", ")  # pinned first
    assert c.get("/api/items", params={"q": "lint:trigger_missing"}).json()["total"] == 0
    assert len(ovr.load_overrides(project).captions) == 5
    c.post("/api/undo")
    assert {p.name: p.read_text() for p in (project / "04_captioned").glob("*.txt")} == before
    assert ovr.load_overrides(project).captions == {}  # undone: no hand edit left to re-apply
    assert c.get("/api/items", params={"q": "lint:trigger_missing"}).json()["total"] == 5
    c.post("/api/redo")
    assert c.get("/api/items", params={"q": "lint:trigger_missing"}).json()["total"] == 0


def test_batch_rename_remove_replace_front_on_a_selection(project):
    c = client_for(project)
    a, b = "img_00005.jpg", "img_00010.jpg"  # both carry identity tags
    tag = next(t for t in caption(project, a).split(", ") if t in ("long hair", "blue eyes", "blonde hair", "twintails"))
    c.post("/api/batch", data={"ids": [a, b], "op": "rename", "tag": tag, "new": "wig"})
    assert "wig" in caption(project, a).split(", ") and tag not in caption(project, a).split(", ")
    c.post("/api/batch", data={"ids": [a], "op": "front", "tag": "wig"})
    assert caption(project, a).split(", ")[:2] == [TRIGGER, "wig"]
    c.post("/api/batch", data={"ids": [a, b], "op": "remove", "tag": "wig"})
    assert "wig" not in caption(project, a)
    r = c.post("/api/batch", data={"ids": [a], "op": "replace", "pattern": r"demo_(\w+)", "new": r"DEMO-\1", "regex": "1", "preview": "1"})
    assert "DEMO-char" in r.text and TRIGGER in caption(project, a)
    c.post("/api/batch", data={"ids": [a], "op": "replace", "pattern": "demo_char", "new": "hero"})
    assert caption(project, a).startswith("hero")
    r = c.post("/api/batch", data={"ids": [a], "op": "replace", "pattern": "(", "regex": "1", "preview": "1"})
    assert r.status_code == 400 and "not a valid regular expression" in r.text
    r = c.post("/api/batch", data={"op": "add", "tag": "x"})
    assert r.status_code == 400 and "nothing selected" in r.text


def test_batch_fix_adds_missing_triggers_and_drops_identity_tags_in_one_edit(project):
    c = client_for(project)
    q = "lint:trigger_missing OR lint:identity_tags"
    n = c.get("/api/items", params={"q": q}).json()["total"]
    r = c.post("/api/batch", data={"scope": "filtered", "q": q, "op": "fix"})
    assert f"changed {n} of {n}" in r.text
    assert c.get("/api/items", params={"q": q}).json()["total"] == 0
    assert caption(project, "img_00035.jpg").startswith(TRIGGER + ", ")  # it had both problems
    assert not {"long hair", "blue eyes", "blonde hair", "twintails"} & set(caption(project, "img_00035.jpg").split(", "))
    c.post("/api/undo")
    assert c.get("/api/items", params={"q": q}).json()["total"] == n


def test_the_studio_process_prints_a_token_url_on_a_free_loopback_port(project):
    import subprocess
    import sys
    import urllib.error
    import urllib.request

    p = subprocess.Popen([sys.executable, "-m", "loraprep.studio", str(project), "--read-only"], stderr=subprocess.PIPE, text=True,
                         env={**__import__("os").environ, "COLUMNS": "300"})
    try:
        url = None
        for line in p.stderr:
            m = re.search(r"(http://127\.0\.0\.1:(\d+)/\?token=[\w-]+)", line)
            if m:
                url = m.group(1)
                break
        assert url, "no address printed"
        assert urllib.request.urlopen(url, timeout=10).status == 200
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(url.split("?")[0], timeout=10)
        assert err.value.code == 403
    finally:
        p.terminate()
        p.wait(10)


# -- edits that last ---------------------------------------------------------------------------


def test_reject_moves_aside_never_deletes_and_restore_brings_back(project):
    c = client_for(project)
    raw = project / "01_raw" / "img_00003.jpg"
    data = raw.read_bytes()
    r = c.post("/api/reject", data={"id": "img_00003.jpg"})
    assert r.status_code == 200 and 'data-rejected="true"' in r.text
    assert not raw.exists() and (project / "rejected" / "img_00003.jpg").read_bytes() == data
    assert "img_00003.jpg" in ovr.load_overrides(project).rejected
    assert "img_00003.jpg" not in {i["id"] for i in c.get("/api/items").json()["items"]}
    assert "img_00003.jpg" in {i["id"] for i in c.get("/api/items", params={"q": "is:rejected"}).json()["items"]}
    c.post("/api/undo")
    assert raw.read_bytes() == data and not (project / "rejected" / "img_00003.jpg").exists()
    assert "img_00003.jpg" not in ovr.load_overrides(project).rejected
    c.post("/api/reject", data={"id": "img_00003.jpg"})
    c.post("/api/reject", data={"id": "img_00003.jpg"})  # the button toggles: restore
    assert raw.exists()


def test_reject_in_a_plain_folder_moves_image_and_caption(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (40, 30), "red").save(folder / "a.png")
    (folder / "a.txt").write_text("cat\n")
    c = client_for(folder)
    c.post("/api/reject", data={"id": "a.png"})
    assert sorted(p.name for p in (folder / "rejected").iterdir()) == ["a.png", "a.txt"]
    assert not (folder / "a.png").exists()
    c.post("/api/undo")
    assert (folder / "a.png").exists() and (folder / "a.txt").read_text() == "cat\n"


def test_two_tabs_last_write_wins_with_a_notice(project):
    c = client_for(project)
    page = c.get("/image/img_00004.jpg").text
    version = re.search(r'name="version" value="([0-9a-f]+)"', page).group(1)
    c.post("/api/caption", data={"id": "img_00004.jpg", "text": "tab one", "version": version})
    r = c.post("/api/caption", data={"id": "img_00004.jpg", "text": "tab two", "version": version})  # a stale page
    assert "changed elsewhere" in r.text and "tab one" in r.text
    assert caption(project, "img_00004.jpg") == "tab two"
    json.loads((project / "overrides.json").read_text())  # whole, valid


def test_crop_override_snaps_to_a_bucket_and_is_recorded(project):
    c = client_for(project)
    r = c.post("/api/crop", data={"id": "img_00006.jpg", "x0": "10", "y0": "5", "x1": "60", "y1": "70"})
    assert r.status_code == 200 and "snapped" in r.text
    rec = ovr.load_overrides(project).crops["img_00006.jpg"]
    x0, y0, x1, y1 = rec["box"]
    bw, bh = rec["bucket"]
    assert 0 <= x0 < x1 <= 96 and 0 <= y0 < y1 <= 120
    assert abs((x1 - x0) / (y1 - y0) - bw / bh) < 0.02
    page = c.get("/image/img_00006.jpg").text
    assert 'class="box override"' in page
    c.post("/api/undo")
    assert "img_00006.jpg" not in ovr.load_overrides(project).crops


def test_snap_box_grows_to_the_bucket_and_stays_inside():
    buckets = [(512, 512), (448, 576), (576, 448), (384, 640), (640, 384)]
    box, b = ovr.snap_box([100, 100, 200, 180], (300, 300), buckets)
    assert b == (576, 448) and abs((box[2] - box[0]) / (box[3] - box[1]) - 576 / 448) < 0.01
    box, b = ovr.snap_box([-50, 0, 500, 100], (300, 200), buckets)
    assert box[0] >= 0 and box[2] <= 300 and box[3] <= 200 and b == (640, 384)


def test_apply_captions_and_rejects_are_what_a_rerun_calls(project):
    ovr.set_caption(project, "img_00001.jpg", "hand edit")
    out = project / "04_captioned"
    (out / "img_00001.txt").write_text("regenerated\n")  # a rerun of merge
    assert ovr.apply_captions(project, out) == ["img_00001.jpg"]
    assert (out / "img_00001.txt").read_text() == "hand edit\n"
    assert ovr.apply_captions(project, out) == []
    raw = project / "01_raw"
    ovr.reject(project, raw, "img_00002.jpg")
    (raw / "img_00002.jpg").write_bytes((project / "rejected" / "img_00002.jpg").read_bytes())  # re-imported
    assert ovr.apply_rejects(project, raw) == ["img_00002.jpg"]
    assert not (raw / "img_00002.jpg").exists() and (project / "rejected" / "img_00002.jpg").exists()


def test_broken_overrides_file_is_named_with_the_fix(project):
    (project / "overrides.json").write_text("{nope")
    with pytest.raises(ovr.OverridesError, match="overrides.json: not valid JSON"):
        ovr.load_overrides(project)


# -- read-only and bad input -------------------------------------------------------------------


def test_read_only_writes_nothing_and_hides_the_controls(project, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    c = client_for(project, read_only=True)
    assert c.get("/thumb/img_00001.jpg").status_code == 200
    assert not (project / ".loraprep").exists()  # thumbnails went to the user's cache
    assert list((tmp_path / "cache").rglob("*.webp"))
    before = sorted((p.name, p.stat().st_mtime_ns) for p in project.rglob("*") if p.is_file())
    assert c.post("/api/caption", data={"id": "img_00001.jpg", "text": "x"}).status_code == 403
    assert c.post("/api/reject", data={"id": "img_00001.jpg"}).status_code == 403
    assert c.post("/api/batch", data={"scope": "filtered", "op": "add", "tag": "x"}).status_code == 403
    assert c.post("/api/undo").status_code == 403
    after = sorted((p.name, p.stat().st_mtime_ns) for p in project.rglob("*") if p.is_file())
    assert after == before
    page = c.get("/image/img_00001.jpg").text
    assert "read-only" in page and 'id="reject"' not in page and "<textarea" not in page
    assert 'id="batch"' not in c.get("/").text


def test_unreadable_image_and_non_utf8_caption_are_shown_with_their_reason(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (folder / "broken.txt").write_text("cat\n")
    Image.new("RGB", (30, 30), "blue").save(folder / "latin.png")
    (folder / "latin.txt").write_bytes("caf\xe9, cr\xe8me".encode("latin-1"))
    c = client_for(folder)
    grid = c.get("/")
    assert grid.status_code == 200 and "caption not UTF-8" in grid.text
    t = c.get("/thumb/broken.png")
    assert t.status_code == 200 and t.headers["content-type"].startswith("image/svg")
    assert "broken.png" in t.text
    page = c.get("/image/broken.png")
    assert page.status_code == 200 and "cannot read the image" in page.text
    page = c.get("/image/latin.png")
    assert page.status_code == 200 and "not UTF-8" in page.text
    r = c.post("/api/batch", data={"scope": "filtered", "op": "add", "tag": "dog"})
    assert r.status_code == 200
    assert (folder / "latin.txt").read_bytes() == "caf\xe9, cr\xe8me".encode("latin-1")  # left as it was
    # fixing it by hand in the studio writes UTF-8
    c.post("/api/caption", data={"id": "latin.png", "text": "café, crème"})
    assert (folder / "latin.txt").read_text(encoding="utf-8").strip() == "café, crème"
    assert c.get("/image/nope.png").status_code == 404


def test_odd_file_names_survive_the_pages_and_the_edits(tmp_path):
    import html as html_mod
    from urllib.parse import quote

    folder = tmp_path / "odd"
    folder.mkdir()
    name = """it's "odd" <b>&.png"""
    Image.new("RGB", (20, 20), "green").save(folder / name)
    (folder / name).with_suffix(".txt").write_text("cat\n")
    c = client_for(folder)
    page = c.get("/image/" + quote(name, safe="")).text
    assert "<b>&" not in page  # escaped
    vals = re.search(r"""id="reject" hx-post="/api/reject" hx-vals='([^']*)'""", page).group(1)
    assert json.loads(html_mod.unescape(vals)) == {"id": name}
    assert c.get("/thumb/" + quote(name, safe="")).headers["content-type"] == "image/webp"
    c.post("/api/tag", data={"id": name, "op": "add", "tag": "dog"})
    assert (folder / name).with_suffix(".txt").read_text() == "cat, dog\n"


def test_vendored_htmx_is_served_with_its_licence_beside_it(project):
    from loraprep.studio.app import HERE

    assert "Zero-Clause BSD" in (HERE / "static" / "htmx.LICENSE").read_text()
    c = client_for(project)
    js = c.get("/static/htmx.min.js")
    assert js.status_code == 200 and '"2.0.11"' in js.text
    assert '<script src="/static/htmx.min.js">' in c.get("/").text
