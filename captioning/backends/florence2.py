"""Florence-2 captions, locally through transformers' native classes (no trust_remote_code).

Uses the converted checkpoints (`florence-community/Florence-2-large`, `-base`, `-large-ft`);
the original `microsoft/Florence-2-*` remote code breaks on current transformers. Task
`<MORE_DETAILED_CAPTION>` by default (`--set task=<DETAILED_CAPTION>` or `<CAPTION>`). Florence
takes no free-form prompt, so the trigger is added after generation. GPU when present, batched.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from captioning.backends._local import finish, load_batch, load_pretrained, pick_device, pick_dtype, run_with_oom_fallback
from captioning.backends.base import CaptionOptions, CaptionResult, Estimate
from prep.dataset import ImageItem

DEFAULT_MODEL = "florence-community/Florence-2-large"
TASKS = ("<CAPTION>", "<DETAILED_CAPTION>", "<MORE_DETAILED_CAPTION>")


class Florence2Backend:
    name: ClassVar[str] = "florence2"
    needs_key: ClassVar[str | None] = None
    kind: ClassVar[Literal["tags", "text"]] = "text"

    def __init__(self) -> None:
        self._model: Any = None
        self._processor: Any = None
        self._device = "cpu"

    def __getstate__(self) -> dict[str, Any]:
        return {"_model": None, "_processor": None, "_device": "cpu"}  # workers load their own copy

    def _load(self, options: CaptionOptions) -> None:
        if self._model is not None:
            return
        from transformers import Florence2ForConditionalGeneration, Florence2Processor

        name = options.model or DEFAULT_MODEL
        self._device = pick_device(options.device)
        dtype = pick_dtype(self._device, options.extra.get("dtype"))
        self._processor = load_pretrained(Florence2Processor.from_pretrained, name, options, "Florence-2 processor", backend="pil")
        model = load_pretrained(Florence2ForConditionalGeneration.from_pretrained, name, options, "Florence-2 model", dtype=dtype)
        self._model = model.to(self._device).eval()

    def caption_batch(self, items: list[ImageItem], options: CaptionOptions) -> list[CaptionResult]:
        import torch

        self._load(options)
        task = str(options.extra.get("task", "<MORE_DETAILED_CAPTION>"))
        if task not in TASKS:
            raise ValueError(f"unknown Florence-2 task {task!r}: use one of {', '.join(TASKS)}")
        beams = int(options.extra.get("num_beams", 3))
        loaded, failed = load_batch(items, int(options.extra.get("max_side", 1024)))
        proc, model = self._processor, self._model

        def generate(batch: list[tuple[ImageItem, Any]]) -> list[str]:
            images = [im for _, im in batch]
            inputs = proc(text=[task] * len(images), images=images, return_tensors="pt", padding=True)
            inputs = {k: (v.to(self._device, model.dtype) if v.is_floating_point() else v.to(self._device)) for k, v in inputs.items()}
            with torch.inference_mode():
                ids = model.generate(**inputs, max_new_tokens=int(options.max_new_tokens), num_beams=beams, do_sample=False,
                                     min_new_tokens=int(options.extra.get("min_new_tokens", 0)) or None)
            raw = proc.batch_decode(ids, skip_special_tokens=False)
            out = []
            for text, im in zip(raw, images):
                parsed = proc.post_process_generation(text, task=task, image_size=im.size)
                val = parsed.get(task, "") if isinstance(parsed, dict) else parsed
                out.append(str(val).replace("<pad>", "").replace("</s>", "").replace("<s>", "").strip())
            return out

        results: list[CaptionResult] = []
        bs = max(1, int(options.batch_size))
        for i in range(0, len(loaded), bs):
            results.extend(run_with_oom_fallback(loaded[i : i + bs], generate))
        return finish(results, failed, items, options, {"model": options.model or DEFAULT_MODEL, "task": task, "device": self._device})

    def estimate(self, n_images: int, options: CaptionOptions) -> Estimate:
        gpu = pick_device(options.device) != "cpu"
        per = 0.25 if gpu else 4.0
        return Estimate(images=n_images, seconds=n_images * per, cost_usd=0.0,
                        notes=f"local Florence-2 on {'GPU' if gpu else 'CPU'}: ~{per} s per image assumed (large, {options.extra.get('num_beams', 3)} beams)")
