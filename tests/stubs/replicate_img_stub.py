"""A Replicate stand-in for img2img models: predictions output a PNG that the stub generated
(the input image tinted by a colour derived from prompt and seed) and serves from /v1/files/.

Builds on `ReplicateStub` (files, create by model or version, get, list, fault plans). Adds a
`gate`: while it is closed, predictions created after the first `finish_before_gate` ones stay
"processing", so a test can kill a run with predictions in flight and then resume it."""

from __future__ import annotations

import hashlib
import io
import threading
import uuid
from collections import Counter
from typing import Any

from PIL import Image

from tests.stubs.replicate_stub import ReplicateStub


def tint(png: bytes, prompt: str, seed: Any) -> bytes:
    """The fake model: blend the input with a colour fixed by (prompt, seed)."""
    h = hashlib.sha256(f"{prompt}|{seed}".encode()).digest()
    with Image.open(io.BytesIO(png)) as im:
        src = im.convert("RGB")
    out = Image.blend(src, Image.new("RGB", src.size, (h[0], h[1], h[2])), 0.5)
    buf = io.BytesIO()
    out.save(buf, "PNG")
    return buf.getvalue()


class ReplicateImgStub(ReplicateStub):
    def __init__(self, *, finish_before_gate: int | None = None, **kw: Any):
        super().__init__(output=self._make_output, **kw)
        self.gate = threading.Event()
        if finish_before_gate is None:
            self.gate.set()
        self.finish_before_gate = finish_before_gate or 0
        self.outputs_made: Counter[tuple[Any, str]] = Counter()

    def _make_output(self, inp: dict[str, Any], img: bytes) -> list[str]:
        data = tint(img, str(inp.get("prompt")), inp.get("seed"))
        fid = "out" + uuid.uuid4().hex[:12]
        self.files[fid] = ("out.png", "image/png", data)
        self.outputs_made[(inp.get("seed"), str(inp.get("prompt")))] += 1
        return [f"{self.url}/v1/files/{fid}"]

    def handle(self, method: str, path: str, headers: dict[str, str], raw: bytes):  # noqa: ANN201
        if method == "GET" and path.startswith("/v1/predictions/") and not self.gate.is_set():
            pid = path.rsplit("/", 1)[1]
            with self._mu:
                rank = len(self.order) - self.order.index(pid) if pid in self.order else 0
            p = self.preds.get(pid)
            if p is not None and rank > self.finish_before_gate and p["status"] not in ("succeeded", "failed", "canceled"):
                self.log.append({"method": method, "path": path, "auth": bool(headers.get("Authorization")), "answer": 200, "held": True})
                p["status"] = "processing"
                return 200, self.public(p), []
        return super().handle(method, path, headers, raw)

    def creates_by_key(self) -> Counter[tuple[Any, str]]:
        """Billed predictions per (seed, prompt): one variation each."""
        return Counter((p["input"].get("seed"), str(p["input"].get("prompt"))) for p in list(self.preds.values()))

    def output_downloads(self) -> int:
        return sum(1 for r in self.log if r["method"] == "GET" and r["path"].startswith("/v1/files/out"))
