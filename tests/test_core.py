"""Manifest, executor, buckets, trigger, safe names: the seams every step relies on."""

from __future__ import annotations

import json
import os
import random

import pytest

from prep.buckets import BucketSpec, make_bucket_resolutions
from prep.executor import LocalExecutor, run_step
from prep.fsutil import atomic_write_text, safe_component
from prep.manifest import Manifest, Record
from prep.trigger import apply_trigger
from steps import Square


# -- manifest -------------------------------------------------------------------------
def test_manifest_latest_wins_and_torn_line_ignored(tmp_path):
    m = Manifest.in_folder(tmp_path)
    (tmp_path / "out.png").write_bytes(b"x")
    m.append(Record("crop", "a.png", "failed", reason="boom"))
    m.append(Record("crop", "a.png", "ok", source_sha256="abc", outputs=["out.png"]))
    with open(m.path, "a") as fh:
        fh.write('{"step": "crop", "id": "b.png", "sta')  # killed mid-write
    m2 = Manifest.in_folder(tmp_path)
    assert m2.get("crop", "a.png").status == "ok"
    assert m2.get("crop", "b.png") is None
    assert m2.is_done("crop", "a.png", "abc")
    assert not m2.is_done("crop", "a.png", "changed-source")
    (tmp_path / "out.png").unlink()
    assert not Manifest.in_folder(tmp_path).is_done("crop", "a.png", "abc")  # output gone: redo


def test_atomic_write_leaves_no_partial_file(tmp_path):
    p = tmp_path / "c.txt"
    atomic_write_text(p, "one")

    class Boom(Exception):
        pass

    from prep.fsutil import atomic_open

    with pytest.raises(Boom):
        with atomic_open(p) as fh:
            fh.write(b"half")
            raise Boom
    assert p.read_text() == "one" and not list(tmp_path.glob(".*tmp"))


# -- executor -------------------------------------------------------------------------
@pytest.mark.parametrize("kind,workers", [("serial", 1), ("thread", 3), ("process", 2)])
def test_executor_isolates_the_bad_item(kind, workers):
    items = list(range(20))
    res = run_step(Square(), items, workers=workers, kind=kind, batch_size=4)
    assert len(res) == 20
    bad = [r for r in res if r.status == "failed"]
    assert [r.id for r in bad] == ["13"] and "unlucky number" in bad[0].reason
    assert {r.data["sq"] for r in res if r.ok} == {x * x for x in items if x != 13}
    if kind == "process":
        assert {r.data["pid"] for r in res if r.ok} != {os.getpid()}


def test_executor_streams_results_with_bounded_in_flight():
    ex = LocalExecutor(workers=2, kind="thread", batch_size=1, max_in_flight=2)
    got = [r.id for r in ex.run(Square(), [1, 2, 3])]
    assert sorted(got) == ["1", "2", "3"]


# -- buckets (sd-scripts rules) -------------------------------------------------------
def test_bucket_counts_match_sd_scripts():
    assert len(make_bucket_resolutions((1024, 1024), 256, 1024, 64)) == 25
    assert len(make_bucket_resolutions((1024, 1024), 256, 2048, 64)) == 41
    assert len(make_bucket_resolutions((512, 512), 256, 1024, 64)) == 17
    assert len(make_bucket_resolutions((1024, 1024), 256, 2048, 32)) == 81
    assert len(make_bucket_resolutions((1024, 1024), 512, 2048, 16)) == 129


@pytest.mark.parametrize(
    "spec, size, bucket, resized",
    [
        (BucketSpec(max_reso=2048), (3024, 4032), (896, 1152), (896, 1195)),
        (BucketSpec(max_reso=2048), (1080, 1920), (768, 1344), (768, 1365)),
        (BucketSpec(), (512, 512), (1024, 1024), (1024, 1024)),
        (BucketSpec(resolution=(768, 768), no_upscale=True), (768, 1024), (640, 832), (640, 853)),
        (BucketSpec(no_upscale=True), (500, 700), (448, 640), (500, 700)),
    ],
)
def test_bucket_selection_examples(spec, size, bucket, resized):
    c = spec.select(*size)
    assert c.bucket == bucket and c.resized == resized


@pytest.mark.parametrize("res", [512, 768, 1024])
@pytest.mark.parametrize("steps", [64, 32, 16])
def test_every_bucket_is_a_fixed_point(res, steps):
    spec = BucketSpec.square(res, steps=steps)
    assert spec.buckets and all(w % steps == 0 and h % steps == 0 for w, h in spec.buckets)
    assert all(spec.is_fixed_point(b) for b in spec.buckets)
    assert all(w * h <= res * res for w, h in spec.buckets)


def test_bucket_spec_validation():
    with pytest.raises(ValueError, match="max_bucket_reso"):
        BucketSpec(resolution=(1536, 1536), max_reso=1024).validate()


