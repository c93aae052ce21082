"""Gemini captions through google-genai (the maintained SDK; google-generativeai is end-of-life).

- Key: GEMINI_API_KEY, else GOOGLE_API_KEY (passed explicitly; never logged or stored).
- Endpoint: the SDK's own GOOGLE_GEMINI_BASE_URL keeps working (a proxy or a local stand-in).
- The image goes inline as a <= 1536 px JPEG without metadata, never the original file.
- The SDK's own retries are off: `prep.remote.call_with_retry` retries 429/5xx/timeouts with
  full-jitter backoff honouring Retry-After (and Gemini's RetryInfo), under one shared
  token-bucket + concurrency limiter.
- A safety block is a result with status "blocked" and the block reason, not an empty caption.
- A 404 (retired or misspelled model) or a key error stops the run's requests at once with a
  message naming `--model` / the key variable.
- Finished answers are kept in `state_dir` (per image, keyed by model + prompt + file), so a
  rerun or a crash between answer and caption write never pays twice.
- Video clips (`accepts_video`): sent as they are (never re-encoded), inline when the request
  stays under Gemini's inline limit (`INLINE_LIMIT_MB`), else through the Files API: upload,
  poll `files.get` until ACTIVE, generate, and delete the upload afterwards, on failure too (an
  upload left by a killed run is deleted by the next one: its unique display name is recorded
  before the upload starts, so even a file whose answer never arrived is found by `files.list`). `video_metadata.fps` is set so that
  about `DEFAULT_VIDEO_FRAMES` frames cover the clip (Gemini samples 1 fps by default: 5 frames
  of a 5 s clip show little of a movement). The video prompt presets are `captioning.prompts`'s.
"""

from __future__ import annotations

import math
import os
import re
import secrets
import threading
from collections.abc import Iterator
from typing import Any, ClassVar, Literal

from captioning.backends._media import (
    DEFAULT_MAX_SIDE, DEFAULT_VIDEO_FRAMES, VIDEO_MIME, file_fingerprint, is_video_item, prepare_image, sampling_fps, video_mime,
)
from captioning.backends._remote import RemoteRun, fan_out, request_fingerprint, stream_results
from captioning.backends.base import CaptionOptions, CaptionResult, Estimate
from captioning.prompts import build_prompt, clean_caption, finish_caption
from prep.dataset import ImageItem
from prep.images import ImageLoadError
from prep.models import ModelNotAvailable
from prep.remote import RemoteError, call_with_retry, classify_status, parse_retry_after

DEFAULT_MODEL = "gemini-2.5-flash"
SUGGESTED_MODELS = ("gemini-2.5-flash", "gemini-2.5-flash-lite", "gemini-3.5-flash")

PRICES_USD_PER_MTOK: dict[str, tuple[float, float]] = {
    # model prefix: (input incl. images, output incl. thinking), paid tier, standard context.
    # Source: ai.google.dev/gemini-api/docs/pricing as last read (2025/2026); check before large runs.
    "gemini-2.5-flash-lite": (0.10, 0.40),
    "gemini-2.5-flash": (0.30, 2.50),
    "gemini-2.5-pro": (1.25, 10.00),
}
TOKENS_PER_TILE = 258
"""Gemini bills an image as 258 tokens per 768 px tile (one tile when both sides <= 384 px)."""
PROMPT_TOKENS = 450
OUTPUT_TOKENS = 90
SECONDS_PER_REQUEST = 3.0
"""Typical flash latency for one image caption without thinking (assumption for --dry-run)."""

INLINE_LIMIT_MB = 20.0
"""Gemini's inline limit for a whole request (file, prompt, system instruction): "Always use the
Files API when the total request size ... is larger than 20 MB" (ai.google.dev/gemini-api/docs/
video-understanding, "Upload a video file"). `--set inline_limit_mb=N` changes it."""
INLINE_OVERHEAD = 64 * 1024
"""Bytes of JSON, prompt and system instruction counted beside the base64 clip (generous)."""
VIDEO_TOKENS_PER_FRAME = 258
"""Tokens per sampled video frame at the default media resolution (same page, "Technical details")."""
AUDIO_TOKENS_PER_SECOND = 32
"""Tokens per second of a clip's audio track (same page)."""
FILE_POLL_SECONDS = 2.0
FILE_TIMEOUT_SECONDS = 600.0

