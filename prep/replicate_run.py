"""Idempotent Replicate predictions: create once per key, persist the id, poll, fetch outputs.

Replicate bills every prediction that is created. The usual scripts re-create a prediction on
every retry (and on every rerun after a crash), paying again for work that already ran. Here a
prediction is tied to a caller key (an image id): its id is written to a `StateStore` the moment
the create call returns, and any later attempt for that key reloads it instead of creating a new
one. A create whose response was lost (timeout, connection reset, kill) is recovered by looking
the prediction up by its idempotency key (the hash of the exact input sent, stored before the
create) through every page of the account's predictions made since, before creating again.

Used by captioning (Replicate captioners) and by `prep render-variations --backend replicate`.
The `replicate` package is imported lazily so `prep` works without it.

    client = make_client()                      # REPLICATE_API_TOKEN, REPLICATE_BASE_URL
    res = run_prediction(client, "lucataco/florence-2-large",
                         {"image": FileInput(jpeg_bytes, "a.jpg"), "task_input": "More Detailed Caption"},
                         key="a.jpg", state=StateStore(out / ".replicate_state.jsonl"),
                         limiter=RateLimiter(rpm=600, concurrency=8), policy=RetryPolicy())
    res.status, res.output, res.error
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prep.remote import RateLimiter, RemoteError, RetryPolicy, StateStore, call_with_retry, classify_status, parse_retry_after, redact

TERMINAL = frozenset({"succeeded", "failed", "canceled"})
DATA_URI_LIMIT = 1_000_000
"""Replicate recommends data URIs only below 1 MB; bigger files go through the files API."""

AMBIGUOUS_KINDS = frozenset({"timeout", "connection", "server"})
"""Failures after which a create may have happened server-side."""

_tls = threading.local()


@dataclass(frozen=True)
class FileInput:
    """A file to send as a model input. Uploaded through the files API only when a prediction is
    actually created (never on resume); small files may be inlined as a data URI instead."""

    data: bytes
    filename: str = "input.jpg"
    content_type: str = "image/jpeg"

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass
class PredictionResult:
    id: str | None
    status: str
    """succeeded | failed | canceled | timeout (gave up polling; the prediction may still finish)."""
    output: Any = None
    error: str | None = None
    resumed: bool = False
    """True when an existing prediction was reloaded instead of created (nothing billed again)."""
    model: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "succeeded"


def _capture_headers(response: Any) -> None:
    """httpx response hook: remember the last Retry-After per thread (ReplicateError drops headers)."""
    if response.status_code >= 400:
        _tls.retry_after = parse_retry_after(response.headers.get("Retry-After"))
    else:
        _tls.retry_after = None


def _timeout_hook(timeout: Any) -> Callable[[Any], None]:
    """httpx request hook: the replicate client sends the create POST with `timeout=None`, which
    httpx reads as "wait forever"; a hung create would block its worker for good. Give such
    requests the client's timeout (a timed-out create is then recovered, not re-created)."""
    default = timeout.as_dict()

    def hook(request: Any) -> None:
        t = request.extensions.get("timeout")
        if not t or all(v is None for v in t.values()):
            request.extensions["timeout"] = dict(default)

    return hook


def make_client(api_token: str | None = None, *, base_url: str | None = None, timeout: float = 60.0) -> Any:
    """A `replicate.Client` (token from REPLICATE_API_TOKEN, URL from REPLICATE_BASE_URL) that lets
    `classify_error` see Retry-After headers. Raises RemoteError(kind="auth") without a token."""
    import httpx
    import replicate

    token = api_token or os.environ.get("REPLICATE_API_TOKEN")
    if not token:
        raise RemoteError("REPLICATE_API_TOKEN is not set: create a token at replicate.com/account/api-tokens and export it", kind="auth")
    limits = httpx.Timeout(timeout, connect=min(10.0, timeout))
    return replicate.Client(
        api_token=token,
        base_url=base_url or os.environ.get("REPLICATE_BASE_URL") or None,
        timeout=limits,
        event_hooks={"request": [_timeout_hook(limits)], "response": [_capture_headers]},
    )


