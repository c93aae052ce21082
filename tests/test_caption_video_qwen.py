"""The qwen-vl backend on a tiny random Qwen2.5-VL built from a config (no download), fed real frames
of a tiny clip made with PyAV: the real transformers model class, tokenizer and PIL image processor,
loaded through `from_pretrained` like a real checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("torch", reason="the qwen-vl backend needs torch (pip install 'loraprep[vlm]')")
pytest.importorskip("transformers", reason="the qwen-vl backend needs transformers >= 5 (pip install 'loraprep[vlm]')")
pytest.importorskip("av")

from caption_video_util import corrupt_clip, make_clip  # noqa: E402
from captioning.backends import backend_class  # noqa: E402
from captioning.backends.base import CaptionOptions  # noqa: E402
from captioning.backends.qwen_vl import QwenVLBackend, video_patches  # noqa: E402
from captioning.pipeline import caption_folder  # noqa: E402
from prep.dataset import ImageItem  # noqa: E402
from vlm_tiny import _tokenizer  # noqa: E402

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>", "<unk>"]
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }} {{ m['content'] }}<|im_end|> {% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant {% endif %}")
PIXELS = 32 * 32


def build_qwen25vl(path: Path) -> Path:
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessorPil

    torch.manual_seed(0)
    tok, vocab = _tokenizer(SPECIAL, "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<unk>")
    tok.add_special_tokens({"additional_special_tokens": SPECIAL[3:7]})
    tok.add_tokens(["system", "user", "assistant", "clip", "motion", "called", "movement"])
    tok.chat_template = CHATML
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL}
    cfg = Qwen2_5_VLConfig(
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=32, patch_size=4,
                           spatial_merge_size=2, temporal_patch_size=2, window_size=16, fullatt_block_indexes=[0]),
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, max_position_embeddings=4096,
                         rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
                         bos_token_id=ids["<|im_start|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    model = Qwen2_5_VLForConditionalGeneration(cfg).eval()
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    ip = Qwen2VLImageProcessorPil(patch_size=4, merge_size=2, temporal_patch_size=2, size={"shortest_edge": 8 * 8, "longest_edge": PIXELS})
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    ip.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_qwen25vl(tmp_path_factory.mktemp("qwen") / "m")


def opts(tiny: Path, **kw) -> CaptionOptions:
    extra = {"min_new_tokens": 3, "video_max_pixels": PIXELS, **kw.pop("extra", {})}
    return CaptionOptions(model=str(tiny), trigger=kw.pop("trigger", "sage_walk"), lora_type=kw.pop("lora_type", "motion"),
                          max_new_tokens=6, device="cpu", extra=extra, **kw)


def test_video_patches_match_transformers_layout_for_a_still():
    """Two identical frames are one temporal patch of a still: transformers' image processor lays a
    still out the same way (it repeats the frame over the temporal patch), so the values must match."""
    from transformers import Qwen2VLImageProcessorPil

    ip = Qwen2VLImageProcessorPil(patch_size=4, merge_size=2, temporal_patch_size=2, size={"shortest_edge": 64, "longest_edge": 48 * 32})
    frame = Image.new("RGB", (50, 30))
    frame.putdata([((x * 5) % 256, (y * 8) % 256, (x * y) % 256) for y in range(30) for x in range(50)])
    ref = ip(images=[frame], return_tensors="np")
    got, grid = video_patches([frame, frame], patch_size=4, merge_size=2, temporal_patch_size=2, mean=ip.image_mean, std=ip.image_std,
                              min_pixels=64, max_pixels=48 * 32)
    assert list(ref["image_grid_thw"][0]) == list(grid) and got.shape == ref["pixel_values"].shape
    import numpy as np

    assert np.allclose(got, ref["pixel_values"], atol=1e-2)


def test_tiny_qwen25vl_captions_a_real_clip_and_an_image(tiny, tmp_path):
    clip = make_clip(tmp_path / "d" / "walk.mp4", frames=24, fps=16, size=(64, 48))
    img = tmp_path / "d" / "still.png"
    Image.new("RGB", (40, 40), (30, 120, 200)).save(img)
    bad = corrupt_clip(tmp_path / "d" / "broken.mp4")
    assert backend_class("qwen-vl") is QwenVLBackend
    b = QwenVLBackend()
    items = [ImageItem("walk.mp4", clip, clip.with_suffix(".txt"), flags={"video": True}),
             ImageItem("still.png", img, img.with_suffix(".txt")),
             ImageItem("broken.mp4", bad, bad.with_suffix(".txt"), flags={"video": True})]
    res = b.caption_batch(items, opts(tiny))
    assert [r.status for r in res] == ["ok", "ok", "failed"]
    assert all(r.text.startswith("sage_walk, ") and len(r.text) > len("sage_walk, ") for r in res[:2])
    assert res[0].data["video_frames"] == [0, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18, 20, 21, 23] and res[0].data["device"] == "cpu"
    assert "broken.mp4" in res[2].reason
    # what the model was given for the clip: the video preset, one placeholder run, the clip's timing
    from captioning.prompts import build_prompt

    frames = __import__("prep.video", fromlist=["read_frames"]).read_frames(clip, res[0].data["video_frames"])
    enc = b.encode_clip(frames, 16.0 * 16 / 24, build_prompt("motion", "sage_walk", video=True), opts(tiny))
    n_video = int((enc["input_ids"] == b._cfg.video_token_id).sum())
    t, h, w = enc["video_grid_thw"][0].tolist()
    assert t == 8 and n_video == t * h * w // 4 and enc["pixel_values_videos"].shape[0] == t * h * w
    assert float(enc["second_per_grid_ts"][0]) == pytest.approx(2 / (16.0 * 16 / 24))
    ids = enc["input_ids"][0].tolist()
    first = ids.index(b._cfg.video_token_id)
    assert ids[first - 1] == b._cfg.vision_start_token_id and ids[first + n_video] == b._cfg.vision_end_token_id  # one contiguous run
    words = b._tok.convert_ids_to_tokens(ids[first + n_video:])
    assert words[words.index("motion"):][:2] == ["motion", "called"] and "clip" in words  # the video preset follows the clip


def test_pipeline_with_qwen_vl_writes_clip_captions(tiny, tmp_path):
    d = tmp_path / "data"
    make_clip(d / "turn.mp4", frames=12, fps=8)
    rep = caption_folder(d, "qwen-vl", opts(tiny, lora_type="character", trigger="sage"))
    assert rep.exit_code() == 0 and (d / "turn.txt").read_text().startswith("sage, ")
    again = caption_folder(d, "qwen-vl", opts(tiny, lora_type="character", trigger="sage"))
    assert again.count("resumed") == 1


def test_qwen3_or_other_checkpoints_are_refused_with_the_fix(tmp_path):
    from captioning.backends._local import LocalModelError
    from transformers import LlamaConfig

    p = tmp_path / "llama"
    LlamaConfig(vocab_size=10, hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=1).save_pretrained(p)
    img = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(img)
    with pytest.raises(LocalModelError, match="Qwen2.5-VL"):
        QwenVLBackend().caption_batch([ImageItem("x.png", img, img.with_suffix(".txt"))], CaptionOptions(model=str(p)))
