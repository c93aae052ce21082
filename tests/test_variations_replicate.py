"""render-variations with the real `replicate` client against a stub on 127.0.0.1 that returns
generated PNGs: outputs, captions, provenance, 429/503 on create, failures, kill and resume."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("replicate")

from prep.manifest import Manifest  # noqa: E402
from prep.remote import RetryPolicy  # noqa: E402
from prep.variations import VariationOptions, render_variations  # noqa: E402
from tests.stubs.replicate_img_stub import ReplicateImgStub, tint  # noqa: E402

TOKEN = "r8_fake_token_for_variation_tests_987"
FAST = RetryPolicy(max_attempts=5, base_delay=0.01, max_delay=0.05)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def renders(tmp_path: Path) -> Path:
    src = tmp_path / "renders"
    src.mkdir()
    rng = np.random.default_rng(3)
    for name, size in [("hero", (64, 80)), ("robot", (64, 64)), ("villain", (48, 48))]:
        Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype("uint8")).save(src / f"{name}.png")
    (src / "hero.txt").write_text("sage, 1girl, 3d, red hair, blender (medium)\n")
    (src / "robot.txt").write_text("a robot standing\n")
    return src


def _opts(stub: ReplicateImgStub, **kw) -> VariationOptions:
    base = dict(styles=["oil painting portrait", "pencil sketch", "watercolor portrait"], per_image=2, max_synthetic_share=1.0, identity_check=False,
                trigger="Sage", workers=2,
                backend_options={"api_token": TOKEN, "base_url": stub.url, "poll_interval": 0.01, "policy": FAST})
    base.update(kw)
    return VariationOptions(**base)


def _variation_records(out: Path) -> dict[str, dict]:
    return {r.id: r.to_json() for r in Manifest.in_folder(out).step_records("render-variations") if r.data.get("kind") == "variation"}


def test_renders_become_originals_plus_captioned_variations(renders, tmp_path, digest):
    before = digest(renders)
    out = tmp_path / "varied"
    with ReplicateImgStub(polls_before_done=2, fail_plan={"POST /v1/models/black-forest-labs/flux-dev/predictions": [429, 503]}) as stub:
        rep = render_variations(renders, out, _opts(stub))
    assert rep.ok and rep.generated == 6 and rep.originals == 3 and rep.resumed == 0
    assert digest(renders) == before  # sources untouched

    # 429 and 503 on create were retried, and no variation was billed twice
    answers = [r.get("answer") for r in stub.log if r["method"] == "POST" and r["path"].endswith("/predictions")]
    assert answers.count(429) == 1 and answers.count(503) == 1
    assert len(stub.preds) == 6 and set(stub.creates_by_key().values()) == {1}
    sent = next(iter(stub.preds.values()))["input"]
    assert sent["prompt_strength"] == 0.6 and sent["output_format"] == "png" and "guidance" in sent and "negative_prompt" not in sent
    assert all(r["auth"] for r in stub.log if r["path"].startswith("/v1/predictions") or r["path"].startswith("/v1/models"))

    recs = _variation_records(out)
    assert len(recs) == 6
    for vid, rec in recs.items():
        img = out / vid
        assert img.is_file() and rec["status"] == "ok"
        for k in ("source_id", "style", "strength", "seed", "model", "backend", "prediction_id"):
            assert rec[k] not in (None, ""), k
        assert rec["backend"] == "replicate" and rec["model"] == "black-forest-labs/flux-dev"
        caption = img.with_suffix(".txt").read_text().strip()
        assert caption.startswith("Sage, " + rec["style"])
        assert "3d" not in caption.split(", ") and "blender (medium)" not in caption
        # the pixels are what the (stub) model made for this prompt and seed from this source
        pred = stub.preds[rec["prediction_id"]]
        assert pred["input"]["seed"] == rec["seed"]
        src_png = stub.image_bytes(pred["input"]["image"])
        expected = np.asarray(Image.open(io.BytesIO(tint(src_png, pred["input"]["prompt"], rec["seed"]))).convert("RGB"))
        assert np.array_equal(np.asarray(Image.open(img).convert("RGB")), expected)
        assert Image.open(img).size == Image.open(renders / rec["source_id"]).size

    for name in ("hero", "robot", "villain"):
        assert (out / f"{name}.png").read_bytes() == (renders / f"{name}.png").read_bytes()
        cap = (out / f"{name}.txt").read_text().strip()
        assert cap.startswith("Sage, 3d render")
    assert (renders / "hero.txt").read_text() == "sage, 1girl, 3d, red hair, blender (medium)\n"

    sheet = Image.open(out / "contact_sheet.jpg")
    assert sheet.format == "JPEG" and sheet.height > sheet.width / 4 * 2  # three rows of 1 + 2 tiles
    text = "".join(p.read_text(errors="ignore") for p in [out / "manifest.jsonl", *out.glob(".loraprep/*")])
    assert TOKEN not in text

    # a second run finds everything done: nothing created, downloaded or rewritten
    n_log = len(stub.log)
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("*__*.png")}
    with ReplicateImgStub() as stub2:
        rep2 = render_variations(renders, out, _opts(stub2))
    assert rep2.resumed == 6 and rep2.generated == 0 and not stub2.log and n_log == len(stub.log)
    assert {p: p.stat().st_mtime_ns for p in out.glob("*__*.png")} == mtimes


def test_failed_prediction_is_recorded_and_the_rest_finish(renders, tmp_path):
    out = tmp_path / "varied"

    def small(img: bytes) -> bool:
        return Image.open(io.BytesIO(img)).size == (48, 48)

    with ReplicateImgStub(fail_if=small) as stub:
        rep = render_variations(renders, out, _opts(stub, per_image=1))
    assert rep.generated == 2 and len(rep.failed) == 1
    f = rep.failed[0]
    assert f["id"].startswith("villain__") and "villain.png" in f["reason"] and "CUDA out of memory" in f["reason"]
    assert not (out / f["id"]).exists()
    assert Manifest.in_folder(out).get("render-variations", f["id"]).status == "failed"

    # rerun: the failed prediction is created again (a new ask), finished ones are left alone
    with ReplicateImgStub() as stub2:
        rep2 = render_variations(renders, out, _opts(stub2, per_image=1))
    assert rep2.resumed == 2 and rep2.generated == 1 and len(stub2.preds) == 1


def test_kill_and_resume_never_bills_twice_or_regenerates(renders, tmp_path):
    out = tmp_path / "varied"
    with ReplicateImgStub(finish_before_gate=2) as stub:
        env = {**os.environ, "REPLICATE_API_TOKEN": TOKEN, "REPLICATE_BASE_URL": stub.url, "LORAPREP_NO_PROGRESS": "1"}
        cmd = [sys.executable, "-c", "from prep.cli import main; main()", "render-variations", str(renders), "-o", str(out),
               "--style", "oil painting portrait", "--style", "pencil sketch", "--style", "watercolor portrait", "-n", "2",
               "--max-synthetic-share", "1", "--no-identity-check", "--trigger", "Sage", "--workers", "2", "--poll-interval", "0.02"]
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 90  # generous: a loaded machine starts the CLI slowly
        try:
            while time.monotonic() < deadline:
                if len(stub.preds) >= 4 and len(_variation_records(out)) >= 2:
                    break
                assert proc.poll() is None, proc.communicate()
                time.sleep(0.05)
            else:
                pytest.fail("the first run never reached 2 finished + 2 in-flight predictions")
        finally:
            proc.send_signal(signal.SIGKILL)
            stdout, stderr = proc.communicate()
        assert TOKEN not in (stdout + stderr).decode(errors="ignore")
        done_first = _variation_records(out)
        assert len(done_first) == 2 and len(stub.preds) == 4
        in_flight = {pid for pid, p in stub.preds.items() if p["status"] != "succeeded"}
        assert len(in_flight) == 2
        finished_pids = {r["prediction_id"] for r in done_first.values()}
        mtimes = {vid: (out / vid).stat().st_mtime_ns for vid in done_first}
        n_first = len(stub.log)

        stub.gate.set()
        rep = render_variations(renders, out, _opts(stub))
        second = stub.log[n_first:]

    assert rep.ok and rep.resumed == 2 and rep.generated == 4
    # each variation was billed exactly once; the in-flight ones were resumed, not re-created
    assert len(stub.preds) == 6 and set(stub.creates_by_key().values()) == {1}
    resumed_pids = {r["prediction_id"] for vid, r in _variation_records(out).items() if vid not in done_first}
    assert in_flight <= resumed_pids
    # finished images were neither polled, downloaded nor rewritten
    assert not any(r["path"].endswith(pid) for r in second for pid in finished_pids)
    assert {vid: (out / vid).stat().st_mtime_ns for vid in done_first} == mtimes
    assert sum(stub.outputs_made.values()) == 6
    assert len(list(out.glob("*__*.png"))) == 6 and (out / "contact_sheet.jpg").is_file()


def test_cli_needs_a_token_and_writes_nothing_without_one(renders, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from prep.cli import app

    monkeypatch.delenv("REPLICATE_API_TOKEN", raising=False)
    out = tmp_path / "varied"
    r = CliRunner().invoke(app, ["render-variations", str(renders), "-o", str(out)])
    assert r.exit_code == 2 and "REPLICATE_API_TOKEN" in r.output
    assert not out.exists()
