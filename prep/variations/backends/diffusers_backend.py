"""Local img2img with diffusers (`pip install loraprep[diffusers]`, a GPU for real models).

`AutoPipelineForImage2Image` picks the right pipeline (SDXL, SD, FLUX, SD3, ...) from a model
id or a local folder. A single-file checkpoint (`model.safetensors`, as Civitai ships them) is
read with the img2img pipeline class of its family (`from_single_file`): the family comes from
the file's tensor names (diffusers' own `infer_diffusers_model_type`, on the header only), and
the component configs from `config` (a diffusers-format folder or Hub repo id) or else from
the family's default repo when it is already in the Hugging Face cache; nothing is downloaded.
Half precision on GPU (bf16 where supported, else fp16), fp32 on CPU.
Each image gets its own `torch.Generator` seeded with its planned seed, so an image does not
depend on which other images share its batch and a rerun reproduces it.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import struct
import threading
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from PIL import Image

from prep.variations.backends import GenRequest
from prep.variations.families import FAMILIES, Family, family_of

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
IMG2IMG_PIPELINES = {
    "sd": "StableDiffusionImg2ImgPipeline",
    "sdxl": "StableDiffusionXLImg2ImgPipeline",
    "sd3": "StableDiffusion3Img2ImgPipeline",
    "flux": "FluxImg2ImgPipeline",
}
"""The img2img pipeline class of each family (each has diffusers' FromSingleFileMixin)."""
CHECKPOINT_FAMILIES = {
    "v1": "sd", "v2": "sd",
    "xl_base": "sdxl", "xl_refiner": "sdxl", "playground-v2-5": "sdxl",
    "sd3": "sd3", "sd35_medium": "sd3", "sd35_large": "sd3",
    "flux-dev": "flux", "flux-schnell": "flux",
}
"""diffusers' model type of a single-file checkpoint (`infer_diffusers_model_type`) -> family."""


def is_single_file(model: str) -> bool:
    """True when `model` names one weights file rather than a Hub id or a diffusers folder."""
    return Path(model).suffix.lower() in SINGLE_FILE_SUFFIXES and not Path(model).is_dir()


class _Shape:
    def __init__(self, shape: list[int]):
        self.shape = tuple(shape)


class SafetensorsHeader(Mapping[str, _Shape]):
    """A checkpoint's tensor names and shapes read from its header, without loading any tensor
    (an SDXL file is 6 GB): enough for diffusers' model-type detection."""

    def __init__(self, path: Path):
        try:
            with open(path, "rb") as fh:
                (n,) = struct.unpack("<Q", fh.read(8))
                if n <= 0 or n > 100_000_000:
                    raise ValueError("header size out of range")
                header = json.loads(fh.read(n))
        except FileNotFoundError:
            raise ValueError(f"{path}: no such checkpoint file") from None
        except (OSError, ValueError, struct.error, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: not a readable .safetensors checkpoint ({exc}); re-download it or give a diffusers folder") from None
        self._shapes = {k: v["shape"] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)}

    def __getitem__(self, key: str) -> _Shape:
        return _Shape(self._shapes[key])

    def __iter__(self) -> Iterator[str]:
        return iter(self._shapes)

    def __len__(self) -> int:
        return len(self._shapes)


def checkpoint_model_type(path: Path | str) -> str:
    """diffusers' name for what a single-file checkpoint holds ("v1", "xl_base", "flux-dev", ...)."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise ValueError(f"{path}: only .safetensors checkpoints are loaded ({path.suffix} files are pickles that can run code when opened); "
                         "get the .safetensors version of the model")
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    header = SafetensorsHeader(path)
    try:
        mtype = str(infer_diffusers_model_type(header))
    except KeyError as exc:
        raise ValueError(f"{path}: diffusers does not recognise this checkpoint (no tensor {exc}); give a diffusers folder or Hub id instead") from None
    if mtype in ("v1", "v2") and not any(k.startswith("model.diffusion_model.") for k in header):
        # diffusers falls back to "v1" for any file it does not recognise (a LoRA, a VAE, an embedding)
        raise ValueError(f"{path}: not a full Stable Diffusion checkpoint (no model.diffusion_model.* UNet weights; a LoRA, VAE or embedding?); "
                         "give the base model's checkpoint, a diffusers folder or a Hub id")
    return mtype


def checkpoint_family(path: Path | str) -> Family:
    """The family of a single-file checkpoint, from its tensor names; ValueError naming the file
    when it is not an image model img2img can run (a LoRA, a VAE, a video model, ...)."""
    mtype = checkpoint_model_type(path)
    fam = CHECKPOINT_FAMILIES.get(mtype)
    if fam is None:
        raise ValueError(f"{path}: diffusers reads this checkpoint as {mtype!r}, not a full SD/SDXL/SD3/FLUX model; "
                         "give a full checkpoint (not a LoRA or a VAE), a diffusers folder or a Hub id")
    return FAMILIES[fam]


def pick_device(device: str = "auto") -> str:
    import torch

    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def pick_dtype(device: str, dtype: str = "auto") -> Any:
    import torch

    names = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16, "fp32": torch.float32, "float32": torch.float32}
    if dtype != "auto":
        if dtype not in names:
            raise ValueError(f"unknown dtype {dtype!r}: use auto, bf16, fp16 or fp32")
        return names[dtype]
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device == "mps":
        return torch.float16
    return torch.float32


def parse_ip_adapter(spec: str) -> tuple[str, str, str]:
    """`REPO/[SUBFOLDER/]FILE` or a local file path -> (repo or folder, subfolder, weight file).

    "h94/IP-Adapter/sdxl_models/ip-adapter_sdxl.bin" -> ("h94/IP-Adapter", "sdxl_models", "ip-adapter_sdxl.bin").
    """
    p = Path(spec)
    if p.is_file():
        return str(p.parent), "", p.name
    parts = [x for x in spec.strip("/").split("/") if x]
    if len(parts) < 3:
        raise ValueError(f"--ip-adapter {spec!r}: give REPO_OWNER/REPO/[SUBFOLDER/]FILE, e.g. h94/IP-Adapter/sdxl_models/ip-adapter_sdxl.bin, or a local file")
    return "/".join(parts[:2]), "/".join(parts[2:-1]), parts[-1]


class DiffusersBackend:
    """img2img through a locally loaded diffusers pipeline, loaded once on first use."""

    name = "diffusers"

    def __init__(
        self,
        model: str,
        *,
        device: str = "auto",
        dtype: str = "auto",
        ip_adapter: str | None = None,
        ip_adapter_scale: float = 0.6,
        cpu_offload: bool = False,
        config: str | None = None,
        **_: Any,
    ):
        self.model = model
        self.config = config
        self.device_pref = device
        self.dtype_pref = dtype
        self.ip_adapter = ip_adapter
        self.ip_adapter_scale = ip_adapter_scale
        self.cpu_offload = cpu_offload
        missing = [m for m in ("torch", "diffusers", "transformers") if importlib.util.find_spec(m) is None]
        if missing:
            raise RuntimeError(f"the diffusers backend needs {', '.join(missing)}: pip install 'loraprep[diffusers]'")
        if ip_adapter:
            parse_ip_adapter(ip_adapter)  # fail on a malformed spec before loading anything
        self.single_file = is_single_file(model)
        self.family = checkpoint_family(model) if self.single_file else family_of(model)  # fails early on a bad file
        self._pipe: Any = None
        self._device = ""
        self._dtype: Any = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_pipe"] = None
        state["_lock"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _load(self) -> Any:
        with self._lock:
            if self._pipe is not None:
                return self._pipe
            try:
                import torch  # noqa: F401
                from diffusers import AutoPipelineForImage2Image
            except ImportError as exc:
                raise RuntimeError("the diffusers backend needs the [diffusers] extra: pip install 'loraprep[diffusers]'") from exc
            self._device = pick_device(self.device_pref)
            self._dtype = pick_dtype(self._device, self.dtype_pref)
            kw: dict[str, Any] = {"torch_dtype": self._dtype}
            if Path(self.model).is_dir() and (Path(self.model) / "model_index.json").is_file():
                idx = (Path(self.model) / "model_index.json").read_text(encoding="utf-8")
                if '"safety_checker"' in idx:
                    kw["safety_checker"] = None
                    kw["requires_safety_checker"] = False
            with warnings.catch_warnings():  # newer diffusers renamed torch_dtype; the old name works across versions
                warnings.simplefilter("ignore", FutureWarning)
                if self.single_file:
                    pipe = self._from_single_file(kw)
                else:
                    pipe = AutoPipelineForImage2Image.from_pretrained(self.model, **kw)
            if self.ip_adapter:
                if not hasattr(pipe, "load_ip_adapter"):
                    raise RuntimeError(f"{type(pipe).__name__} does not support IP-Adapter; drop --ip-adapter or pick an SD/SDXL/FLUX model")
                repo, sub, weight = parse_ip_adapter(self.ip_adapter)
                pipe.load_ip_adapter(repo, subfolder=sub, weight_name=weight)
                pipe.set_ip_adapter_scale(self.ip_adapter_scale)
            if self.cpu_offload and self._device.startswith("cuda"):
                pipe.enable_model_cpu_offload()
            else:
                pipe.to(self._device)
            pipe.set_progress_bar_config(disable=True)
            self._pipe = pipe
            return pipe

    def _from_single_file(self, kw: dict[str, Any]) -> Any:
        """The family's img2img pipeline from one checkpoint file, offline (local_files_only)."""
        import diffusers

        path = Path(self.model)
        config = self.config
        if config is None:
            from diffusers.loaders.single_file_utils import (
                DIFFUSERS_DEFAULT_PIPELINE_PATHS,
            )
            from huggingface_hub import try_to_load_from_cache

            repo = DIFFUSERS_DEFAULT_PIPELINE_PATHS[checkpoint_model_type(path)]["pretrained_model_name_or_path"]
            if not isinstance(try_to_load_from_cache(repo, "model_index.json"), str):
                raise RuntimeError(
                    f"{path}: a single-file checkpoint needs the diffusers configs of its family ({repo}), and none are in the "
                    f"Hugging Face cache; pass --checkpoint-config FOLDER_OR_REPO (a diffusers-format folder), or fetch the configs once: "
                    f"hf download {repo} --exclude '*.safetensors' '*.bin' '*.ckpt' '*.onnx*' '*.msgpack'"
                )
            config = repo
        elif not Path(config).is_dir() and config.count("/") != 1:
            raise RuntimeError(f"--checkpoint-config {config!r}: give a diffusers-format folder (holding model_index.json) or a Hub repo id owner/name")
        cls = getattr(diffusers, IMG2IMG_PIPELINES[self.family.name])
        kw = dict(kw, config=str(config), local_files_only=True)
        if self.family.name == "sd":
            kw.update(safety_checker=None, requires_safety_checker=False)
        try:
            return cls.from_single_file(str(path), **kw)
        except (OSError, ValueError, KeyError) as exc:
            raise RuntimeError(f"{path}: diffusers could not load it as {cls.__name__} with configs from {config} ({exc}); "
                               "check that the configs are of the same family (SD 1.x, SDXL, ...)") from None

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"model": self.model, "backend": self.name}
        if self.single_file:
            d["checkpoint_config"] = self.config
        if self._dtype is not None:
            d["dtype"] = str(self._dtype).replace("torch.", "")
            d["device"] = self._device
        if self.ip_adapter:
            d["ip_adapter"] = self.ip_adapter
            d["ip_adapter_scale"] = self.ip_adapter_scale
        return d

    def generate(self, requests: list[GenRequest]) -> list[Image.Image]:
        """Run same-sized requests together (one pipeline call), each with its own generator."""
        pipe = self._load()
        out: dict[int, Image.Image] = {}
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault((r.image.size, r.strength, r.steps, r.guidance), []).append(i)
        for idxs in groups.values():
            for i, im in zip(idxs, self._run(pipe, [requests[i] for i in idxs])):
                out[i] = im
        return [out[i] for i in range(len(requests))]

    def _run(self, pipe: Any, reqs: list[GenRequest]) -> list[Image.Image]:
        import torch

        if self.ip_adapter and len(reqs) > 1:
            # The pipelines take one IP-Adapter image per adapter, not per prompt: go one by one.
            return [im for r in reqs for im in self._run(pipe, [r])]
        family = self.family
        params = inspect.signature(pipe.__call__).parameters
        gen_device = "cpu" if self.cpu_offload or self._device == "mps" else self._device
        first = reqs[0]
        kw: dict[str, Any] = {
            "prompt": [r.prompt for r in reqs],
            "image": [r.image for r in reqs],
            "strength": first.strength,
            "num_inference_steps": first.steps or family.steps,
            "generator": [torch.Generator(gen_device).manual_seed(r.seed) for r in reqs],
            "output_type": "pil",
        }
        if "guidance_scale" in params:
            kw["guidance_scale"] = first.guidance if first.guidance is not None else family.guidance
        if "negative_prompt" in params and any(r.negative_prompt for r in reqs):
            kw["negative_prompt"] = [r.negative_prompt or "" for r in reqs]
        if "height" in params and "width" in params:
            kw["width"], kw["height"] = first.image.size
        if self.ip_adapter:
            kw["ip_adapter_image"] = first.image
        with torch.inference_mode():
            result = pipe(**kw)
        images = list(result.images)
        if len(images) != len(reqs):
            raise RuntimeError(f"pipeline returned {len(images)} images for {len(reqs)} prompts")
        return [im.convert("RGB") for im in images]
