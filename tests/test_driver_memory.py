"""What a big run's driver keeps per image (issue 17: memory flat in the number of images).

The listing keeps strings, not `Path`s; `prep check` keeps its facts like a stage's results
(on disk past `SPILL_AT`), its hashes as columns, and streams its JSON. Each must give exactly
what the objects and lists they replace gave."""

from __future__ import annotations

import io
import json
import pickle
import random
import shutil
import tracemalloc
from contextlib import redirect_stdout
from pathlib import Path

import pytest
from badimages import gradient, write_bad_folder

import prep.results as results_mod
from prep.check import CheckOptions, CheckReport, FactList, ImageFacts, check_folder
from prep.cli.common import emit_json
from prep.dataset import ImageItem, discover
from prep.dedupe import HashColumns, HashedImage, _fine_arrays, group_duplicates


def _emitted(data) -> tuple[str, object]:
    buf = io.StringIO()
    with redirect_stdout(buf):
        emit_json(data)
    return buf.getvalue(), json.loads(buf.getvalue())


def _folder(tmp_path: Path, astronaut) -> Path:
    folder = tmp_path / "raw"
    write_bad_folder(folder)  # corrupt, transparent, rotated, animated, captions missing / empty / unreadable, small
    astronaut.save(folder / "a.png")
    astronaut.resize((300, 300)).save(folder / "a_small.jpg", quality=85)  # a duplicate group
    astronaut.transpose(0).save(folder / "a_mirror.png")
    for i in range(6):
        gradient(640 + 32 * i, 480, seed=i).save(folder / f"g{i}.jpg", quality=90)
    return folder


def test_a_spilled_check_report_is_the_same_report(tmp_path, astronaut, monkeypatch):
    folder = _folder(tmp_path, astronaut)
    opts = CheckOptions(resolution=512, workers=2)
    held = check_folder(folder, opts)
    assert not held.images.spilled
    monkeypatch.setattr(results_mod, "SPILL_AT", 3)
    spilled = check_folder(folder, opts)
    assert isinstance(spilled.images, FactList) and spilled.images.spilled
    want = held.to_json()
    assert spilled.to_json() == want
    assert want["problems"]["small"] and want["problems"]["transparent"] and want["problems"]["duplicates"]
    assert [f.id for f in spilled.images] == sorted(f.id for f in held.images)
    # streamed: the same document, and the per-image problems read the facts back only when asked
    text, parsed = _emitted(spilled.to_json(stream=True))
    assert parsed == json.loads(json.dumps(want))
    assert '\n  "problems": {\n    "corrupt": [' in text  # nested streamed dicts keep their indentation
    assert spilled.summary() == held.summary() and spilled.problems() == held.problems()


def test_facts_that_marshal_refuses_are_pickled(tmp_path, monkeypatch):
    import numpy as np

    facts = [ImageFacts(f"i{n}.png", (64, 48), "PNG", "RGB", 100 + n, False, False, 1, 1, (512, 512), "ok",
                        {"blur": 1.5 * n}, [[1.0, 2.0, 30.0, 40.0, 0.9]], [np.arange(4, dtype=np.float32) + n] if n % 2 else None,
                        flags={"blurry": "why"} if n == 3 else {}) for n in range(9)]
    fl = FactList(reversed(facts), spill_at=2, dir=tmp_path)
    fl.sort_by_id()
    got = list(fl)
    assert fl.spilled and [f.id for f in got] == [f.id for f in facts]
    for a, b in zip(got, facts):
        assert (a.size, a.bucket, a.quality, a.faces, a.flags) == (b.size, b.bucket, b.quality, b.faces, b.flags)
        assert (a.embeddings is None) == (b.embeddings is None) and a.quality == b.quality
        if a.embeddings is not None:
            assert np.array_equal(a.embeddings[0], b.embeddings[0])


def test_spilled_facts_hold_a_few_bytes_each(tmp_path):
    facts = [ImageFacts(f"img_{n:06d}.jpg", (320, 320), "JPEG", "RGB", 23_000 + n, False, False, 1, 1, (512, 512), "missing",
                        {"blur": 80.5 + n, "monochrome": 0.3, "jpeg_quality": 90}, None) for n in range(3000)]
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        fl = FactList(spill_at=100, dir=tmp_path)
        for f in facts:
            fl.append(f)
        per = (tracemalloc.get_traced_memory()[0] - base) / len(facts)
    finally:
        tracemalloc.stop()
    assert per < 60, per  # place and status; the id is the caller's string
    assert list(fl)[2999].quality == facts[2999].quality


def _hashed(n: int, seed: int = 0) -> list[HashedImage]:
    rnd = random.Random(seed)
    base = [rnd.getrandbits(64) for _ in range(8)]
    out = []
    for i in range(n):
        h = base[i % 8] ^ (1 << rnd.randrange(64) if i % 3 else 0)  # copies of 8 images, a bit apart
        fine = None if i % 11 == 5 else rnd.getrandbits(256) >> (rnd.randrange(2) * 200)
        out.append(HashedImage(f"img_{(i * 7919) % n:04d}.jpg", f"/data/img_{i}.jpg", (64 + i, 48), 1000 + i, h, h ^ 0xFF,
                               fine, None if i % 13 == 4 else (fine or 0) ^ 1, captioned=i % 4 == 0))
    return out


