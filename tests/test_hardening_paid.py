"""Paid twice: a create whose answer was lost is found by its idempotency key however many
predictions are in flight (every page of the list API, as the real one paginates), in one run
and after a kill -9 and a rerun. Checked on the Replicate stand-in's request log."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

pytest.importorskip("replicate")

from stubs.replicate_stub import ReplicateStub

from prep.remote import RemoteError, RetryPolicy, StateStore
from prep.replicate_run import FileInput, make_client, run_prediction
from hardening import figure

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "r8_fake_token_for_tests_123456"
FAST = RetryPolicy(max_attempts=5, base_delay=0.01, max_delay=0.05)
MODEL = "lucataco/florence-2-large"


def _img(i: int) -> FileInput:
    return FileInput(bytes([i % 256, i // 256]) * 1000, f"img{i}.jpg", "image/jpeg")


def _inputs(i: int) -> dict:
    return {"image": _img(i), "task_input": "More Detailed Caption"}


def _creates(stub: ReplicateStub) -> Counter:
    """Billed predictions per image, from the request log."""
    return Counter(r["image_sha"] for r in stub.log if r["method"] == "POST" and r["path"].endswith("/predictions") and r.get("answer") == 201)


def test_stub_lists_predictions_page_by_page(tmp_path):
    # the stand-in pages like the real API (newest first, `next` cursor URL), so the SDK's own
    # paginate() walks it: the client under test meets the same shape as in production
    import replicate

    with ReplicateStub(page_size=4) as stub:
        client = make_client(TOKEN, base_url=stub.url)
        for i in range(10):
            run_prediction(client, MODEL, _inputs(i), key=f"k{i}", state=StateStore(tmp_path / "s.jsonl"), policy=FAST, poll_interval=0.01)
        pages = list(replicate.pagination.paginate(client.predictions.list))
    assert [len(p.results) for p in pages] == [4, 4, 2]
    ids = [p.id for page in pages for p in page.results]
    assert ids == stub.order and len(set(ids)) == 10


def test_lost_create_found_among_many_in_flight(tmp_path):
    # one create hangs (billed, answer lost); while it hangs 15 more predictions start; the
    # list omits inputs and holds 5 a page: the lost one is the 16th entry, on page 4
    with ReplicateStub(fail_plan={"POST /v1/models/": ["hang"]}, hang_seconds=6.0, polls_before_done=10_000, page_size=5, list_omits_input=True) as stub:
        state = StateStore(tmp_path / "s.jsonl")
        res: dict = {}

        def lost() -> None:
            client = make_client(TOKEN, base_url=stub.url, timeout=2.5)
            res["r"] = run_prediction(client, MODEL, _inputs(0), key="k0", state=state, policy=FAST, poll_interval=0.01, timeout=0.0)

        t = threading.Thread(target=lost)
        t.start()
        deadline = time.monotonic() + 20
        while not stub.creates and time.monotonic() < deadline:
            time.sleep(0.01)
        client = make_client(TOKEN, base_url=stub.url)
        for i in range(1, 16):  # in flight: timeout=0 returns at once, the prediction keeps running
            r = run_prediction(client, MODEL, _inputs(i), key=f"k{i}", state=state, policy=FAST, poll_interval=0.01, timeout=0.0)
            assert r.status == "timeout"
        assert len(stub.order) == 16
        t.join(timeout=60)
        assert res["r"].status == "timeout" and res["r"].id == stub.order[-1]  # it adopted the lost one
        assert set(_creates(stub).values()) == {1} and len(_creates(stub)) == 16, _creates(stub)
        assert any("cursor=" in r["path"] for r in stub.log)  # it read past the first page
        figure("paid", 16, sum(1 for v in _creates(stub).values() if v == 1), note="16 in flight, a lost create among them")


def test_failed_lookup_never_creates_again(tmp_path):
    # the create times out and the list call answers 500 every time: give up, do not pay again
    plan = {"POST /v1/models/": ["hang"], "GET /v1/predictions": [500] * 50}
    with ReplicateStub(fail_plan=plan, hang_seconds=3.0) as stub:
        client = make_client(TOKEN, base_url=stub.url, timeout=0.5)
        with pytest.raises(RemoteError):
            run_prediction(client, MODEL, _inputs(0), key="k0", state=StateStore(tmp_path / "s.jsonl"), policy=FAST, poll_interval=0.01)
        assert stub.create_count() == 1


WORKER = """
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from prep.remote import RetryPolicy, StateStore
from prep.replicate_run import FileInput, make_client, run_prediction
url, state_path, n = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
state = StateStore(state_path)
def one(i):
    client = make_client("r8_fake_token_for_tests_123456", base_url=url, timeout=30.0)
    img = FileInput(bytes([i % 256, i // 256]) * 1000, f"img{i}.jpg", "image/jpeg")
    return run_prediction(client, "lucataco/florence-2-large", {"image": img, "task_input": "More Detailed Caption"}, key=f"k{i}",
                          state=state, policy=RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.05), poll_interval=0.05, timeout=0.0)
with ThreadPoolExecutor(8) as ex:
    print([r.status for r in ex.map(one, range(n))], flush=True)
"""


def test_kill_9_while_creates_hang_then_rerun_pays_once(tmp_path):
    # 3 creates reach Replicate but their answers never arrive; 17 more start after them. The
    # run is killed (-9) while it waits; the rerun must find the 3 on later list pages.
    n = 20
    state_path = tmp_path / "state.jsonl"
    with ReplicateStub(fail_plan={"POST /v1/models/": ["hang"] * 3}, hang_seconds=20.0, polls_before_done=10_000,
                       page_size=5, list_omits_input=True) as stub:
        proc = subprocess.Popen([sys.executable, "-c", WORKER, stub.url, str(state_path), str(n)], cwd=ROOT,
                                env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and stub.create_count() < n:
            time.sleep(0.05)
        time.sleep(0.3)  # the answered ones reach the state file
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert stub.create_count() == n
        states = {}
        for line in state_path.read_text().splitlines():
            rec = json.loads(line)
            states[rec["key"]] = rec["state"]
        lost = [k for k, s in states.items() if s.get("phase") == "creating"]
        assert len(lost) == 3  # killed with 3 creates unanswered
        assert all(stub.order.index(p) >= 10 for p in stub.order[-3:])  # older than the 10 newest

        stub.polls_before_done = 1
        client = make_client(TOKEN, base_url=stub.url)
        state = StateStore(state_path)
        results = [run_prediction(client, MODEL, _inputs(i), key=f"k{i}", state=state, policy=FAST, poll_interval=0.01) for i in range(n)]
        assert [r.status for r in results] == ["succeeded"] * n
        assert all(results[int(k[1:])].resumed for k in lost)
        c = _creates(stub)
        assert len(c) == n and set(c.values()) == {1}, c  # no image created twice
        # a second rerun sends no create at all
        again = [run_prediction(client, MODEL, _inputs(i), key=f"k{i}", state=StateStore(state_path), policy=FAST, poll_interval=0.01) for i in range(n)]
        assert all(r.resumed for r in again) and sum(_creates(stub).values()) == n
        figure("paid", n, sum(1 for v in _creates(stub).values() if v == 1), note="kill -9 with creates unanswered, then reruns")
        figure("fault", 1, 1, note="kill -9 while creates hang")
