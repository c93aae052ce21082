"""Replicate captioners through the `replicate` client and `prep.replicate_run`.

- Token: REPLICATE_API_TOKEN; REPLICATE_BASE_URL is honoured (a proxy or a local stand-in).
- `--model` is a preset name (`florence-2`, `llava`, `llava-1.6`, `blip`) or any
  `owner/name[:version]`; a preset knows the model's input names and how to read its output.
  Any model: `--set image_key=image --set prompt_key=prompt --set input.temperature=0.2
  --set output_key=text`.
- The image is downscaled (long side <= 1536, JPEG, no metadata) and uploaded through the files
  API, never sent as a multi-MB data URI.
- One billed prediction per image: its id is persisted in `state_dir` right after the create and
  a retry, a rerun or a resume after a kill reloads it instead of creating another.
- Video clips: a preset with a `video_key` (`nemotron-video`: NVIDIA Nemotron Nano 12B v2 VL,
  whose schema takes `video` + `video_fps`) gets the clip as it is, uploaded through the files
  API like any file input, with the video prompt preset and a sampling rate set to the clip's
  length (`captioning.backends._media.sampling_fps`). Any model: `--set video_key=NAME --set
  fps_key=NAME`. For a preset without one, the pipeline captions sampled frames instead.
"""

from __future__ import annotations

import ast
import json
import re
import threading
from dataclasses import dataclass, field, replace
from collections.abc import Iterator
from typing import Any, ClassVar, Literal

from captioning.backends._media import (
    DEFAULT_MAX_SIDE, DEFAULT_VIDEO_FRAMES, file_fingerprint, is_video_item, prepare_image, sampling_fps, video_mime,
)
from captioning.backends._remote import RemoteRun, fan_out, request_fingerprint, stream_results
from captioning.backends.base import CaptionOptions, CaptionResult, Estimate
from captioning.prompts import clean_caption, finish_caption, flat_prompt
from prep.dataset import ImageItem
from prep.images import ImageLoadError
from prep.models import ModelNotAvailable
from prep.remote import RemoteError

HARDWARE_USD_PER_SECOND: dict[str, float] = {
    # replicate.com/pricing as last read (2025/2026); public models bill GPU seconds.
    "cpu": 0.000100,
    "nvidia-t4": 0.000225,
    "nvidia-a40-large": 0.000725,
    "nvidia-l40s": 0.000975,
    "nvidia-a100-80gb": 0.001400,
    "nvidia-h100": 0.001525,
}


_SETUP = threading.Lock()
"""Held while a backend creates its client: the executor's threads ask for it at once."""


@dataclass(frozen=True)
class ReplicatePreset:
    model: str
    image_key: str = "image"
    prompt_key: str | None = None
    """Input that takes the caption prompt (None: the model takes no prompt, e.g. Florence-2)."""
    input: dict[str, Any] = field(default_factory=dict)
    output_key: str | None = None
    hardware: str = "nvidia-t4"
    seconds: float = 3.0
    """Assumed run time per image for --dry-run (cold boots not included)."""
    video_key: str | None = None
    """Input that takes a video clip (None: the model reads images only)."""
    fps_key: str | None = None
    """Input that sets the frames per second the model samples from the clip."""
    fps_range: tuple[int, int] = (1, 30)
    takes_images: bool = True


PRESETS: dict[str, ReplicatePreset] = {
    "florence-2": ReplicatePreset("lucataco/florence-2-large", input={"task_input": "More Detailed Caption"}, output_key="text", hardware="nvidia-t4", seconds=2.0),
    "llava": ReplicatePreset("yorickvp/llava-13b", prompt_key="prompt", input={"temperature": 0.2, "top_p": 1, "max_tokens": 300}, hardware="nvidia-a40-large", seconds=5.0),
    "llava-1.6": ReplicatePreset("yorickvp/llava-v1.6-vicuna-13b", prompt_key="prompt", input={"temperature": 0.2, "top_p": 1, "max_tokens": 300}, hardware="nvidia-a40-large", seconds=6.0),
    "blip": ReplicatePreset("salesforce/blip", input={"task": "image_captioning"}, hardware="nvidia-t4", seconds=1.0),
    # replicate.com/nvidia/nemotron-nano-v2-12b-vl (version f4559446..., its API page): inputs `video`
    # ("Input video file (provide either images or video, not both)"), `prompt`, `video_fps`
    # (1-30, default 1), `max_new_tokens` (default 128 for videos), `temperature` (default 0);
    # output a string. Hardware and run time are our assumptions (not on that page).
    "nemotron-video": ReplicatePreset(
        "nvidia/nemotron-nano-v2-12b-vl:f455944681df5f1bfb4171a7e1100983bd0e788d40cb75f5ae799921732d0d19",
        image_key="video", prompt_key="prompt", input={"temperature": 0.2, "max_new_tokens": 300},
        hardware="nvidia-l40s", seconds=10.0, video_key="video", fps_key="video_fps", fps_range=(1, 30), takes_images=False),
}
DEFAULT_PRESET = "florence-2"


