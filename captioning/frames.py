"""Captions of a clip from still frames, for backends that read images only (wd14, Florence-2,
JoyCaption, chains, Replicate image models).

Our decision (docs/captioning.md, "Video clips"): a tagger tags `FRAMES_FOR_TAGS` frames spread
over the clip and keeps the tags found in at least half of them (score = mean over the frames
that have it), which is what stays true of the whole clip; a sentence backend captions the
middle frame. Neither sees movement, so with `--lora-type motion` an image-only backend fails
each clip with a message naming the backends that watch the clip itself. Frames are decoded
upright with square pixels (`prep.video.read_frames`) into a temporary folder that is removed
afterwards; the user's files are never touched.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from captioning.backends._media import sample_indices
from captioning.backends.base import CaptionBackend, CaptionOptions, CaptionResult, Tag
from prep.dataset import ImageItem
from prep.inputs import printable

FRAMES_FOR_TAGS = 3
"""Frames a tagger tags per clip (our choice): start, middle and end of the movement."""

VIDEO_BACKENDS = "gemini, qwen-vl, or replicate with a video model (--model nemotron-video)"


def motion_needs_video(item: ImageItem, backend_name: str) -> str:
    return (f"{printable(item.path)}: the {backend_name} backend reads still images only, and a motion caption must describe "
            f"the movement, which no single frame shows; caption clips with --backend {VIDEO_BACKENDS}")


def caption_from_frames(backend: CaptionBackend, videos: list[ImageItem], options: CaptionOptions, backend_name: str) -> list[CaptionResult]:
    """One result per clip in `videos`, made from the backend's results on sampled frames.

    Raises what the backend raises for the whole run (`prep.models.ModelNotAvailable`)."""
    from prep.video import VideoError, probe_video, read_frames

    tags_backend = getattr(backend, "kind", "text") == "tags"
    out: dict[str, CaptionResult] = {}
    plan: dict[str, tuple[list[int], list[ImageItem]]] = {}
    with tempfile.TemporaryDirectory(prefix="loraprep-frames-") as tmp:
        frame_items: list[ImageItem] = []
        for k, v in enumerate(videos):
            if options.lora_type == "motion":
                out[v.id] = CaptionResult(v.id, "failed", reason=motion_needs_video(v, backend_name))
                continue
            try:
                info = probe_video(v.path)
                idx = sample_indices(info.frames, FRAMES_FOR_TAGS) if tags_backend else [max(0, info.frames // 2)]
                frames = read_frames(v.path, idx)
            except VideoError as exc:
                out[v.id] = CaptionResult(v.id, "failed", reason=str(exc))
                continue
            items = []
            for i, im in zip(idx, frames):
                p = Path(tmp) / f"clip{k}_frame{i}.png"
                im.save(p)
                items.append(ImageItem(id=f"{v.id}#frame{i}", path=p, caption_path=p.with_suffix(".txt")))
            plan[v.id] = (idx, items)
            frame_items.extend(items)
        got = {r.id: r for r in backend.caption_batch(frame_items, options)} if frame_items else {}
    for v in videos:
        if v.id in plan:
            idx, items = plan[v.id]
            out[v.id] = _merge(v, idx, [got.get(it.id) for it in items], backend_name)
    return [out[v.id] for v in videos]


def _merge(video: ImageItem, idx: list[int], results: list[CaptionResult | None], backend_name: str) -> CaptionResult:
    ok = [r for r in results if r is not None and r.status == "ok"]
    if not ok:
        bad = next((r for r in results if r is not None), None)
        why = (bad.reason or bad.status) if bad is not None else "the backend returned no result"
        status = "blocked" if bad is not None and bad.status == "blocked" else "failed"
        return CaptionResult(video.id, status, reason=f"{printable(video.path)}: sampled frames {idx}: {why}")  # type: ignore[arg-type]
    data = {"frames": idx, "from_frames": True, "thresholded": all(r.data.get("thresholded") for r in ok)}
    for key in ("model", "device"):
        if key in ok[0].data:
            data[key] = ok[0].data[key]
    tags = _majority([r.tags for r in ok if r.tags is not None], len(ok)) if any(r.tags is not None for r in ok) else None
    text = ok[len(ok) // 2].text
    return CaptionResult(video.id, "ok", text=text, tags=tags, data=data)


def _majority(per_frame: list[list[Tag]], n: int) -> list[Tag]:
    """Tags present in at least half of the `n` frames, each with its mean score there, best first."""
    seen: dict[str, list[Tag]] = {}
    for tags in per_frame:
        for t in {t.name: t for t in tags}.values():
            seen.setdefault(t.name, []).append(t)
    kept = [Tag(name, sum(t.score for t in ts) / len(ts), ts[0].category) for name, ts in seen.items() if 2 * len(ts) >= n]
    return sorted(kept, key=lambda t: -t.score)
