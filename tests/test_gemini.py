"""GeminiBackend through the real google-genai SDK against a Gemini stand-in on 127.0.0.1."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("google.genai")

from captioning.backends._media import prepare_image  # noqa: E402
from captioning.backends.base import CaptionOptions  # noqa: E402
from captioning.backends.gemini import GeminiBackend  # noqa: E402
from captioning.prompts import build_prompt, check_caption  # noqa: E402
from prep.dataset import discover  # noqa: E402
from stubs.gemini_stub import GeminiStub  # noqa: E402

KEY = "AIzaFAKE-test-key-0123456789"
ROOT = Path(__file__).resolve().parents[1]
COLORS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200), (120, 60, 160)]


def is_red(jpeg: bytes) -> bool:
    r, g, b = Image.open(io.BytesIO(jpeg)).convert("RGB").resize((1, 1)).getpixel((0, 0))
    return r > 150 and g < 80 and b < 80


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    d = tmp_path / "raw"
    d.mkdir()
    for i, c in enumerate(COLORS):
        Image.new("RGB", (96, 64), c).save(d / f"img{i}.png")
    return d


@pytest.fixture
def env(monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)

    def use(stub: GeminiStub) -> None:
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", stub.url)

    return use


def opts(tmp_path: Path, **kw) -> CaptionOptions:
    extra = {"backoff_base": 0.01, "backoff_max": 0.05, **kw.pop("extra", {})}
    return CaptionOptions(trigger=kw.pop("trigger", "sage_character"), state_dir=tmp_path / "out", concurrency=kw.pop("concurrency", 3), extra=extra, **kw)


def sha_sent(path: Path) -> str:
    return hashlib.sha256(prepare_image(path).data).hexdigest()


def test_success_inline_jpeg_with_trigger_and_preset(folder, tmp_path, env):
    big = folder / "big.jpg"
    import numpy as np

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (2000, 3000, 3), dtype=np.uint8)).save(big, quality=95)
    with GeminiStub() as stub:
        env(stub)
        res = GeminiBackend().caption_batch(discover(folder), opts(tmp_path, lora_type="character"))
    assert [r.status for r in res] == ["ok"] * 7
    assert all(r.text.startswith("sage_character, ") for r in res)
    assert len(stub.requests) == 7
    r0 = stub.requests[0]
    assert r0["path"].endswith("/models/gemini-2.5-flash:generateContent") and r0["has_key"]
    assert r0["mime"] == "image/jpeg"
    assert "sage_character" in r0["prompt"] and "eye colour" in r0["prompt"]  # identity kept out
    big_req = max(stub.requests, key=lambda r: r["image_bytes"])
    assert big_req["image_bytes"] < big.stat().st_size / 2  # a downscaled JPEG, never the original
    assert max(next(r for r in res if r.id == "big.jpg").data["sent_size"]) == 1536


def test_429_retry_after_503_and_timeout_are_retried(folder, tmp_path, env):
    with GeminiStub(fail_plan=[429, 503, "slow"], retry_after="0.4", slow_seconds=2.0) as stub:
        env(stub)
        t = time.monotonic()
        res = GeminiBackend().caption_batch(discover(folder), opts(tmp_path, timeout=0.7, concurrency=1))
        took = time.monotonic() - t
    assert [r.status for r in res] == ["ok"] * 6
    answers = [r["answer"] for r in stub.requests]
    assert answers[:2] == [429, 503]
    # Retry-After: 0.4 was honoured between the 429 and the next request
    assert stub.requests[1]["time"] - stub.requests[0]["time"] >= 0.39
    assert len(stub.requests) == 6 + 3  # exactly one extra request per fault
    assert took < 8


def test_persistent_503_gives_up_with_named_image(folder, tmp_path, env):
    with GeminiStub(fail_plan=[503] * 50) as stub:
        env(stub)
        items = discover(folder)[:2]
        res = GeminiBackend().caption_batch(items, opts(tmp_path, max_attempts=3, concurrency=1))
    assert [r.status for r in res] == ["failed", "failed"]
    assert "img0.png" in res[0].reason and "503" in res[0].reason and "rerun" in res[0].reason
    assert len(stub.requests) == 6


@pytest.mark.parametrize("mode", ["prompt", "candidate"])
def test_safety_block_is_recorded_not_empty(folder, tmp_path, env, mode):
    with GeminiStub(block_if=is_red, block_mode=mode) as stub:
        env(stub)
        res = {r.id: r for r in GeminiBackend().caption_batch(discover(folder), opts(tmp_path))}
    assert res["img0.png"].status == "blocked" and res["img0.png"].text is None
    assert "img0.png" in res["img0.png"].reason and "SAFETY" in res["img0.png"].reason
    assert all(r.status == "ok" for k, r in res.items() if k != "img0.png")


def test_retired_model_names_flag_and_stops_requesting(folder, tmp_path, env):
    with GeminiStub(missing_models=("gemini-2.0-flash",)) as stub:
        env(stub)
        res = GeminiBackend().caption_batch(discover(folder), opts(tmp_path, model="gemini-2.0-flash", concurrency=1))
    assert all(r.status == "failed" for r in res)
    assert "--model" in res[0].reason and "gemini-2.0-flash" in res[0].reason and "404" in res[0].reason
    assert len(stub.requests) == 1  # a 404 is neither retried nor repeated for every image


def test_no_key_stops_before_any_request(folder, tmp_path, env, monkeypatch):
    from prep.models import ModelNotAvailable

    monkeypatch.delenv("GEMINI_API_KEY")
    with GeminiStub() as stub:
        env(stub)
        with pytest.raises(ModelNotAvailable, match="GEMINI_API_KEY"):
            GeminiBackend().caption_batch(discover(folder)[:2], opts(tmp_path))
    assert stub.requests == []


def test_google_api_key_fallback(folder, tmp_path, env, monkeypatch):
    monkeypatch.delenv("GEMINI_API_KEY")
    monkeypatch.setenv("GOOGLE_API_KEY", KEY)
    with GeminiStub() as stub:
        env(stub)
        res = GeminiBackend().caption_batch(discover(folder)[:1], opts(tmp_path))
    assert res[0].status == "ok" and stub.requests[0]["has_key"]


def test_bad_image_does_not_abort_batch(folder, tmp_path, env):
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with GeminiStub() as stub:
        env(stub)
        res = {r.id: r for r in GeminiBackend().caption_batch(discover(folder), opts(tmp_path))}
    assert res["broken.png"].status == "failed" and "broken.png" in res["broken.png"].reason
    assert sum(r.status == "ok" for r in res.values()) == 6 and len(stub.requests) == 6


def test_rerun_sends_nothing_for_finished_images(folder, tmp_path, env):
    with GeminiStub(block_if=is_red) as stub:
        env(stub)
        first = GeminiBackend().caption_batch(discover(folder), opts(tmp_path))
        n = len(stub.requests)
        again = GeminiBackend().caption_batch(discover(folder), opts(tmp_path))
        assert len(stub.requests) == n
        assert [r.text for r in again] == [r.text for r in first]
        assert [r.status for r in again] == [r.status for r in first]
        # a changed prompt (different trigger) is a different request: asked again
        GeminiBackend().caption_batch(discover(folder)[:1], opts(tmp_path, trigger="other_name"))
        assert len(stub.requests) == n + 1


WORKER = """
import sys
from pathlib import Path
from captioning.backends.base import CaptionOptions
from captioning.backends.gemini import GeminiBackend
from prep.dataset import discover
items = discover(Path(sys.argv[1]))
o = CaptionOptions(trigger="sage_character", state_dir=Path(sys.argv[2]), concurrency=2, extra={"backoff_base": 0.01})
for r in GeminiBackend().caption_batch(items, o):
    print(r.id, r.status, flush=True)