def _parse_value(v: Any) -> Any:
    if not isinstance(v, str):
        return v
    try:
        return json.loads(v)
    except (json.JSONDecodeError, ValueError):
        return v


def resolve(options: CaptionOptions) -> ReplicatePreset:
    """The preset for `--model` (a preset name, a preset's model, or any owner/name[:version]),
    with `--set image_key/prompt_key/output_key/input.NAME` overrides applied."""
    name = options.model or DEFAULT_PRESET
    base = PRESETS.get(name)
    if base is None:
        bare = name.split(":")[0]
        match = next((p for p in PRESETS.values() if p.model == bare), None)
        base = ReplicatePreset(name, prompt_key="prompt") if match is None else replace(match, model=name)
    ex = options.extra
    inputs = dict(base.input)
    if isinstance(ex.get("input"), dict):
        inputs.update(ex["input"])
    for k, v in ex.items():
        if k.startswith("input."):
            inputs[k[len("input."):]] = _parse_value(v)
    prompt_key = ex.get("prompt_key", base.prompt_key)
    return ReplicatePreset(
        model=base.model,
        image_key=str(ex.get("image_key", base.image_key)),
        prompt_key=prompt_key or None,
        input=inputs,
        output_key=ex.get("output_key", base.output_key),
        hardware=str(ex.get("hardware", base.hardware)),
        seconds=float(ex.get("seconds_per_image", base.seconds)),
        video_key=ex.get("video_key", base.video_key) or None,
        fps_key=ex.get("fps_key", base.fps_key) or None,
        fps_range=base.fps_range,
        takes_images=bool(ex.get("takes_images", base.takes_images)),
    )


def caption_from_output(output: Any, output_key: str | None = None) -> str | None:
    """Caption text from what captioners return: a string, streamed chunks, a dict, or
    Florence-2's stringified `{'<MORE_DETAILED_CAPTION>': '...'}`."""
    from prep.replicate_run import output_text

    text = output_text(output, output_key)
    if text is None:
        return None
    t = text.strip()
    if t.startswith("{") and t.endswith("}"):
        try:
            val = ast.literal_eval(t)
            if isinstance(val, dict) and val:
                t = str(next(iter(val.values())))
        except (ValueError, SyntaxError):
            pass
    t = re.sub(r"</?s>|<pad>", "", t)
    t = re.sub(r"^caption:\s*", "", t.strip(), flags=re.IGNORECASE)
    return t.strip()


MAX_FILE_BYTES = 100_000_000
"""Replicate's upload limit for a file input (100 MB, replicate.com/docs/topics/predictions/input-files)."""

BLOCK_WORDS = ("nsfw", "safety", "content policy", "flagged as sensitive")


