"""Stand-in for the Gemini REST API `models/{model}:generateContent` (what google-genai calls).

Scriptable faults: `fail_plan` (first requests get these answers in order: an HTTP status,
"slow" = answer after `slow_seconds`, "drop" = close the connection), `first_fail_ratio` (that
share of images get a 429 on their first request), `block_if(image_bytes)` (safety block),
`missing_models` (404 NOT_FOUND, like a retired model), `delay` (every answer takes this long).
`requests` logs every call with the image's sha256 so tests can count requests per image.

Files API (what google-genai's `files.upload/get/delete` call): `POST /upload/{version}/files` with
`X-Goog-Upload-Command: start` answers an `x-goog-upload-url`; chunks are POSTed there
(`upload`, last one `upload, finalize`, answered `x-goog-upload-status: final` and the File);
`GET /{version}/files/{id}` answers PROCESSING for the first `processing_polls` gets, then ACTIVE
(FAILED when `fail_processing(bytes)`); `DELETE` removes it; `GET /{version}/files` lists them
(pageSize / pageToken). The display name is read in either spelling (google-genai sends
`display_name`; proto JSON takes both). `stall_after_create` holds the finalize answer after the
file exists (`created` is set) until `release`: the window where a killed client has made a
file it never learned the name of. `file_log` records each of these
(op, name, time); a generateContent naming a file by `fileData.fileUri` is logged with that
file's sha256 in `image_sha`, `media="file"` and the `videoMetadata.fps` sent."""

from __future__ import annotations

import base64
import hashlib
import json
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from ._http import StubServer

