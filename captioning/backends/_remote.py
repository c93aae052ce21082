"""What the remote caption backends (Gemini, Replicate) share: a per-run context with the rate
limiter, retry policy and state store, the thread fan-out over a batch, and "fatal" errors (a
retired model, a bad key) that stop further requests instead of failing every image the same
paid way.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from captioning.backends.base import CaptionOptions, CaptionResult
from prep.dataset import ImageItem
from prep.remote import RateLimiter, RemoteError, RetryPolicy, StateStore, redact


def retry_policy(options: CaptionOptions) -> RetryPolicy:
    """Retry policy from the options; `--set backoff_base=0.01` keeps tests fast."""
    ex = options.extra
    return RetryPolicy(
        max_attempts=max(1, int(ex.get("max_attempts", options.max_attempts))),
        base_delay=float(ex.get("backoff_base", 1.0)),
        max_delay=float(ex.get("backoff_max", 60.0)),
        max_total=float(ex.get("retry_total", 600.0)),
    )


def request_fingerprint(**parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


class RemoteRun:
    """Per-backend-instance state that must be shared by all batches of one run."""

    def __init__(self, backend: str, options: CaptionOptions, secrets: list[str | None]):
        self.limiter = RateLimiter(options.rpm, options.concurrency)
        self.policy = retry_policy(options)
        self.secrets = [s for s in secrets if s]
        self.fatal: str | None = None
        self._lock = threading.Lock()
        if options.state_dir is not None:
            path = Path(options.state_dir) / f".caption-{backend}-state.jsonl"
        else:  # no output folder: state lives for this process only
            path = Path(tempfile.mkdtemp(prefix=f"caption-{backend}-")) / "state.jsonl"
        self.store = StateStore(path)

    def get(self, key: str) -> dict[str, Any] | None:
        return self.store.get(key)

    def put(self, key: str, value: dict[str, Any]) -> None:
        self.store.put(key, value)

    def set_fatal(self, reason: str) -> None:
        with self._lock:
            if self.fatal is None:
                self.fatal = reason

    def redact(self, text: str) -> str:
        return redact(text, self.secrets)


def fan_out(items: list[ImageItem], concurrency: int, fn: Callable[[ImageItem], CaptionResult]) -> list[CaptionResult]:
    """Run `fn` over items on up to `concurrency` threads; results in input order; an unexpected
    exception becomes a failed result for that image only."""

    def guarded(item: ImageItem) -> CaptionResult:
        try:
            return fn(item)
        except RemoteError as exc:
            return CaptionResult(item.id, "failed", reason=redact(f"{item.path}: {exc}"))
        except Exception as exc:  # one image never aborts the batch
            return CaptionResult(item.id, "failed", reason=redact(f"{item.path}: {type(exc).__name__}: {exc}"))

    if len(items) <= 1 or concurrency <= 1:
        return [guarded(i) for i in items]
    with ThreadPoolExecutor(max_workers=min(concurrency, len(items)), thread_name_prefix="caption") as pool:
        return list(pool.map(guarded, items))


def stream_results(items: list[ImageItem], concurrency: int, fn: Callable[[ImageItem], CaptionResult]) -> Iterator[list[CaptionResult]]:
    """Like `fan_out`, but yield each result the moment it is ready (no batch barrier: one image
    waiting out a Retry-After does not hold up the others, and the pipeline records every
    finished caption at once, so a kill loses only the requests in flight). At most
    `2 * concurrency` images are queued ahead, so a huge folder is not decoded up front."""
    pending: set = set()
    it = iter(items)
    pool = ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="caption")
    try:
        while True:
            while len(pending) < 2 * max(1, concurrency):
                item = next(it, None)
                if item is None:
                    break
                pending.add(pool.submit(fan_out, [item], 1, fn))
            if not pending:
                return
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            yield [r for f in done for r in f.result()]
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
