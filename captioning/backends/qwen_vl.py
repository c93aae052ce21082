"""Qwen2.5-VL (or Qwen2-VL) locally through transformers: captions of images and of video clips.

A clip is watched as a clip: `video_frames` frames (default 16; even, because Qwen-VL's temporal
patch is 2 frames) spread over it are read by `prep.video.read_frames` (upright, square pixels),
resized to multiples of patch x merge size within a per-frame pixel budget, normalised with the
checkpoint's mean/std and cut into 2-frame x 14 px patches exactly as transformers'
`Qwen2VLVideoProcessor.patchify` does, and the clip's timing reaches the model through
`second_per_grid_ts` (temporal patch / sampled fps), as `Qwen2_5_VLProcessor` computes it. We
patchify here because transformers' video processors need torchvision, which this project does
not install (no CPU wheel matches the pinned torch); images go through the checkpoint's own
`Qwen2VLImageProcessorPil`. Resizing uses PIL bicubic where transformers' video processor uses
torchvision's: pixel values may differ slightly, the token layout does not.

Prompts are `captioning.prompts`' presets (the video ones for clips: motion = movement, camera
and timing, never the subject's looks), in Qwen's ChatML. GPU when present (bf16; the 7B model
needs ~17 GB), else CPU (very slow). Qwen3-VL puts timestamps into the text and needs its own
processor: it is refused with a message, not captioned wrongly.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from captioning.backends._local import LocalModelError, finish, load_pretrained, pick_device, pick_dtype, run_with_oom_fallback
from captioning.backends._media import DEFAULT_VIDEO_FRAMES, is_video_item, sample_indices
from captioning.backends.base import CaptionOptions, CaptionResult, Estimate
from captioning.prompts import build_prompt
from prep.dataset import ImageItem
from prep.images import ImageLoadError, load_image

DEFAULT_MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"
"""huggingface.co/Qwen/Qwen2.5-VL-7B-Instruct (Apache-2.0); `--model Qwen/Qwen2.5-VL-3B-Instruct` is lighter."""
SUPPORTED_TYPES = ("qwen2_5_vl", "qwen2_vl")
VIDEO_MAX_PIXELS = 448 * 448
"""Pixel budget per sampled frame (our choice): 16 frames at 448x448 are 8 x 256 = 2048 visual tokens."""
IMAGE_MAX_SIDE = 1024

CHATML = "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
"""Qwen's chat format, used when a checkpoint's tokenizer carries no chat template."""


def video_patches(frames: list[Any], *, patch_size: int, merge_size: int, temporal_patch_size: int, mean: Any, std: Any,
                  min_pixels: int, max_pixels: int) -> tuple[Any, tuple[int, int, int]]:
    """Frames (PIL) -> (`pixel_values_videos` [t*h*w, C*tps*ps*ps] float32, (grid_t, grid_h, grid_w)), laid out
    as transformers' `Qwen2VLVideoProcessor.patchify` lays them out (the last frame repeats to fill a temporal patch)."""
    import numpy as np
    from PIL import Image
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    w0, h0 = frames[0].size
    h, w = smart_resize(h0, w0, factor=patch_size * merge_size, min_pixels=min_pixels, max_pixels=max_pixels)
    arr = np.stack([np.asarray(f.convert("RGB").resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32) for f in frames]) / 255.0
    arr = (arr - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    arr = arr.transpose(0, 3, 1, 2)  # T, C, H, W
    if pad := -len(arr) % temporal_patch_size:
        arr = np.concatenate([arr, np.repeat(arr[-1:], pad, axis=0)])
    t, c = arr.shape[0], arr.shape[1]
    gt, gh, gw = t // temporal_patch_size, h // patch_size, w // patch_size
    p = arr.reshape(gt, temporal_patch_size, c, gh // merge_size, merge_size, patch_size, gw // merge_size, merge_size, patch_size)
    p = p.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8).reshape(gt * gh * gw, c * temporal_patch_size * patch_size * patch_size)
    return np.ascontiguousarray(p), (gt, gh, gw)


class QwenVLBackend:
    name: ClassVar[str] = "qwen-vl"
    needs_key: ClassVar[str | None] = None
    kind: ClassVar[Literal["tags", "text"]] = "text"
    accepts_video: ClassVar[bool] = True

    def __init__(self) -> None:
        self._model: Any = None
        self._tok: Any = None
        self._ip: Any = None
        self._device = "cpu"

    def __getstate__(self) -> dict[str, Any]:
        return {"_model": None, "_tok": None, "_ip": None, "_device": "cpu"}

    def _load(self, options: CaptionOptions) -> None:
        if self._model is not None:
            return
        from transformers import AutoConfig, AutoModelForImageTextToText, AutoTokenizer, Qwen2VLImageProcessorPil

        name = options.model or DEFAULT_MODEL
        cfg = load_pretrained(AutoConfig.from_pretrained, name, options, "Qwen-VL config")
        if cfg.model_type not in SUPPORTED_TYPES:
            raise LocalModelError(f"{name!r} is a {cfg.model_type} checkpoint; the qwen-vl backend runs {', '.join(SUPPORTED_TYPES)} "
                                  f"checkpoints (for example {DEFAULT_MODEL})")
        self._device = pick_device(options.device)
        dtype = pick_dtype(self._device, options.extra.get("dtype"))
        self._tok = load_pretrained(AutoTokenizer.from_pretrained, name, options, "Qwen-VL tokenizer")
        self._ip = load_pretrained(Qwen2VLImageProcessorPil.from_pretrained, name, options, "Qwen-VL image processor")
        model = load_pretrained(AutoModelForImageTextToText.from_pretrained, name, options, "Qwen-VL model", dtype=dtype)
        self._model = model.to(self._device).eval()
        self._cfg = model.config

    # ---- inputs
    def _token(self, attr: str, default: str) -> str:
        tid = getattr(self._cfg, attr, None)
        return self._tok.convert_ids_to_tokens(int(tid)) if tid is not None else default

    def chat_text(self, system: str, user: str) -> str:
        if getattr(self._tok, "chat_template", None):
            msgs = [{"role": "system", "content": system}, {"role": "user", "content": user}]
            return self._tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        return CHATML.format(system=system, user=user)

    def encode_clip(self, frames: list[Any], sampled_fps: float, prompt: Any, options: CaptionOptions) -> dict[str, Any]:
        """Model inputs for one clip (tokens with the video placeholder expanded, patches, grid, timing)."""
        import torch

        ip = self._ip
        pv, (gt, gh, gw) = video_patches(
            frames, patch_size=ip.patch_size, merge_size=ip.merge_size, temporal_patch_size=ip.temporal_patch_size,
            mean=ip.image_mean, std=ip.image_std, min_pixels=int(ip.size.get("shortest_edge", 56 * 56) if hasattr(ip.size, "get") else 56 * 56),
            max_pixels=int(options.extra.get("video_max_pixels", VIDEO_MAX_PIXELS)))
        n = gt * gh * gw // ip.merge_size ** 2
        vs, ve, pad = (self._token("vision_start_token_id", "<|vision_start|>"), self._token("vision_end_token_id", "<|vision_end|>"),
                       self._token("video_token_id", "<|video_pad|>"))
        text = self.chat_text(prompt.system, f"{vs}{pad}{ve}{prompt.user}").replace(pad, pad * n, 1)
        enc = self._tok(text, return_tensors="pt", add_special_tokens=False)
        ids = enc["input_ids"]
        return {
            "input_ids": ids, "attention_mask": enc["attention_mask"],
            "pixel_values_videos": torch.from_numpy(pv), "video_grid_thw": torch.tensor([[gt, gh, gw]]),
            "second_per_grid_ts": torch.tensor([ip.temporal_patch_size / max(sampled_fps, 1e-3)]),
            "mm_token_type_ids": (ids == int(self._cfg.video_token_id)).long() * 2,
        }

    def encode_image(self, image: Any, prompt: Any) -> dict[str, Any]:
        out = self._ip(images=[image.convert("RGB")], return_tensors="pt")
        n = int(out["image_grid_thw"][0].prod()) // self._ip.merge_size ** 2
        vs, ve, pad = (self._token("vision_start_token_id", "<|vision_start|>"), self._token("vision_end_token_id", "<|vision_end|>"),
                       self._token("image_token_id", "<|image_pad|>"))
        text = self.chat_text(prompt.system, f"{vs}{pad}{ve}{prompt.user}").replace(pad, pad * n, 1)
        enc = self._tok(text, return_tensors="pt", add_special_tokens=False)
        ids = enc["input_ids"]
        return {"input_ids": ids, "attention_mask": enc["attention_mask"], "pixel_values": out["pixel_values"],
                "image_grid_thw": out["image_grid_thw"], "mm_token_type_ids": (ids == int(self._cfg.image_token_id)).long()}

    # ---- protocol
    def caption_batch(self, items: list[ImageItem], options: CaptionOptions) -> list[CaptionResult]:
        import torch

        from prep.video import VideoError, probe_video, read_frames

        self._load(options)
        temperature = float(options.extra.get("temperature", 0.0))
        gen: dict[str, Any] = {"max_new_tokens": int(options.max_new_tokens), "do_sample": temperature > 0}
        if temperature > 0:
            gen.update(temperature=temperature, top_p=float(options.extra.get("top_p", 0.9)))
        if options.extra.get("min_new_tokens"):
            gen["min_new_tokens"] = int(options.extra["min_new_tokens"])
        n_frames = max(2, int(options.extra.get("video_frames", DEFAULT_VIDEO_FRAMES)))
        n_frames += n_frames % 2
        image_prompt = build_prompt(options.lora_type, options.trigger, options.prompt)
        video_prompt = build_prompt(options.lora_type, options.trigger, options.prompt, video=True)
        model = self._model
        loaded: list[tuple[ImageItem, Any]] = []
        failed: list[CaptionResult] = []
        for it in items:
            try:
                if is_video_item(it):
                    info = probe_video(it.path)
                    idx = sample_indices(info.frames, n_frames)
                    if len(idx) % 2:  # a clip shorter than the sample: drop one so frames pair into temporal patches
                        idx = idx[:-1] or idx
                    fps = info.fps * len(idx) / info.frames if info.frames else 1.0
                    loaded.append((it, ("video", read_frames(it.path, idx), fps, idx)))
                else:
                    loaded.append((it, ("image", load_image(it.path, draft_size=(IMAGE_MAX_SIDE, IMAGE_MAX_SIDE)).image, None, None)))
            except (VideoError, ImageLoadError) as exc:
                failed.append(CaptionResult(it.id, "failed", reason=str(exc)))

        def generate(batch: list[tuple[ImageItem, Any]]) -> list[str]:
            texts = []
            for _it, (kind, media, fps, _idx) in batch:  # one sample per call: clips differ in length and size
                inputs = (self.encode_clip(media, fps, video_prompt, options) if kind == "video" else self.encode_image(media, image_prompt))
                inputs = {k: (v.to(self._device, model.dtype) if v.is_floating_point() and k.startswith("pixel") else v.to(self._device))
                          for k, v in inputs.items()}
                with torch.inference_mode():
                    ids = model.generate(**inputs, **gen)
                texts.append(self._tok.decode(ids[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip())
            return texts

        results: list[CaptionResult] = []
        for pair in loaded:
            results.extend(run_with_oom_fallback([pair], generate))
        frames_of = {it.id: m[3] for it, m in loaded if m[0] == "video"}
        out = finish(results, failed, items, options, {"model": options.model or DEFAULT_MODEL, "device": self._device})
        for r in out:
            if r.status == "ok" and r.id in frames_of:
                r.data = {**r.data, "video_frames": frames_of[r.id]}
        return out

    def estimate(self, n_images: int, options: CaptionOptions) -> Estimate:
        gpu = pick_device(options.device) != "cpu"
        per = 2.0 if gpu else 90.0
        return Estimate(images=n_images, seconds=n_images * per, cost_usd=0.0,
                        notes=f"local Qwen2.5-VL (7B) on {'GPU, ~17 GB VRAM in bf16' if gpu else 'CPU (very slow; a GPU is strongly advised)'}: "
                              f"~{per} s per image or clip assumed")

    def estimate_video(self, n_clips: int, seconds: float, options: CaptionOptions) -> Estimate:
        e = self.estimate(n_clips, options)
        return Estimate(images=n_clips, seconds=(e.seconds or 0) * 2, cost_usd=0.0, notes=e.notes.replace("per image or clip", "per clip, x2"))
