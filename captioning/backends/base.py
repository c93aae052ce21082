"""The backend contract: one file per backend behind `CaptionBackend`, registered in
`captioning.backends.REGISTRY`.

A backend turns a batch of `ImageItem`s into `CaptionResult`s; the pipeline calls it through
prep's executor (a batch that raises is retried image by image). It loads its model lazily (on
the first `caption_batch`) so it can be pickled to worker processes. Tag-style backends fill
`tags` (name, score, category) and leave rule application to `captioning.tags`; sentence
backends fill `text`. Post-processing (tag rules, trigger, writing) is the pipeline's job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

from prep.dataset import ImageItem

LoraType = Literal["character", "style", "motion", "object", "concept"]
ResultStatus = Literal["ok", "failed", "blocked", "retryable", "skipped"]


@dataclass
class CaptionOptions:
    """Everything a backend may need; backends ignore what does not apply to them."""

    trigger: str | None = None
    lora_type: LoraType = "character"
    model: str | None = None
    """Model id or local path; each backend has its own default."""
    revision: str | None = None
    device: str = "auto"
    batch_size: int = 8
    workers: int | None = None
    """Decode workers (local backends)."""
    prompt: str | None = None
    """Override the backend's prompt preset."""
    max_new_tokens: int = 256
    concurrency: int = 4
    rpm: float | None = None
    max_attempts: int = 6
    timeout: float = 120.0
    state_dir: Path | None = None
    """Folder where a remote backend keeps per-image state (prediction ids ...) to resume."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Backend-specific settings (e.g. replicate input mapping, wd14 thresholds)."""


@dataclass
class Tag:
    name: str
    score: float
    category: str  # general | character | rating | copyright | artist | meta


@dataclass
class CaptionResult:
    id: str
    status: ResultStatus
    text: str | None = None
    tags: list[Tag] | None = None
    reason: str | None = None
    """For failed/blocked: names the image and the cause, never a secret."""
    data: dict[str, Any] = field(default_factory=dict)
    """Provenance for the manifest: model, request ids, token counts, cost."""


@dataclass
class Estimate:
    images: int
    seconds: float | None = None
    cost_usd: float | None = None
    notes: str = ""


@runtime_checkable
class CaptionBackend(Protocol):
    name: ClassVar[str]
    needs_key: ClassVar[str | None]
    """Environment variable(s) holding the API key, e.g. "GEMINI_API_KEY|GOOGLE_API_KEY"; None for local."""
    kind: ClassVar[Literal["tags", "text"]]
    # Optional: `parallel: ClassVar[bool] = True` (remote backends) makes the pipeline send one
    # image per call on `concurrency` threads; `prefetch(items, options)`, a context manager,
    # lets a backend decode ahead of its `caption_batch` calls (wd14);
    # `accepts_video: ClassVar[bool] = True` says the backend takes clips (items flagged
    # `flags["video"]`) itself; for the others the pipeline captions sampled still frames
    # (`captioning.frames`).

    def caption_batch(self, items: list[ImageItem], options: CaptionOptions) -> list[CaptionResult]: ...

    def estimate(self, n_images: int, options: CaptionOptions) -> Estimate: ...


def accepts_video(backend: object, options: CaptionOptions | None = None) -> bool:
    """Does this backend caption a clip as a clip (Gemini, Replicate video models, Qwen-VL)?

    A backend whose answer depends on the model (Replicate) has `takes_video(options)`."""
    fn = getattr(backend, "takes_video", None)
    if callable(fn) and options is not None:
        return bool(fn(options))
    return bool(getattr(backend, "accepts_video", False))
