"""A stand-in Hugging Face Hub on 127.0.0.1 for `hf_hub_download` (huggingface_hub 2.x).

It serves what file_download.py asks for: HEAD/GET `/{repo}/resolve/{rev}/{file}` with ETag
(the sha256, as the Hub sends for LFS files), X-Repo-Commit, Content-Length/X-Linked-Size and
Range (206 + Content-Range) for resumed downloads; 401 with `X-Error-Code: GatedRepo` for a
gated repo without the right bearer token; 404 `EntryNotFound` for anything else. It can
declare a size other than the real one (a full disk) and drop the connection half way through
a file's first GET (resume). Every request is logged for the tests to assert on.
"""

from __future__ import annotations

import hashlib
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

COMMIT = "0123456789abcdef0123456789abcdef01234567"
_HEX40 = re.compile(r"[0-9a-f]{40}")


class HubStub:
    def __init__(self, token: str = "hf_stub_token") -> None:
        self.files: dict[tuple[str, str], bytes] = {}
        self.gated: set[str] = set()
        self.declared_size: dict[tuple[str, str], int] = {}
        self.drop_first: set[tuple[str, str]] = set()
        self.token = token
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: Any) -> None:
                pass

            def do_HEAD(self) -> None:
                stub._serve(self, head=True)

            def do_GET(self) -> None:
                stub._serve(self, head=False)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def add(self, repo: str, filename: str, data: bytes, *, gated: bool = False) -> str:
        self.files[(repo, filename)] = data
        if gated:
            self.gated.add(repo)
        return hashlib.sha256(data).hexdigest()

    def gets(self, filename: str | None = None) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["method"] == "GET" and "/resolve/" in r["path"] and (filename is None or r["path"].endswith(filename))]

    def _reply(self, h: BaseHTTPRequestHandler, code: int, headers: dict[str, str], body: bytes = b"", head: bool = False) -> None:
        h.send_response(code)
        for k, v in headers.items():
            h.send_header(k, v)
        if "Content-Length" not in headers:
            h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if not head and body:
            h.wfile.write(body)

    def _serve(self, h: BaseHTTPRequestHandler, *, head: bool) -> None:
        path = h.path.split("?", 1)[0]
        with self.lock:
            self.requests.append({"method": h.command, "path": path, "range": h.headers.get("Range"), "auth": bool(h.headers.get("Authorization"))})
        parts = path.strip("/").split("/")
        if len(parts) < 5 or parts[2] != "resolve":
            self._reply(h, 404 if not path.startswith("/api/whoami") else 401, {"X-Error-Code": "EntryNotFound"}, b"{}", head)
            return
        repo, rev, filename = f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:])
        commit = rev if _HEX40.fullmatch(rev) else COMMIT
        key = (repo, filename)
        if repo in self.gated and h.headers.get("Authorization") != f"Bearer {self.token}":
            msg = f"Access to model {repo} is restricted. You must have access to it and be authenticated to access it. Please log in."
            self._reply(h, 401, {"X-Error-Code": "GatedRepo", "X-Error-Message": msg, "X-Repo-Commit": commit}, msg.encode(), head)
            return
        if key not in self.files:
            self._reply(h, 404, {"X-Error-Code": "EntryNotFound", "X-Error-Message": "Entry not found", "X-Repo-Commit": commit}, b"Entry not found", head)
            return
        data = self.files[key]
        etag = hashlib.sha256(data).hexdigest()
        size = self.declared_size.get(key, len(data))
        base = {"ETag": f'"{etag}"', "X-Repo-Commit": commit, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        if head:
            self._reply(h, 200, {**base, "X-Linked-Size": str(size), "X-Linked-Etag": f'"{etag}"', "Content-Length": str(size)}, head=True)
            return
        rng = h.headers.get("Range")
        start = 0
        if rng:
            m = re.fullmatch(r"bytes=(\d+)-", rng.strip())
            start = int(m.group(1)) if m else 0
        body = data[start:]
        if rng:
            self._reply(h, 206, {**base, "Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}", "Content-Length": str(len(body))}, body)
            return
        if key in self.drop_first:
            self.drop_first.discard(key)
            h.send_response(200)
            for k, v in {**base, "Content-Length": str(len(body))}.items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(body[: len(body) // 2])
            h.wfile.flush()
            h.close_connection = True
            try:
                import socket

                h.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        self._reply(h, 200, {**base, "Content-Length": str(len(body))}, body)

    def start(self) -> HubStub:
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
