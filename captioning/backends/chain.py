"""`--backend a+b`: tags from the first backend, then a sentence from the second, in one caption
"trigger, tags, sentence" (the form FLUX/Anima-style trainers like: booru tags for precise
control plus a natural sentence).

The chain returns results carrying both: `tags` from the tagger and `text` from the sentence
backend; the pipeline applies its tag rules to the tags and joins them before the sentence.
If the sentence backend blocks or fails an image, that image gets the sentence backend's
status (it is recorded and can be retried; the local tags cost nothing to redo).
"""

from __future__ import annotations

import re
import sys
from typing import Any, ClassVar, Literal

from captioning.backends.base import CaptionOptions, CaptionResult, Estimate
from prep.dataset import ImageItem


class ChainBackend:
    name: ClassVar[str] = ""
    needs_key: ClassVar[str | None] = None
    kind: ClassVar[Literal["tags", "text"]] = "text"
    parts: ClassVar[tuple[str, str]] = ("", "")

    def __init__(self) -> None:
        from captioning.backends import backend_class

        self._first = backend_class(self.parts[0])()
        self._second = backend_class(self.parts[1])()

    def _sub_options(self, options: CaptionOptions, which: int) -> CaptionOptions:
        """`--set wd14.threshold=...` / `--set gemini.model=...` reach only that backend;
        `--model` goes to the sentence backend (the tagger keeps its default)."""
        from dataclasses import replace

        name = self.parts[which]
        extra = {k: v for k, v in options.extra.items() if "." not in k or k.startswith("input.")}
        extra.update({k.split(".", 1)[1]: v for k, v in options.extra.items() if k.startswith(name + ".")})
        model = extra.pop("model", None) or (options.model if which == 1 else None)
        return replace(options, model=model, extra=extra)

    def caption_batch(self, items: list[ImageItem], options: CaptionOptions) -> list[CaptionResult]:
        first = {r.id: r for r in self._first.caption_batch(items, self._sub_options(options, 0))}
        ready = [it for it in items if first.get(it.id) is not None and first[it.id].status == "ok"]
        second = {r.id: r for r in (self._second.caption_batch(ready, self._sub_options(options, 1)) if ready else [])}
        out: list[CaptionResult] = []
        for it in items:
            a = first.get(it.id)
            if a is None or a.status != "ok":
                out.append(a or CaptionResult(it.id, "failed", reason=f"{it.path}: {self.parts[0]} returned no result"))
                continue
            b = second.get(it.id)
            if b is None or b.status != "ok":
                out.append(b or CaptionResult(it.id, "failed", reason=f"{it.path}: {self.parts[1]} returned no result"))
                continue
            sentence = b.text or ""
            if options.trigger:  # the trigger goes first once, before the tags, not before the sentence
                sentence = re.sub(rf"^\s*{re.escape(options.trigger)}\s*,\s*", "", sentence, flags=re.IGNORECASE)
            tags = a.tags
            if tags is None and a.text:  # a tagger that returned text: keep it as the tag part
                sentence = f"{a.text}, {sentence}"
            data: dict[str, Any] = {**{f"{self.parts[0]}.{k}": v for k, v in a.data.items() if k != "thresholded"}, **b.data}
            if a.data.get("thresholded"):
                data["thresholded"] = True
            out.append(CaptionResult(it.id, "ok", text=sentence, tags=tags, data=data))
        return out

    def estimate(self, n_images: int, options: CaptionOptions) -> Estimate:
        a = self._first.estimate(n_images, self._sub_options(options, 0))
        b = self._second.estimate(n_images, self._sub_options(options, 1))
        cost = None if a.cost_usd is None and b.cost_usd is None else (a.cost_usd or 0.0) + (b.cost_usd or 0.0)
        secs = None if a.seconds is None and b.seconds is None else (a.seconds or 0.0) + (b.seconds or 0.0)
        return Estimate(images=n_images, seconds=secs, cost_usd=cost, notes=f"{self.parts[0]}: {a.notes} | {self.parts[1]}: {b.notes}")


def chain_class(name: str) -> type[ChainBackend]:
    """The backend class for `a+b` (exactly two parts, tags first)."""
    from captioning.backends import REGISTRY, UnknownBackend, backend_class

    parts = tuple(p.strip() for p in name.split("+"))
    if len(parts) != 2 or not all(parts):
        raise UnknownBackend(f"chain {name!r}: write it as TAGGER+SENTENCE, e.g. wd14+gemini")
    for p in parts:
        if p not in REGISTRY:
            raise UnknownBackend(f"chain {name!r}: unknown backend {p!r} (choose from {', '.join(sorted(REGISTRY))})")
    first, second = backend_class(parts[0]), backend_class(parts[1])
    keys = "|".join(k for k in (first.needs_key, second.needs_key) if k) or None
    cls_name = "Chain_" + "_".join(re.sub(r"\W", "_", p) for p in parts)
    cls = type(cls_name, (ChainBackend,), {"name": f"{parts[0]}+{parts[1]}", "needs_key": keys, "parts": parts, "__module__": __name__})
    setattr(sys.modules[__name__], cls_name, cls)  # importable by name, so instances pickle
    return cls
