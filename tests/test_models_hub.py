"""Model resolution against the Hub without the network: offline means no connection at all; an
unreachable Hub is reported in seconds (one short probe, no retry loop) with the fix; pins are
checked after download.

Each case runs the resolver in a fresh Python process, as a user's command would, so
huggingface_hub reads HF_ENDPOINT / HF_HUB_OFFLINE / HF_HUB_CACHE from that environment. The
"Hub" is a port on 127.0.0.1: closed, silent (accepts and never answers), or counting the
connections it gets.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from prep.detectors.anime import ANIME_FACE_REF, ANIME_HEAD_REF

ROOT = Path(__file__).resolve().parents[1]

RESOLVE = """
import sys, time
from prep.models import ModelNotAvailable
from prep.detectors.anime import AnimeDetector
t = time.monotonic()
try:
    path = AnimeDetector(target=sys.argv[1]).resolve()
except ModelNotAvailable as exc:
    print(f"ERROR {exc}")
    print(f"SECONDS {time.monotonic() - t:.2f}")
    sys.exit(3)
print(f"PATH {path}")
"""


def run_resolver(tmp_path: Path, endpoint: str, *, offline: bool, target: str = "head") -> tuple[int, str, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "LORAPREP_")) and k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env.update(
        HF_ENDPOINT=endpoint,
        HF_HUB_OFFLINE="1" if offline else "0",
        HF_HOME=str(tmp_path / "hf-home"),
        HF_HUB_CACHE=str(tmp_path / "hf-cache"),
        NO_PROXY="127.0.0.1,localhost",
        PYTHONPATH=str(ROOT),
    )
    res = subprocess.run([sys.executable, "-c", RESOLVE, target], env=env, capture_output=True, text=True, timeout=120)
    out = res.stdout + res.stderr
    seconds = float(out.split("SECONDS ")[1].split()[0]) if "SECONDS " in out else float("nan")
    return res.returncode, out, seconds


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CountingServer:
    """Listens on 127.0.0.1; counts connections and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            self._held.append(conn)  # keep it open, say nothing

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        for c in self._held:
            c.close()
        self.sock.close()


@pytest.fixture
def silent_hub() -> Iterator[CountingServer]:
    srv = CountingServer()
    yield srv
    srv.close()


def test_offline_makes_no_connection_and_names_the_fix(tmp_path: Path, silent_hub: CountingServer) -> None:
    rc, out, seconds = run_resolver(tmp_path, f"http://127.0.0.1:{silent_hub.port}", offline=True)
    assert rc == 3, out
    assert silent_hub.connections == 0  # HF_HUB_OFFLINE: not even one attempt
    assert "HF_HUB_OFFLINE" in out and "not in the Hugging Face cache" in out
    assert f"{ANIME_HEAD_REF.repo_id}/{ANIME_HEAD_REF.filename}" in out
    assert f"hf download {ANIME_HEAD_REF.repo_id} {ANIME_HEAD_REF.filename} --revision {ANIME_HEAD_REF.revision}" in out
    assert "--anime-model" in out and "$LORAPREP_ANIME_MODEL" in out
    assert seconds < 5


def test_unreachable_hub_is_reported_in_one_short_attempt(tmp_path: Path) -> None:
    t = time.monotonic()
    rc, out, _ = run_resolver(tmp_path, f"http://127.0.0.1:{closed_port()}", offline=False)
    elapsed = time.monotonic() - t
    assert rc == 3, out
    assert elapsed < 15, f"took {elapsed:.1f} s: a retry loop, not one attempt"
    assert "Retry" not in out  # huggingface_hub's backoff never started
    assert "is not reachable" in out and "not in the Hugging Face cache" in out
    assert f"hf download {ANIME_HEAD_REF.repo_id} {ANIME_HEAD_REF.filename}" in out


def test_a_hub_that_never_answers_times_out_once(tmp_path: Path, silent_hub: CountingServer) -> None:
    t = time.monotonic()
    rc, out, _ = run_resolver(tmp_path, f"http://127.0.0.1:{silent_hub.port}", offline=False, target="face")
    elapsed = time.monotonic() - t
    assert rc == 3, out
    assert elapsed < 15, f"took {elapsed:.1f} s"
    assert silent_hub.connections == 1
    assert "did not answer" in out and ANIME_FACE_REF.repo_id in out


