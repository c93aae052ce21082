"""The one place the system `ssh` client runs: argv lists, host keys verified, secrets on stdin.

Keys come from the user's ssh agent (SSH_AUTH_SOCK) or `--identity`. Host keys are checked
against loraprep's known_hosts file (then ~/.ssh/known_hosts); an unknown host is refused
unless `--accept-new-host-key`, which makes ssh record it (StrictHostKeyChecking=accept-new)
in loraprep's file. A changed key is always refused. Secrets (HF_TOKEN, ...) are written to
the remote shell's stdin and exported there: never on a command line, in a file or in a log.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from train_bridge.remote.target import RemoteError, SshTarget

# Environment variables forwarded to the remote trainer when set here (hub downloads, logging).
SECRET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# Prepended to a remote command that reads `NAME=value` lines from stdin (ended by an empty
# line) and exports them, so secrets reach the remote process through the ssh channel only.
READ_ENV = 'while IFS= read -r __l; do [ -z "$__l" ] && break; export "$__l"; done; unset __l; '


def known_hosts_file() -> Path:
    """loraprep's own known_hosts (LORAPREP_KNOWN_HOSTS, else <loraprep home>/ssh/known_hosts)."""
    if os.environ.get("LORAPREP_KNOWN_HOSTS"):
        return Path(os.environ["LORAPREP_KNOWN_HOSTS"]).expanduser()
    from train_bridge.setup import cache_root

    return cache_root() / "ssh" / "known_hosts"


def control_dir() -> Path:
    """Short folder for ControlMaster sockets (a unix socket path must stay under ~100 bytes)."""
    base = Path(os.environ.get("XDG_RUNTIME_DIR") or "/tmp") / f"loraprep-ssh-{os.getuid() if hasattr(os, 'getuid') else 0}"
    base.mkdir(mode=0o700, exist_ok=True)
    return base


def secrets_from_env(names: tuple[str, ...] = SECRET_ENV) -> dict[str, str]:
    return {n: os.environ[n] for n in names if os.environ.get(n)}


def env_block(env: dict[str, str]) -> bytes:
    """`NAME=value` lines for READ_ENV; refuses what the shell `read` would mangle."""
    lines = []
    for k, v in env.items():
        if not _ENV_NAME.match(k):
            raise RemoteError(f"environment variable name {k!r} is not valid", 2)
        if "\n" in v or "\r" in v or "\0" in v:
            raise RemoteError(f"the value of {k} contains a line break; it cannot be passed to the remote", 2)
        lines.append(f"{k}={v}\n")
    return ("".join(lines) + "\n").encode()


def classify_ssh_failure(target: SshTarget, stderr: str, known_hosts: Path, identity: Path | None) -> RemoteError:
    """ssh's exit 255 turned into the cause and the fix."""
    err = stderr.strip()
    where = target.display()
    if "REMOTE HOST IDENTIFICATION HAS CHANGED" in err or "Host key for" in err and "has changed" in err:
        return RemoteError(
            f"the host key of {where} has CHANGED since it was recorded in {known_hosts}. That is what a man-in-the-middle "
            f"looks like, and also what a re-created server looks like: if you know the machine was rebuilt, remove its line "
            f"(`ssh-keygen -R '[{target.host}]:{target.port}' -f {known_hosts}`) and connect again with --accept-new-host-key."
        )
    if "Host key verification failed" in err or "No ED25519 host key is known" in err or "host key is not known" in err.lower():
        return RemoteError(
            f"the host key of {where} is not known yet, so loraprep refuses to connect. Check its fingerprint "
            f"(`ssh-keyscan -p {target.port} {target.host} | ssh-keygen -lf -`, compare with the provider's console), then run "
            f"again with --accept-new-host-key to record it in {known_hosts}."
        )
    if "Connection refused" in err:
        return RemoteError(
            f"ssh to {where} was refused (nothing listens on port {target.port}): check the host and port, that sshd runs there, "
            f"and for a pod that its TCP port 22 is exposed (the pod's 'Connect' tab shows the public port)."
        )
    if "Permission denied" in err:
        how = f"the key {identity}" if identity else "the keys of your ssh agent (ssh-add -l lists them)"
        return RemoteError(
            f"{where} refused {how}: add your public key to ~{target.user}/.ssh/authorized_keys there, "
            f"or pass the matching private key with --identity PATH."
        )
    if "timed out" in err or "Could not resolve hostname" in err or "No route to host" in err or "Network is unreachable" in err:
        return RemoteError(f"cannot reach {where}: {err.splitlines()[-1] if err else 'no answer'}. Check the address and your network.")
    last = err.splitlines()[-1] if err else "ssh exited with 255"
    return RemoteError(f"ssh to {where} failed: {last}")


