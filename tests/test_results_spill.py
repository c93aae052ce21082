"""ResultList: a stage's results past `spill_at` live in an anonymous temp file (issue 17: the
100k-image crop report held ~340 MiB of results in the driver). It behaves as the list did."""

from __future__ import annotations

import json
import pickle
import shutil
import tracemalloc
from pathlib import Path

import numpy as np

import prep.results as results_mod
from prep.crop import CropOptions, crop_folder
from prep.executor import Result
from prep.results import ResultList


def _r(i: int) -> Result:
    return Result(f"img_{i:03d}.png", "ok" if i % 3 else "flagged", f"/src/img_{i:03d}.png", [f"img_{i:03d}.png"],
                  None if i % 3 else "upscaled", {"faces": [[1.5 * i, 2.0, 30.0, 40.0]], "size": (640, 480), "n": i})


def test_spilled_list_reads_back_what_went_in(tmp_path):
    want = [_r(i) for i in range(50)]
    rl = ResultList(spill_at=10, dir=tmp_path)
    rl.extend(want[:30])
    assert rl.spilled and len(rl) == 30
    rl.extend(want[30:])
    assert list(rl) == want and rl[7] == want[7] and rl[-1] == want[-1] and rl[10:13] == want[10:13]
    assert rl[0].data["size"] == (640, 480)  # exact types, not a JSON round trip
    rl.sort(key=lambda r: (r.status == "ok", -r.data["n"]))
    assert list(rl) == sorted(want, key=lambda r: (r.status == "ok", -r.data["n"]))
    assert rl.first(4, key=lambda rid, status: (status != "flagged", rid)) == [want[0], want[3], want[6], want[9]]
    rl.sort_by_id()
    assert list(rl) == want
    assert list(pickle.loads(pickle.dumps(rl))) == list(rl)
    assert list(tmp_path.iterdir()) == []  # the file has no name: nothing is left behind, even by a kill


def test_results_marshal_cannot_hold_are_pickled_and_runs_of_them_read_in_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(results_mod, "_READ_AT_MOST", 300)  # several blocks, each holding a few results
    want = [_r(i) for i in range(40)]
    want[5] = Result("odd.png", "ok", "/src/odd.png", [], None, {"where": Path("/src/odd.png")})  # marshal refuses a Path
    rl = ResultList(want, spill_at=3, dir=tmp_path)
    assert rl.spilled and list(rl) == want and rl[5].data["where"] == Path("/src/odd.png")
    rl.sort(key=lambda r: -r.data.get("n", 5))  # places no longer next to each other: one read each
    assert list(rl) == sorted(want, key=lambda r: -r.data.get("n", 5))


def test_numpy_values_come_back_as_numpy_values(tmp_path):
    # marshal takes anything with a buffer (a numpy number or array) as its raw bytes, without an error
    want = [_r(0), Result("np.png", "ok", "/src/np.png", [], None, {"score": np.float64(0.25), "v": np.float32(2.5), "a": np.arange(3)}),
            Result("one.png", "ok", "/src/one.png", [], None, {"a": np.arange(1), "n": np.int64(7)}), _r(3)]
    rl = ResultList(want, spill_at=1, dir=tmp_path)
    got = [r.data for r in rl]
    assert rl.spilled and got[0] == want[0].data and got[3] == want[3].data
    assert type(got[1]["score"]) is np.float64 and got[1]["score"] == 0.25 and type(got[1]["v"]) is np.float32
    assert got[1]["a"].tolist() == [0, 1, 2] and got[2]["a"].tolist() == [0] and type(got[2]["n"]) is np.int64


def test_small_lists_stay_in_memory():
    want = [_r(i) for i in range(5)]
    rl = ResultList(reversed(want), spill_at=10)
    rl.sort_by_id()
    assert not rl.spilled and list(rl) == want and rl.first(1, key=lambda rid, status: (status == "ok", rid)) == [want[0]]


def test_spilled_results_hold_a_few_bytes_each(tmp_path):
    items = [_r(i) for i in range(3000)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        rl = ResultList(spill_at=100, dir=tmp_path)
        for r in items:
            rl.append(r)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(rl) == 3000 and grown < 3000 * 64, grown  # in memory they are ~1 KiB each


def test_crop_report_is_the_same_when_its_results_spill(tmp_path, anime_dir: Path, yunet_model: Path, monkeypatch):
    src = tmp_path / "raw"
    src.mkdir()
    for p in sorted(anime_dir.glob("*.png"))[:5]:
        shutil.copy(p, src / p.name)
    opts = CropOptions(detector="photo", detector_model=str(yunet_model), resolution=512, workers=2)
    kept = crop_folder(src, tmp_path / "kept", opts)
    monkeypatch.setattr(results_mod, "SPILL_AT", 2)
    spilled = crop_folder(src, tmp_path / "spilled", opts)
    assert isinstance(spilled.results, ResultList) and spilled.results.spilled and not kept.results.spilled
    assert [r.id for r in spilled.results] == [r.id for r in kept.results] == sorted(r.id for r in kept.results)
    assert spilled.summary() == kept.summary() and spilled.small_sources == kept.small_sources
    a, b = (json.loads(json.dumps(rep.to_json(), default=str)) for rep in (kept, spilled))
    strip = lambda d: {k: v for k, v in d.items() if k not in ("out", "report", "contact_sheets", "bucket_record")}
    assert strip(a) == strip(b) and a["images"]
    assert (tmp_path / "kept" / "crops.jsonl").read_text() == (tmp_path / "spilled" / "crops.jsonl").read_text()
    again = crop_folder(src, tmp_path / "spilled", opts)  # a rerun of finished work, spilled too
    assert again.summary()["resumed"] == 5 and again.results.spilled


def test_emit_json_streams_an_iterator_as_an_array(capsys):
    from prep.cli.common import emit_json

    rows = [{"id": f"ü{i}.png", "faces": [[1.0, 2.0]]} for i in range(3)]
    emit_json({"a": 1, "images": iter(rows), "none": iter(()), "tail": {"k": [1, 2]}})
    assert json.loads(capsys.readouterr().out) == {"a": 1, "images": rows, "none": [], "tail": {"k": [1, 2]}}
