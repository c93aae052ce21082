"""Copy only what changed between here and the remote, and rewrite a run's paths for it.

Both directions compare a listing (size and whole-second mtime) of each side and send only
the files that differ, so a second sync of an unchanged tree sends nothing. The files go by
rsync when both ends have it (`--files-from`, mtimes kept), else as a tar stream over the same
ssh connection. Pulls skip files modified in the last few seconds (a checkpoint still being
written) until the final pull, so no file is fetched half-written and again. Every transfer is
recorded in run/remote/transfers.jsonl.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from prep.fsutil import TEMP_PREFIX
from train_bridge.remote.ssh import READ_ENV, Ssh, q
from train_bridge.remote.target import RemoteError

Listing = dict[str, tuple[int, int]]  # relative posix path -> (size, mtime seconds)

DISK_FULL_MARKERS = ("No space left on device", "Disk quota exceeded", "ENOSPC")

# Files still being written, never synced: our own temp files (prep.fsutil) and the `.tmp-*`
# names a pull writes before its rename.
_IN_FLIGHT = (TEMP_PREFIX, ".tmp")


def list_local(root: Path, exclude: Iterable[str] = ()) -> Listing:
    root = Path(root)
    out: Listing = {}
    if root.is_file():
        st = root.stat()
        return {root.name: (st.st_size, int(st.st_mtime))}
    if not root.is_dir():
        return out
    skip = tuple(exclude)
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        dirnames[:] = [d for d in dirnames if _rel(rel_dir, d) not in skip and not d.startswith(_IN_FLIGHT)]
        for f in filenames:
            rel = _rel(rel_dir, f)
            if rel in skip or f.startswith(_IN_FLIGHT):
                continue
            st = (Path(dirpath) / f).stat()
            out[rel] = (st.st_size, int(st.st_mtime))
    return out


def _rel(rel_dir: str, name: str) -> str:
    return name if rel_dir in ("", ".") else f"{rel_dir}/{name}"


FIND = "find {root} -type f -printf '%P\\t%s\\t%T@\\n'"


def list_remote_many(ssh: Ssh, roots: list[str], extra: str = "", env: bytes | None = None) -> tuple[list[Listing], int, str]:
    """Listings of several remote folders, the remote clock and the output of `extra`, in
    one ssh command (each command costs a session start on the remote). `env`: an
    env_block for READ_ENV, so `extra` sees --remote-env."""
    parts = ["date +%s"]
    for i, root in enumerate(roots):
        parts.append(f"echo '@@ROOT {i}'; if [ -d {q(root)} ]; then {FIND.format(root=q(root))}; fi")
    if extra:
        parts.append(f"echo '@@EXTRA'; {extra}")
    cmd = "; ".join(parts)
    out = ssh.text(READ_ENV + cmd, input=env, check=False) if env is not None else ssh.text(cmd, check=False)
    head, _, extra_out = out.partition("@@EXTRA\n")
    lines = head.splitlines()
    now = int(lines[0]) if lines and lines[0].strip().isdigit() else int(time.time())
    listings: list[Listing] = [{} for _ in roots]
    cur: Listing | None = None
    for line in lines[1:]:
        if line.startswith("@@ROOT "):
            cur = listings[int(line.split()[1])]
            continue
        cells = line.split("\t")
        if cur is not None and len(cells) == 3:
            cur[cells[0]] = (int(cells[1]), int(float(cells[2])))
    return listings, now, extra_out


def list_remote(ssh: Ssh, root: str) -> tuple[Listing, int]:
    """The remote tree's listing and the remote clock (GNU find, as on Linux GPU boxes)."""
    listings, now, _ = list_remote_many(ssh, [root])
    return listings[0], now


def changed(src: Listing, dst: Listing, only: Iterable[str] | None = None) -> list[str]:
    names = sorted(src) if only is None else sorted(n for n in only if n in src)
    return [n for n in names if dst.get(n) != src[n]]


