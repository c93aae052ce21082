"""Video clips through GeminiBackend and the caption pipeline: the real google-genai SDK against the
Gemini stand-in (tests/stubs/gemini_stub.py), inline and through the Files API."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("google.genai")
pytest.importorskip("av")

from caption_video_util import corrupt_clip, make_clip  # noqa: E402
from captioning.backends._media import sampling_fps  # noqa: E402
from captioning.backends.base import CaptionOptions  # noqa: E402
from captioning.backends.gemini import GeminiBackend  # noqa: E402
from captioning.pipeline import caption_folder  # noqa: E402
from captioning.prompts import VIDEO_SYSTEM_PROMPT, build_prompt  # noqa: E402
from prep.dataset import ImageItem  # noqa: E402
from stubs.gemini_stub import GeminiStub  # noqa: E402

KEY = "AIzaFAKE-video-key-0123456789"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def env(monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)

    def use(stub: GeminiStub) -> None:
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", stub.url)

    return use


def opts(tmp_path: Path, **kw) -> CaptionOptions:
    extra = {"backoff_base": 0.01, "backoff_max": 0.05, "file_poll": 0.01, **kw.pop("extra", {})}
    return CaptionOptions(trigger=kw.pop("trigger", "sage_walk"), lora_type=kw.pop("lora_type", "motion"),
                          state_dir=tmp_path / "out", concurrency=kw.pop("concurrency", 2), extra=extra, **kw)


def clip_item(path: Path) -> ImageItem:
    return ImageItem(path.name, path, path.with_suffix(".txt"), flags={"video": True})


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def generates(stub: GeminiStub) -> list[dict]:
    return [r for r in stub.requests if r["path"].endswith(":generateContent")]


def test_small_clip_goes_inline_with_motion_prompt_and_sampling_fps(tmp_path, env):
    clip = make_clip(tmp_path / "clips" / "walk.mp4", frames=24, fps=16)  # 1.5 s
    with GeminiStub() as stub:
        env(stub)
        [res] = GeminiBackend().caption_batch([clip_item(clip)], opts(tmp_path))
    assert res.status == "ok" and res.text.startswith("sage_walk, ")
    [req] = generates(stub)
    assert req["media"] == "inline" and req["mime"] == "video/mp4" and req["image_sha"] == sha(clip)  # the clip as it is
    assert req["video_fps"] == pytest.approx(sampling_fps(1.5, 16.0)) and req["video_fps"] > 1  # not Gemini's 1 fps default
    assert stub.file_log == []  # no upload for a small clip
    assert json.loads(req["system"])["parts"][0]["text"] == VIDEO_SYSTEM_PROMPT
    assert "movement over time" in req["prompt"] and "camera" in req["prompt"] and "timing" in req["prompt"]
    assert "Do NOT describe who the subject is or how they look" in req["prompt"] and "sage_walk" in req["prompt"]
    assert res.data["video"]["sent"] == "inline" and res.data["video"]["frames_sampled"] == 16


def test_large_clip_goes_through_files_api_upload_poll_generate_delete(tmp_path, env):
    clip = make_clip(tmp_path / "clips" / "spin.mp4", frames=40, fps=16)
    with GeminiStub(processing_polls=3) as stub:
        env(stub)
        [res] = GeminiBackend().caption_batch([clip_item(clip)], opts(tmp_path, extra={"inline_limit_mb": 0.001}))
    assert res.status == "ok" and res.text.startswith("sage_walk, ")
    ops = [r["op"] for r in stub.file_log]
    assert ops == ["start", "upload", "get", "get", "get", "delete"]
    up = stub.file_ops("upload")[0]
    assert up["sha"] == sha(clip) and stub.file_ops("start")[0]["mime"] == "video/mp4"
    [req] = generates(stub)
    assert req["media"] == "file" and req["file_uri"].endswith(up["name"]) and req["image_sha"] == sha(clip)
    assert req["video_fps"] == pytest.approx(sampling_fps(2.5, 16.0))
    # order: polled until ACTIVE, generated, then deleted
    assert stub.file_ops("get")[-1]["time"] <= req["time"] <= stub.file_ops("delete")[0]["time"]
    assert stub.file_ops("delete")[0]["name"] == up["name"] and stub.live_files() == []
    assert res.data["video"]["sent"] == "files" and res.data["file_polls"] == 3


def test_upload_deleted_when_processing_fails_or_generation_fails(tmp_path, env):
    bad = make_clip(tmp_path / "clips" / "a_bad.mp4", frames=20, colour=lambda i: (250, 0, 0))
    good = make_clip(tmp_path / "clips" / "b_good.mp4", frames=20)
    with GeminiStub(fail_processing=lambda data: data == bad.read_bytes()) as stub:
        env(stub)
        res = GeminiBackend().caption_batch([clip_item(bad), clip_item(good)], opts(tmp_path, concurrency=1, extra={"inline_limit_mb": 0.001}))
    assert [r.status for r in res] == ["failed", "ok"]
    assert "a_bad.mp4" in res[0].reason and "could not process" in res[0].reason and "ffmpeg" in res[0].reason
    assert len(stub.file_ops("delete")) == 2 and stub.live_files() == []  # deleted after the failure too
    assert [r["image_sha"] for r in generates(stub)] == [sha(good)]  # the failed upload was never asked about
    # a generation that fails after the upload: still deleted
    with GeminiStub(fail_plan=[400]) as stub2:
        env(stub2)
        [r] = GeminiBackend().caption_batch([clip_item(good)], opts(tmp_path / "2", extra={"inline_limit_mb": 0.001}))
    assert r.status == "failed" and "400" in r.reason and "b_good.mp4" in r.reason
    assert [o["op"] for o in stub2.file_log][-1] == "delete" and stub2.live_files() == []


def test_clip_retries_429_and_503_then_succeeds(tmp_path, env):
    clip = make_clip(tmp_path / "clips" / "walk.mp4")
    with GeminiStub(fail_plan=[429, 503]) as stub:
        env(stub)
        [res] = GeminiBackend().caption_batch([clip_item(clip)], opts(tmp_path))
    assert res.status == "ok" and res.data["retries"] == 2
    assert [r["answer"] for r in generates(stub)] == [429, 503, 200]


def test_unsupported_container_and_corrupt_clip_are_named(tmp_path, env):
    mkv = make_clip(tmp_path / "clips" / "x.mp4").rename(tmp_path / "clips" / "x.mkv")
    bad = corrupt_clip(tmp_path / "clips" / "broken.mp4")
    with GeminiStub() as stub:
        env(stub)
        res = GeminiBackend().caption_batch([clip_item(mkv), clip_item(bad)], opts(tmp_path))
    assert [r.status for r in res] == ["failed", "failed"]
    assert "x.mkv" in res[0].reason and "prep clips" in res[0].reason and ".mp4" in res[0].reason
    assert "broken.mp4" in res[1].reason and "moov" in res[1].reason
    assert stub.requests == []


def test_pipeline_captions_clips_beside_images_resumes_without_paying_twice(tmp_path, env):
    d = tmp_path / "data"
    make_clip(d / "walk.mp4")
    make_clip(d / "jump.mp4", frames=30, colour=lambda i: (200, 120, 40))
    Image.new("RGB", (64, 64), (10, 120, 200)).save(d / "still.png")
    before = {p.name: sha(p) for p in d.iterdir()}
    o = opts(tmp_path, lora_type="character", trigger="sage")
    with GeminiStub() as stub:
        env(stub)
        rep = caption_folder(d, "gemini", o)
        assert rep.exit_code() == 0 and rep.count("ok") == 3
        for name in ("walk", "jump", "still"):
            assert (d / f"{name}.txt").read_text().startswith("sage, ")
        vids = [r for r in generates(stub) if r["mime"] == "video/mp4"]
        assert len(vids) == 2 and "this clip is named sage" in vids[0]["prompt"]
        assert next(r for r in generates(stub) if r["mime"] == "image/jpeg")["prompt"].count("clip") == 0  # images keep the image preset
        n = len(stub.requests)
        again = caption_folder(d, "gemini", o)
        assert again.count("resumed") == 3 and len(stub.requests) == n  # nothing billed twice
    assert {p.name: sha(p) for p in d.iterdir() if p.suffix in (".mp4", ".png")} == before  # originals untouched
    from prep.manifest import Manifest

    rec = Manifest.in_folder(d).get("caption", "walk.mp4")
    assert rec is not None and rec.status == "ok" and rec.source_sha256 == before["walk.mp4"] and rec.data["video"]["sent"] == "inline"


def test_pipeline_image_only_backend_names_each_clip_for_motion(tmp_path):
    pytest.importorskip("onnxruntime")
    from wd_tiny import build_tiny_wd14

    model = build_tiny_wd14(tmp_path / "wd")
    d = tmp_path / "data"
    make_clip(d / "walk.mp4")
    Image.new("RGB", (64, 64), (0, 0, 255)).save(d / "still.png")
    rep = caption_folder(d, "wd14", CaptionOptions(trigger="sage_walk", lora_type="motion", model=str(model)))
    by = {o.id: o for o in rep.outcomes}
    assert by["still.png"].status == "ok" and by["walk.mp4"].status == "failed"
    assert "walk.mp4" in by["walk.mp4"].reason and "--backend gemini" in by["walk.mp4"].reason and "still images only" in by["walk.mp4"].reason
    assert not (d / "walk.txt").exists() and rep.exit_code() == 3


def test_clip_and_image_sharing_a_caption_file_is_reported(tmp_path, env):
    d = tmp_path / "data"
    make_clip(d / "walk.mp4")
    Image.new("RGB", (64, 64), (10, 120, 200)).save(d / "walk.png")
    with GeminiStub() as stub:
        env(stub)
        rep = caption_folder(d, "gemini", opts(tmp_path))
    by = {o.id: o for o in rep.outcomes}
    assert by["walk.png"].status == "ok" and by["walk.mp4"].status == "failed"
    assert "walk.txt" in by["walk.mp4"].reason and "walk.png" in by["walk.mp4"].reason and "rename" in by["walk.mp4"].reason
    assert all(r["mime"] == "image/jpeg" for r in generates(stub))


def test_dry_run_estimates_clip_tokens(tmp_path, env):
    d = tmp_path / "data"
    for i in range(3):
        make_clip(d / f"c{i}.mp4", frames=32)  # 2 s each
    rep = caption_folder(d, "gemini", opts(tmp_path), dry_run=True)
    e = rep.estimate
    assert e.images == 3 and e.cost_usd and "16 frames x 258 tokens" in e.notes
    assert not any(d.glob("*.txt"))
    single = GeminiBackend().estimate_video(1, 2.0, opts(tmp_path))
    assert e.cost_usd == pytest.approx(3 * single.cost_usd)
    assert single.cost_usd > GeminiBackend().estimate(1, opts(tmp_path)).cost_usd  # 16 frames cost more than one image


def test_motion_preset_for_clips_keeps_looks_out_and_trigger_first():
    p = build_prompt("motion", "sage_walk", video=True)
    assert p.system == VIDEO_SYSTEM_PROMPT and p.user.startswith("This clip shows the motion called sage_walk. Start the caption with sage_walk.")
    for word in ("direction, speed and rhythm", "starts, develops and ends", "pan, tilt, zoom", "eye colour", "clothing colours"):
        assert word in p.user
    assert build_prompt("motion", "sage_walk").system != VIDEO_SYSTEM_PROMPT  # images keep the image preset
    for t in ("character", "style", "object", "concept"):
        u = build_prompt(t, "zz_trig", video=True).user
        assert "zz_trig" in u and "clip" in u and "camera" in u
    from captioning.prompts import check_caption

    assert check_caption("sage_walk strides forward; her long hair swings", "motion") == ["long hair"]


WORKER = """
import sys
from pathlib import Path
from captioning.backends.base import CaptionOptions
from captioning.pipeline import caption_folder
o = CaptionOptions(trigger="sage_walk", lora_type="motion", concurrency=2,
                   extra={"backoff_base": 0.01, "inline_limit_mb": 0.001, "file_poll": 0.01})