# -- trigger -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "caption, expected",
    [
        ("1girl, solo", "sage_character, 1girl, solo"),
        ("sage_character, 1girl", "sage_character, 1girl"),
        ("1girl, Sage_Character, solo, sage_character", "sage_character, 1girl, solo"),
        ("[trigger], 1girl", "sage_character, 1girl"),
        ("SAGE CHARACTER is smiling", "sage_character is smiling"),
        ("A photo of sage_character in a park", "sage_character, A photo of the subject in a park"),
        ("", "sage_character"),
    ],
)
def test_trigger_first_exactly_once_idempotent(caption, expected):
    out = apply_trigger(caption, "sage_character")
    assert out == expected
    assert apply_trigger(out, "sage_character") == out
    assert out.lower().count("sage_character") == 1


def test_trigger_fuzz_invariants():
    rng = random.Random(0)
    words = ["1girl", "smile", "Sage_Character", "sage character", "[trigger]", "red hair", "a cat"]
    for _ in range(300):
        cap = ", ".join(rng.choice(words) for _ in range(rng.randint(0, 6)))
        out = apply_trigger(cap, "sage_character")
        assert out.startswith("sage_character")
        assert out.lower().replace(" ", "_").count("sage_character") == 1
        assert apply_trigger(out, "sage_character") == out


# -- names -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, safe",
    [("a:b?.png", "a_b_.png"), ("nul.txt", "_nul.txt"), ("COM1", "_COM1"), ("x. . ", "x"), ("..", "unnamed"), ("ok.png", "ok.png")],
)
def test_safe_component(name, safe):
    assert safe_component(name) == safe