class ReplicateBackend:
    name: ClassVar[str] = "replicate"
    needs_key: ClassVar[str | None] = "REPLICATE_API_TOKEN"
    kind: ClassVar[Literal["tags", "text"]] = "text"
    parallel: ClassVar[bool] = True
    """Each image is its own request: the pipeline runs one image per call on `--concurrency` threads."""

    def __init__(self) -> None:
        self._run: RemoteRun | None = None
        self._client: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"_run": None, "_client": None}

    def takes_video(self, options: CaptionOptions) -> bool:
        """Clips go to the model itself when its preset names a video input (`video_key`)."""
        return resolve(options).video_key is not None

    def _ensure(self, options: CaptionOptions) -> RemoteRun:
        with _SETUP:  # the executor's threads call this at once on the first images
            return self._ensure_locked(options)

    def _ensure_locked(self, options: CaptionOptions) -> RemoteRun:
        if self._run is None:
            import os

            from prep.replicate_run import make_client

            token = os.environ.get("REPLICATE_API_TOKEN")
            self._run = RemoteRun(self.name, options, [token])
            if not token:
                self._run.set_fatal("REPLICATE_API_TOKEN is not set: create a token at replicate.com/account/api-tokens and export it")
            else:
                self._client = make_client(token, timeout=float(options.extra.get("timeout", options.timeout)))
        return self._run

    def _worker(self, options: CaptionOptions) -> Any:
        run = self._ensure(options)
        if self._client is None and run.fatal:  # no key: stop before any image is attempted
            raise ModelNotAvailable(run.fatal)
        preset = resolve(options)
        prompt = flat_prompt(options.lora_type, options.trigger, options.prompt) if preset.prompt_key else None
        vprompt = flat_prompt(options.lora_type, options.trigger, options.prompt, video=True) if preset.prompt_key else None

        def one(it: ImageItem) -> CaptionResult:
            if preset.video_key and is_video_item(it):
                return self._one(it, options, run, preset, vprompt, video=True)
            if not preset.takes_images and not is_video_item(it):
                return CaptionResult(it.id, "failed", reason=(
                    f"{it.path}: {preset.model.split(':')[0]} takes video clips only; caption the images with an image "
                    f"model (--model {DEFAULT_PRESET}) in a second run"))
            return self._one(it, options, run, preset, prompt)

        return one

    def caption_batch(self, items: list[ImageItem], options: CaptionOptions) -> list[CaptionResult]:
        return fan_out(items, options.concurrency, self._worker(options))

    def caption_stream(self, items: list[ImageItem], options: CaptionOptions) -> Iterator[list[CaptionResult]]:
        """Results as they finish, `--concurrency` predictions in flight (the pipeline prefers this)."""
        return stream_results(items, options.concurrency, self._worker(options))

    def _clip_input(self, item: ImageItem, options: CaptionOptions, preset: ReplicatePreset) -> tuple[dict[str, Any], dict[str, Any]]:
        """The clip as a file input (sent as it is) and its sampling rate; raises VideoError / OSError."""
        import mimetypes

        from prep.replicate_run import FileInput
        from prep.video import probe_video

        info = probe_video(item.path)
        size = item.path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise OSError(f"{size / 1e6:.0f} MB is above Replicate's {MAX_FILE_BYTES // 1_000_000} MB upload limit; cut it shorter with `prep clips`")
        ex = options.extra
        fps = float(ex["video_fps"]) if ex.get("video_fps") else sampling_fps(info.duration, info.fps, int(ex.get("video_frames", DEFAULT_VIDEO_FRAMES)))
        lo, hi = preset.fps_range
        mime = video_mime(item.path) or mimetypes.guess_type(item.path.name)[0] or "application/octet-stream"
        inputs: dict[str, Any] = {preset.video_key or "video": FileInput(item.path.read_bytes(), item.path.name, mime)}
        meta = {"bytes": size, "duration": info.duration, "fps": fps}
        if preset.fps_key:
            inputs[preset.fps_key] = int(min(hi, max(lo, round(fps))))  # the schema takes whole frames per second
            meta["fps"] = inputs[preset.fps_key]
        return inputs, meta

    def _one(self, item: ImageItem, options: CaptionOptions, run: RemoteRun, preset: ReplicatePreset, prompt: str | None,
             video: bool = False) -> CaptionResult:
        from prep.replicate_run import FileInput, run_prediction
        from prep.video import VideoError

        max_side = int(options.extra.get("max_side", DEFAULT_MAX_SIDE))
        try:
            fp = request_fingerprint(model=preset.model, input=preset.input, image_key=preset.video_key if video else preset.image_key,
                                     prompt=prompt, file=file_fingerprint(item.path), max_side=None if video else max_side,
                                     video=video, fps=options.extra.get("video_fps"), frames=options.extra.get("video_frames"))
        except OSError as exc:
            return CaptionResult(item.id, "failed", reason=f"{item.path}: cannot read ({exc.strerror or exc})")
        ckey = f"caption:{item.id}"
        cached = run.get(ckey)
        if cached and cached.get("fp") == fp:
            return self._finish(item, options, cached["text"], {**cached.get("data", {}), "cached": True})
        if run.fatal:
            return CaptionResult(item.id, "failed", reason=f"{item.path}: {run.fatal}")
        clip: dict[str, Any] = {}
        if video:
            try:
                media, clip = self._clip_input(item, options, preset)
            except VideoError as exc:
                return CaptionResult(item.id, "failed", reason=str(exc))
            except OSError as exc:
                return CaptionResult(item.id, "failed", reason=f"{item.path}: {exc.strerror or exc}")
            inputs: dict[str, Any] = {**media, **preset.input}
        else:
            try:
                img = prepare_image(item.path, max_side=max_side, quality=int(options.extra.get("jpeg_quality", 90)))
            except ImageLoadError as exc:
                return CaptionResult(item.id, "failed", reason=str(exc))
            inputs = {preset.image_key: FileInput(img.data, f"{item.path.stem}.jpg", img.mime_type), **preset.input}
        if preset.prompt_key and prompt:
            inputs[preset.prompt_key] = prompt
        try:
            res = run_prediction(
                self._client, preset.model, inputs,
                key=item.id, state=run.store, limiter=run.limiter, policy=run.policy,
                poll_interval=float(options.extra.get("poll_interval", 1.0)),
                timeout=float(options.extra.get("prediction_timeout", 1800.0)),
                wait=int(options.extra["wait"]) if options.extra.get("wait") else None,
            )
        except RemoteError as err:
            reason = run.redact(self._explain(err, preset.model))
            if err.status == 404 or err.kind in ("not_found", "auth"):
                run.set_fatal(reason)
            return CaptionResult(item.id, "failed", reason=f"{item.path}: {reason}", data={"model": preset.model, "http_status": err.status})
        data: dict[str, Any] = {"model": preset.model, "prediction_id": res.id, "resumed": res.resumed, **({"video": clip} if video else {})}
        if "predict_time" in res.metrics:
            data["predict_time"] = res.metrics["predict_time"]
        if res.status != "succeeded":
            err_text = run.redact(res.error or res.status)
            status = "blocked" if any(w in err_text.lower() for w in BLOCK_WORDS) else "failed"
            hint = "rerun to resume it" if res.status == "timeout" else "rerun to try again (a new prediction is created)"
            return CaptionResult(item.id, status, reason=f"{item.path}: prediction {res.id} {res.status}: {err_text}; {hint}", data=data)  # type: ignore[arg-type]
        text = caption_from_output(res.output, preset.output_key)
        text = clean_caption(text or "")
        if not text:
            return CaptionResult(item.id, "failed", reason=f"{item.path}: prediction {res.id} returned no caption text (output: {str(res.output)[:120]}); set --set output_key=NAME", data=data)
        run.put(ckey, {"fp": fp, "text": text, "data": data})
        return self._finish(item, options, text, data)

    def _explain(self, err: RemoteError, model: str) -> str:
        if err.status == 404:
            return f"model {model!r} was not found on Replicate (HTTP 404): it was removed or misspelled; pass another with --model (presets: {', '.join(PRESETS)})"
        if err.kind == "auth" or err.status in (401, 403):
            return f"Replicate refused the token ({err}): check REPLICATE_API_TOKEN"
        if err.status == 422:
            return f"{err}: the model rejected the input; map its input names with --set image_key=... --set prompt_key=... --set input.NAME=VALUE"
        if err.retryable:
            return f"{err} (gave up after retries; rerun to continue)"
        return str(err)

    def _finish(self, item: ImageItem, options: CaptionOptions, text: str, data: dict[str, Any]) -> CaptionResult:
        text, data = finish_caption(text, options.lora_type, options.trigger, data)
        return CaptionResult(item.id, "ok", text=text, data=data)

    def estimate(self, n_images: int, options: CaptionOptions) -> Estimate:
        preset = resolve(options)
        rate = HARDWARE_USD_PER_SECOND.get(preset.hardware)
        price = float(options.extra["price_per_image"]) if "price_per_image" in options.extra else (rate * preset.seconds if rate else None)
        cost = n_images * price if price is not None else None
        seconds = n_images * (preset.seconds + 1.0) / max(1, options.concurrency)
        if options.rpm:
            seconds = max(seconds, n_images * 60.0 / options.rpm)
        notes = (f"{preset.model}: assumed {preset.seconds:.0f} s on {preset.hardware}"
                 + (f" at ${rate}/s" if rate else "") + " per image; cold boots add time; --set price_per_image=USD to override")
        return Estimate(images=n_images, seconds=seconds, cost_usd=cost, notes=notes)
