"""Stand-in for the Gemini REST API `models/{model}:generateContent` (what google-genai calls).

Scriptable faults: `fail_plan` (first requests get these answers in order: an HTTP status,
"slow" = answer after `slow_seconds`, "drop" = close the connection), `first_fail_ratio` (that
share of images get a 429 on their first request), `block_if(image_bytes)` (safety block),
`missing_models` (404 NOT_FOUND, like a retired model), `delay` (every answer takes this long).
`requests` logs every call with the image's sha256 so tests can count requests per image."""

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

    def handle(self, method: str, path: str, headers: dict[str, str], raw: bytes):  # noqa: ANN201
        body = json.loads(raw or b"{}")
        route = path.split("?")[0]
        model = route.split("/models/")[-1].split(":")[0] if "/models/" in route else ""
        img = b""
        prompt = ""
        for content in body.get("contents", []):
            for part in content.get("parts", []):
                if "inlineData" in part:
                    d = part["inlineData"]["data"]
                    img = base64.urlsafe_b64decode(d + "=" * (-len(d) % 4))
                elif "text" in part:
                    prompt += part["text"]
        sha = hashlib.sha256(img).hexdigest()
        rec = {"method": method, "path": route, "model": model, "image_sha": sha, "image_bytes": len(img), "prompt": prompt,
               "system": json.dumps(body.get("systemInstruction", "")), "has_key": bool(headers.get("x-goog-api-key") or headers.get("X-Goog-Api-Key")),
               "mime": next(((p["inlineData"].get("mimeType") or p["inlineData"].get("mime_type")) for c in body.get("contents", []) for p in c.get("parts", []) if "inlineData" in p), None),
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
