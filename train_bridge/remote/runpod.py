"""RunPod pods for one run, through RunPod's REST API (https://rest.runpod.io/v1; see docs/remote.md).

`POST /pods` creates a pod (gpuTypeIds, imageName, ports ["22/tcp"], env SSH_PUBLIC_KEY/PUBLIC_KEY for ssh),
`GET /pods/{id}` is polled until `desiredStatus` is RUNNING with a `publicIp` and
`portMappings["22"]`, `POST /pods/{id}/stop` stops it (the volume is kept and billed),
`DELETE /pods/{id}` terminates it. Auth: `Authorization: Bearer $RUNPOD_API_KEY`.
`RUNPOD_API_URL` overrides the base URL (tests point it at a stand-in on 127.0.0.1).
The key is never logged, written to run/remote.json or put on a command line.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from train_bridge.remote.target import RemoteError, SshTarget

DEFAULT_API = "https://rest.runpod.io/v1"
DEFAULT_IMAGE = "runpod/pytorch:2.4.0-py3.11-cuda12.4.1-devel-ubuntu22.04"  # our choice; see docs/remote.md
CONSOLE = "https://console.runpod.io/pods"

# Short names users type -> RunPod GPU type ids (as RunPod's GPU types list spells them).
GPU_ALIASES: dict[str, tuple[str, ...]] = {
    "a100 80gb": ("NVIDIA A100 80GB PCIe", "NVIDIA A100-SXM4-80GB"),
    "a100": ("NVIDIA A100 80GB PCIe", "NVIDIA A100-SXM4-80GB"),
    "h100 80gb": ("NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe"),
    "h100": ("NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe"),
    "rtx 4090": ("NVIDIA GeForce RTX 4090",),
    "4090": ("NVIDIA GeForce RTX 4090",),
    "rtx 3090": ("NVIDIA GeForce RTX 3090",),
    "a6000": ("NVIDIA RTX A6000",),
    "l40s": ("NVIDIA L40S",),
}


def gpu_type_ids(gpu: str) -> list[str]:
    key = " ".join(gpu.lower().split())
    return list(GPU_ALIASES.get(key, (gpu,)))


class RunPodError(RemoteError):
    pass


def api_key() -> str:
    key = os.environ.get("RUNPOD_API_KEY", "").strip()
    if not key:
        raise RunPodError("--remote runpod needs your RunPod API key in the environment: export RUNPOD_API_KEY=... (console → Settings → API Keys).", 2)
    return key


@dataclass
class RunPodClient:
    key: str
    base: str = ""
    timeout: float = 30.0

    def __post_init__(self) -> None:
        self.base = (self.base or os.environ.get("RUNPOD_API_URL") or DEFAULT_API).rstrip("/")

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.key}")
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            text = exc.read().decode("utf-8", "replace")[:400]
            raise RunPodError(self._explain(method, path, exc.code, text), 1) from None
        except (urllib.error.URLError, OSError) as exc:
            raise RunPodError(f"RunPod API {self.base} not reachable ({exc}); check your network (or RUNPOD_API_URL).") from None
        if not raw:
            return {}
        try:
            return json.loads(raw)
        except ValueError:
            return {"raw": raw.decode("utf-8", "replace")[:200]}

    def _explain(self, method: str, path: str, code: int, text: str) -> str:
        what = f"RunPod API {method} {path} answered {code}: {text.strip() or 'no details'}"
        if code in (401, 403):
            return what + " — the API key is wrong or lacks permission: make a new one with read/write access and export RUNPOD_API_KEY."
        if code == 404:
            return what + " — no such pod (it was terminated, or belongs to another account)."
        if code == 429:
            return what + " — rate limited; wait a minute and run again."
        return what

    def create_pod(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", "/pods", body)

    def get_pod(self, pod_id: str) -> dict[str, Any]:
        return self._call("GET", f"/pods/{pod_id}")

    def stop_pod(self, pod_id: str) -> dict[str, Any]:
        return self._call("POST", f"/pods/{pod_id}/stop")

    def terminate_pod(self, pod_id: str) -> dict[str, Any]:
        return self._call("DELETE", f"/pods/{pod_id}")


def pod_body(name: str, gpu: str, public_key: str, *, image: str = DEFAULT_IMAGE, disk_gb: int = 50, volume_gb: int = 0, gpu_count: int = 1) -> dict[str, Any]:
    """The POST /pods body. The public key goes in SSH_PUBLIC_KEY (RunPod's per-pod override of
    the account's keys) and PUBLIC_KEY (what RunPod's images' start scripts install into
    ~/.ssh/authorized_keys); it is public, so having it in the pod's env is fine."""
    return {
        "name": name,
        "imageName": image,
        "gpuTypeIds": gpu_type_ids(gpu),
        "gpuCount": gpu_count,
        "containerDiskInGb": disk_gb,
        "volumeInGb": volume_gb,
        "ports": ["22/tcp"],
        "env": {"PUBLIC_KEY": public_key, "SSH_PUBLIC_KEY": public_key},
    }


