"""JoyCaption (Beta One) locally through transformers' native LLaVA class (no trust_remote_code).

JoyCaption is prompted in plain language: a caption *mode* ("descriptive", "straightforward",
"sd_prompt", "booru_tags", ...) plus extra instructions. For LoRA datasets the instructions
that matter are the ones its authors trained it on: "refer to them as {trigger}" and "do not
include information about people/characters that cannot be changed" (character LoRAs), and
keeping style words out (style LoRAs). `--set mode=NAME`, `--set length=short|medium-length|long`,
`--prompt` replaces the whole instruction. GPU when present (bf16, ~17 GB), batched with left
padding. Sampling defaults follow the model card (temperature 0.6, top_p 0.9).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from captioning.backends._local import finish, load_batch, load_pretrained, pick_device, pick_dtype, run_with_oom_fallback
from captioning.backends.base import CaptionOptions, CaptionResult, Estimate
from prep.dataset import ImageItem

DEFAULT_MODEL = "fancyfeast/llama-joycaption-beta-one-hf-llava"
SYSTEM = "You are a helpful image captioner."

MODES: dict[str, str] = {
    "descriptive": "Write a {length} detailed description for this image.",
    "casual": "Write a {length} descriptive caption for this image in a casual tone.",
    "straightforward": (
        "Write a {length} straightforward caption for this image. Begin with the main subject. Mention pivotal "
        "elements (people, objects, scenery) using confident, definite language. Focus on concrete details and how "
        "elements interact. Omit mood and speculative wording. Never mention what is absent or the resolution."
    ),
    "sd_prompt": "Output a {length} stable diffusion prompt that is indistinguishable from a real stable diffusion prompt.",
    "booru_tags": "Write a {length} list of Booru-like tags for this image.",
    "training": "Write a {length} caption for this image as it would appear in a text-to-image training dataset.",
}
DEFAULT_MODE = "straightforward"

EXTRA_BY_TYPE: dict[str, list[str]] = {
    "character": [
        "If there is a person/character in the image you must refer to them as {trigger}.",
        "Do NOT include information about people/characters that cannot be changed (like ethnicity, gender, eye color, hair color, face, body type), but do still include changeable attributes (like clothing, pose, expression).",
        "Do NOT mention the art style or medium.",
    ],
    "style": [
        "Do NOT mention the art style, medium or technique (no painting, illustration, drawing, render, anime, watercolor and similar words); describe only the content.",
        "Refer to the style only as {trigger}.",
    ],
    "motion": ["Describe the movement (direction, speed, body mechanics) and refer to it as {trigger}; do not describe who the subject is."],
    "object": ["Refer to the main object as {trigger} and do not describe its shape, material or colour; describe where it is and how it is used."],
    "concept": ["Refer to the main concept as {trigger} without explaining it."],
}


def build_instruction(options: CaptionOptions) -> str:
    trigger = (options.trigger or "").strip()
    if options.prompt:
        return options.prompt.replace("{trigger}", trigger or "the subject")
    mode = str(options.extra.get("mode", DEFAULT_MODE))
    if mode not in MODES:
        raise ValueError(f"unknown JoyCaption mode {mode!r}: use one of {', '.join(MODES)}")
    text = MODES[mode].format(length=str(options.extra.get("length", "medium-length")))
    if trigger:
        text += " " + " ".join(s.format(trigger=trigger) for s in EXTRA_BY_TYPE.get(options.lora_type, []))
    return text


class JoyCaptionBackend:
    name: ClassVar[str] = "joycaption"
    needs_key: ClassVar[str | None] = None
    kind: ClassVar[Literal["tags", "text"]] = "text"

    def __init__(self) -> None:
        self._model: Any = None
        self._processor: Any = None
        self._device = "cpu"

    def __getstate__(self) -> dict[str, Any]:
        return {"_model": None, "_processor": None, "_device": "cpu"}

    def _load(self, options: CaptionOptions) -> None:
        if self._model is not None:
            return
        from transformers import AutoProcessor, LlavaForConditionalGeneration

        name = options.model or DEFAULT_MODEL
        self._device = pick_device(options.device)
        dtype = pick_dtype(self._device, options.extra.get("dtype"))
        self._processor = load_pretrained(AutoProcessor.from_pretrained, name, options, "JoyCaption processor", backend="pil")
        self._processor.tokenizer.padding_side = "left"  # batched generation continues every row at the end
        model = load_pretrained(LlavaForConditionalGeneration.from_pretrained, name, options, "JoyCaption model", dtype=dtype)
        self._model = model.to(self._device).eval()

    def _prompt_text(self, instruction: str) -> str:
        proc = self._processor
        convo = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": instruction}]
        text = proc.apply_chat_template(convo, tokenize=False, add_generation_prompt=True)
        token = getattr(proc, "image_token", "<image>")
        if token not in text:  # templates that do not place the image themselves
            text = text.replace(instruction, f"{token}\n{instruction}", 1)
        bos = getattr(proc.tokenizer, "bos_token", None)
        while bos and text.startswith(bos + bos):
            text = text[len(bos):]
        return text

    def encode(self, prompt: str, images: list[Any]) -> Any:
        """Processor inputs; the template already starts with <bos>, so the tokenizer must not
        add another (the model card warns that a doubled <bos> degrades captions)."""
        bos = getattr(self._processor.tokenizer, "bos_token", None)
        extra = {"add_special_tokens": False} if bos and prompt.startswith(bos) else {}
        return self._processor(text=[prompt] * len(images), images=images, return_tensors="pt", padding=True, **extra)

    def caption_batch(self, items: list[ImageItem], options: CaptionOptions) -> list[CaptionResult]:
        import torch

        self._load(options)
        instruction = build_instruction(options)
        prompt = self._prompt_text(instruction)
        temperature = float(options.extra.get("temperature", 0.6))
        gen: dict[str, Any] = {"max_new_tokens": int(options.max_new_tokens), "do_sample": temperature > 0}
        if temperature > 0:
            gen.update(temperature=temperature, top_p=float(options.extra.get("top_p", 0.9)))
        if options.extra.get("min_new_tokens"):
            gen["min_new_tokens"] = int(options.extra["min_new_tokens"])
        loaded, failed = load_batch(items, int(options.extra.get("max_side", 1024)))
        proc, model = self._processor, self._model

        def generate(batch: list[tuple[ImageItem, Any]]) -> list[str]:
            images = [im for _, im in batch]
            inputs = self.encode(prompt, images)
            inputs = {k: (v.to(self._device, model.dtype) if v.is_floating_point() else v.to(self._device)) for k, v in inputs.items()}
            with torch.inference_mode():
                ids = model.generate(**inputs, **gen)
            new = ids[:, inputs["input_ids"].shape[1]:]
            return [t.strip() for t in proc.batch_decode(new, skip_special_tokens=True)]

        results: list[CaptionResult] = []
        bs = max(1, int(options.batch_size))
        for i in range(0, len(loaded), bs):
            results.extend(run_with_oom_fallback(loaded[i : i + bs], generate))
        return finish(results, failed, items, options, {"model": options.model or DEFAULT_MODEL, "mode": options.extra.get("mode", DEFAULT_MODE), "device": self._device})

    def estimate(self, n_images: int, options: CaptionOptions) -> Estimate:
        gpu = pick_device(options.device) != "cpu"
        per = 1.5 if gpu else 60.0
        return Estimate(images=n_images, seconds=n_images * per, cost_usd=0.0,
                        notes=f"local JoyCaption (8B) on {'GPU, ~17 GB VRAM in bf16' if gpu else 'CPU (very slow; a GPU is strongly advised)'}: ~{per} s per image assumed")
