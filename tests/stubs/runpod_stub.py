"""A stand-in for RunPod's REST API (https://rest.runpod.io/v1) on 127.0.0.1, for tests.

Pods: POST /pods, GET /pods/{id}, POST /pods/{id}/stop, DELETE /pods/{id}, Bearer auth.
A new pod reports PROVISIONING for `ready_after` polls, then RUNNING with `publicIp` and
`portMappings["22"]` pointing at the test's sshd. `fail` makes one operation answer an error:
{"create": 500, "get": 500, "stop": 500, "terminate": 500}; `exit_on_poll` makes the pod go
EXITED while it is being waited for (no capacity), `gone` makes GET answer EXITED (preempted).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class PodApi:
    key: str = "rp_test_key"
    ssh_port: int = 22
    ready_after: int = 1
    fail: dict[str, int] = field(default_factory=dict)
    exit_on_poll: bool = False
    calls: list[tuple[str, str, dict[str, Any] | None, str]] = field(default_factory=list)
    pods: dict[str, dict[str, Any]] = field(default_factory=dict)
    polls: int = 0
    url: str = ""
    _server: ThreadingHTTPServer | None = None

    def start(self) -> PodApi:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def _answer(self, code: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method: str) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n)) if n else None
                auth = self.headers.get("Authorization", "")
                api.calls.append((method, self.path, body, auth))
                if auth != f"Bearer {api.key}":
                    return self._answer(401, {"error": "invalid api key"})
                path = self.path[3:] if self.path.startswith("/v1/") else self.path
                parts = path.strip("/").split("/")
                if parts[0] != "pods":
                    return self._answer(404, {"error": "not found"})
                op = {("POST", 1): "create", ("GET", 2): "get", ("POST", 3): "stop", ("DELETE", 2): "terminate"}.get((method, len(parts)))
                if op is None:
                    return self._answer(404, {"error": "no such route"})
                if op in api.fail:
                    return self._answer(api.fail[op], {"error": f"{op} failed (stand-in)"})
                if op == "create":
                    pid = f"pod{len(api.pods) + 1}"
                    api.pods[pid] = {"id": pid, "name": body.get("name"), "desiredStatus": "RUNNING", "publicIp": None, "portMappings": {}, "image": body.get("imageName"), "gpuTypeIds": body.get("gpuTypeIds")}
                    return self._answer(201, api.pods[pid])
                pod = api.pods.get(parts[1])
                if pod is None:
                    return self._answer(404, {"error": "pod not found"})
                if op == "get":
                    api.polls += 1
                    if api.exit_on_poll:
                        pod["desiredStatus"] = "EXITED"
                    elif pod["desiredStatus"] == "RUNNING" and api.polls > api.ready_after:
                        pod.update(publicIp="127.0.0.1", portMappings={"22": api.ssh_port})
                    return self._answer(200, pod)
                if op == "stop":
                    pod["desiredStatus"] = "EXITED"
                    return self._answer(200, pod)
                pod["desiredStatus"] = "TERMINATED"
                del api.pods[parts[1]]
                return self._answer(204, {})

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

            def do_DELETE(self) -> None:
                self._handle("DELETE")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def ops(self) -> list[str]:
        return [f"{m} {p}" for m, p, _, _ in self.calls]
