"""Random full-size weights for a real sd-scripts run, built with the trainer's OWN classes.

Run with the trainer's Python (it needs torch, transformers, accelerate and the checkout):

    python build_weights.py CHECKOUT OUT_DIR anima|sdxl

Why full size: sd-scripts' `anima_utils.load_anima_model` hard-codes the 2.09B DiT config and
loads strictly, so only the real shapes load; SDXL's single-file loader builds the real UNet and
CLIP text encoders from fixed configs as well. The shapes come from the trainer's own modules
(meta tensors, no memory), and every tensor is drawn and written one at a time straight into the
safetensors file, so building a 4 GB file needs a few hundred MB, not 4 GB.

Writes OUT_DIR/<arch>/... and OUT_DIR/<arch>/done.json last (so an interrupted build reruns).
Also makes the tokenizers the run needs offline: for SDXL, CLIP tokenizers with a byte-level
vocabulary (the real vocab.json/merges.txt are a download away; ids only need to stay below the
embedding size) in the `--tokenizer_cache_dir` layout sd-scripts reads.
"""

from __future__ import annotations

import ast
import inspect
import json
import os
import struct
import sys
import time

import torch

DTYPES = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32"}


def _tensor_for(name: str, shape: tuple[int, ...], gen: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    """Small random weights that keep activations finite: N(0, 0.02) for matrices and kernels,
    1 for norm scales, 0 for biases."""
    lname = name.lower()
    if len(shape) <= 1:
        if lname.endswith("bias") or "bias" in lname.split(".")[-1]:
            return torch.zeros(shape, dtype=dtype)
        if "norm" in lname or lname.endswith(("gamma", "scale")) or lname.endswith(".weight"):
            return torch.ones(shape, dtype=dtype)
        return (torch.randn(shape, generator=gen) * 0.02).to(dtype)
    return (torch.randn(shape, generator=gen) * 0.02).to(dtype)


def write_streaming(path: str, shapes: dict[str, tuple[tuple[int, ...], torch.dtype]], seed: int = 0, metadata: dict[str, str] | None = None,
                    fixed: dict[str, torch.Tensor] | None = None) -> int:
    """A safetensors file written tensor by tensor (header first: offsets follow from the shapes)."""
    fixed = fixed or {}
    header: dict[str, object] = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for name, (shape, dtype) in shapes.items():
        n = dtype.itemsize
        for d in shape:
            n *= d
        header[name] = {"dtype": DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    gen = torch.Generator().manual_seed(seed)
    tmp = path + ".partial"
    with open(tmp, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)))
        fh.write(raw)
        for name, (shape, dtype) in shapes.items():
            t = fixed[name].to(dtype) if name in fixed else _tensor_for(name, shape, gen, dtype)
            fh.write(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    os.replace(tmp, path)
    return offset


def _shapes(module: torch.nn.Module, dtype: torch.dtype, prefix: str = "", skip_buffers: bool = True) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    names = {n for n, _ in module.named_buffers()} if skip_buffers else set()
    return {prefix + k: (tuple(v.shape), dtype) for k, v in module.state_dict().items() if k not in names}


def _anima_dit_config(anima_utils) -> dict:
    """The DiT config literal inside the trainer's `load_anima_model` (it is not exported)."""
    tree = ast.parse(inspect.getsource(anima_utils.load_anima_model))
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "dit_config" for t in node.targets):
            assert isinstance(node.value, ast.Dict)
            cfg = {}
            for k, v in zip(node.value.keys, node.value.values):
                key = ast.literal_eval(k)
                cfg[key] = {"attn_mode": "torch", "split_attn": False}[key] if isinstance(v, ast.Name) else ast.literal_eval(v)
            return cfg
    raise RuntimeError("dit_config not found in anima_utils.load_anima_model: the trainer changed; update build_weights.py")


def build_anima(checkout: str, out: str) -> dict[str, str]:
    import transformers
    from accelerate import init_empty_weights
    from library import anima_models, anima_utils
    from library import qwen_image_autoencoder_kl as qvae

    files = {}
    cfg = _anima_dit_config(anima_utils)
    with init_empty_weights():
        dit = anima_models.Anima(**cfg)
    shapes = _shapes(dit, torch.bfloat16, prefix="net.")  # the released file's "net." prefix; the loader strips it
    files["dit"] = os.path.join(out, "anima_dit_random.safetensors")
    write_streaming(files["dit"], shapes, seed=1)
    del dit

    qcfg = transformers.Qwen3Config.from_pretrained(os.path.join(checkout, "configs", "qwen3_06b"), local_files_only=True)
    with init_empty_weights():
        te = transformers.Qwen3ForCausalLM(qcfg).model
    files["qwen3"] = os.path.join(out, "qwen3_06b_random.safetensors")
    write_streaming(files["qwen3"], _shapes(te, torch.bfloat16, prefix="model."), seed=2)
    del te

    with init_empty_weights():
        vae = qvae.AutoencoderKLQwenImage()
    files["vae"] = os.path.join(out, "qwen_image_vae_random.safetensors")
    write_streaming(files["vae"], _shapes(vae, torch.bfloat16), seed=3)
    return files


