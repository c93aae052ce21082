"""ReplicateBackend through the real `replicate` client against a Replicate stand-in on 127.0.0.1."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("replicate")

from captioning.backends.base import CaptionOptions  # noqa: E402
from captioning.backends.replicate import PRESETS, ReplicateBackend, caption_from_output, resolve  # noqa: E402
from prep.dataset import discover  # noqa: E402
from stubs.replicate_stub import ReplicateStub  # noqa: E402

TOKEN = "r8_FAKE_token_abcdef0123456789"
ROOT = Path(__file__).resolve().parents[1]


def is_red(jpeg: bytes) -> bool:
    r, g, b = Image.open(io.BytesIO(jpeg)).convert("RGB").resize((1, 1)).getpixel((0, 0))
    return r > 150 and g < 80 and b < 80


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    d = tmp_path / "raw"
    d.mkdir()
    for i, c in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (90, 90, 90)]):
        Image.new("RGB", (96, 64), c).save(d / f"img{i}.png")
    return d


@pytest.fixture
def env(monkeypatch):
    monkeypatch.setenv("REPLICATE_API_TOKEN", TOKEN)

    def use(stub: ReplicateStub) -> None:
        monkeypatch.setenv("REPLICATE_BASE_URL", stub.url)

    return use


def opts(tmp_path: Path, **kw) -> CaptionOptions:
    extra = {"backoff_base": 0.01, "backoff_max": 0.05, "poll_interval": 0.02, **kw.pop("extra", {})}
    return CaptionOptions(trigger=kw.pop("trigger", "sage_character"), state_dir=tmp_path / "out", concurrency=kw.pop("concurrency", 3), extra=extra, **kw)


def creates(stub: ReplicateStub) -> list[dict]:
    return [r for r in stub.log if r["method"] == "POST" and r["path"].endswith("predictions") and r.get("answer") == 201]


def test_florence_preset_uploads_polls_and_enforces_trigger(folder, tmp_path, env):
    with ReplicateStub(polls_before_done=3) as stub:
        env(stub)
        res = ReplicateBackend().caption_batch(discover(folder), opts(tmp_path, model="florence-2"))
    assert [r.status for r in res] == ["ok"] * 5
    assert res[0].text == "sage_character, A woman in a red coat walks through a snowy street."
    assert len(stub.files) == 5  # files API, no data URIs
    p = next(iter(stub.preds.values()))
    assert p["model"] == "lucataco/florence-2-large" and p["input"]["task_input"] == "More Detailed Caption"
    assert p["input"]["image"].startswith(stub.url + "/v1/files/") and "prompt" not in p["input"]
    assert all(r["auth"] for r in stub.log)


def test_llava_preset_sends_prompt_and_joins_streamed_output(folder, tmp_path, env):
    out = lambda inp, img: ["sage_character ", "waves ", "at the camera."]  # noqa: E731
    with ReplicateStub(output=out) as stub:
        env(stub)
        res = ReplicateBackend().caption_batch(discover(folder)[:1], opts(tmp_path, model="llava", lora_type="style", trigger="inkwash"))
    p = next(iter(stub.preds.values()))
    assert p["model"] == "yorickvp/llava-13b" and "inkwash" in p["input"]["prompt"] and p["input"]["temperature"] == 0.2
    assert res[0].text == "inkwash, sage_character waves at the camera."


def test_custom_model_input_mapping(folder, tmp_path, env):
    out = lambda inp, img: {"answer": "a cat on a sofa"}  # noqa: E731
    with ReplicateStub(output=out) as stub:
        env(stub)
        o = opts(tmp_path, model="acme/captioner", extra={"image_key": "img", "prompt_key": "question", "input.max_len": "40", "output_key": "answer"})
        p = resolve(o)
        assert p.image_key == "img" and p.input == {"max_len": 40}
        res = ReplicateBackend().caption_batch(discover(folder)[:1], o)
    pred = next(iter(stub.preds.values()))
    assert set(pred["input"]) == {"img", "question", "max_len"}
    assert res[0].status == "ok" and res[0].text == "sage_character, a cat on a sofa"


def test_429_503_on_create_and_poll_are_retried_without_double_billing(folder, tmp_path, env):
    plan = {"POST /v1/models/": [429, 503, 429], "GET /v1/predictions/": [503, 503]}
    with ReplicateStub(fail_plan=plan, retry_after="0") as stub:
        env(stub)
        res = ReplicateBackend().caption_batch(discover(folder), opts(tmp_path))
    assert [r.status for r in res] == ["ok"] * 5
    assert stub.create_count() == 5 and len(creates(stub)) == 5


def test_lost_create_response_does_not_bill_twice(folder, tmp_path, env):
    with ReplicateStub(fail_plan={"POST /v1/models/": ["hang"]}, hang_seconds=1.2) as stub:
        env(stub)
        res = ReplicateBackend().caption_batch(discover(folder)[:2], opts(tmp_path, concurrency=1, extra={"timeout": 0.4}))
    assert [r.status for r in res] == ["ok", "ok"]
    assert stub.create_count() == 2, "the timed-out create must be found again, not re-created"
    assert any(r["method"] == "GET" and r["path"] == "/v1/predictions" for r in stub.log)


def test_failed_prediction_is_reported_and_model_404_names_flag(folder, tmp_path, env):
    with ReplicateStub(fail_if=is_red) as stub:
        env(stub)
        res = {r.id: r for r in ReplicateBackend().caption_batch(discover(folder), opts(tmp_path))}
    assert res["img0.png"].status == "failed" and "out of memory" in res["img0.png"].reason and "img0.png" in res["img0.png"].reason
    assert sum(r.status == "ok" for r in res.values()) == 4
    with ReplicateStub(missing_models=("gone/model",)) as stub:
        env(stub)
        res = ReplicateBackend().caption_batch(discover(folder), opts(tmp_path / "b", model="gone/model", concurrency=1))
    assert all(r.status == "failed" for r in res) and "--model" in res[0].reason
    assert len([r for r in stub.log if r["method"] == "POST" and "predictions" in r["path"]]) == 1


def test_nsfw_failure_is_blocked(folder, tmp_path, env):
    with ReplicateStub(fail_if=is_red) as stub:
        env(stub)
        orig = stub.handle

        def handle(method, path, headers, raw):
            code, obj, hdrs = orig(method, path, headers, raw)
            if isinstance(obj, dict) and obj.get("status") == "failed":
                obj["error"] = "NSFW content detected. Try running it again, or try a different prompt."
            return code, obj, hdrs

        stub.handle = handle
        res = {r.id: r for r in ReplicateBackend().caption_batch(discover(folder)[:2], opts(tmp_path))}
    assert res["img0.png"].status == "blocked" and "NSFW" in res["img0.png"].reason


def test_rerun_sends_no_request_for_finished_images(folder, tmp_path, env):
    with ReplicateStub() as stub:
        env(stub)
        first = ReplicateBackend().caption_batch(discover(folder), opts(tmp_path))
        n = len(stub.log)
        again = ReplicateBackend().caption_batch(discover(folder), opts(tmp_path))
        assert len(stub.log) == n and [r.text for r in again] == [r.text for r in first]


WORKER = """
import sys
from pathlib import Path
from captioning.backends.base import CaptionOptions
from captioning.backends.replicate import ReplicateBackend
from prep.dataset import discover
o = CaptionOptions(trigger="sage_character", state_dir=Path(sys.argv[2]), concurrency=8, extra={"poll_interval": 0.05})
print([r.status for r in ReplicateBackend().caption_batch(discover(Path(sys.argv[1])), o)])
"""


def test_kill_while_predictions_run_then_resume_without_new_predictions(tmp_path, env):
    folder = tmp_path / "raw"
    folder.mkdir()
    for i in range(8):
        Image.new("RGB", (64, 64), (i * 30, 40, 90)).save(folder / f"k{i}.png")
    out = tmp_path / "out"
    with ReplicateStub(polls_before_done=10_000) as stub:  # predictions never finish during the first run
        env(stub)
        proc = subprocess.Popen([sys.executable, "-c", WORKER, str(folder), str(out)], cwd=ROOT,
                                env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and stub.create_count() < 8:
            time.sleep(0.05)
        time.sleep(0.3)  # let the ids reach the state file
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        state = [json.loads(line) for line in (out / ".caption-replicate-state.jsonl").read_text().splitlines()]
        assert len({s["key"] for s in state if s["state"].get("prediction_id")}) == 8
        stub.polls_before_done = 1
        uploads = len(stub.files)
        res = ReplicateBackend().caption_batch(discover(folder), opts(tmp_path))
    assert [r.status for r in res] == ["ok"] * 8 and all(r.data["resumed"] for r in res)
    assert stub.create_count() == 8 and len(stub.files) == uploads  # nothing created or uploaded again
    blob = (out / ".caption-replicate-state.jsonl").read_text()
    assert TOKEN not in blob


def test_token_never_in_results_or_state(folder, tmp_path, env, caplog):
    import logging

    caplog.set_level(logging.DEBUG)
    with ReplicateStub(fail_plan={"POST /v1/models/": [401] * 5}) as stub:
        env(stub)
        res = ReplicateBackend().caption_batch(discover(folder), opts(tmp_path, concurrency=1))
    assert all(r.status == "failed" for r in res) and "REPLICATE_API_TOKEN" in res[0].reason
    blob = caplog.text + repr(res) + "".join(p.read_text() for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert TOKEN not in blob


def test_output_parsing_and_estimate():
    assert caption_from_output({"text": "{'<MORE_DETAILED_CAPTION>': 'A dog.</s>'}", "img": None}, "text") == "A dog."
    assert caption_from_output("Caption: a red bird") == "a red bird"
    assert caption_from_output(["a ", "b"]) == "a b"
    e = ReplicateBackend().estimate(1000, CaptionOptions(model="florence-2", concurrency=10))
    assert e.images == 1000 and e.cost_usd == pytest.approx(1000 * 2.0 * 0.000225) and e.seconds > 0
    e = ReplicateBackend().estimate(10, CaptionOptions(model="x/y", extra={"price_per_image": "0.01"}))
    assert e.cost_usd == pytest.approx(0.1)
    assert set(PRESETS) >= {"florence-2", "llava"}
