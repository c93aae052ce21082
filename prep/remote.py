"""Shared machinery for paid remote calls (Gemini and Replicate captioning, Replicate img2img).

- `RateLimiter`: a thread-safe token bucket (requests per minute) plus a concurrency cap.
- `call_with_retry`: exponential backoff with full jitter that honours Retry-After on 429,
  5xx and timeouts, and gives up at once on errors that a retry cannot fix.
- `StateStore`: per-item state (for example a Replicate prediction id) persisted the moment
  it is known, so a retry or a rerun after a kill resumes the same paid job instead of
  creating (and paying for) a second one.

SDK-agnostic: backends classify their SDK's exceptions into `RemoteError`.
"""

from __future__ import annotations

import email.utils
import json
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 529})


class RemoteError(Exception):
    """A remote call failed. `retryable` says whether waiting and trying again can help."""

    def __init__(self, message: str, *, status: int | None = None, retryable: bool = False, retry_after: float | None = None, kind: str = "error"):
        super().__init__(message)
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after
        self.kind = kind  # error | rate_limit | server | timeout | blocked | not_found | auth


def parse_retry_after(value: str | float | int | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date), or None."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)):
        return max(0.0, float(value))
    v = str(value).strip()
    try:
        return max(0.0, float(v))
    except ValueError:
        pass
    try:
        dt = email.utils.parsedate_to_datetime(v)
    except (TypeError, ValueError):
        return None
    return max(0.0, dt.timestamp() - (now if now is not None else time.time()))


def classify_status(status: int | None, message: str, retry_after: float | None = None) -> RemoteError:
    """A RemoteError for an HTTP status, retryable for 408/409/425/429/5xx."""
    kind = "error"
    if status == 429:
        kind = "rate_limit"
    elif status is not None and status >= 500:
        kind = "server"
    elif status == 404:
        kind = "not_found"
    elif status in (401, 403):
        kind = "auth"
    return RemoteError(message, status=status, retryable=status in RETRYABLE_STATUS, retry_after=retry_after, kind=kind)


class RateLimiter:
    """Token bucket over requests per minute, plus at most `concurrency` calls in flight."""

    def __init__(self, rpm: float | None = None, concurrency: int = 4, *, clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        self.rpm = rpm
        self.concurrency = max(1, concurrency)
        self._sem = threading.BoundedSemaphore(self.concurrency)
        self._lock = threading.Lock()
        self._clock = clock
        self._sleep = sleep
        self._capacity = max(1.0, min(float(self.concurrency), (rpm or 0) / 60.0 * 5)) if rpm else 0.0
        self._tokens = self._capacity
        self._last = clock()
        self._paused_until = 0.0

    def pause(self, seconds: float) -> None:
        """Hold every caller for `seconds` (a 429 with Retry-After applies to the whole key)."""
        with self._lock:
            self._paused_until = max(self._paused_until, self._clock() + seconds)

    def _take(self) -> None:
        while True:
            with self._lock:
                now = self._clock()
                wait = self._paused_until - now
                if wait <= 0 and self.rpm:
                    rate = self.rpm / 60.0
                    self._tokens = min(self._capacity, self._tokens + (now - self._last) * rate)
                    self._last = now
                    if self._tokens >= 1:
                        self._tokens -= 1
                        return
                    wait = (1 - self._tokens) / rate
                elif wait <= 0:
                    return
            self._sleep(wait)

    def __enter__(self) -> RateLimiter:
        self._sem.acquire()
        try:
            self._take()
        except BaseException:
            self._sem.release()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._sem.release()


@dataclass
class RetryPolicy:
    max_attempts: int = 6
    base_delay: float = 1.0
    max_delay: float = 60.0
    max_total: float = 600.0
    """Give up when the next wait would pass this many seconds since the first attempt."""

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Full jitter: uniform in [0, min(max_delay, base * 2**attempt)]."""
        return rng.uniform(0, min(self.max_delay, self.base_delay * (2**attempt)))


def call_with_retry(
    fn: Callable[[], T],
    *,
    classify: Callable[[BaseException], RemoteError],
    policy: RetryPolicy | None = None,
    limiter: RateLimiter | None = None,
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
    on_retry: Callable[[int, RemoteError, float], None] | None = None,
) -> T:
    """Call `fn` under `limiter`, retrying retryable failures. Raises the last RemoteError."""
    policy = policy or RetryPolicy()
    rng = rng or random.Random()
    start = time.monotonic()
    attempt = 0
    while True:
        try:
            if limiter is not None:
                with limiter:
                    return fn()
            return fn()
        except RemoteError as exc:
            err = exc
        except Exception as exc:  # SDK exceptions
            err = classify(exc)
            if err is not exc:
                err.__cause__ = exc
        attempt += 1
        if not err.retryable or attempt >= policy.max_attempts:
            raise err
        delay = policy.backoff(attempt - 1, rng)
        if err.retry_after is not None:
            delay = max(delay, err.retry_after)
            if limiter is not None and err.kind == "rate_limit":
                limiter.pause(err.retry_after)
        if time.monotonic() - start + delay > policy.max_total:
            raise err
        if on_retry:
            on_retry(attempt, err, delay)
        sleep(delay)


class StateStore:
    """Per-item JSON state in a JSONL file; the last line for a key wins. Thread-safe.

    Write state *before* the next paid step (e.g. record the prediction id right after the
    create call returns), so a crash between steps resumes rather than repeats.
    """

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._data: dict[str, dict[str, Any]] = {}
        try:
            with open(self.path, encoding="utf-8") as fh:
                for line in fh:
                    try:
                        rec = json.loads(line)
                        self._data[rec["key"]] = rec["state"]
                    except (json.JSONDecodeError, KeyError, TypeError):
                        continue
        except FileNotFoundError:
            pass

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            v = self._data.get(key)
            return dict(v) if v is not None else None

    def put(self, key: str, state: dict[str, Any]) -> None:
        line = (json.dumps({"key": key, "state": state, "time": time.time()}, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
            self._data[key] = dict(state)

    def update(self, key: str, **changes: Any) -> dict[str, Any]:
        state = self.get(key) or {}
        state.update(changes)
        self.put(key, state)
        return state

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._data)

    def items(self) -> list[tuple[str, dict[str, Any]]]:
        with self._lock:
            return [(k, dict(v)) for k, v in self._data.items()]


def redact(text: str, secrets: list[str | None] | None = None) -> str:
    """Remove API keys from a message before it is logged, stored or shown."""
    env = [os.environ.get(k) for k in ("GEMINI_API_KEY", "GOOGLE_API_KEY", "REPLICATE_API_TOKEN", "HF_TOKEN")]
    for s in [*(secrets or []), *env]:
        if s and len(s) >= 6:
            text = text.replace(s, "***")
    return text
