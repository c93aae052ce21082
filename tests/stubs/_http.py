"""A tiny threaded JSON HTTP server base shared by the stubs."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class StubServer:
    """Subclasses implement `handle(method, path, headers, body) -> (code, obj, headers)`.

    `obj` may be bytes (sent raw) or JSON-able; `None` as code means "drop the connection"."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # header and body go out as separate writes: no 40 ms delayed-ACK stall

            def log_message(self, *a: Any) -> None:
                pass

            def _do(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                try:
                    if self.path == "/_stub/state":  # for a stub running in another process (benchmarks)
                        code, obj, hdrs = 200, stub.export(), []
                    else:
                        code, obj, hdrs = stub.handle(self.command, self.path, dict(self.headers), raw)
                except (BrokenPipeError, ConnectionResetError):
                    return
                except Exception as exc:  # a stub bug answers 500 instead of killing the connection
                    code, obj, hdrs = 500, {"error": {"code": 500, "message": f"stub error {type(exc).__name__}: {exc}"}}, []
                if code is None:
                    self.close_connection = True
                    return
                ctype = "application/json"
                if isinstance(obj, (bytes, bytearray)):
                    body = bytes(obj)
                    ctype = dict(hdrs).get("Content-Type", "application/octet-stream")
                else:
                    body = json.dumps(obj).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", ctype)
                    for k, v in hdrs:
                        if k != "Content-Type":
                            self.send_header(k, v)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            do_GET = do_POST = do_PUT = do_DELETE = _do

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.request_queue_size = 128
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread: threading.Thread | None = None

    def handle(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> tuple[int | None, Any, list[tuple[str, str]]]:
        raise NotImplementedError

    def export(self) -> dict[str, Any]:
        """What a test or benchmark in another process may read back (GET /_stub/state)."""
        return {}

    def start(self) -> StubServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self):  # noqa: ANN204
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_in_process(factory: Any, kwargs: dict[str, Any], conn: Any) -> None:
    """Target for a separate process: build the stub, send its URL, serve until killed.
    Used by the benchmark so the stand-in does not share the client's GIL."""
    stub = factory(**kwargs)
    conn.send(stub.url)
    stub.httpd.serve_forever(poll_interval=0.05)