def test_hash_columns_give_the_same_images_and_groups():
    objs = _hashed(300)
    cols = HashColumns()
    for h in objs:
        cols.append(h)
    assert len(cols) == 300
    for i in (0, 5, 17, 299):
        got, want = cols[i], objs[i]
        assert (got.id, got.path, got.size, got.file_size, got.hash, got.mirror, got.fine, got.fine_mirror, got.captioned) == \
               (want.id, Path(want.path), want.size, want.file_size, want.hash, want.mirror, want.fine, want.fine_mirror, want.captioned)
    h, hm, fine, fine_m, known = cols.arrays()
    f2, fm2, k2 = _fine_arrays(objs)
    assert (h.tolist(), hm.tolist()) == ([x.hash for x in objs], [x.mirror for x in objs])
    assert (fine == f2).all() and (fine_m == fm2).all() and (known == k2).all()
    want = group_duplicates(objs, 8)
    assert want and group_duplicates(cols, 8) == want
    cols.sort_by_id()
    by_id = sorted(objs, key=lambda x: x.id)
    assert [x.id for x in cols] == [x.id for x in by_id] and [x.fine for x in cols] == [x.fine for x in by_id]
    assert group_duplicates(cols, 8) == group_duplicates(by_id, 8)


def test_listing_keeps_strings_and_gives_the_same_paths(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    names = [f"img_{i:04d}.jpg" for i in range(400)]
    gradient(8, 8).save(folder / names[0])
    for n in names[1:]:
        shutil.copyfile(folder / names[0], folder / n)
    odd = folder / "caf\udce9.png"
    gradient(8, 8).save(str(odd).encode("utf-8", "surrogateescape"))
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        items = discover(folder)
        per = (tracemalloc.get_traced_memory()[0] - base) / len(items)
    finally:
        tracemalloc.stop()
    assert per < 400, per  # was ~700 with three Path objects per image
    it = next(i for i in items if i.path == odd)
    assert it.id == "caf\\xe9.png" and it.caption_path == odd.with_suffix(".txt") and it.fspath == str(odd)
    assert isinstance(it.path, Path) and it.flags == {}
    again = pickle.loads(pickle.dumps(items[0]))
    assert again == items[0] and again.caption_path == items[0].caption_path
    other = ImageItem("x.png", folder / "x.png", tmp_path / "elsewhere.txt", flags={"video": True})
    assert pickle.loads(pickle.dumps(other)) == other and other.caption_path == tmp_path / "elsewhere.txt"
    other.path = folder / "y.png"  # moving the image keeps a caption stored elsewhere where it is
    assert other.caption_path == tmp_path / "elsewhere.txt"
    plain = ImageItem("z.png", folder / "z.png")
    plain.path = folder / "w.png"
    assert plain.caption_path == folder / "z.txt" and plain != other  # as when they were two fields


@pytest.mark.parametrize("nested", [False, True])
def test_streamed_json_is_the_same_document(nested):
    data = {"a": 1, "b": {"c": [1, 2], "d": {"x": "y"}}, "e": [{"k": i} for i in range(3)], "f": []}
    streamed = {**data, "e": iter(data["e"]), "f": iter([])}
    if nested:
        streamed["b"] = {**data["b"], "c": iter([1, 2])}
    text, parsed = _emitted(streamed)
    assert parsed == data
    plain, _ = _emitted(data)
    assert plain.strip() == json.dumps(data, indent=2, ensure_ascii=False)
    assert '\n  "e": [\n    {"k": 0},' in text and '"f": []' in text


def test_check_summary_counts_streamed_problems_and_names_a_few(tmp_path):
    from loraprep.stages import SUMMARY_NAMES, _check_summary

    n = 3 * SUMMARY_NAMES
    facts = FactList(spill_at=50, dir=tmp_path)
    for i in range(n):
        flags = {"blurry": f"blur {i}"} if i % 2 else {}
        facts.append(ImageFacts(f"img_{i:04d}.jpg", (320, 320), "JPEG", "RGB", 1000, i % 7 == 0, False, 6 if i == 5 else 1, 1,
                                (512, 512), "ok", None, None, flags=flags))
    rep = CheckReport("raw", CheckOptions(resolution=1024), images=facts)
    s = _check_summary(rep, {})
    assert s["images"] == n and len(s["small"]) == SUMMARY_NAMES and s["small_total"] == n and s["small"][0] == "img_0000.jpg"
    assert s["transparent"] == len(range(0, n, 7)) and s["exif_rotated"] == 1
    assert set(s["flagged"]) == {"blurry", "blurry_total"} and len(s["flagged"]["blurry"]) == SUMMARY_NAMES and s["flagged"]["blurry_total"] == n // 2
    assert s["flagged"]["blurry"][0] == "img_0001.jpg"


def test_write_json_streams_into_an_atomic_file(tmp_path):
    from prep.jsonout import write_json

    data = {"images": [{"id": f"i{k}", "name": "caf\udce9"} for k in range(5)], "summary": {"n": 5}}
    target = tmp_path / "r" / "check.json"
    write_json(target, {**data, "images": iter(data["images"])})
    assert json.loads(target.read_text(encoding="utf-8")) == data and sorted(p.name for p in target.parent.iterdir()) == ["check.json"]
    write_json(target, data)  # nothing streamed: the text json.dumps(indent=2) gives
    assert target.read_text(encoding="utf-8") == json.dumps(data, indent=2, ensure_ascii=False).replace("\udce9", "\\udce9")