BLOCK_FINISH = {"SAFETY", "PROHIBITED_CONTENT", "BLOCKLIST", "SPII", "IMAGE_SAFETY", "IMAGE_PROHIBITED_CONTENT", "RECITATION", "IMAGE_RECITATION"}


def api_key() -> str | None:
    return os.environ.get("GEMINI_API_KEY") or os.environ.get("GOOGLE_API_KEY") or None


def image_tokens(size: tuple[int, int]) -> int:
    w, h = size
    if w <= 384 and h <= 384:
        return TOKENS_PER_TILE
    return TOKENS_PER_TILE * math.ceil(w / 768) * math.ceil(h / 768)


def price_for(model: str) -> tuple[float, float] | None:
    for prefix in sorted(PRICES_USD_PER_MTOK, key=len, reverse=True):
        if model.startswith(prefix):
            return PRICES_USD_PER_MTOK[prefix]
    return None


def _retry_delay(details: Any) -> float | None:
    """Gemini puts `RetryInfo.retryDelay` ("12s") in the error details of a 429."""
    try:
        for d in details.get("error", {}).get("details", []) or []:
            if str(d.get("@type", "")).endswith("RetryInfo") and d.get("retryDelay"):
                return float(str(d["retryDelay"]).rstrip("s"))
    except (AttributeError, TypeError, ValueError):
        return None
    return None


def classify_genai(exc: BaseException) -> RemoteError:
    """google-genai / httpx exceptions as RemoteError (retryable on 429, 5xx, timeouts)."""
    from google.genai import errors

    if isinstance(exc, errors.APIError):
        code = int(exc.code or 0) or None
        headers = getattr(getattr(exc, "response", None), "headers", None) or {}
        retry_after = parse_retry_after(headers.get("Retry-After") if hasattr(headers, "get") else None)
        if retry_after is None:
            retry_after = _retry_delay(exc.details)
        msg = f"Gemini HTTP {code} {exc.status or ''}: {exc.message or ''}".strip()
        err = classify_status(code, msg, retry_after)
        if code == 400 and "api key" in (exc.message or "").lower():
            err.kind = "auth"
        return err
    mro = {c.__name__ for c in type(exc).__mro__}  # httpx or its fork httpx2, whichever the SDK uses
    if "TimeoutException" in mro:
        return RemoteError(f"Gemini request timed out ({type(exc).__name__}); raise --set timeout=SECONDS if images are large", retryable=True, kind="timeout")
    if "TransportError" in mro:
        return RemoteError(f"cannot reach the Gemini endpoint ({type(exc).__name__}: {exc})", retryable=True, kind="connection")
    return RemoteError(f"{type(exc).__name__}: {exc}", kind="error")


def _enum_name(value: Any) -> str | None:
    if value is None:
        return None
    return str(getattr(value, "name", value)).split(".")[-1]


_SETUP = threading.Lock()
"""Held while a backend creates its client: the executor's threads ask for it at once."""


