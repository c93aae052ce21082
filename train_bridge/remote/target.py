"""Where a remote run lives: the `--remote` address and run/remote.json (no secrets in it)."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from prep.fsutil import atomic_write_text

REMOTE_JSON = "remote.json"
REMOTE_SUBDIR = "remote"  # run/remote/: launcher output pulled back, the transfer record


class RemoteError(RuntimeError):
    """A remote step failed; the message names the cause and the fix. `code` is the exit code."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class SshTarget:
    user: str
    host: str
    port: int = 22

    def display(self) -> str:
        return f"{self.user}@{self.host}" + (f":{self.port}" if self.port != 22 else "")


_HOST_RE = re.compile(r"^[A-Za-z0-9._:\-\[\]]+$")
_USER_RE = re.compile(r"^[A-Za-z0-9._\-]+$")


def parse_ssh_url(url: str) -> SshTarget:
    """`ssh://user@host[:port]` (also `user@host[:port]`). Refuses what ssh would read as an option."""
    text = url if "://" in url else "ssh://" + url
    parts = urlsplit(text)
    hint = "give it as ssh://USER@HOST[:PORT], e.g. ssh://root@1.2.3.4:22022"
    if parts.scheme != "ssh":
        raise RemoteError(f"--remote {url!r}: unknown scheme {parts.scheme!r}; {hint} (or --remote runpod)", 2)
    try:
        port = parts.port or 22
    except ValueError:
        raise RemoteError(f"--remote {url!r}: the port is not a number; {hint}", 2) from None
    user, host = parts.username, parts.hostname
    if not user or not host:
        raise RemoteError(f"--remote {url!r}: needs both a user and a host; {hint}", 2)
    if parts.password is not None:
        raise RemoteError(f"--remote {url!r}: passwords are not accepted in the address; use your ssh agent or --identity KEY", 2)
    if not _USER_RE.match(user) or not _HOST_RE.match(host) or host.startswith("-") or user.startswith("-"):
        raise RemoteError(f"--remote {url!r}: unusual characters in user or host; {hint}", 2)
    return SshTarget(user, host, port)


@dataclass
class RemoteRecord:
    """run/remote.json: enough to reconnect (`attach`) and nothing secret."""

    kind: str  # "ssh" or "runpod"
    user: str
    host: str
    port: int
    remote_root: str  # the run's folder on the remote (holds run/, output/, data/, models/)
    remote_run: str
    remote_output: str
    python: str
    identity: str | None = None
    known_hosts: str | None = None
    pid: int | None = None  # the remote launcher
    log: str | None = None  # the remote trainer log
    on_finish: str = "stop"
    pod_id: str | None = None
    gpu: str | None = None
    state: str = "starting"
    started_at: str | None = None
    path_map: list[list[str]] = field(default_factory=list)  # [local, remote] prefixes
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def target(self) -> SshTarget:
        return SshTarget(self.user, self.host, self.port)

    def write(self, run_dir: Path) -> Path:
        path = Path(run_dir) / REMOTE_JSON
        atomic_write_text(path, json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def read(cls, run_dir: Path) -> RemoteRecord:
        path = Path(run_dir) / REMOTE_JSON
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RemoteError(
                f"{run_dir} has no {REMOTE_JSON}: it was not launched with --remote. Start it with "
                f"`train_bridge launch {run_dir} --remote ssh://USER@HOST[:PORT]`.", 2
            ) from None
        except ValueError as exc:
            raise RemoteError(f"{path} is not valid JSON ({exc}); launch again with --remote to rewrite it.", 2) from None
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def read_record(run_dir: Path) -> RemoteRecord | None:
    try:
        return RemoteRecord.read(run_dir)
    except RemoteError:
        return None
