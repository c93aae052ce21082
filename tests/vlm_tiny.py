"""Tiny random VLM checkpoints built from configs on CPU (no download): Florence-2 and LLaVA
(the JoyCaption architecture), saved with their processors so the backends load them through
the same `from_pretrained` path as a real checkpoint."""

from __future__ import annotations

from pathlib import Path

WORDS = ("what does the image describe ? a photo of an person man woman cat dog with on in red blue sky "
         "locate objects category name text is stands sits walks field street the").split()


def _tokenizer(special: list[str], bos: str, eos: str, pad: str, unk: str, **extra):  # noqa: ANN003, ANN202
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(special + WORDS)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token=bos, eos_token=eos, pad_token=pad, unk_token=unk, **extra), vocab


def build_florence2(path: Path) -> Path:
    import torch
    from transformers import BartConfig, CLIPImageProcessorPil, Florence2Config, Florence2ForConditionalGeneration, Florence2Processor

    torch.manual_seed(0)
    tok, vocab = _tokenizer(["<s>", "<pad>", "</s>", "<unk>", "<image>"], "<s>", "</s>", "<pad>", "<unk>", extra_special_tokens={"image_token": "<image>"})
    size, d = 64, 32
    ip = CLIPImageProcessorPil(size={"height": size, "width": size}, crop_size={"height": size, "width": size}, do_center_crop=False)
    ip.image_seq_length = (size // 32) ** 2 + 1
    proc = Florence2Processor(image_processor=ip, tokenizer=tok, post_processor_config={"pure_text": {}})
    n_vocab = len(proc.tokenizer) + 8  # the processor may add task tokens
    cfg = Florence2Config(
        vision_config=dict(depths=[1, 1, 1, 1], embed_dim=[16, 16, 16, 16], num_heads=[1, 1, 1, 1], num_groups=[1, 1, 1, 1],
                           window_size=2, projection_dim=d, max_position_embeddings=8),
        text_config=BartConfig(vocab_size=n_vocab, d_model=d, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                               decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=96,
                               pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=2),
        image_token_id=vocab["<image>"])
    model = Florence2ForConditionalGeneration(cfg).eval()
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    proc.save_pretrained(path)
    return path


CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}system {{ m['content'] }} {% else %}"
    "{{ m['role'] }} {% if m['role'] == 'user' %}<image> {% endif %}{{ m['content'] }} {% endif %}{% endfor %}"
    "{% if add_generation_prompt %}assistant {% endif %}"
)


def build_llava(path: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor, SiglipImageProcessorPil, SiglipVisionConfig

    torch.manual_seed(0)
    tok, vocab = _tokenizer(["<|begin_of_text|>", "<|eot_id|>", "<|pad|>", "<unk>", "<image>"], "<|begin_of_text|>", "<|eot_id|>", "<|pad|>", "<unk>",
                            extra_special_tokens={"image_token": "<image>"})
    tok.add_tokens(["system", "user", "assistant"])
    tok.padding_side = "left"
    vocab_size = len(tok)
    vision = SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8)
    text = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                       num_key_value_heads=1, max_position_embeddings=256, bos_token_id=0, eos_token_id=1, pad_token_id=2)
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_id=vocab["<image>"], vision_feature_select_strategy="full",
                      vision_feature_layer=-2, projector_hidden_act="gelu")
    model = LlavaForConditionalGeneration(cfg).eval()
    model.generation_config.pad_token_id = 2
    ip = SiglipImageProcessorPil(size={"height": 32, "width": 32})
    proc = LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=8, vision_feature_select_strategy="full", chat_template=CHAT_TEMPLATE)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    proc.save_pretrained(path)
    return path
