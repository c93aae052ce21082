"""What the local VLM backends (Florence-2, JoyCaption) share: device and dtype choice, a
friendly error when weights are missing, image decoding per item (one bad file fails only
itself), and a batch that falls back to one-by-one when the GPU runs out of memory."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from captioning.backends.base import CaptionOptions, CaptionResult
from prep.dataset import ImageItem
from prep.images import ImageLoadError, load_image
from prep.models import ModelNotAvailable


class LocalModelError(ModelNotAvailable):
    """The model cannot be loaded; the message says what to install or download."""


def pick_device(requested: str = "auto") -> str:
    import torch

    if requested and requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def pick_dtype(device: str, requested: str | None = None) -> Any:
    import torch

    if requested:
        return getattr(torch, requested)
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def load_pretrained(loader: Callable[..., Any], model: str, options: CaptionOptions, what: str, **kw: Any) -> Any:
    """`loader(model, ...)` with a message that tells how to get the weights when they are missing."""
    local = Path(model).expanduser()
    src = str(local) if local.exists() else model
    try:
        return loader(src, revision=options.revision, **kw) if not local.exists() else loader(src, **kw)
    except (OSError, ValueError) as exc:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = (f"download it first (`hf download {model}`) or pass a local folder with --model PATH"
                if offline or not local.exists() else "check that the folder holds a complete checkpoint")
        raise LocalModelError(f"cannot load the {what} {model!r} ({type(exc).__name__}: {str(exc)[:200]}): {hint}") from exc


def load_batch(items: list[ImageItem], max_side: int) -> tuple[list[tuple[ImageItem, Any]], list[CaptionResult]]:
    """Decode each image (draft-decoded to about `max_side`); failures become results."""
    ok: list[tuple[ImageItem, Any]] = []
    failed: list[CaptionResult] = []
    for it in items:
        try:
            ok.append((it, load_image(it.path, draft_size=(max_side, max_side)).image))
        except ImageLoadError as exc:
            failed.append(CaptionResult(it.id, "failed", reason=str(exc)))
    return ok, failed


def run_with_oom_fallback(batch: list[tuple[ImageItem, Any]], fn: Callable[[list[tuple[ImageItem, Any]]], list[str]]) -> list[CaptionResult]:
    """`fn(batch) -> texts`; on CUDA out-of-memory retry one image at a time; an error on one
    image fails that image only."""
    import torch

    try:
        texts = fn(batch)
        return [CaptionResult(it.id, "ok", text=t) for (it, _), t in zip(batch, texts)]
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        if len(batch) == 1:
            it = batch[0][0]
            return [CaptionResult(it.id, "failed", reason=f"{it.path}: out of GPU memory even alone: use --device cpu or a smaller model")]
    except Exception as exc:
        if len(batch) == 1:
            it = batch[0][0]
            return [CaptionResult(it.id, "failed", reason=f"{it.path}: {type(exc).__name__}: {exc}")]
    out: list[CaptionResult] = []
    for pair in batch:
        out.extend(run_with_oom_fallback([pair], fn))
    return out


def finish(results: list[CaptionResult], failed: list[CaptionResult], items: list[ImageItem], options: CaptionOptions, data: dict[str, Any]) -> list[CaptionResult]:
    """Clean captions, enforce the trigger, and return results in input order."""
    from captioning.prompts import clean_caption, finish_caption

    by_id = {r.id: r for r in [*results, *failed]}
    out = []
    for it in items:
        r = by_id[it.id]
        if r.status == "ok":
            text = clean_caption(r.text or "")
            if not text:
                r = CaptionResult(it.id, "failed", reason=f"{it.path}: the model produced no text; try another --model or caption mode")
            else:
                text, d = finish_caption(text, options.lora_type, options.trigger, data)
                r = CaptionResult(it.id, "ok", text=text, data=d)
        out.append(r)
    return out