"""


def test_kill_and_resume_never_requests_finished_images(tmp_path, env):
    folder = tmp_path / "raw"
    folder.mkdir()
    for i in range(12):
        Image.new("RGB", (64, 64), (i * 20, 255 - i * 20, 77)).save(folder / f"k{i:02d}.png")
    out = tmp_path / "out"
    with GeminiStub(delay=0.25) as stub:
        env(stub)
        proc = subprocess.Popen([sys.executable, "-c", WORKER, str(folder), str(out)], cwd=ROOT,
                                env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        state = out / ".caption-gemini-state.jsonl"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (not state.exists() or len(state.read_text().splitlines()) < 4):
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done = {json.loads(line)["key"] for line in state.read_text().splitlines()}
        assert 4 <= len(done) < 12, "the kill should land mid-run"
        first_run = len(stub.requests)
        res = GeminiBackend().caption_batch(discover(folder), opts(tmp_path, concurrency=4))
        second = stub.requests[first_run:]
    assert all(r.status == "ok" and r.text.startswith("sage_character") for r in res)
    finished_shas = {sha_sent(folder / k) for k in done}
    assert not finished_shas & {r["image_sha"] for r in second}
    assert len(second) == 12 - len(done)


def test_key_never_logged_or_stored(folder, tmp_path, env, caplog):
    caplog.set_level(logging.DEBUG)
    with GeminiStub(fail_plan=[429, 400], block_if=is_red) as stub:
        env(stub)
        res = GeminiBackend().caption_batch(discover(folder), opts(tmp_path))
    blob = caplog.text + repr(res)
    for p in (tmp_path / "out").rglob("*"):
        if p.is_file():
            blob += p.read_text(errors="replace")
    assert KEY not in blob
    assert any(r.status == "failed" for r in res)  # the 400 is reported, redacted


def test_estimate_counts_cost_and_time(tmp_path):
    b = GeminiBackend()
    e1 = b.estimate(100, CaptionOptions(concurrency=4))
    e2 = b.estimate(1000, CaptionOptions(concurrency=4))
    assert e1.images == 100 and e1.cost_usd and abs(e2.cost_usd - 10 * e1.cost_usd) < 1e-9
    assert e1.cost_usd < 0.1  # ~$0.0007 per image on flash
    slow = b.estimate(100, CaptionOptions(concurrency=4, rpm=10))
    assert slow.seconds == pytest.approx(600)
    assert b.estimate(10, CaptionOptions(model="gemini-9-unknown")).cost_usd is None


def test_prompt_presets_keep_baked_features_out():
    ch = build_prompt("character", "sage").user
    st = build_prompt("style", "inkwash").user
    assert "Do NOT describe what is always the same about sage" in ch and "hair colour" in ch
    assert "Do NOT name or describe the style" in st and "inkwash" in st
    for t in ("motion", "object", "concept"):
        assert "zz_trig" in build_prompt(t, "zz_trig").user
    assert build_prompt("style", None, "Describe {trigger} plainly").user.startswith("Describe this style plainly")
    assert check_caption("a watercolor painting of a fox", "style") == ["painting", "watercolor"] or set(check_caption("a watercolor painting of a fox", "style")) == {"painting", "watercolor"}
    assert check_caption("sage has blue eyes and long hair", "character")
    assert check_caption("sage waves from a balcony", "character") == []
    with pytest.raises(ValueError):
        build_prompt("landscape")
