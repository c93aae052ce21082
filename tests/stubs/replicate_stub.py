"""Stand-in for the Replicate HTTP API that the `replicate` client calls: files upload, predictions
by model (`/v1/models/{o}/{n}/predictions`) or version (`/v1/predictions`), get, list.

Predictions finish after `polls_before_done` GETs. Faults: `fail_plan` maps "METHOD /path-prefix"
to answers for the first matching requests (an HTTP status, or "hang" = create the prediction but
answer only after `hang_seconds`, so the client times out with the prediction already billed);
`fail_if(image_bytes)` makes the prediction itself fail; `missing_models` answer 404. The list
endpoint pages like the real one (newest first, `page_size` per page, `next` = URL with a cursor);
`list_omits_input` drops inputs from list entries (the client must then GET each candidate).
`log` records every request; `creates` counts billed predictions per image sha256 (the bytes
of whichever input carries a file: `image`, `video`, `media` ...)."""

from __future__ import annotations

import base64
import email
import email.policy
import hashlib
import json
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from ._http import StubServer


class ReplicateStub(StubServer):
    def __init__(
        self,
        *,
        polls_before_done: int = 1,
        fail_plan: dict[str, list[int | str]] | None = None,
        retry_after: str = "0",
        fail_if: Callable[[bytes], bool] | None = None,
        missing_models: tuple[str, ...] = (),
        hang_seconds: float = 3.0,
        delay: float = 0.0,
        output: Callable[[dict[str, Any], bytes], Any] | None = None,
        page_size: int = 100,
        list_omits_input: bool = False,
    ):
        super().__init__()
        self.polls_before_done = polls_before_done
        self.fail_plan = {k: list(v) for k, v in (fail_plan or {}).items()}
        self.retry_after = retry_after
        self.fail_if = fail_if
        self.missing_models = set(missing_models)
        self.hang_seconds = hang_seconds
        self.delay = delay
        self.page_size = page_size
        self.list_omits_input = list_omits_input
        self.output = output or (lambda inp, img: {"text": "{'<MORE_DETAILED_CAPTION>': 'A woman in a red coat walks through a snowy street.'}", "img": None})
        self.files: dict[str, tuple[str, str, bytes]] = {}
        self.preds: dict[str, dict[str, Any]] = {}
        self.order: list[str] = []
        self.log: list[dict[str, Any]] = []
        self.creates: dict[str, int] = {}
        self._mu = threading.Lock()

    def _err(self, code: int, title: str) -> tuple[int, Any, list[tuple[str, str]]]:
        hdrs = [("Retry-After", self.retry_after)] if code in (429, 503) else []
        return code, {"title": title, "detail": f"stub {code}", "status": code}, hdrs

    def _planned(self, method: str, path: str) -> int | str | None:
        with self._mu:
            for key, answers in self.fail_plan.items():
                m, p = key.split(" ", 1)
                if m == method and path.startswith(p) and answers:
                    return answers.pop(0)
        return None

    def image_bytes(self, value: Any) -> bytes:
        if not isinstance(value, str):
            return b""
        if value.startswith("data:"):
            return base64.b64decode(value.split(",", 1)[1])
        if "/v1/files/" in value:
            return self.files.get(value.rsplit("/", 1)[1], ("", "", b""))[2]
        return b""

    def public(self, p: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in p.items() if not k.startswith("_")}

    def handle(self, method: str, path: str, headers: dict[str, str], raw: bytes):
        rec = {"method": method, "path": path, "auth": bool(headers.get("Authorization")), "prefer": headers.get("Prefer")}
        self.log.append(rec)
        planned = self._planned(method, path)
        if isinstance(planned, int):
            rec["answer"] = planned
            return self._err(planned, f"stub {planned}")
        if self.delay:
            time.sleep(self.delay)
        base = f"http://{headers.get('Host', '127.0.0.1')}"
        if method == "POST" and path == "/v1/files":
            msg = email.message_from_bytes(b"Content-Type: " + headers["Content-Type"].encode() + b"\r\n\r\n" + raw, policy=email.policy.HTTP)
            part = next(p for p in msg.iter_parts() if p.get_param("name", header="content-disposition") == "content")
            data = part.get_payload(decode=True)
            fid = uuid.uuid4().hex[:12]
            self.files[fid] = (part.get_filename() or "file", part.get_content_type(), data)
            rec["answer"] = 201
            return 201, {"id": fid, "name": part.get_filename(), "content_type": part.get_content_type(), "size": len(data), "etag": "x",
                         "checksums": {}, "metadata": {}, "created_at": "2026-01-01T00:00:00Z", "expires_at": None,
                         "urls": {"get": f"{base}/v1/files/{fid}"}}, []
        if method == "POST" and (path == "/v1/predictions" or path.endswith("/predictions")):
            body = json.loads(raw or b"{}")
            model = "/".join(path.split("/")[3:5]) if path.startswith("/v1/models/") else "owner/versioned"
            if model in self.missing_models:
                rec["answer"] = 404
                return 404, {"title": "Model not found", "detail": f"model {model} does not exist or was removed", "status": 404}, []
            inp = body.get("input", {}) or {}
            # the file input, whatever the model calls it (image, video, media ...): its bytes count the creates
            img = self.image_bytes(inp.get("image")) or next((b for b in (self.image_bytes(v) for v in inp.values()) if b), b"")
            sha = hashlib.sha256(img).hexdigest()
            pid = uuid.uuid4().hex[:16]
            p = {"id": pid, "model": model, "version": body.get("version", "v-latest"), "status": "starting", "input": body.get("input"),
                 "output": None, "logs": "", "error": None, "metrics": {}, "created_at": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"), "started_at": None,
                 "completed_at": None, "urls": {"get": f"{base}/v1/predictions/{pid}", "cancel": f"{base}/v1/predictions/{pid}/cancel"},
                 "_polls": 0, "_img": img, "_sha": sha}
            with self._mu:
                self.preds[pid] = p
                self.order.insert(0, pid)
                self.creates[sha] = self.creates.get(sha, 0) + 1
            rec["answer"] = 201
            rec["image_sha"] = sha
            if planned == "hang":
                time.sleep(self.hang_seconds)
            return 201, self.public(p), []
        if method == "GET" and path.startswith("/v1/predictions/"):
            p = self.preds.get(path.rsplit("/", 1)[1])
            if p is None:
                return 404, {"title": "not found", "status": 404}, []
            p["_polls"] += 1
            if p["status"] not in ("succeeded", "failed", "canceled"):
                if p["_polls"] >= self.polls_before_done:
                    if self.fail_if and self.fail_if(p["_img"]):
                        p.update(status="failed", error="CUDA out of memory (stub)")
                    else:
                        p.update(status="succeeded", output=self.output(p["input"], p["_img"]), completed_at="2026-01-01T00:00:02Z", metrics={"predict_time": 1.5})
                else:
                    p["status"] = "processing"
            rec["answer"] = 200
            return 200, self.public(p), []
        if method == "GET" and path.split("?")[0] == "/v1/predictions":
            # Like the real API: newest first, `page_size` (100) per page, `next` a full URL whose
            # cursor points past the last entry shown (stable while new predictions arrive).
            after = dict(parse_qsl(urlsplit(path).query)).get("cursor")
            with self._mu:
                start = self.order.index(after) + 1 if after in self.order else 0
                ids = self.order[start : start + self.page_size]
                more = start + self.page_size < len(self.order)
            results = [self.public(self.preds[i]) for i in ids]
            if self.list_omits_input:
                results = [{k: v for k, v in r.items() if k not in ("input", "output")} for r in results]
            rec["answer"] = 200
            nxt = f"{base}/v1/predictions?cursor={ids[-1]}" if more and ids else None
            return 200, {"results": results, "next": nxt, "previous": None}, []
        if method == "GET" and path.startswith("/v1/files/"):
            name, ctype, data = self.files[path.rsplit("/", 1)[1]]
            return 200, data, [("Content-Type", ctype)]
        return 404, {"title": "not found", "status": 404}, []

    def export(self) -> dict[str, Any]:
        return {"log": self.log, "creates": self.creates}

    def create_count(self) -> int:
        return sum(self.creates.values())
