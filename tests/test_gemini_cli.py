"""The issue's "done when", end to end through `caption DIR --backend gemini|replicate|wd14+gemini`:
a stand-in that answers 429s, 503s, slowly, and blocks one image; every other image gets a
caption starting with the trigger, the block is reported, the key is never printed or stored,
and a rerun sends no request for finished images."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

pytest.importorskip("google.genai")
pytest.importorskip("replicate")

from captioning.cli import app  # noqa: E402
from stubs.gemini_stub import GeminiStub  # noqa: E402
from stubs.replicate_stub import ReplicateStub  # noqa: E402

GKEY = "AIzaFAKE-cli-key-9876543210"
RTOKEN = "r8_FAKE_cli_token_9876543210"
FAST = ["--set", "backoff_base=0.01", "--set", "backoff_max=0.05"]


def is_red(jpeg: bytes) -> bool:
    r, g, b = Image.open(io.BytesIO(jpeg)).convert("RGB").resize((1, 1)).getpixel((0, 0))
    return r > 150 and g < 80 and b < 80


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    d = tmp_path / "raw"
    d.mkdir()
    Image.new("RGB", (90, 60), (220, 20, 20)).save(d / "a_red.png")  # the one the stand-in blocks
    for i in range(7):
        Image.new("RGB", (90, 60), (20, 60 + 25 * i, 200 - 20 * i)).save(d / f"img{i}.png")
    return d


@pytest.fixture
def keys(monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", GKEY)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    monkeypatch.setenv("REPLICATE_API_TOKEN", RTOKEN)


def everything_written(folder: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in folder.rglob("*") if p.is_file() and p.suffix != ".png")


def invoke(args: list[str]):
    return CliRunner().invoke(app, args, catch_exceptions=False)


def check_done(raw: Path, result, secret: str) -> dict:
    assert result.exit_code == 3, result.output  # partial: one image blocked
    rep = json.loads(result.stdout)
    assert rep["counts"]["ok"] == 7 and rep["counts"]["blocked"] == 1
    assert [p["id"] for p in rep["problems"]] == ["a_red.png"] and "a_red.png" in rep["problems"][0]["reason"]
    for i in range(7):
        assert (raw / f"img{i}.txt").read_text().startswith("sage_character")
    assert not (raw / "a_red.txt").exists()  # a block is not an empty caption
    assert secret not in result.output and secret not in everything_written(raw)
    return rep


def test_gemini_done_when(raw, keys, monkeypatch):
    plan = [429, 503, "slow", 429, 503]
    with GeminiStub(fail_plan=plan, retry_after="0.2", slow_seconds=1.5, block_if=is_red, delay=0.05) as stub:
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", stub.url)
        args = [str(raw), "--backend", "gemini", "--trigger", "sage_character", "--lora-type", "character",
                "--concurrency", "4", "--rpm", "600", "--set", "timeout=0.8", *FAST, "--json"]
        check_done(raw, invoke(args), GKEY)
        assert sum(1 for r in stub.requests if r["answer"] == 200) == 7
        n = len(stub.requests)
        again = invoke(args)
        assert len(stub.requests) == n, "a rerun must not ask again for finished (or blocked) images"
        assert json.loads(again.stdout)["counts"]["resumed"] == 7


def test_replicate_done_when(raw, keys, monkeypatch):
    plan = {"POST /v1/models/": [429, 503, "hang"], "GET /v1/predictions/": [503, 429]}
    with ReplicateStub(fail_plan=plan, hang_seconds=1.2, fail_if=is_red, polls_before_done=2) as stub:
        orig = stub.handle

        def nsfw(method, path, headers, raw_body):
            code, obj, hdrs = orig(method, path, headers, raw_body)
            if isinstance(obj, dict) and obj.get("status") == "failed":
                obj["error"] = "NSFW content detected"
            return code, obj, hdrs

        stub.handle = nsfw
        monkeypatch.setenv("REPLICATE_BASE_URL", stub.url)
        args = [str(raw), "--backend", "replicate", "--model", "lucataco/florence-2-large", "--trigger", "sage_character",
                "--concurrency", "4", "--set", "timeout=0.6", "--set", "poll_interval=0.02", *FAST, "--json"]
        check_done(raw, invoke(args), RTOKEN)
        assert stub.create_count() == 8, "one billed prediction per image, the lost create included"
        n = len(stub.log)
        invoke(args)
        assert len(stub.log) == n


def test_dry_run_estimates_and_sends_nothing(raw, keys, monkeypatch):
    with GeminiStub() as stub:
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", stub.url)
        res = invoke([str(raw), "--backend", "gemini", "--dry-run", "--json"])
        assert res.exit_code == 0
        est = json.loads(res.stdout)["estimate"]
        assert est["images"] == 8 and est["cost_usd"] > 0 and est["seconds"] > 0 and "gemini-2.5-flash" in est["notes"]
        assert stub.requests == [] and not list(raw.glob("*.txt")) and not (raw / "manifest.jsonl").exists()


def test_missing_key_is_one_clear_error(raw, monkeypatch):
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    res = invoke([str(raw), "--backend", "gemini"])
    assert res.exit_code == 1 and "GEMINI_API_KEY" in res.output
    assert not (raw / "manifest.jsonl").exists() or "failed" not in (raw / "manifest.jsonl").read_text()


def test_chain_wd14_plus_gemini_tags_then_sentence(tmp_path, keys, monkeypatch):
    from wd_tiny import build_tiny_wd14, solid

    model = build_tiny_wd14(tmp_path / "wd")
    d = tmp_path / "imgs"
    d.mkdir()
    solid((0, 255, 0), (64, 64)).save(d / "green.png")
    with GeminiStub(reply=lambda img, prompt: "sage_character, She waves at the camera from a balcony.") as stub:
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", stub.url)
        res = invoke([str(d), "--backend", "wd14+gemini", "--trigger", "sage_character", "--set", f"wd14.model={model}", *FAST, "--json"])
        assert res.exit_code == 0, res.output
    text = (d / "green.txt").read_text().strip()
    assert text.startswith("sage_character, cat ears") and text.endswith("She waves at the camera from a balcony.")
    assert text.count("sage_character") == 1
