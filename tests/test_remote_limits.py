"""The remote machinery under load: concurrency cap, a shared pause on 429, no batch barrier
when streaming, full-jitter bounds, and Gemini error classification (Retry-After, RetryInfo)."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pytest

from captioning.backends._remote import stream_results
from captioning.backends.base import CaptionResult
from prep.dataset import ImageItem
from prep.remote import RateLimiter, RemoteError, RetryPolicy, call_with_retry


def test_concurrency_cap_holds_under_many_threads():
    lim = RateLimiter(concurrency=3)
    active = peak = 0
    lock = threading.Lock()

    def work() -> None:
        nonlocal active, peak
        with lim:
            with lock:
                active += 1
                peak = max(peak, active)
            time.sleep(0.02)
            with lock:
                active -= 1

    threads = [threading.Thread(target=work) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak == 3


def test_rate_limit_retry_after_pauses_every_caller():
    lim = RateLimiter(concurrency=4)
    starts: list[float] = []
    calls = {"n": 0}

    def flaky() -> str:
        starts.append(time.monotonic())
        calls["n"] += 1
        if calls["n"] == 1:
            raise RemoteError("429", status=429, retryable=True, retry_after=0.3, kind="rate_limit")
        return "ok"

    t0 = time.monotonic()
    assert call_with_retry(flaky, classify=lambda e: RemoteError(str(e)), limiter=lim, policy=RetryPolicy(base_delay=0.001)) == "ok"
    # another caller arriving during the pause waits for it too
    with lim:
        waited = time.monotonic() - t0
    assert starts[1] - starts[0] >= 0.29 and waited >= 0.29


def test_full_jitter_stays_within_bounds():
    pol = RetryPolicy(base_delay=0.5, max_delay=4.0)
    rng = random.Random(1)
    for attempt in range(8):
        delays = [pol.backoff(attempt, rng) for _ in range(200)]
        cap = min(4.0, 0.5 * 2**attempt)
        assert all(0 <= d <= cap for d in delays) and max(delays) > cap * 0.8  # spread over the whole range


def test_stream_results_has_no_batch_barrier(tmp_path: Path):
    items = [ImageItem(id=f"i{n}", path=tmp_path / f"i{n}.png", caption_path=tmp_path / f"i{n}.txt") for n in range(6)]

    def fn(item: ImageItem) -> CaptionResult:
        time.sleep(1.0 if item.id == "i0" else 0.05)
        return CaptionResult(item.id, "ok", text=item.id)

    t0 = time.monotonic()
    arrivals = []
    for chunk in stream_results(items, 3, fn):
        arrivals += [(r.id, time.monotonic() - t0) for r in chunk]
    order = [a for a, _ in arrivals]
    assert sorted(order) == sorted(i.id for i in items)
    assert order[-1] == "i0" and dict(arrivals)["i5"] < 0.6  # the slow one did not hold the others


def test_stream_results_turns_exceptions_into_failed_results(tmp_path: Path):
    items = [ImageItem(id="a", path=tmp_path / "a.png", caption_path=tmp_path / "a.txt")]

    def boom(item: ImageItem) -> CaptionResult:
        raise RuntimeError("exploded")

    res = [r for chunk in stream_results(items, 2, boom) for r in chunk]
    assert res[0].status == "failed" and "a.png" in res[0].reason and "exploded" in res[0].reason


def test_gemini_errors_classified_with_retry_hints():
    genai_errors = pytest.importorskip("google.genai.errors")
    import httpx

    from captioning.backends.gemini import classify_genai

    resp = httpx.Response(429, headers={"Retry-After": "7"})
    e = classify_genai(genai_errors.ClientError(429, {"error": {"code": 429, "message": "quota", "status": "RESOURCE_EXHAUSTED"}}, resp))
    assert e.retryable and e.kind == "rate_limit" and e.retry_after == 7
    details = {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "q",
                         "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "12s"}]}}
    e = classify_genai(genai_errors.ClientError(429, details, httpx.Response(429)))
    assert e.retry_after == 12
    e = classify_genai(genai_errors.ClientError(400, {"error": {"code": 400, "message": "API key not valid. Please pass a valid API key.", "status": "INVALID_ARGUMENT"}}, httpx.Response(400)))
    assert e.kind == "auth" and not e.retryable
    assert classify_genai(genai_errors.ServerError(503, {"error": {"code": 503}}, httpx.Response(503))).retryable
    assert classify_genai(httpx.ReadTimeout("slow")).kind == "timeout"
    assert classify_genai(httpx.ConnectError("refused")).retryable