STATUS_NAMES = {400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE"}


class GeminiStub(StubServer):
    def __init__(
        self,
        *,
        fail_plan: list[int | str] | None = None,
        first_fail_ratio: float = 0.0,
        retry_after: str = "0",
        block_if: Callable[[bytes], bool] | None = None,
        block_mode: str = "prompt",
        missing_models: tuple[str, ...] = (),
        delay: float = 0.0,
        slow_seconds: float = 3.0,
        reply: Callable[[bytes, str], str] | None = None,
        seed: int = 0,
        processing_polls: int = 1,
        fail_processing: Callable[[bytes], bool] | None = None,
        stall_after_create: bool = False,
    ):
        super().__init__()
        self.fail_plan = list(fail_plan or [])
        self.first_fail_ratio = first_fail_ratio
        self.retry_after = retry_after
        self.block_if = block_if
        self.block_mode = block_mode
        self.missing_models = set(missing_models)
        self.delay = delay
        self.slow_seconds = slow_seconds
        self.reply = reply or (lambda img, prompt: "a person stands in a sunlit field, medium shot")
        self.requests: list[dict[str, Any]] = []
        self.seen: set[str] = set()
        self.rng = random.Random(seed)
        self._mu = threading.Lock()
        self.processing_polls = processing_polls
        self.fail_processing = fail_processing
        self.files: dict[str, dict[str, Any]] = {}
        self.uploads: dict[str, dict[str, Any]] = {}
        self.file_log: list[dict[str, Any]] = []
        # the window a kill can hit: the server has made the file, the client has no answer yet
        self.stall_after_create = stall_after_create
        self.created = threading.Event()
        self.release = threading.Event()

    def export(self) -> dict[str, Any]:
        return {"requests": [{k: v for k, v in r.items() if k in ("path", "model", "image_sha", "answer", "time")} for r in self.requests]}

    # --- helpers for tests
    def answered(self, code: int = 200) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["answer"] == code]

    def per_image(self, code: int | None = None) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.requests:
            if code is None or r["answer"] == code:
                out[r["image_sha"]] = out.get(r["image_sha"], 0) + 1
        return out

    def _err(self, code: int, message: str) -> tuple[int, Any, list[tuple[str, str]]]:
        hdrs = [("Retry-After", self.retry_after)] if code == 429 else []
        return code, {"error": {"code": code, "message": message, "status": STATUS_NAMES.get(code, "UNKNOWN")}}, hdrs

    # --- Files API
    def file_ops(self, op: str | None = None) -> list[dict[str, Any]]:
        return [r for r in self.file_log if op is None or r["op"] == op]

    def live_files(self) -> list[str]:
        return sorted(self.files)

    def _file_json(self, f: dict[str, Any]) -> dict[str, Any]:
        return {"name": f["name"], "displayName": f["display_name"], "mimeType": f["mime"], "sizeBytes": str(len(f["data"])),
                "createTime": "2026-01-01T00:00:00Z", "updateTime": "2026-01-01T00:00:00Z", "expirationTime": "2026-01-03T00:00:00Z",
                "sha256Hash": base64.b64encode(hashlib.sha256(f["data"]).digest()).decode(), "uri": f["uri"], "state": f["state"],
                "source": "UPLOADED", **({"error": {"code": 400, "message": "stub: the video could not be processed"}} if f["state"] == "FAILED" else {})}

    def _files(self, method: str, route: str, path: str, headers: dict[str, str], raw: bytes):  # noqa: ANN202
        h = {k.lower(): v for k, v in headers.items()}
        now = time.monotonic()
        if method == "POST" and route.startswith("/upload/") and route.endswith("/files") and "upload_id=" not in path:
            if h.get("x-goog-upload-command") != "start" or h.get("x-goog-upload-protocol") != "resumable":
                return 400, {"error": {"code": 400, "message": "stub: expected a resumable upload start", "status": "INVALID_ARGUMENT"}}, []
            meta = json.loads(raw or b"{}").get("file", {})
            uid = f"u{len(self.uploads) + 1}"
            self.uploads[uid] = {"meta": meta, "data": b"", "mime": h.get("x-goog-upload-header-content-type") or meta.get("mimeType"),
                                 "size": int(h.get("x-goog-upload-header-content-length") or meta.get("sizeBytes") or 0)}
            self.file_log.append({"op": "start", "name": None, "time": now, "mime": self.uploads[uid]["mime"]})
            return 200, {}, [("x-goog-upload-url", f"{self.url}{route}?upload_id={uid}"), ("x-goog-upload-status", "active")]
        if method == "POST" and "upload_id=" in path:
            uid = path.split("upload_id=")[1].split("&")[0]
            up = self.uploads.get(uid)
            if up is None:
                return 404, {"error": {"code": 404, "message": "stub: no such upload", "status": "NOT_FOUND"}}, []
            cmd = h.get("x-goog-upload-command", "")
            if int(h.get("x-goog-upload-offset", "0")) != len(up["data"]):
                return 400, {"error": {"code": 400, "message": "stub: wrong upload offset", "status": "INVALID_ARGUMENT"}}, []
            up["data"] += raw
            if "finalize" not in cmd:
                self.file_log.append({"op": "chunk", "name": None, "time": now, "bytes": len(raw)})
                return 200, {}, [("x-goog-upload-status", "active")]
            fid = f"stub{len(self.files) + len(self.file_ops('upload')) + 1:04d}"
            name = f"files/{fid}"
            f = {"name": name, "display_name": up["meta"].get("displayName", up["meta"].get("display_name", "")), "mime": up["mime"], "data": up["data"],
                 "uri": f"{self.url}/{route.split('/')[2]}/{name}", "state": "PROCESSING", "gets": 0}
            with self._mu:
                self.files[name] = f
            self.file_log.append({"op": "upload", "name": name, "time": now, "bytes": len(up["data"]), "sha": hashlib.sha256(up["data"]).hexdigest()})
            if self.stall_after_create:
                self.created.set()
                self.release.wait(30)
            return 200, {"file": self._file_json(f)}, [("x-goog-upload-status", "final")]
        if method == "GET" and route.endswith("/files"):  # files.list: pageSize / pageToken, newest last
            q = dict(kv.split("=", 1) for kv in path.partition("?")[2].split("&") if "=" in kv)
            size, start = int(q.get("pageSize", 10)), int(q.get("pageToken") or 0)
            with self._mu:
                page = list(self.files.values())[start:start + size]
                more = start + size < len(self.files)
            self.file_log.append({"op": "list", "name": None, "time": now})
            return 200, {"files": [self._file_json(f) for f in page], **({"nextPageToken": str(start + size)} if more else {})}, []
        name = "files/" + route.rsplit("/files/", 1)[-1]  # /{version}/files/{id}
        f = self.files.get(name)
        if method == "GET":
            self.file_log.append({"op": "get", "name": name, "time": now})
            if f is None:
                return 404, {"error": {"code": 404, "message": f"stub: {name} not found", "status": "NOT_FOUND"}}, []
            f["gets"] += 1
            if f["state"] == "PROCESSING" and f["gets"] >= self.processing_polls:
                f["state"] = "FAILED" if self.fail_processing and self.fail_processing(f["data"]) else "ACTIVE"
            return 200, self._file_json(f), []
        if method == "DELETE":
            self.file_log.append({"op": "delete", "name": name, "time": now})
            if f is None:
                return 404, {"error": {"code": 404, "message": f"stub: {name} not found", "status": "NOT_FOUND"}}, []
            with self._mu:
                del self.files[name]
            return 200, {}, []
        return 404, {"error": {"code": 404, "message": "stub: unknown files call", "status": "NOT_FOUND"}}, []

    def handle(self, method: str, path: str, headers: dict[str, str], raw: bytes):  # noqa: ANN201
        route = path.split("?")[0]
        if "/files" in route and ":generateContent" not in route:
            return self._files(method, route, path, headers, raw)
        body = json.loads(raw or b"{}")
        model = route.split("/models/")[-1].split(":")[0] if "/models/" in route else ""
        img = b""
        prompt = ""
        media = None
        file_uri = None
        missing_file = None
        video_fps = None
        for content in body.get("contents", []):
            for part in content.get("parts", []):
                if "inlineData" in part:
                    d = part["inlineData"]["data"]
                    img = base64.urlsafe_b64decode(d + "=" * (-len(d) % 4))
                    media = "inline"
                elif "fileData" in part:
                    file_uri = part["fileData"].get("fileUri") or part["fileData"].get("file_uri")  # proto JSON takes both spellings
                    f = self.files.get("files/" + str(file_uri).rsplit("/files/", 1)[-1])
                    media = "file"
                    if f is None or f["state"] != "ACTIVE":
                        missing_file = file_uri
                    else:
                        img = f["data"]
                elif "text" in part:
                    prompt += part["text"]
                if "videoMetadata" in part:
                    video_fps = part["videoMetadata"].get("fps")
        sha = hashlib.sha256(img).hexdigest()
        rec = {"method": method, "path": route, "model": model, "image_sha": sha, "image_bytes": len(img), "prompt": prompt,
               "media": media, "file_uri": file_uri, "video_fps": video_fps,
               "system": json.dumps(body.get("systemInstruction", "")), "has_key": bool(headers.get("x-goog-api-key") or headers.get("X-Goog-Api-Key")),
               "mime": next(((p["inlineData"].get("mimeType") or p["inlineData"].get("mime_type")) for c in body.get("contents", []) for p in c.get("parts", []) if "inlineData" in p), None)
                       or next((p["fileData"].get("mimeType") or p["fileData"].get("mime_type") for c in body.get("contents", []) for p in c.get("parts", []) if "fileData" in p), None),
               "time": time.monotonic(), "answer": None}
        with self._mu:
            self.requests.append(rec)
            planned = self.fail_plan.pop(0) if self.fail_plan else None
            first = sha not in self.seen
            self.seen.add(sha)
            if planned is None and first and self.first_fail_ratio and self.rng.random() < self.first_fail_ratio:
                planned = 429
        if self.delay:
            time.sleep(self.delay)
        if planned == "drop":
            rec["answer"] = "drop"
            return None, None, []
        if planned == "slow":
            time.sleep(self.slow_seconds)
            planned = None
        if isinstance(planned, int):
            rec["answer"] = planned
            return self._err(planned, f"stub answer {planned}")
        if not route.endswith(":generateContent"):
            rec["answer"] = 404
            return self._err(404, "method not found")
        if missing_file is not None:
            rec["answer"] = 400
            return self._err(400, f"File {missing_file} is not in an ACTIVE state or does not exist")
        if model in self.missing_models:
            rec["answer"] = 404
            return self._err(404, f"models/{model} is not found for API version v1beta, or is not supported for generateContent.")
        usage = {"promptTokenCount": 1290, "candidatesTokenCount": 40, "totalTokenCount": 1330}
        if self.block_if and img and self.block_if(img):
            rec["answer"] = "blocked"
            if self.block_mode == "prompt":
                return 200, {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": usage, "modelVersion": model}, []
            return 200, {"candidates": [{"finishReason": "SAFETY", "index": 0, "safetyRatings": [{"category": "HARM_CATEGORY_SEXUALLY_EXPLICIT", "probability": "HIGH", "blocked": True}]}], "usageMetadata": usage, "modelVersion": model}, []
        rec["answer"] = 200
        text = self.reply(img, prompt)
        return 200, {"candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": "STOP", "index": 0}], "usageMetadata": usage, "modelVersion": model}, []