def test_cli_entry_points_have_help():
    import subprocess
    import sys

    for mod in ("prep.cli", "loraprep.cli"):
        r = subprocess.run([sys.executable, "-c", f"import {mod} as m; m.main()", "--help"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert "Usage" in r.stdout


def test_json_manifest_is_valid_jsonl(tmp_path):
    m = Manifest.in_folder(tmp_path)
    m.append(Record("x", "é.png", "ok", data={"faces": [[1, 2, 3, 4, 0.9]]}))
    rec = json.loads(m.path.read_text(encoding="utf-8").splitlines()[0])
    assert rec["faces"] == [[1, 2, 3, 4, 0.9]] and rec["id"] == "é.png"


def test_discovery_skips_recorded_reports_and_mac_litter_but_not_a_users_contact_sheet(tmp_path):
    """Report files are reserved by where a command wrote them (recorded), not by their name."""
    from prep.dataset import discover, record_report_files

    for n in ("a.png", "contact_sheet.jpg", "contact_sheet_002.jpg", "._a.png", "my_contact_sheet.jpg"):
        (tmp_path / n).write_bytes(b"x")
    assert [i.id for i in discover(tmp_path)] == ["a.png", "contact_sheet.jpg", "contact_sheet_002.jpg", "my_contact_sheet.jpg"]
    record_report_files(tmp_path, ["contact_sheet.jpg", "contact_sheet_002.jpg"], written_by="prep crop")
    assert [i.id for i in discover(tmp_path)] == ["a.png", "my_contact_sheet.jpg"]


_MANIFEST_OPENS: list[str] = []
_AUDIT_ON = False


def _count_manifest_opens(event: str, args: tuple) -> None:
    if _AUDIT_ON and event == "open" and str(args[0]).endswith("manifest.jsonl"):
        _MANIFEST_OPENS.append(str(args[0]))


def test_discovery_reads_a_folders_manifest_once_not_once_per_file(tmp_path):
    """Issue 17: a 100k-image crop folder was read in full once per image (quadratic)."""
    import sys

    from prep.dataset import discover, record_report_files

    global _AUDIT_ON
    for i in range(50):
        (tmp_path / f"img_{i:03d}.png").write_bytes(b"x")
    record_report_files(tmp_path, ["contact_sheet.jpg"], written_by="prep crop")
    sys.addaudithook(_count_manifest_opens)  # Python's own audit events: what discover really opens
    _MANIFEST_OPENS.clear()
    _AUDIT_ON = True
    try:
        found = discover(tmp_path)
    finally:
        _AUDIT_ON = False
    assert len(found) == 50
    assert len(_MANIFEST_OPENS) == 1, _MANIFEST_OPENS[:3]


def test_manifest_index_holds_where_records_are_not_the_records(tmp_path):
    """Issue 17: the parsed index of a 100k-image folder held 312 MiB (crop) / 783 MiB (caption).
    The index keeps one offset per record; `get` reads the line back unchanged."""
    import tracemalloc

    m = Manifest.in_folder(tmp_path)
    tags = [f"tag number {j}" for j in range(60)]
    for i in range(3000):
        m.append(Record("caption", f"img_{i:05d}.jpg", "ok", source=f"/data/img_{i:05d}.jpg", source_sha256=f"{i:064x}",
                        outputs=[f"img_{i:05d}.txt"], data={"tags": tags[i % 60:] + tags[:i % 60], "ratings": {"general": 0.9}}))
    again = Manifest.in_folder(tmp_path)  # the index a rerun reads
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        assert len(again.ids("caption")) == 3000
        grown = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(before, "filename"))
    finally:
        tracemalloc.stop()
    assert grown < 3000 * 300, grown  # 137 B measured; parsed records: 1.6 KiB shared, 5.5 KiB plain
    r = again.get("caption", "img_00061.jpg")
    assert r.data["tags"] == tags[1:] + tags[:1] and r.source_sha256 == f"{61:064x}" and r.outputs == ["img_00061.txt"]
    assert again.get("caption", "nope.jpg") is None and again.get("crop", "img_00061.jpg") is None
    again.append(Record("caption", "img_00061.jpg", "failed", reason="boom"))
    assert again.get("caption", "img_00061.jpg").status == "failed" and Manifest(m.path).get("caption", "img_00061.jpg").status == "failed"
    everything = again.latest()
    recs = [everything[("caption", f"img_{i:05d}.jpg")] for i in (0, 60)]
    assert all(a is b for a, b in zip(recs[0].data["tags"], recs[1].data["tags"]))  # a full read shares repeated strings


def test_manifest_index_survives_the_file_being_rewritten(tmp_path):
    m = Manifest.in_folder(tmp_path)
    for i in range(5):
        m.append(Record("crop", f"{i}.png", "ok", data={"n": i}))
    assert m.get("crop", "0.png").data == {"n": 0}
    lines = m.path.read_text().splitlines(keepends=True)
    m.path.write_text("".join(reversed(lines)))  # someone rewrote it: every offset now points elsewhere
    assert [m.get("crop", f"{i}.png").data["n"] for i in range(1, 5)] == [1, 2, 3, 4]


def test_manifest_statuses_of_one_step(tmp_path):
    m = Manifest.in_folder(tmp_path)
    m.append(Record("crop.report", "contact_sheet.jpg", "failed"))
    m.append(Record("crop", "a.png", "ok", data={"note": 'has "step": "crop.report" inside'}))
    m.append(Record("crop.report", "contact_sheet.jpg", "ok"))
    m.append(Record("crop.report", "contact_sheet_002.jpg", "ok"))
    assert Manifest(m.path).statuses("crop.report") == {"contact_sheet.jpg": "ok", "contact_sheet_002.jpg": "ok"}
    assert Manifest(m.path).statuses("crop") == {"a.png": "ok"}


def test_manifest_index_reads_each_lines_head_not_the_whole_line(tmp_path, monkeypatch):
    """Indexing a 100k-image caption manifest parsed 170 MB of JSON that `get` parses again. Lines
    now start with step, id and status, which is all the index reads; names that need escapes,
    lines of the older sorted-key form and a line whose body is damaged still read right."""
    m = Manifest.in_folder(tmp_path)
    odd = ['q"uote.png', "back\\slash.png", "ü/ß.png", "bad\udcff.png", 'x", "id": "y.png']
    for i, name in enumerate(odd):
        m.append(Record("caption", name, "ok", data={"n": i, "nested": {"id": "not this", "step": "nor this"}}))
    with open(m.path, "a", encoding="utf-8") as fh:  # a line written before the head order: keys sorted
        fh.write(json.dumps({"id": "old.png", "n": 9, "status": "ok", "step": "caption"}, sort_keys=True) + "\n")
    first = m.path.read_bytes().splitlines()[0]
    assert first.startswith(b'{"step": "caption", "id": "q\\"uote.png", "status": "ok", ') and json.loads(first)["n"] == 0
    calls = []
    real_loads = json.loads
    monkeypatch.setattr(json, "loads", lambda s, *a, **k: calls.append(s) or real_loads(s, *a, **k))
    again = Manifest(m.path)
    assert again.ids("caption") == [*odd, "old.png"]
    assert again.statuses("caption") == {name: "ok" for name in [*odd, "old.png"]}
    parsed_whole = [c for c in calls if len(c) > 40]
    assert len(parsed_whole) == 2, parsed_whole  # the old-form line, once for ids and once for statuses
    monkeypatch.undo()
    assert [again.get("caption", name).data["n"] for name in [*odd, "old.png"]] == [0, 1, 2, 3, 4, 9]

    m.append(Record("caption", "ü/ß.png", "failed", reason="boom"))
    text = m.path.read_text(encoding="utf-8", errors="surrogateescape")
    head, _, _ = text.splitlines()[-1].partition('"reason"')
    m.path.write_text(text + head + '"reas\n', encoding="utf-8", errors="surrogateescape")  # its head is whole, its body is not
    fresh = Manifest(m.path)
    assert fresh.get("caption", "ü/ß.png").status == "failed"  # the damaged line is not the latest record
    with open(m.path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"step": "caption", "id": "ü/ß.png", "status": "ok"})[:-1] + ', "n": }\n')
    fresh = Manifest(m.path)
    assert fresh.get("caption", "ü/ß.png").status == "failed" and fresh.get("caption", "q\"uote.png").data["n"] == 0
