"""Local VLM backends (Florence-2, JoyCaption/LLaVA) with tiny random checkpoints built from
configs on CPU: native transformers classes, PIL image processors, batching, trigger."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("torch", reason="local VLM backends need torch (pip install 'loraprep[vlm]')")
pytest.importorskip("transformers", reason="local VLM backends need transformers >= 5")

from captioning.backends._local import LocalModelError  # noqa: E402
from captioning.backends.base import CaptionOptions  # noqa: E402
from captioning.backends.florence2 import Florence2Backend  # noqa: E402
from captioning.backends.joycaption import JoyCaptionBackend, build_instruction  # noqa: E402
from prep.dataset import discover  # noqa: E402
from vlm_tiny import build_florence2, build_llava  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("vlm")
    return {"florence2": build_florence2(root / "florence2"), "llava": build_llava(root / "llava")}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    d = tmp_path / "raw"
    d.mkdir()
    for i in range(5):
        Image.new("RGB", (80 + 10 * i, 60), (40 * i, 90, 200 - 30 * i)).save(d / f"v{i}.png")
    (d / "zz_broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    return d


def test_florence2_batched_captions_with_trigger(tiny, folder):
    b = Florence2Backend()
    o = CaptionOptions(model=str(tiny["florence2"]), trigger="sage_character", batch_size=2, max_new_tokens=6, extra={"num_beams": 1, "min_new_tokens": 3})
    res = b.caption_batch(discover(folder), o)
    assert [r.id for r in res] == [f"v{i}.png" for i in range(5)] + ["zz_broken.jpg"]
    ok = [r for r in res if r.status == "ok"]
    assert len(ok) == 5 and all(r.text.startswith("sage_character, ") and len(r.text) > len("sage_character, ") for r in ok)
    assert res[-1].status == "failed" and "zz_broken.jpg" in res[-1].reason
    assert ok[0].data["task"] == "<MORE_DETAILED_CAPTION>" and ok[0].data["device"] == "cpu"
    # the PIL image processor is used (no torchvision), and the model is loaded once per worker
    assert type(b._processor.image_processor).__name__.endswith("Pil")
    model = b._model
    b.caption_batch(discover(folder)[:1], o)
    assert b._model is model
    clone = pickle.loads(pickle.dumps(b))
    assert clone._model is None  # workers load their own copy


def test_florence2_rejects_unknown_task_and_missing_model(tiny, folder, tmp_path):
    b = Florence2Backend()
    with pytest.raises(ValueError, match="MORE_DETAILED_CAPTION"):
        b.caption_batch(discover(folder)[:1], CaptionOptions(model=str(tiny["florence2"]), extra={"task": "<OD>"}))
    with pytest.raises(LocalModelError, match="hf download|--model"):
        Florence2Backend().caption_batch(discover(folder)[:1], CaptionOptions(model="no-such-org/no-such-florence"))


def test_joycaption_llava_batched_equals_single(tiny, folder):
    o = dict(model=str(tiny["llava"]), trigger="sage_character", max_new_tokens=6, extra={"temperature": 0, "min_new_tokens": 3})
    b = JoyCaptionBackend()
    batched = b.caption_batch(discover(folder), CaptionOptions(batch_size=4, **o))
    single = b.caption_batch(discover(folder), CaptionOptions(batch_size=1, **o))
    ok = [r for r in batched if r.status == "ok"]
    assert len(ok) == 5 and all(r.text.startswith("sage_character, ") for r in ok)
    assert [r.text for r in batched] == [r.text for r in single]  # left padding keeps batched = one-by-one
    assert batched[-1].status == "failed"
    assert type(b._processor.image_processor).__name__.endswith("Pil")
    ids = b.encode(b._prompt_text("hi"), [Image.new("RGB", (40, 40))])["input_ids"][0].tolist()
    bos = b._processor.tokenizer.bos_token_id
    assert ids[0] == bos and ids[1] != bos  # exactly one <bos>


def test_joycaption_instructions_per_lora_type():
    ch = build_instruction(CaptionOptions(trigger="sage", lora_type="character"))
    assert "refer to them as sage" in ch and "cannot be changed" in ch
    st = build_instruction(CaptionOptions(trigger="inkwash", lora_type="style", extra={"mode": "descriptive", "length": "short"}))
    assert st.startswith("Write a short detailed description") and "Do NOT mention the art style" in st and "inkwash" in st
    assert build_instruction(CaptionOptions(trigger="x", prompt="Describe {trigger}.")) == "Describe x."
    with pytest.raises(ValueError, match="straightforward"):
        build_instruction(CaptionOptions(extra={"mode": "haiku"}))


def test_estimates_are_free_and_timed():
    e = Florence2Backend().estimate(100, CaptionOptions(device="cpu"))
    assert e.cost_usd == 0 and e.seconds > 0
    assert JoyCaptionBackend().estimate(10, CaptionOptions(device="cpu")).seconds > e.seconds / 10