caption_folder(Path(sys.argv[1]), "gemini", o)
"""


def test_kill_and_resume_pays_each_clip_once_and_leaves_no_upload(tmp_path, env):
    d = tmp_path / "data"
    for i in range(8):
        make_clip(d / f"k{i}.mp4", frames=18, colour=lambda f, i=i: (20 * i, 200 - 20 * i, 90))
    with GeminiStub(delay=0.5) as stub:  # slow enough that a loaded machine still kills it mid-run
        env(stub)
        proc = subprocess.Popen([sys.executable, "-c", WORKER, str(d)], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and len(list(d.glob("*.txt"))) < 3:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done = {p.stem for p in d.glob("*.txt")}
        assert 3 <= len(done) < 8, "the kill should land mid-run"
        first = len(generates(stub))
        rep = caption_folder(d, "gemini", CaptionOptions(trigger="sage_walk", lora_type="motion", concurrency=2,
                                                         extra={"backoff_base": 0.01, "inline_limit_mb": 0.001, "file_poll": 0.01}))
        second = generates(stub)[first:]
    assert rep.exit_code() == 0 and rep.count("ok") + rep.count("resumed") == 8, [(o.id, o.status, o.reason) for o in rep.outcomes]
    assert all((d / f"k{i}.txt").read_text().startswith("sage_walk, ") for i in range(8))
    done_shas = {sha(d / f"{k}.mp4") for k in done}
    assert not done_shas & {r["image_sha"] for r in second}  # no finished clip generated again
    ok_per_clip: dict[str, int] = {}
    for r in generates(stub):
        if r["answer"] == 200:
            ok_per_clip[r["image_sha"]] = ok_per_clip.get(r["image_sha"], 0) + 1
    assert len(ok_per_clip) == 8 and max(ok_per_clip.values()) <= 2  # at most the one in flight at the kill is asked twice
    assert sum(ok_per_clip.values()) - 8 <= 2  # concurrency 2: at most two answers lost with the kill
    assert stub.live_files() == []  # uploads the killed run left behind were deleted by the rerun


def test_upload_whose_answer_the_killed_run_never_got_is_deleted_by_the_rerun(tmp_path, env):
    """The kill lands after the server made the file and before the SDK returned its name: only the
    display name recorded beforehand can find it. A file of the user's own is left alone."""
    from google import genai

    d = tmp_path / "data"
    make_clip(d / "a.mp4", frames=18)
    with GeminiStub() as stub:
        env(stub)
        (tmp_path / "mine.mp4").write_bytes((d / "a.mp4").read_bytes())
        client = genai.Client(api_key=KEY)
        mine = client.files.upload(file=str(tmp_path / "mine.mp4"), config={"mime_type": "video/mp4", "display_name": "mine.mp4"})
        stub.stall_after_create = True
        proc = subprocess.Popen([sys.executable, "-c", WORKER, str(d)], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert stub.created.wait(60), proc.stderr.read1().decode() if proc.poll() is not None else "no upload made"
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        orphan = [n for n in stub.live_files() if n != mine.name]
        assert len(orphan) == 1 and not (d / "a.txt").exists()  # the file the killed run never learned the name of
        stub.stall_after_create = False
        stub.release.set()
        rep = caption_folder(d, "gemini", CaptionOptions(trigger="sage_walk", lora_type="motion",
                                                         extra={"backoff_base": 0.01, "inline_limit_mb": 0.001, "file_poll": 0.01}))
        assert rep.count("ok") == 1, [(o.id, o.status, o.reason) for o in rep.outcomes]
        assert stub.live_files() == [mine.name]
        assert orphan[0] in {e["name"] for e in stub.file_ops("delete")}
        assert stub.file_ops("list")
    assert (d / "a.txt").read_text().startswith("sage_walk, ")


def test_caption_cli_motion_clips_with_trigger_first(tmp_path, env):
    from typer.testing import CliRunner

    from captioning.cli import app

    d = tmp_path / "clips"
    make_clip(d / "walk_000.mp4")
    make_clip(d / "walk_001.mp4", frames=30)
    with GeminiStub(reply=lambda media, prompt: "The legs swing forward in an even rhythm while the camera tracks left.") as stub:
        env(stub)
        res = CliRunner().invoke(app, ["run", str(d), "--backend", "gemini", "--trigger", "sage_walk", "--lora-type", "motion",
                                       "--set", "backoff_base=0.01"])
    assert res.exit_code == 0, res.output
    for name in ("walk_000", "walk_001"):
        assert (d / f"{name}.txt").read_text() == "sage_walk, The legs swing forward in an even rhythm while the camera tracks left.\n"
    assert len(generates(stub)) == 2 and all(r["media"] == "inline" and "motion called sage_walk" in r["prompt"] for r in generates(stub))
    assert KEY not in res.output