def _cache_file(tmp_path: Path, ref, data: bytes) -> Path:  # type: ignore[no-untyped-def]
    """Put `data` where huggingface_hub's cache keeps `ref` at its pinned commit."""
    repo = tmp_path / "hf-cache" / f"models--{ref.repo_id.replace('/', '--')}"
    path = repo / "snapshots" / ref.revision / ref.filename
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    (repo / "refs").mkdir()
    return path


def test_a_cached_file_that_is_not_the_pinned_one_is_refused(tmp_path: Path, silent_hub: CountingServer) -> None:
    cached = _cache_file(tmp_path, ANIME_HEAD_REF, b"not the head detector")
    rc, out, _ = run_resolver(tmp_path, f"http://127.0.0.1:{silent_hub.port}", offline=False)
    assert rc == 3, out
    assert silent_hub.connections == 0  # found in the cache: the Hub is not asked
    assert "sha256" in out and ANIME_HEAD_REF.sha256 in out and str(cached) in out  # type: ignore[operator]


def test_pins_are_commits_with_a_digest() -> None:
    """Every default Hub model is pinned to a full commit and the sha256 of its file (sources: docs/models.md)."""
    for ref in (ANIME_HEAD_REF, ANIME_FACE_REF):
        assert len(ref.revision) == 40 and int(ref.revision, 16) >= 0
        assert ref.sha256 is not None and len(ref.sha256) == 64
    doc = (ROOT / "docs" / "models.md").read_text()
    for ref in (ANIME_HEAD_REF, ANIME_FACE_REF):
        assert ref.revision in doc and ref.sha256 in doc and ref.filename in doc  # type: ignore[operator]


def test_a_cached_file_with_the_pinned_digest_is_used_without_the_hub(tmp_path: Path, silent_hub: CountingServer) -> None:
    """The same check, passing: a matching cached file is used online too, without asking the Hub."""
    data = b"tiny model bytes"
    import hashlib

    digest = hashlib.sha256(data).hexdigest()
    from prep.models import ModelRef

    ref = ModelRef("someone/tiny", "sub/model.onnx", revision="0" * 40, sha256=digest)
    path = _cache_file(tmp_path, ref, data)
    code = (
        "from prep.models import ModelRef, resolve_model_file\n"
        f"print('PATH', resolve_model_file(ModelRef('someone/tiny', 'sub/model.onnx', revision='{'0' * 40}', sha256='{digest}')))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{silent_hub.port}", HF_HUB_OFFLINE="0", HF_HUB_CACHE=str(tmp_path / "hf-cache"), PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split("PATH ")[1].strip() == str(path)
    assert silent_hub.connections == 0


class StubHub:
    """A Hub stand-in on 127.0.0.1 serving one file the way huggingface_hub downloads it."""

    def __init__(self, data: bytes, revision: str):
        import hashlib
        import http.server

        hub = self
        self.requests: list[str] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self, body: bool) -> None:
                hub.requests.append(f"{self.command} {self.path}")
                if "/resolve/" not in self.path:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("X-Repo-Commit", revision)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def do_HEAD(self) -> None:  # noqa: N802
                self._answer(False)

            def do_GET(self) -> None:  # noqa: N802
                self._answer(True)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_port
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("matches", [True, False])
def test_a_download_is_checked_against_the_pin(tmp_path: Path, matches: bool) -> None:
    import hashlib

    data, rev = b"pretend model bytes", "1" * 40
    pin = hashlib.sha256(data).hexdigest() if matches else "f" * 64
    hub = StubHub(data, rev)
    try:
        code = (
            "from prep.models import ModelRef, ModelNotAvailable, resolve_model_file\n"
            f"try:\n    print('PATH', resolve_model_file(ModelRef('someone/tiny', 'sub/model.onnx', revision='{rev}', sha256='{pin}')))\n"
            "except ModelNotAvailable as exc:\n    print('ERROR', exc)\n"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
        env.update(HF_ENDPOINT=f"http://127.0.0.1:{hub.port}", HF_HUB_OFFLINE="0", HF_HUB_CACHE=str(tmp_path / "c"), HF_HOME=str(tmp_path / "h"), NO_PROXY="127.0.0.1,localhost", PYTHONPATH=str(ROOT))
        res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    finally:
        hub.close()
    assert any(r.startswith("GET /someone/tiny/resolve/") for r in hub.requests), hub.requests
    if matches:
        path = Path(res.stdout.split("PATH ")[1].strip())
        assert path.read_bytes() == data
    else:
        assert "ERROR" in res.stdout and "(downloaded)" in res.stdout and pin in res.stdout, res.stdout + res.stderr