class GeminiBackend:
    name: ClassVar[str] = "gemini"
    needs_key: ClassVar[str | None] = "GEMINI_API_KEY|GOOGLE_API_KEY"
    kind: ClassVar[Literal["tags", "text"]] = "text"
    parallel: ClassVar[bool] = True
    """Each image is its own request: the pipeline runs one image per call on `--concurrency` threads."""
    accepts_video: ClassVar[bool] = True

    def __init__(self) -> None:
        self._run: RemoteRun | None = None
        self._client: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"_run": None, "_client": None}

    # ---- setup
    def _model(self, options: CaptionOptions) -> str:
        return (options.model or DEFAULT_MODEL).removeprefix("models/")

    def _ensure(self, options: CaptionOptions) -> RemoteRun:
        with _SETUP:  # the executor's threads call this at once on the first images
            return self._ensure_locked(options)

    def _ensure_locked(self, options: CaptionOptions) -> RemoteRun:
        if self._run is None:
            key = api_key()
            self._run = RemoteRun(self.name, options, [key])
            if not key:
                self._run.set_fatal("no Gemini API key: export GEMINI_API_KEY (or GOOGLE_API_KEY); get one at aistudio.google.com/apikey")
            else:
                from google import genai
                from google.genai import types

                http = types.HttpOptions(timeout=int(float(options.extra.get("timeout", options.timeout)) * 1000), retry_options=None)
                self._client = genai.Client(api_key=key, http_options=http)
        return self._run

    def _config(self, options: CaptionOptions, system: str) -> Any:
        from google.genai import types

        model = self._model(options)
        kw: dict[str, Any] = {"system_instruction": system, "temperature": float(options.extra.get("temperature", 0.4))}
        budget = options.extra.get("thinking_budget")
        if budget is None and model.startswith("gemini-2.5-flash"):
            budget = 0  # a caption needs no reasoning; thinking tokens are billed as output
        if budget is not None:
            kw["thinking_config"] = types.ThinkingConfig(thinking_budget=int(budget))
            if int(budget) == 0:
                kw["max_output_tokens"] = int(options.max_new_tokens)
        return types.GenerateContentConfig(**kw)

    # ---- protocol
    def _worker(self, options: CaptionOptions) -> Any:
        run = self._ensure(options)
        if self._client is None and run.fatal:  # no key: stop before any image is attempted
            raise ModelNotAvailable(run.fatal)
        prompt = build_prompt(options.lora_type, options.trigger, options.prompt)
        config = self._config(options, prompt.system) if self._client is not None else None
        vprompt = build_prompt(options.lora_type, options.trigger, options.prompt, video=True)
        vconfig = self._config(options, vprompt.system) if self._client is not None else None

        def one(it: ImageItem) -> CaptionResult:
            if is_video_item(it):
                return self._one_video(it, options, run, vprompt, vconfig)
            return self._one(it, options, run, prompt, config)

        return one

    def caption_batch(self, items: list[ImageItem], options: CaptionOptions) -> list[CaptionResult]:
        return fan_out(items, options.concurrency, self._worker(options))

    def caption_stream(self, items: list[ImageItem], options: CaptionOptions) -> Iterator[list[CaptionResult]]:
        """Results as they finish, `--concurrency` requests in flight (the pipeline prefers this)."""
        return stream_results(items, options.concurrency, self._worker(options))

    def _one(self, item: ImageItem, options: CaptionOptions, run: RemoteRun, prompt: Any, config: Any) -> CaptionResult:
        model = self._model(options)
        max_side = int(options.extra.get("max_side", DEFAULT_MAX_SIDE))
        try:
            fp = request_fingerprint(model=model, system=prompt.system, user=prompt.user, file=file_fingerprint(item.path), max_side=max_side)
        except OSError as exc:
            return CaptionResult(item.id, "failed", reason=f"{item.path}: cannot read ({exc.strerror or exc})")
        cached = run.get(item.id)
        if cached and cached.get("fp") == fp and cached.get("status") in ("ok", "blocked"):
            return self._finish(item, options, cached["status"], cached.get("text"), cached.get("reason"), {**cached.get("data", {}), "cached": True})
        if run.fatal:
            return CaptionResult(item.id, "failed", reason=f"{item.path}: {run.fatal}")
        try:
            img = prepare_image(item.path, max_side=max_side, quality=int(options.extra.get("jpeg_quality", 90)))
        except ImageLoadError as exc:
            return CaptionResult(item.id, "failed", reason=str(exc))

        from google.genai import types

        contents = [types.Part.from_bytes(data=img.data, mime_type=img.mime_type), prompt.user]
        retries: list[str] = []
        try:
            resp = call_with_retry(
                lambda: self._client.models.generate_content(model=model, contents=contents, config=config),
                classify=classify_genai,
                policy=run.policy,
                limiter=run.limiter,
                on_retry=lambda n, err, delay: retries.append(err.kind),
            )
        except RemoteError as err:
            reason = run.redact(self._explain(err, model))
            if err.kind in ("not_found", "auth"):
                run.set_fatal(reason)
            return CaptionResult(item.id, "failed", reason=f"{item.path}: {reason}", data={"model": model, "retries": len(retries), "http_status": err.status})

        status, text, reason, data = self._read(resp, item)
        data.update(model=model, retries=len(retries), sent_size=list(img.size))
        if status in ("ok", "blocked"):
            run.put(item.id, {"fp": fp, "status": status, "text": text, "reason": reason, "data": data})
        return self._finish(item, options, status, text, reason, data)

    # ---- video clips
    def _one_video(self, item: ImageItem, options: CaptionOptions, run: RemoteRun, prompt: Any, config: Any) -> CaptionResult:
        """One clip: inline under the inline limit, else upload / poll / generate / delete."""
        from prep.video import VideoError, probe_video

        model = self._model(options)
        ex = options.extra
        mime = video_mime(item.path)
        if mime is None:
            return CaptionResult(item.id, "failed", reason=(
                f"{item.path}: Gemini does not take {item.path.suffix or 'this'} video; it takes "
                f"{', '.join(sorted(VIDEO_MIME))}: cut clips with `prep clips` (writes mp4) or convert: "
                "ffmpeg -i IN -c:v libx264 -crf 16 OUT.mp4"))
        try:
            info = probe_video(item.path)
            size = item.path.stat().st_size
        except VideoError as exc:
            return CaptionResult(item.id, "failed", reason=str(exc))
        except OSError as exc:
            return CaptionResult(item.id, "failed", reason=f"{item.path}: cannot read ({exc.strerror or exc})")
        fps = float(ex["video_fps"]) if ex.get("video_fps") else sampling_fps(info.duration, info.fps, int(ex.get("video_frames", DEFAULT_VIDEO_FRAMES)))
        limit = float(ex.get("inline_limit_mb", INLINE_LIMIT_MB)) * 1e6
        request_bytes = 4 * ((size + 2) // 3) + INLINE_OVERHEAD + len(prompt.system) + len(prompt.user)
        way = "inline" if request_bytes <= limit else "files"
        fp = request_fingerprint(model=model, system=prompt.system, user=prompt.user, file=file_fingerprint(item.path), fps=fps, kind="video")
        cached = run.get(item.id)
        if cached and cached.get("fp") == fp and cached.get("status") in ("ok", "blocked"):
            return self._finish(item, options, cached["status"], cached.get("text"), cached.get("reason"), {**cached.get("data", {}), "cached": True})
        if run.fatal:
            return CaptionResult(item.id, "failed", reason=f"{item.path}: {run.fatal}")

        from google.genai import types

        meta = types.VideoMetadata(fps=fps)
        retries: list[str] = []
        data: dict[str, Any] = {"model": model, "video": {"sent": way, "bytes": size, "fps": fps, "duration": info.duration,
                                                          "frames_sampled": max(1, round(info.duration * fps))}}

        def generate(part: Any) -> Any:
            contents = [part, prompt.user]  # Google: put a single video before the text prompt
            return call_with_retry(
                lambda: self._client.models.generate_content(model=model, contents=contents, config=config),
                classify=classify_genai, policy=run.policy, limiter=run.limiter,
                on_retry=lambda n, err, delay: retries.append(err.kind),
            )

        try:
            if way == "inline":
                resp = generate(types.Part(inline_data=types.Blob(data=item.path.read_bytes(), mime_type=mime), video_metadata=meta))
            else:
                resp = self._via_files(item, mime, run, options, lambda uri: generate(
                    types.Part(file_data=types.FileData(file_uri=uri, mime_type=mime), video_metadata=meta)), data)
        except RemoteError as err:
            file_step = bool(data.get("file_error"))  # the upload or its processing failed, not the model
            reason = run.redact(str(err) if file_step and err.kind != "auth" else self._explain(err, model))
            if err.kind == "auth" or (err.kind == "not_found" and not file_step):
                run.set_fatal(reason)
            return CaptionResult(item.id, "failed", reason=f"{item.path}: {reason}", data={**data, "retries": len(retries), "http_status": err.status})
        except OSError as exc:
            return CaptionResult(item.id, "failed", reason=f"{item.path}: cannot read ({exc.strerror or exc})", data=data)

        status, text, reason, got = self._read(resp, item)
        data.update(got, retries=len(retries))
        if status in ("ok", "blocked"):
            run.put(item.id, {"fp": fp, "status": status, "text": text, "reason": reason, "data": data})
        return self._finish(item, options, status, text, reason, data)

    def _via_files(self, item: ImageItem, mime: str, run: RemoteRun, options: CaptionOptions, generate: Any, data: dict[str, Any]) -> Any:
        """Upload the clip, wait until Gemini has processed it, `generate(uri)`, and delete the upload
        whatever happened. The upload's name is kept in the state store until it is deleted, so a
        run killed in between has the next run delete it (uploads also expire after 48 h)."""
        key = f"upload:{item.id}"
        stale = run.get(key)
        if stale and not stale.get("deleted"):
            if stale.get("name"):
                self._delete(stale["name"], run, key)
            elif stale.get("display_name"):
                self._sweep(stale["display_name"], run, key)
        # The intent is kept before the upload: a kill after the server made the file but before
        # its answer arrived leaves only this unique display name, found and deleted next run.
        display_name = f"loraprep-{secrets.token_hex(6)}-{item.path.name}"[:120]
        run.put(key, {"display_name": display_name, "deleted": False})
        try:
            uploaded = call_with_retry(
                lambda: self._client.files.upload(file=str(item.path), config={"mime_type": mime, "display_name": display_name}),
                classify=classify_genai, policy=run.policy, limiter=run.limiter,
            )
        except RemoteError as err:
            data["file_error"] = True
            self._sweep(display_name, run, key)  # a retried upload may have made a file whose answer was lost
            raise RemoteError(f"uploading the clip through the Files API failed: {err}", status=err.status, retryable=err.retryable, kind=err.kind) from err
        run.put(key, {"name": uploaded.name, "display_name": display_name, "deleted": False})
        data["file"] = uploaded.name
        try:
            active = self._wait_active(uploaded, item, run, options, data)
            return generate(active.uri)
        finally:
            self._delete(uploaded.name, run, key)

    def _sweep(self, display_name: str, run: RemoteRun, key: str) -> None:
        """Delete every upload named `display_name` (one whose answer never arrived); best effort:
        a listing that fails leaves the intent for the next run."""
        try:
            names = call_with_retry(lambda: [f.name for f in self._client.files.list(config={"page_size": 100})
                                             if getattr(f, "display_name", None) == display_name and f.name],
                                    classify=classify_genai, policy=run.policy, limiter=run.limiter)
        except RemoteError:
            return  # tried again next run; the file expires after 48 h anyway
        deleted = [self._delete(name, run, key) for name in names]  # each one tried, not only up to a failure
        if all(deleted):
            run.put(key, {"display_name": display_name, "deleted": True})

    def _wait_active(self, file: Any, item: ImageItem, run: RemoteRun, options: CaptionOptions, data: dict[str, Any]) -> Any:
        import time

        poll = float(options.extra.get("file_poll", FILE_POLL_SECONDS))
        deadline = time.monotonic() + float(options.extra.get("file_timeout", FILE_TIMEOUT_SECONDS))
        polls = 0
        while True:
            state = _enum_name(getattr(file, "state", None))
            if state == "ACTIVE":
                data["file_polls"] = polls
                return file
            if state == "FAILED":
                data["file_error"] = True
                err = getattr(file, "error", None)
                msg = getattr(err, "message", None) or "no reason given"
                raise RemoteError(f"Gemini could not process the uploaded clip ({msg}); check that it plays, or re-encode it: "
                                  "ffmpeg -i IN -c:v libx264 -crf 16 OUT.mp4", kind="error")
            if time.monotonic() > deadline:
                data["file_error"] = True
                raise RemoteError(f"the uploaded clip was still {state or 'PROCESSING'} after {options.extra.get('file_timeout', FILE_TIMEOUT_SECONDS)} s; "
                                  "rerun later or raise --set file_timeout=SECONDS", retryable=False, kind="timeout")
            time.sleep(poll)
            polls += 1
            name = file.name
            try:
                file = call_with_retry(lambda: self._client.files.get(name=name), classify=classify_genai, policy=run.policy, limiter=run.limiter)
            except RemoteError as err:
                data["file_error"] = True
                raise RemoteError(f"checking the uploaded clip {name} failed: {err}", status=err.status, retryable=err.retryable, kind=err.kind) from err

    def _delete(self, name: str, run: RemoteRun, key: str) -> bool:
        """Best effort: a delete that fails is noted in the state store and tried again next run."""
        try:
            call_with_retry(lambda: self._client.files.delete(name=name), classify=classify_genai, policy=run.policy, limiter=run.limiter)
        except RemoteError as err:
            if err.status != 404:  # 404: already gone
                return False
        run.put(key, {"name": name, "deleted": True})
        return True

    def estimate_video(self, n_clips: int, seconds: float, options: CaptionOptions) -> Estimate:
        """Cost of `n_clips` clips of `seconds` in all: sampled frames x 258 tokens + 32 audio tokens a second."""
        model = self._model(options)
        avg = seconds / n_clips if n_clips else 0.0
        ex = options.extra
        fps = float(ex["video_fps"]) if ex.get("video_fps") else sampling_fps(avg, 0.0, int(ex.get("video_frames", DEFAULT_VIDEO_FRAMES)))
        frames = max(1, round(avg * fps))
        tokens_in = PROMPT_TOKENS + frames * VIDEO_TOKENS_PER_FRAME + round(avg * AUDIO_TOKENS_PER_SECOND)
        price = price_for(model)
        cost = n_clips * (tokens_in * price[0] + OUTPUT_TOKENS * price[1]) / 1e6 if price else None
        notes = (f"{model}: {n_clips} clip(s), ~{avg:.1f} s each sampled at {fps:g} fps = {frames} frames x {VIDEO_TOKENS_PER_FRAME} tokens "
                 f"+ audio; ~{tokens_in} input tokens per clip")
        conc = max(1, options.concurrency)
        secs = n_clips * (SECONDS_PER_REQUEST * 3) / conc
        if options.rpm:
            secs = max(secs, n_clips * 60.0 / options.rpm)
        return Estimate(images=n_clips, seconds=secs, cost_usd=cost, notes=notes)

    def _explain(self, err: RemoteError, model: str) -> str:
        if err.kind == "not_found":
            return (f"model {model!r} was not found (HTTP 404): it is retired or misspelled; pass a current model with "
                    f"--model (for example {', '.join(SUGGESTED_MODELS)}; list: ai.google.dev/gemini-api/docs/models)")
        if err.kind == "auth":
            return f"the API key was refused ({err}): check GEMINI_API_KEY / GOOGLE_API_KEY"
        if err.retryable:
            return f"{err} (gave up after retries; rerun to continue, or lower --concurrency/--rpm)"
        return str(err)

    def _read(self, resp: Any, item: ImageItem) -> tuple[str, str | None, str | None, dict[str, Any]]:
        data: dict[str, Any] = {}
        usage = getattr(resp, "usage_metadata", None)
        if usage is not None:
            data["tokens_in"] = usage.prompt_token_count
            data["tokens_out"] = usage.candidates_token_count
        fb = getattr(resp, "prompt_feedback", None)
        block = _enum_name(getattr(fb, "block_reason", None)) if fb is not None else None
        if block and block != "BLOCKED_REASON_UNSPECIFIED":
            return "blocked", None, f"{item.path}: Gemini blocked the image ({block}); caption it by hand or with a local backend", data
        cands = getattr(resp, "candidates", None) or []
        finish = _enum_name(getattr(cands[0], "finish_reason", None)) if cands else None
        data["finish_reason"] = finish
        if finish in BLOCK_FINISH:
            return "blocked", None, f"{item.path}: Gemini stopped the answer ({finish}); caption it by hand or with a local backend", data
        try:
            text = resp.text
        except (ValueError, AttributeError):
            text = None
        text = clean_caption(text or "")
        if not text:
            return "failed", None, f"{item.path}: Gemini returned no text (finish reason {finish or 'none'}); rerun to try again", data
        if finish == "MAX_TOKENS":
            data["truncated"] = True
        return "ok", text, None, data

    def _finish(self, item: ImageItem, options: CaptionOptions, status: str, text: str | None, reason: str | None, data: dict[str, Any]) -> CaptionResult:
        if status == "ok" and text:
            if options.trigger and not re.match(re.escape(options.trigger), text, flags=re.IGNORECASE):
                data = {**data, "trigger_added": True}
            text, data = finish_caption(text, options.lora_type, options.trigger, data)
        return CaptionResult(item.id, status, text=text, reason=reason, data=data)  # type: ignore[arg-type]

    def estimate(self, n_images: int, options: CaptionOptions) -> Estimate:
        model = self._model(options)
        max_side = int(options.extra.get("max_side", DEFAULT_MAX_SIDE))
        tokens_in = PROMPT_TOKENS + image_tokens((max_side, round(max_side * 2 / 3)))
        price = price_for(model)
        cost = None
        notes = f"{model}: ~{tokens_in} input + ~{OUTPUT_TOKENS} output tokens per image (3:2 image, long side {max_side})"
        if price:
            cost = n_images * (tokens_in * price[0] + OUTPUT_TOKENS * price[1]) / 1e6
            notes += f"; ${price[0]}/M in, ${price[1]}/M out (paid tier; free tier costs nothing but allows few requests per minute)"
        else:
            notes += "; no price data for this model (see ai.google.dev/gemini-api/docs/pricing)"
        conc = max(1, options.concurrency)
        seconds = n_images * SECONDS_PER_REQUEST / conc
        if options.rpm:
            seconds = max(seconds, n_images * 60.0 / options.rpm)
        return Estimate(images=n_images, seconds=seconds, cost_usd=cost, notes=notes)