@dataclass
class Ssh:
    target: SshTarget
    identity: Path | None = None
    accept_new_host_key: bool = False
    known_hosts: Path | None = None
    connect_timeout: int = 10
    multiplex: bool = True  # one TCP connection for the many short commands of a sync (ControlMaster)

    def __post_init__(self) -> None:
        if shutil.which("ssh") is None:
            raise RemoteError("the `ssh` client is not installed here: install OpenSSH (Debian/Ubuntu: apt-get install openssh-client).", 2)
        if self.identity is not None and not Path(self.identity).expanduser().is_file():
            raise RemoteError(f"--identity {self.identity}: no such key file; give the private key that the remote accepts.", 2)
        self.known_hosts = Path(self.known_hosts or known_hosts_file())
        self.known_hosts.parent.mkdir(parents=True, exist_ok=True)

    def options(self) -> list[str]:
        """The -o options every ssh (and rsync -e) gets."""
        kh = str(self.known_hosts)
        files = kh if " " in kh else f"{kh} ~/.ssh/known_hosts"
        opts = [
            "-o", "BatchMode=yes",
            "-o", f"StrictHostKeyChecking={'accept-new' if self.accept_new_host_key else 'yes'}",
            "-o", f"UserKnownHostsFile={files}",
            "-o", f"ConnectTimeout={self.connect_timeout}",
            "-o", "ServerAliveInterval=5",
            "-o", "ServerAliveCountMax=3",
            "-o", "LogLevel=ERROR",
            "-p", str(self.target.port),
        ]
        if self.multiplex:
            # one master per process, target, key and known_hosts file: a connection checked
            # against one trust file is never reused by a command that trusts another, and
            # `close` never ends a connection another train_bridge process is streaming over
            key = [os.getpid(), self.target.user, self.target.host, self.target.port, str(self.identity), str(self.known_hosts)]
            tag = hashlib.sha1(json.dumps(key).encode()).hexdigest()[:20]
            opts += ["-o", "ControlMaster=auto", "-o", f"ControlPath={control_dir()}/{tag}", "-o", "ControlPersist=30"]
        if self.identity is not None:
            opts += ["-i", str(Path(self.identity).expanduser()), "-o", "IdentitiesOnly=yes"]
        if os.environ.get("LORAPREP_SSH_CONFIG"):
            opts = ["-F", os.environ["LORAPREP_SSH_CONFIG"], *opts]
        return opts

    def argv(self, command: str) -> list[str]:
        return ["ssh", *self.options(), f"{self.target.user}@{self.target.host}", "--", command]

    def run(self, command: str, *, input: bytes | None = None, timeout: float | None = 120, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        """Run one remote shell command; exit 255 (ssh's own failure) becomes a RemoteError."""
        try:
            r = subprocess.run(self.argv(command), input=input if input is not None else b"", capture_output=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise RemoteError(f"{self.target.display()} did not answer within {timeout:.0f} s (command: {command[:80]}...)") from None
        if r.returncode == 255:
            raise classify_ssh_failure(self.target, r.stderr.decode("utf-8", "replace"), self.known_hosts, self.identity)  # type: ignore[arg-type]
        if check and r.returncode != 0:
            raise RemoteError(f"on {self.target.display()}: `{command[:120]}` failed (exit {r.returncode}): {r.stderr.decode('utf-8', 'replace').strip()[-600:]}")
        return r

    def text(self, command: str, **kw: object) -> str:
        return self.run(command, **kw).stdout.decode("utf-8", "replace")  # type: ignore[arg-type]

    def popen(self, command: str, **kw: object) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.argv(command), **kw)  # type: ignore[call-overload]

    def close(self) -> None:
        """End the shared connection (it would otherwise linger ControlPersist seconds)."""
        if self.multiplex:
            subprocess.run(["ssh", *self.options(), "-O", "exit", f"{self.target.user}@{self.target.host}"], capture_output=True, timeout=15, check=False)

    def rsync_shell(self) -> str:
        """The `-e` value for rsync: our ssh with the same options, quoted for rsync's splitter."""
        return " ".join(shlex.quote(a) for a in ["ssh", *self.options()])


def q(*parts: str | Path) -> str:
    """Shell-quote for the remote command line (paths only; secrets never pass here)."""
    return " ".join(shlex.quote(str(p)) for p in parts)