def _byte_level_clip_tokenizer(folder: str, pad: str) -> None:
    """A CLIPTokenizer with the 256 byte symbols (+ their word-final forms) and no merges."""
    from transformers.models.clip.tokenization_clip import bytes_to_unicode

    syms = list(bytes_to_unicode().values())
    vocab = {s: i for i, s in enumerate(syms)}
    vocab.update({s + "</w>": i + len(syms) for i, s in enumerate(syms)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as fh:
        json.dump(vocab, fh)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as fh:
        fh.write("#version: 0.2\n")
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer(os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt"), pad_token=pad, model_max_length=77)
    tok.save_pretrained(folder)


def build_sdxl(checkout: str, out: str) -> dict[str, str]:
    """One SDXL single-file checkpoint, in the key names the trainer's own saver writes: the
    models built on meta tensors, their state dicts put through sdxl_model_util's and
    model_util's converters (what `save_stable_diffusion_checkpoint` does)."""
    import transformers
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL
    from library import model_util, sdxl_model_util, sdxl_original_unet, strategy_sdxl

    with init_empty_weights():
        unet = sdxl_original_unet.SdxlUNet2DConditionModel()
    shapes = _shapes(unet, torch.float16, prefix="model.diffusion_model.")
    del unet
    te1_cfg, te2_cfg = _sdxl_text_encoder_configs(sdxl_model_util)
    with init_empty_weights():
        te1 = transformers.CLIPTextModel._from_config(te1_cfg)
        te2 = transformers.CLIPTextModelWithProjection(te2_cfg)
    for k, v in te1.state_dict().items():
        if "position_ids" not in k:
            shapes["conditioner.embedders.0.transformer." + k] = (tuple(v.shape), torch.float16)
    te2_sd = sdxl_model_util.convert_text_encoder_2_state_dict_to_sdxl(te2.state_dict(), torch.tensor(4.6052))
    for k, v in te2_sd.items():
        shapes["conditioner.embedders.1.model." + k] = (tuple(v.shape), torch.float16)
    with init_empty_weights():
        vae = AutoencoderKL(**model_util.create_vae_diffusers_config())
    for k, v in model_util.convert_vae_state_dict(vae.state_dict()).items():
        shapes["first_stage_model." + k] = (tuple(v.shape), torch.float16)
    files = {"checkpoint": os.path.join(out, "sdxl_random.safetensors")}
    write_streaming(files["checkpoint"], shapes, seed=4, fixed={"conditioner.embedders.1.model.logit_scale": torch.tensor(4.6052)})
    tok_dir = os.path.join(out, "tokenizers")
    _byte_level_clip_tokenizer(os.path.join(tok_dir, strategy_sdxl.TOKENIZER1_PATH.replace("/", "_")), "<|endoftext|>")
    _byte_level_clip_tokenizer(os.path.join(tok_dir, strategy_sdxl.TOKENIZER2_PATH.replace("/", "_")), "!")
    files["tokenizer_cache_dir"] = tok_dir
    return files


def _sdxl_text_encoder_configs(sdxl_model_util):
    """The CLIPTextConfig objects `load_models_from_sdxl_checkpoint` builds (read from its source)."""
    import transformers

    src = inspect.getsource(sdxl_model_util.load_models_from_sdxl_checkpoint)
    tree = ast.parse(src)
    cfgs = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) == "CLIPTextConfig":
            kw = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
            cfgs.append(transformers.CLIPTextConfig(**kw))
    if len(cfgs) != 2:
        raise RuntimeError("expected two CLIPTextConfig(...) calls in load_models_from_sdxl_checkpoint")
    return cfgs[0], cfgs[1]


def main(argv: list[str]) -> int:
    checkout, out, arch = argv[:3]
    checkout = os.path.abspath(checkout)
    sys.path.insert(0, checkout)
    os.chdir(checkout)
    dest = os.path.join(os.path.abspath(out), arch)
    done = os.path.join(dest, "done.json")
    if os.path.isfile(done):
        print(open(done, encoding="utf-8").read())
        return 0
    os.makedirs(dest, exist_ok=True)
    t0 = time.time()
    files = {"anima": build_anima, "sdxl": build_sdxl}[arch](checkout, dest)
    record = {"arch": arch, "files": files, "seconds": round(time.time() - t0, 1), "torch": torch.__version__}
    with open(done + ".partial", "w", encoding="utf-8") as fh:
        json.dump(record, fh, indent=1)
    os.replace(done + ".partial", done)
    print(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