def ssh_endpoint(pod: dict[str, Any]) -> tuple[str, int] | None:
    ip = pod.get("publicIp")
    ports = pod.get("portMappings") or {}
    port = ports.get("22") if isinstance(ports, dict) else None
    if ip and port:
        return str(ip), int(port)
    return None


GONE_STATES = ("EXITED", "TERMINATED", "DEAD")


@dataclass
class PodLease:
    """A pod this run created; `release` stops or terminates it and says what it did."""

    client: RunPodClient
    pod_id: str
    gpu: str
    say: Callable[[str, str], None]
    released: bool = False

    def wait_for_ssh(self, timeout_s: float = 900.0, poll_s: float = 5.0) -> SshTarget:
        deadline = time.monotonic() + timeout_s
        last = "?"
        while time.monotonic() < deadline:
            pod = self.client.get_pod(self.pod_id)
            last = str(pod.get("desiredStatus") or pod.get("status") or "?")
            if last in GONE_STATES:
                raise RunPodError(f"pod {self.pod_id} went to {last} before it was ready (no capacity, or the image failed to start); try another --gpu or later.")
            ep = ssh_endpoint(pod)
            if last == "RUNNING" and ep is not None:
                return SshTarget("root", ep[0], ep[1])
            time.sleep(poll_s)
        raise RunPodError(f"pod {self.pod_id} was not reachable over ssh within {timeout_s:.0f} s (last status {last}).")

    def status(self) -> str:
        try:
            pod = self.client.get_pod(self.pod_id)
        except RunPodError as exc:
            return "TERMINATED" if " 404" in str(exc) or "answered 404" in str(exc) else "UNKNOWN"
        return str(pod.get("desiredStatus") or pod.get("status") or "UNKNOWN")

    def release(self, how: str) -> str:
        """how: stop | terminate | keep. Never silent: a pod left running is said loudly."""
        if self.released:
            return "already released"
        if how == "keep":
            self.say("warning", f"pod {self.pod_id} ({self.gpu}) is STILL RUNNING and billing (--on-finish keep): stop it at {CONSOLE}.")
            self.released = True
            return "kept"
        try:
            if how == "terminate":
                self.client.terminate_pod(self.pod_id)
            else:
                self.client.stop_pod(self.pod_id)
        except RunPodError as exc:
            self.say("error", f"could not {how} pod {self.pod_id}: {exc}. IT MAY STILL BE RUNNING AND BILLING: {how} it at {CONSOLE}.")
            raise
        self.released = True
        done = "terminated (deleted)" if how == "terminate" else "stopped (its disk is kept and billed until you terminate it)"
        self.say("info", f"pod {self.pod_id} {done}")
        return how


def create_lease(gpu: str, public_key_file: Path, say: Callable[[str, str], None], *, name: str, image: str | None = None, disk_gb: int = 50, volume_gb: int = 0) -> PodLease:
    client = RunPodClient(api_key())
    try:
        public_key = public_key_file.read_text(encoding="utf-8").strip()
    except OSError:
        raise RunPodError(f"no public key at {public_key_file}: the pod needs one for ssh; give --identity KEY (with KEY.pub beside it).", 2) from None
    try:
        pod = client.create_pod(pod_body(name, gpu, public_key, image=image or DEFAULT_IMAGE, disk_gb=disk_gb, volume_gb=volume_gb))
    except RunPodError as exc:
        raise RunPodError(f"could not create a {gpu} pod: {exc}. No pod was made, nothing is billed; try another --gpu (ids: docs.runpod.io/references/gpu-types) or later.") from None
    pod_id = pod.get("id")
    if not pod_id:
        raise RunPodError(f"RunPod created no pod id (answer: {json.dumps(pod)[:200]}); check {CONSOLE} that nothing is running.")
    say("info", f"created pod {pod_id} ({gpu}); it bills until stopped")
    return PodLease(client, str(pod_id), gpu, say)


def default_public_key(identity: Path | None) -> Path:
    if identity is not None:
        return Path(str(identity) + ".pub")
    for name in ("id_ed25519.pub", "id_ecdsa.pub", "id_rsa.pub"):
        p = Path.home() / ".ssh" / name
        if p.is_file():
            return p
    return Path.home() / ".ssh" / "id_ed25519.pub"