def classify_error(exc: BaseException) -> RemoteError:
    """Map replicate/httpx exceptions to RemoteError (retryable for 429/5xx/timeouts/connection)."""
    import httpx

    try:
        from replicate.exceptions import ModelError, ReplicateError
    except ImportError:  # pragma: no cover
        ModelError = ReplicateError = ()  # type: ignore[assignment,misc]
    if isinstance(exc, RemoteError):
        return exc
    if ReplicateError and isinstance(exc, ReplicateError):
        status = exc.status
        msg = f"Replicate HTTP {status}: {exc.title or ''} {exc.detail or ''}".strip()
        if status == 404:
            msg += " (check the model: owner/name or owner/name:version)"
        return classify_status(status, redact(msg), getattr(_tls, "retry_after", None))
    if ModelError and isinstance(exc, ModelError):
        return RemoteError(redact(f"prediction failed: {exc.prediction.error}"), kind="model")
    if isinstance(exc, httpx.TimeoutException):
        return RemoteError(f"Replicate request timed out ({type(exc).__name__})", retryable=True, kind="timeout")
    if isinstance(exc, httpx.TransportError):
        return RemoteError(redact(f"cannot reach Replicate ({type(exc).__name__}: {exc})"), retryable=True, kind="connection")
    return RemoteError(redact(f"{type(exc).__name__}: {exc}"), kind="error")


def split_model_ref(ref: str) -> tuple[str, str, str | None]:
    """`owner/name[:version]` -> (owner, name, version)."""
    base, _, version = ref.partition(":")
    owner, _, name = base.partition("/")
    if not owner or not name or "/" in name:
        raise ValueError(f"model {ref!r} is not owner/name or owner/name:version")
    return owner, name, version or None


