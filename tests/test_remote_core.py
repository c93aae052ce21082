"""prep.remote: backoff honours Retry-After, limiter paces, state survives a restart."""

from __future__ import annotations

import random

import pytest

from prep.remote import (
    RateLimiter,
    RemoteError,
    RetryPolicy,
    StateStore,
    call_with_retry,
    classify_status,
    parse_retry_after,
    redact,
)


class FakeClock:
    def __init__(self):
        self.t = 0.0
        self.sleeps: list[float] = []

    def __call__(self):
        return self.t

    def sleep(self, s):
        self.sleeps.append(s)
        self.t += s


def test_retry_honours_retry_after_and_stops_on_permanent_errors():
    calls = []
    waits = []

    def fn():
        calls.append(1)
        if len(calls) < 3:
            raise RemoteError("slow down", status=429, retryable=True, retry_after=7.0, kind="rate_limit")
        return "ok"

    out = call_with_retry(fn, classify=lambda e: RemoteError(str(e)), sleep=waits.append, rng=random.Random(1))
    assert out == "ok" and len(calls) == 3
    assert all(w >= 7.0 for w in waits)

    def bad():
        raise RemoteError("no such model", status=404, retryable=False, kind="not_found")

    with pytest.raises(RemoteError, match="no such model"):
        call_with_retry(bad, classify=lambda e: e, sleep=waits.append)


def test_retry_gives_up_after_max_attempts_and_classifies_sdk_errors():
    n = []

    def fn():
        n.append(1)
        raise TimeoutError("read timed out")

    def classify(e):
        return RemoteError(str(e), retryable=isinstance(e, TimeoutError), kind="timeout")

    with pytest.raises(RemoteError, match="timed out"):
        call_with_retry(fn, classify=classify, policy=RetryPolicy(max_attempts=4, base_delay=0.01), sleep=lambda s: None)
    assert len(n) == 4


def test_token_bucket_paces_requests():
    clock = FakeClock()
    lim = RateLimiter(rpm=60, concurrency=1, clock=clock, sleep=clock.sleep)
    for _ in range(5):
        with lim:
            pass
    # capacity 1 at 1 request/s: 5 requests need about 4 s of waiting
    assert 3.9 <= clock.t <= 4.1
    lim.pause(10)
    with lim:
        pass
    assert clock.t >= 14


def test_state_store_survives_reopen_and_torn_lines(tmp_path):
    p = tmp_path / "state.jsonl"
    s = StateStore(p)
    s.put("img1", {"prediction": "p1"})
    s.update("img1", status="succeeded")
    with open(p, "a") as fh:
        fh.write('{"key": "img2", "sta')
    s2 = StateStore(p)
    assert s2.get("img1") == {"prediction": "p1", "status": "succeeded"}
    assert s2.get("img2") is None


def test_parse_retry_after_and_classify():
    assert parse_retry_after("5") == 5
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == pytest.approx(10, abs=1)
    assert parse_retry_after("soon") is None
    assert classify_status(503, "x").retryable and classify_status(429, "x").kind == "rate_limit"
    assert not classify_status(400, "x").retryable


def test_redact_removes_env_keys(monkeypatch):
    monkeypatch.setenv("REPLICATE_API_TOKEN", "r8_secret_token_123")
    assert "r8_secret" not in redact("auth failed for r8_secret_token_123")
