"""Benchmark: remote captioning throughput and fault handling against local stand-ins.

Runs the real pipeline (`captioning.pipeline.caption_folder`: discovery, manifest, atomic
caption writes) with the real SDKs against the stubs in `tests/stubs/` on 127.0.0.1:

  1. gemini, every answer takes `--latency` s, `--concurrency` requests in flight:
     wall time against the ideal N x latency / concurrency;
  2. the same with `--fail-share` of the images' first requests answered 429 (Retry-After:
     `--retry-after` s, then again with Retry-After: 0): every image must end with exactly one
     successful request and a caption. A Retry-After pauses the whole pool (the quota is the
     key's, not the request's), so the wall time grows with each 429 by design;
  3. replicate (florence-2 preset): create + poll, the create answered after `--latency` s,
     the first poll finishing it: wall time, predictions created per image.

    python bench/remote_bench.py                       # N=200, 0.3 s, concurrency 16 (the issue's setting)
    python bench/remote_bench.py --n 500 --concurrency 32

Prints a table and writes JSON with `--json PATH`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from PIL import Image  # noqa: E402

from captioning.backends.base import CaptionOptions  # noqa: E402
from captioning.pipeline import caption_folder  # noqa: E402
from stubs._http import serve_in_process  # noqa: E402
from stubs.gemini_stub import GeminiStub  # noqa: E402
from stubs.replicate_stub import ReplicateStub  # noqa: E402

KEY = "AIzaBENCH-not-a-real-key-000000"


def make_images(folder: Path, n: int, size: tuple[int, int]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", size, ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256)).save(folder / f"img{i:04d}.png")


@contextlib.contextmanager
def remote_stub(factory: type, **kwargs: object) -> Iterator[str]:
    """The stand-in in its own process (a real API does not share our GIL); yields its URL."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=serve_in_process, args=(factory, kwargs, child), daemon=True)
    proc.start()
    try:
        yield parent.recv()
    finally:
        proc.kill()
        proc.join()


def stub_state(url: str) -> dict:
    import httpx

    return httpx.get(url + "/_stub/state", timeout=30).json()


def run_gemini(folder: Path, args: argparse.Namespace, fail_share: float, retry_after: float | None = None) -> dict:
    out = Path(tempfile.mkdtemp(prefix="bench-out-"))
    with remote_stub(GeminiStub, delay=args.latency, first_fail_ratio=fail_share,
                     retry_after=str(args.retry_after if retry_after is None else retry_after), seed=1) as url:
        os.environ["GOOGLE_GEMINI_BASE_URL"] = url
        opts = CaptionOptions(trigger="sage_character", concurrency=args.concurrency, batch_size=args.concurrency,
                              extra={"backoff_base": 0.2, "backoff_max": 5.0})
        t = time.perf_counter()
        rep = caption_folder(folder, "gemini", opts, output=out)
        wall = time.perf_counter() - t
        reqs = stub_state(url)["requests"]
        ok_per_image = Counter(r["image_sha"] for r in reqs if r["answer"] == 200)
        n429 = sum(1 for r in reqs if r["answer"] == 429)
        requests = len(reqs)
    captions = sum(1 for p in out.glob("*.txt") if p.read_text().startswith("sage_character"))
    ideal = args.n * args.latency / args.concurrency
    return {
        "backend": "gemini", "images": args.n, "latency_s": args.latency, "concurrency": args.concurrency,
        "first_request_429_share": fail_share, "retry_after_s": args.retry_after if retry_after is None else retry_after, "wall_s": round(wall, 3), "ideal_s": round(ideal, 3),
        "over_ideal": round(wall / ideal - 1, 3), "requests": requests, "answered_429": n429,
        "captions_written": captions, "ok": rep.count("ok"),
        "duplicate_successful_requests": sum(v - 1 for v in ok_per_image.values() if v > 1),
        "images_with_a_success": len(ok_per_image),
    }


def run_replicate(folder: Path, args: argparse.Namespace) -> dict:
    out = Path(tempfile.mkdtemp(prefix="bench-out-"))
    with remote_stub(ReplicateStub, delay=args.latency / 2, polls_before_done=1) as url:
        os.environ["REPLICATE_BASE_URL"] = url
        opts = CaptionOptions(trigger="sage_character", model="florence-2", concurrency=args.concurrency, batch_size=args.concurrency,
                              extra={"poll_interval": 0.05, "backoff_base": 0.2})
        t = time.perf_counter()
        rep = caption_folder(folder, "replicate", opts, output=out)
        wall = time.perf_counter() - t
        creates = sum(stub_state(url)["creates"].values())
    # each image: upload + create (latency/2 each) + one poll after 0.05 s answered in latency/2
    ideal = args.n * (1.5 * args.latency + 0.05) / args.concurrency
    return {"backend": "replicate", "images": args.n, "concurrency": args.concurrency, "wall_s": round(wall, 3),
            "ideal_s": round(ideal, 3), "over_ideal": round(wall / ideal - 1, 3), "predictions_created": creates, "ok": rep.count("ok")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--latency", type=float, default=0.3)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--fail-share", type=float, default=0.10)
    ap.add_argument("--retry-after", type=float, default=1.0)
    ap.add_argument("--size", type=int, default=512, help="side of the generated test images")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    os.environ["GEMINI_API_KEY"] = KEY
    os.environ["REPLICATE_API_TOKEN"] = "r8_bench_not_a_real_token"
    os.environ.setdefault("LORAPREP_NO_PROGRESS", "1")
    folder = Path(tempfile.mkdtemp(prefix="bench-raw-"))
    make_images(folder, args.n, (args.size, args.size * 3 // 4))
    warm = Path(tempfile.mkdtemp(prefix="bench-warm-"))
    make_images(warm, 8, (64, 48))
    run_gemini(warm, argparse.Namespace(**{**vars(args), "n": 8}), 0.0)  # one-time SDK imports and client set-up, not timed
    results = [run_gemini(folder, args, 0.0), run_gemini(folder, args, args.fail_share), run_gemini(folder, args, args.fail_share, 0.0),
               run_replicate(folder, args)]
    for r in results:
        print(json.dumps(r))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