@dataclass
class Syncer:
    """Transfers for one run; `via` is "rsync" or "tar" (decided once per connection)."""

    ssh: Ssh
    record_file: Path | None = None
    via: str = "auto"
    transfers: list[dict[str, Any]] = field(default_factory=list)

    def decide(self, remote_has_rsync: bool | None = None) -> str:
        if self.via == "auto":
            local = shutil.which("rsync") is not None and not os.environ.get("LORAPREP_REMOTE_NO_RSYNC")
            if local and remote_has_rsync is None:
                remote_has_rsync = self.ssh.run("command -v rsync >/dev/null 2>&1", check=False).returncode == 0
            self.via = "rsync" if local and remote_has_rsync else "tar"
        return self.via

    def _record(self, direction: str, local: Path, remote: str, files: list[str], nbytes: int) -> None:
        entry = {"at": time.strftime("%Y-%m-%dT%H:%M:%S"), "direction": direction, "via": self.via, "local": str(local), "remote": remote, "files": files, "bytes": nbytes}
        self.transfers.append(entry)
        if self.record_file is not None:
            self.record_file.parent.mkdir(parents=True, exist_ok=True)
            with open(self.record_file, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(entry) + "\n")

    # --- push ------------------------------------------------------------------------------

    def plan_push(self, local: Path, remote: str, *, only: Iterable[str] | None = None, exclude: Iterable[str] = ()) -> tuple[list[str], int]:
        mine = list_local(local, exclude)
        theirs, _ = list_remote(self.ssh, remote)
        files = changed(mine, theirs, only)
        return files, sum(mine[f][0] for f in files)

    def push(self, local: Path, remote: str, files: list[str]) -> list[str]:
        """Send `files` (relative to `local`, a folder) to the remote folder `remote`."""
        if not files:
            return []
        self.decide()
        nbytes = sum((Path(local) / f).stat().st_size for f in files)
        if self.via == "rsync":  # (tar makes the folder itself)
            self._rsync([f"--rsync-path=mkdir -p {q(remote)} && rsync", str(Path(local)) + "/", f"{self.ssh.target.user}@{self.ssh.target.host}:{remote}/"], files)
        else:
            self._tar_push(Path(local), remote, files)
        self._record("push", Path(local), remote, files, nbytes)
        return files

    def _tar_push(self, local: Path, remote: str, files: list[str]) -> None:
        proc = self.ssh.popen(f"mkdir -p {q(remote)} && tar -xf - -C {q(remote)}", stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        assert proc.stdin is not None and proc.stderr is not None
        try:
            with tarfile.open(fileobj=proc.stdin, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                for f in files:
                    tar.add(str(local / f), arcname=f, recursive=False)
        except BrokenPipeError:
            pass
        finally:
            proc.stdin.close()
        err = proc.stderr.read().decode("utf-8", "replace")
        rc = proc.wait()
        if rc != 0:
            raise self._transfer_error("upload", remote, rc, err)

    # --- pull ------------------------------------------------------------------------------

    def pull(self, remote: str, local: Path, *, stable_s: float = 0.0, exclude: Iterable[str] = (), listing: tuple[Listing, int] | None = None) -> list[str]:
        """Fetch what is new or changed in the remote folder; with `stable_s`, only files
        not modified for that long (so a file still being written waits for the next pull).
        `listing`: the remote listing and clock when the caller already has them."""
        theirs, now = listing if listing is not None else list_remote(self.ssh, remote)
        skip = tuple(exclude)
        theirs = {k: v for k, v in theirs.items() if not k.startswith(skip) or not skip}
        if stable_s:
            theirs = {k: v for k, v in theirs.items() if now - v[1] >= stable_s}
        files = changed(theirs, list_local(local))
        if not files:
            return []
        self.decide()
        Path(local).mkdir(parents=True, exist_ok=True)
        if self.via == "rsync":
            self._rsync([f"{self.ssh.target.user}@{self.ssh.target.host}:{remote}/", str(Path(local)) + "/"], files)
        else:
            self._tar_pull(remote, Path(local), files)
        self._record("pull", Path(local), remote, files, sum(theirs[f][0] for f in files))
        return files

    def _tar_pull(self, remote: str, local: Path, files: list[str]) -> None:
        proc = self.ssh.popen(f"tar --null -cf - -C {q(remote)} -T -", stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        proc.stdin.write(b"\0".join(f.encode() for f in files) + b"\0")
        proc.stdin.close()
        root = local.resolve()
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for m in tar:
                if not m.isfile():
                    continue
                dest = (root / m.name).resolve()
                if root not in dest.parents:  # never outside the output folder
                    continue
                dest.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(m)
                assert src is not None
                tmp = dest.with_name(f".tmp-{dest.name}")
                with open(tmp, "wb") as fh:
                    shutil.copyfileobj(src, fh)
                os.utime(tmp, (m.mtime, m.mtime))
                os.replace(tmp, dest)
        err = proc.stderr.read().decode("utf-8", "replace")
        rc = proc.wait()
        if rc != 0:
            raise self._transfer_error("download", remote, rc, err)

    def _rsync(self, ends: list[str], files: list[str]) -> None:
        argv = ["rsync", "-a", "--partial-dir=.rsync-partial", "--files-from=-", "--from0", "-e", self.ssh.rsync_shell(), *ends]
        r = subprocess.run(argv, input=b"\0".join(f.encode() for f in files) + b"\0", capture_output=True, check=False)
        if r.returncode != 0:
            raise self._transfer_error("rsync", ends[-1], r.returncode, r.stderr.decode("utf-8", "replace"))

    def _transfer_error(self, what: str, where: str, rc: int, err: str) -> RemoteError:
        if any(m in err for m in DISK_FULL_MARKERS):
            return RemoteError(no_space_message(self.ssh.target.display(), where, None, None))
        if rc == 255:
            from train_bridge.remote.ssh import classify_ssh_failure

            return classify_ssh_failure(self.ssh.target, err, self.ssh.known_hosts, self.ssh.identity)  # type: ignore[arg-type]
        return RemoteError(f"{what} to/from {self.ssh.target.display()}:{where} failed (exit {rc}): {err.strip()[-500:]}")


def no_space_message(where: str, folder: str, need: int | None, free: int | None) -> str:
    amounts = f" (needs {need / 1e9:.1f} GB, {free / 1e9:.1f} GB free)" if need is not None and free is not None else ""
    return (
        f"no space left on {where} in {folder}{amounts}: give the pod a bigger disk (RunPod: --disk GB / a larger volume), "
        f"or free space there, then run the same command again (what was already copied is not sent twice)."
    )


# --- path mapping ------------------------------------------------------------------------------


@dataclass
class PathMap:
    """Local absolute prefixes and where they live on the remote (longest prefix wins)."""

    pairs: list[tuple[str, str]] = field(default_factory=list)

    def add(self, local: Path | str, remote: str) -> None:
        self.pairs.append((str(Path(local)), remote))
        self.pairs.sort(key=lambda p: -len(p[0]))

    def to_remote(self, value: str) -> str | None:
        return _swap(value, self.pairs)

    def to_local(self, value: str) -> str | None:
        return _swap(value, sorted(((r, l) for l, r in self.pairs), key=lambda p: -len(p[0])))

    def rewrite(self, data: Any, back: bool = False) -> Any:
        """`data` (parsed JSON/TOML) with every mapped absolute path swapped."""
        if isinstance(data, dict):
            return {k: self.rewrite(v, back) for k, v in data.items()}
        if isinstance(data, list):
            return [self.rewrite(v, back) for v in data]
        if isinstance(data, str):
            swapped = self.to_local(data) if back else self.to_remote(data)
            return data if swapped is None else swapped
        return data


def _swap(value: str, pairs: list[tuple[str, str]]) -> str | None:
    if not value.startswith("/") and not (len(value) > 2 and value[1] == ":"):
        return None
    for src, dst in pairs:
        if value == src:
            return dst
        if value.startswith(src.rstrip("/") + "/"):
            rest = value[len(src.rstrip("/")) + 1 :]
            return str(PurePosixPath(dst) / PurePosixPath(*Path(rest).parts))
    return None
