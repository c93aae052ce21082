"""render-variations with the diffusers backend: a tiny random SD img2img pipeline built here
from configs (no download), saved to disk and loaded through AutoPipelineForImage2Image, on CPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from prep.manifest import Manifest  # noqa: E402
from prep.variations import VariationOptions, render_variations  # noqa: E402
from prep.variations.backends.diffusers_backend import DiffusersBackend, parse_ip_adapter  # noqa: E402

STYLES = ["oil painting portrait", "pencil sketch"]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny convs are slower with several threads on a busy 2-core box (oversubscription)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory) -> Path:
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionImg2ImgPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    d = tmp_path_factory.mktemp("tiny_sd")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz0123456789,.-":
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(vocab_file=str(d / "vocab.json"), merges_file=str(d / "merges.txt"), model_max_length=32)
    torch.manual_seed(0)
    te = CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                      max_position_embeddings=32, projection_dim=16, bos_token_id=0, eos_token_id=1, pad_token_id=1))
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                                cross_attention_dim=16, attention_head_dim=4, norm_num_groups=8)
    vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8, sample_size=64)
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionImg2ImgPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=sched,
                                          safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(d / "pipe")
    return d / "pipe"


@pytest.fixture
def renders(tmp_path: Path) -> Path:
    src = tmp_path / "renders"
    src.mkdir()
    rng = np.random.default_rng(7)
    for name in ("hero", "robot"):
        Image.fromarray((rng.random((64, 64, 3)) * 255).astype("uint8")).save(src / f"{name}.png")
    (src / "hero.txt").write_text("1girl, 3d render, red hair\n")
    return src


def _opts(model: Path, **kw) -> VariationOptions:
    base = dict(backend="diffusers", model=str(model), styles=STYLES, per_image=2, max_synthetic_share=1.0, trigger="Sage", identity_check=False,
                steps=2, strength=0.5, batch_size=2, max_side=64, device="cpu")
    base.update(kw)
    return VariationOptions(**base)


def _px(p: Path) -> np.ndarray:
    return np.asarray(Image.open(p).convert("RGB")).astype(int)


def test_diffusers_variations_are_seeded_captioned_and_resumable(tiny_pipeline, renders, tmp_path, digest):
    before = digest(renders)
    out = tmp_path / "varied"
    rep = render_variations(renders, out, _opts(tiny_pipeline))
    assert rep.ok and rep.generated == 4 and rep.originals == 2, rep.failed
    assert digest(renders) == before

    recs = {r.id: r for r in Manifest.in_folder(out).step_records("render-variations") if r.data.get("kind") == "variation"}
    assert len(recs) == 4
    for vid, rec in recs.items():
        assert (out / vid).is_file() and Image.open(out / vid).size == (64, 64)
        d = rec.data
        assert (d["backend"], d["model"], d["strength"], d["dtype"], d["device"]) == ("diffusers", str(tiny_pipeline), 0.5, "float32", "cpu")
        assert d["style"] in STYLES and isinstance(d["seed"], int) and rec.source.endswith(d["source_id"])
        cap = (out / vid).with_suffix(".txt").read_text().strip()
        assert cap.startswith(f"Sage, {d['style']}") and "3d render" not in cap
    assert (out / "hero.txt").read_text().strip() == "Sage, 3d render, 1girl, red hair"
    assert (out / "robot.txt").read_text().strip() == "Sage, 3d render"
    assert (out / "contact_sheet.jpg").is_file()

    # the same plan reproduces the same pixels; different seeds give different images
    out2 = tmp_path / "again"
    render_variations(renders, out2, _opts(tiny_pipeline))
    for vid in recs:
        assert np.array_equal(_px(out / vid), _px(out2 / vid)), vid
    a, b = sorted(recs)[:2]
    assert not np.array_equal(_px(out / a), _px(out / b))

    # rerun: nothing regenerated; delete one and only that one comes back (from its seed)
    mtimes = {vid: (out / vid).stat().st_mtime_ns for vid in recs}
    rep = render_variations(renders, out, _opts(tiny_pipeline))
    assert rep.resumed == 4 and rep.generated == 0
    assert {vid: (out / vid).stat().st_mtime_ns for vid in recs} == mtimes
    gone = sorted(recs)[0]
    (out / gone).unlink()
    rep = render_variations(renders, out, _opts(tiny_pipeline, batch_size=1))
    assert rep.resumed == 3 and rep.generated == 1
    # batch of 1 now vs 2 before: identical up to float rounding of the batched matmuls
    assert np.abs(_px(out / gone) - _px(out2 / gone)).max() <= 2
    assert {vid: (out / vid).stat().st_mtime_ns for vid in recs if vid != gone} == {k: v for k, v in mtimes.items() if k != gone}

    # a changed strength is a different image: regenerated, with the new value in the manifest
    rep = render_variations(renders, out, _opts(tiny_pipeline, strength=0.7))
    assert rep.generated == 4 and Manifest.in_folder(out).get("render-variations", gone).data["strength"] == 0.7


def test_ip_adapter_spec_is_checked_before_loading():
    assert parse_ip_adapter("h94/IP-Adapter/sdxl_models/ip-adapter_sdxl.bin") == ("h94/IP-Adapter", "sdxl_models", "ip-adapter_sdxl.bin")
    assert parse_ip_adapter("h94/IP-Adapter/ip-adapter.bin") == ("h94/IP-Adapter", "", "ip-adapter.bin")
    with pytest.raises(ValueError, match="REPO"):
        DiffusersBackend("x/y", ip_adapter="just-a-file.bin")


def test_a_bad_render_fails_alone(tiny_pipeline, renders, tmp_path):
    (renders / "broken.png").write_bytes(b"not a png at all")
    out = tmp_path / "varied"
    rep = render_variations(renders, out, _opts(tiny_pipeline, per_image=1, styles=["pencil sketch"]))
    assert rep.generated == 2
    assert len(rep.failed) == 1 and rep.failed[0]["id"].startswith("broken__") and "broken.png" in rep.failed[0]["reason"]


@pytest.fixture(scope="module")
def single_file(tiny_pipeline, tmp_path_factory) -> Path:
    """The tiny pipeline as ONE original-layout .safetensors (Civitai's layout), via diffusers' reverse converter."""
    from diffusers import StableDiffusionImg2ImgPipeline

    from tests.sd_single_file import save_original_sd_checkpoint

    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(tiny_pipeline, safety_checker=None, requires_safety_checker=False)
    return save_original_sd_checkpoint(pipe, tmp_path_factory.mktemp("civitai") / "tinyMix_v1.safetensors")


def test_the_single_file_is_in_the_original_layout(single_file, tiny_pipeline):
    """diffusers' own forward conversion gives back exactly the pipeline's weights: the file is what a user has."""
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint
    from safetensors.torch import load_file

    ck = load_file(str(single_file))
    assert any(k.startswith("model.diffusion_model.input_blocks.") for k in ck) and any(k.startswith("first_stage_model.encoder.down.") for k in ck)
    assert "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight" in ck
    unet = UNet2DConditionModel.from_pretrained(tiny_pipeline / "unet")
    back, ref = convert_ldm_unet_checkpoint(ck, dict(unet.config)), unet.state_dict()
    assert set(back) == set(ref) and all(torch.equal(back[k], ref[k]) for k in ref)


def test_a_single_file_checkpoint_loads_with_from_single_file_and_a_local_config(single_file, tiny_pipeline, renders, tmp_path, monkeypatch):
    from prep.variations.backends.diffusers_backend import checkpoint_family

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert checkpoint_family(single_file).name == "sd"  # from the tensor names in the header, not the file name
    folder = render_variations(renders, tmp_path / "folder", _opts(tiny_pipeline, per_image=1, batch_size=1))
    rep = render_variations(renders, tmp_path / "file", _opts(single_file, per_image=1, batch_size=1, checkpoint_config=str(tiny_pipeline)))
    assert rep.ok and rep.generated == 2 and folder.generated == 2, rep.failed
    rec = {r.id: r for r in Manifest.in_folder(tmp_path / "file").step_records("render-variations") if r.data.get("kind") == "variation"}
    assert {r.data["model"] for r in rec.values()} == {str(single_file)} and {r.data["checkpoint_config"] for r in rec.values()} == {str(tiny_pipeline)}
    # the same weights through the same pipeline class: the same pixels as the diffusers folder
    for vid in rec:
        assert np.array_equal(_px(tmp_path / "file" / vid), _px(tmp_path / "folder" / vid)), vid


def test_a_single_file_without_configs_offline_says_what_to_pass(single_file, renders, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_hf"))
    rep = render_variations(renders, tmp_path / "out", _opts(single_file, per_image=1))
    assert rep.generated == 0 and rep.failed
    reason = rep.failed[0]["reason"]
    assert "--checkpoint-config" in reason and "stable-diffusion-v1-5" in reason and str(single_file) in reason
    from safetensors.torch import save_file

    bad = tmp_path / "lora.safetensors"  # a LoRA given as --model: diffusers alone would call it "v1"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 16)}, str(bad))
    with pytest.raises(ValueError, match="lora.safetensors.*not a full Stable Diffusion"):
        render_variations(renders, tmp_path / "out2", _opts(bad, per_image=1))
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.safetensors: not a readable"):
        render_variations(renders, tmp_path / "out4", _opts(tmp_path / "junk.safetensors", per_image=1))
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"pickle")
    with pytest.raises(ValueError, match="pickles"):
        render_variations(renders, tmp_path / "out3", _opts(ckpt, per_image=1))