def _jsonable(value: Any) -> Any:
    if isinstance(value, FileInput):
        return {"__file__": value.sha256, "type": value.content_type}
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def fingerprint(model_ref: str, inputs: dict[str, Any]) -> str:
    """Stable hash of what a prediction computes (file contents by sha256, not by upload URL)."""
    blob = json.dumps({"model": model_ref, "input": _jsonable(inputs)}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _input_hash(encoded: dict[str, Any] | None) -> str:
    return hashlib.sha256(json.dumps(encoded or {}, sort_keys=True, default=str).encode()).hexdigest()


def _encode_inputs(client: Any, inputs: dict[str, Any], inline_limit: int) -> dict[str, Any]:
    """Replace FileInputs by an uploaded file URL (or a data URI when small enough)."""
    out: dict[str, Any] = {}
    for k, v in inputs.items():
        if isinstance(v, FileInput):
            if len(v.data) < inline_limit:
                out[k] = f"data:{v.content_type};base64," + base64.b64encode(v.data).decode()
            else:
                import io

                f = client.files.create(io.BytesIO(v.data), filename=v.filename, content_type=v.content_type)
                out[k] = f.urls["get"]
        else:
            out[k] = v
    return out


def _create(client: Any, model_ref: str, encoded: dict[str, Any], wait: int | None) -> Any:
    owner, name, version = split_model_ref(model_ref)
    params: dict[str, Any] = {}
    if wait:
        params["wait"] = int(wait)
    if version:
        return client.predictions.create(version=version, input=encoded, **params)
    return client.models.predictions.create(model=(owner, name), input=encoded, **params)


def _created_ts(value: Any) -> float | None:
    from datetime import datetime

    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except (TypeError, ValueError):
        return None


LOST_LOOKBACK_S = 900.0
"""How long before the create (by our clock) a lost prediction may be dated by Replicate's: covers
clock skew between the two (chosen value). Older entries end the search: the list is newest first."""
MAX_LOST_PAGES = 100
"""Pages of the list API a lost-create search reads at most (100 predictions a page, so 10 000
predictions created in the window; chosen value). Beyond it the search gives up with an error
rather than create (and pay) again."""


def _find_lost(
    client: Any, input_hash: str, model_ref: str = "", since: float | None = None, *, exclude: frozenset[str] = frozenset(), max_pages: int = MAX_LOST_PAGES
) -> Any | None:
    """The prediction a create whose response was lost made, found by its idempotency key.

    Replicate's API takes no idempotency key, so the key is the sha256 of the exact input sent
    (unique per attempt: it holds the file's upload URL), written to the state before the
    create. The list API answers newest first, 100 a page, with a `next` cursor URL: every page
    is read, however many predictions are in flight, until entries are older than the create
    (`since` minus LOST_LOOKBACK_S). Entries listed without their input are fetched one by one
    (only those of the same model). `exclude`: ids other keys already own. API errors are
    raised, not swallowed: the caller retries, since creating again after a failed look-up
    could pay twice.
    """
    model = model_ref.split(":")[0]
    cursor: Any = ...
    for _ in range(max_pages):
        page = client.predictions.list() if cursor is ... else client.predictions.list(cursor)
        for p in getattr(page, "results", []) or []:
            if p.id in exclude:
                continue
            created = _created_ts(getattr(p, "created_at", None))
            if since is not None and created is not None and created < since - LOST_LOOKBACK_S:
                return None  # older than the create: it cannot be there
            inp = getattr(p, "input", None)
            if inp is None:
                if model and getattr(p, "model", None) not in (None, "", model):
                    continue
                p = client.predictions.get(p.id)
                inp = p.input
            if _input_hash(inp) == input_hash:
                return p
        cursor = getattr(page, "next", None)
        if not cursor:
            return None
    raise RemoteError(
        f"could not finish looking for a prediction whose create answer was lost ({max_pages} pages of predictions read); "
        "rerun later: it is not created again until it is known not to exist",
        retryable=False,
        kind="lookup",
    )


def _claimed_ids(state: StateStore, key: str) -> frozenset[str]:
    """Prediction ids other keys own: a lost create never adopts one of them."""
    return frozenset(str(v["prediction_id"]) for k, v in state.items() if k != key and v.get("prediction_id"))


def _result(p: Any, model_ref: str, resumed: bool) -> PredictionResult:
    return PredictionResult(
        id=p.id,
        status=p.status,
        output=p.output,
        error=redact(str(p.error)) if p.error else None,
        resumed=resumed,
        model=model_ref,
        metrics=dict(p.metrics or {}),
    )


def run_prediction(
    client: Any,
    model_ref: str,
    input: dict[str, Any],
    *,
    key: str,
    state: StateStore,
    limiter: RateLimiter | None = None,
    policy: RetryPolicy | None = None,
    poll_interval: float = 1.0,
    timeout: float = 1800.0,
    wait: int | None = None,
    inline_limit: int = 0,
    recreate_failed: bool = True,
    sleep: Callable[[float], None] = time.sleep,
    on_created: Callable[[str], None] | None = None,
) -> PredictionResult:
    """Run (or resume) the prediction for `key` and return its final state. Idempotent per key.

    - State for `key` holds the prediction id as soon as it exists; a later call (retry, rerun
      after a kill) with the same model and input reloads it and never creates a second one.
    - A stored prediction that failed or was canceled is re-created only when `recreate_failed`
      (a rerun asking again); a different input/model for the key starts a new prediction.
    - `FileInput` values are uploaded through the files API (data URI only below `inline_limit`
      bytes, capped at 1 MB) right before the create, so a resume uploads nothing.
    - Raises RemoteError when the create or polling cannot succeed (non-retryable HTTP error,
      retries exhausted); a model failure is returned as status "failed" with its error.
    """
    policy = policy or RetryPolicy()
    inline_limit = min(inline_limit, DATA_URI_LIMIT)
    fp = fingerprint(model_ref, input)
    st = state.get(key) or {}
    if st.get("fingerprint") != fp:
        st = {}
    pred = None
    resumed = False

    if st.get("prediction_id") and not (recreate_failed and st.get("status") in ("failed", "canceled")):
        pid = st["prediction_id"]
        pred = call_with_retry(lambda: client.predictions.get(pid), classify=classify_error, policy=policy, sleep=sleep)
        resumed = True
    else:
        if st.get("phase") == "creating" and st.get("input_hash"):
            # A previous create may have reached Replicate with its response lost: find it first.
            ih0 = st["input_hash"]
            pred = call_with_retry(lambda: _find_lost(client, ih0, model_ref, st.get("time"), exclude=_claimed_ids(state, key)),
                                   classify=classify_error, policy=policy, limiter=limiter, sleep=sleep)
            if pred is not None:
                resumed = True
                state.put(key, {"fingerprint": fp, "prediction_id": pred.id, "status": pred.status, "model": model_ref, "recovered": True})
        if pred is None:
            encoded = call_with_retry(lambda: _encode_inputs(client, input, inline_limit), classify=classify_error, policy=policy, limiter=limiter, sleep=sleep)
            ih = _input_hash(encoded)
            state.put(key, {"fingerprint": fp, "phase": "creating", "input_hash": ih, "time": time.time(), "model": model_ref, "previous": st.get("prediction_id")})

            ambiguous = False
            started = time.time()

            def create() -> Any:
                if ambiguous:  # the last create may have gone through: look before paying again
                    lost = _find_lost(client, ih, model_ref, started, exclude=_claimed_ids(state, key))
                    if lost is not None:
                        return lost
                return _create(client, model_ref, encoded, wait)

            def note(attempt: int, err: RemoteError, delay: float) -> None:
                nonlocal ambiguous
                # sticky: once a create may have gone through, every later attempt looks first
                ambiguous = ambiguous or err.kind in AMBIGUOUS_KINDS

            pred = call_with_retry(create, classify=classify_error, policy=policy, limiter=limiter, sleep=sleep, on_retry=note)
            state.put(key, {"fingerprint": fp, "prediction_id": pred.id, "status": pred.status, "model": model_ref})
            if on_created:
                on_created(pred.id)

    deadline = time.monotonic() + timeout
    while pred.status not in TERMINAL:
        if time.monotonic() >= deadline:
            return PredictionResult(pred.id, "timeout", None, f"prediction {pred.id} still {pred.status} after {timeout:.0f}s; rerun to resume it", resumed, model_ref)
        sleep(poll_interval)
        pid = pred.id
        pred = call_with_retry(lambda: client.predictions.get(pid), classify=classify_error, policy=policy, sleep=sleep)
    state.update(key, status=pred.status)
    return _result(pred, model_ref, resumed)


def read_output(value: Any, *, timeout: float = 120.0) -> bytes:
    """Bytes of one output file: a data URI, an https URL (fetched without the API token, so it
    never leaks to a CDN) or a replicate FileOutput."""
    if hasattr(value, "read") and not isinstance(value, (str, bytes)):
        return value.read()
    s = str(value)
    if s.startswith("data:"):
        return base64.b64decode(s.split(",", 1)[1])
    import httpx

    try:
        r = httpx.get(s, timeout=timeout, follow_redirects=True)
        r.raise_for_status()
    except httpx.HTTPStatusError as exc:
        raise classify_status(exc.response.status_code, f"cannot download output {s[:120]}: HTTP {exc.response.status_code}") from None
    except httpx.TransportError as exc:
        raise RemoteError(f"cannot download output {s[:120]} ({type(exc).__name__})", retryable=True, kind="connection") from None
    return r.content


def output_text(output: Any, key: str | None = None) -> str | None:
    """Text from a typical captioner output: a string, a list of string chunks (streamed LLMs),
    or a dict (`key`, else `text`/`caption`/`output`)."""
    if output is None:
        return None
    if isinstance(output, str):
        return output
    if isinstance(output, (list, tuple)):
        if all(isinstance(x, str) for x in output):
            return "".join(output)
        return output_text(output[0], key) if output else None
    if isinstance(output, dict):
        for k in ([key] if key else []) + ["text", "caption", "output", "result"]:
            if k in output and output[k] is not None:
                return output_text(output[k])
    return str(output)
