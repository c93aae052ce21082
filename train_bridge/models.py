"""Training weights in one command: `train_bridge models get ARCH` and `models list`.

The files each architecture needs are data (`prep.archs.WEIGHTS`: repo id, file, revision pin,
and size/sha256 where published). They go into the Hugging Face cache through
`hf_hub_download` (so `hf` and every other tool finds them too), and `config` fills model
roles from there (`cached_role_files`). Hub access reuses prep.models: the endpoint and cache
read at call time, HF_HUB_OFFLINE, and the one short reachability probe.

Before a byte is downloaded the total size of what is missing is asked of the Hub (one HEAD per
file) and compared with the free space where the cache is; a gated repository (401/403) is
reported with what to do (HF_TOKEN, accept the licence on the repo page). After download each
file's sha256 is recorded in `weights.json` of loraprep's cache folder (train_bridge.setup.
cache_root) and checked against the published digest where there is one; `list` re-hashes and
compares. No token is ever printed or stored.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prep.archs import WEIGHTS, ArchSpec, WeightFile, get_arch
from prep.fsutil import atomic_write_text, sha256_file
from prep.models import hub_cache_dir, hub_endpoint, hub_offline, probe_hub

RECORD_FILE = "weights.json"
CATALOGUE_ENV = "LORAPREP_WEIGHTS"
"""A JSON file whose entries replace the catalogue's for the architectures it names (mirrors, forks, tests)."""


class WeightsError(RuntimeError):
    """`models get` cannot do what was asked; the message says why and how to fix it."""


class GatedAccessError(WeightsError):
    """The Hub refused a file with 401/403: a token and an accepted licence are needed."""


class NotEnoughSpace(WeightsError):
    """The files to download do not fit in the free space of the cache's disk."""


# -- which files ---------------------------------------------------------------------------------


def catalogue() -> dict[str, tuple[WeightFile, ...]]:
    """prep.archs.WEIGHTS, with the architectures named in $LORAPREP_WEIGHTS replaced by that file's entries.

    The file: `{"anima": [{"role": "dit", "repo_id": "me/mirror", "filename": "a.safetensors",
    "revision": "main"}, ...]}`; the other WeightFile fields are optional.
    """
    path = os.environ.get(CATALOGUE_ENV)
    if not path:
        return WEIGHTS
    try:
        data = json.loads(Path(path).expanduser().read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("the top level must be an object: architecture -> list of files")
        out = dict(WEIGHTS)
        for arch, entries in data.items():
            spec = get_arch(arch)
            roles = {m.name for m in spec.models}
            files = tuple(WeightFile(**e) for e in entries)
            bad = [w.role for w in files if w.role not in roles]
            if bad:
                raise ValueError(f"{spec.name} has no role {', '.join(bad)} (its roles: {', '.join(sorted(roles))})")
            out[spec.name] = files
        return out
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise WeightsError(f"${CATALOGUE_ENV}={path}: {str(exc).strip(chr(39))}; fix the file or unset {CATALOGUE_ENV}") from None


def weight_files(arch: str | ArchSpec, roles: list[str] | None = None, variant: str = "") -> list[WeightFile]:
    """The catalogue files for `arch`: `roles` (default: every role fetched by default), `variant` replacing defaults."""
    spec = arch if isinstance(arch, ArchSpec) else get_arch(arch)
    table = catalogue().get(spec.name, ())
    variants = sorted({w.variant for w in table if w.variant})
    if variant and variant not in variants:
        have = f"its variants: {', '.join(variants)}" if variants else "it has none"
        raise WeightsError(f"{spec.name} has no variant {variant!r} ({have})")
    known = [w.role for w in table if not w.variant]
    if roles:
        unknown = [r for r in roles if r not in known]
        if unknown:
            raise WeightsError(f"{spec.name} has no downloadable role {', '.join(map(repr, unknown))} (its roles: {', '.join(dict.fromkeys(known))})")
        wanted = list(dict.fromkeys(roles))
    else:
        wanted = [w.role for w in table if not w.variant and w.by_default]
    out = []
    for role in wanted:
        default = next(w for w in table if w.role == role and not w.variant)
        chosen = next((w for w in table if w.role == role and variant and w.variant == variant), default)
        out.append(chosen)
    return out


def hub_url(w: WeightFile) -> str:
    from huggingface_hub import hf_hub_url

    return hf_hub_url(w.repo_id, w.filename, revision=w.revision, endpoint=hub_endpoint())


def repo_page(w: WeightFile) -> str:
    return f"https://huggingface.co/{w.repo_id}"


def cached_path(w: WeightFile) -> Path | None:
    """The file in the HF cache at `w.revision`, by a file-system lookup only (no network)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(w.repo_id, w.filename, revision=w.revision, cache_dir=str(hub_cache_dir()))
    return Path(found) if isinstance(found, str) and Path(found).is_file() else None


# -- the sha256 record ---------------------------------------------------------------------------


def record_path() -> Path:
    from train_bridge.setup import cache_root

    return cache_root() / RECORD_FILE


def read_records() -> dict[str, dict[str, Any]]:
    """path -> record; an unreadable record file counts as empty (list then says "no record")."""
    p = record_path()
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    files = data.get("files") if isinstance(data, dict) else None
    return files if isinstance(files, dict) else {}


def _write_record(path: Path, w: WeightFile, digest: str) -> dict[str, Any]:
    records = read_records()
    rec = {
        "repo_id": w.repo_id,
        "filename": w.filename,
        "revision": w.revision,
        "commit": _commit_of(path, w),
        "size": path.stat().st_size,
        "sha256": digest,
        "published_sha256": w.sha256,
        "recorded": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    records[str(path)] = rec
    atomic_write_text(record_path(), json.dumps({"version": 1, "files": records}, indent=1, sort_keys=True) + "\n")
    return rec


def _commit_of(path: Path, w: WeightFile) -> str:
    """The snapshot folder name: `.../snapshots/<commit>/<filename>`."""
    up = path
    for _ in Path(w.filename).parts:
        up = up.parent
    return up.name


# -- get -----------------------------------------------------------------------------------------


@dataclass
class FileResult:
    arch: str
    role: str
    repo_id: str
    filename: str
    revision: str
    status: str
    """"cached" (was there), "downloaded", "missing" (offline, not cached)."""
    path: str | None = None
    size: int | None = None
    sha256: str | None = None


@dataclass
class GetReport:
    arch: str
    files: list[FileResult] = field(default_factory=list)
    to_download: int = 0
    """Bytes that were (or, with dry_run, would be) downloaded."""
    free: int | None = None

    @property
    def n_failed(self) -> int:
        return sum(1 for f in self.files if f.status == "missing")

    def to_json(self) -> dict[str, Any]:
        return {"arch": self.arch, "to_download": self.to_download, "free": self.free, "files": [f.__dict__ for f in self.files]}


def human_size(n: int | None) -> str:
    if n is None:
        return "size unknown"
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= div:
            return f"{n / div:.2f} {unit}"
    return f"{n} B"


def _free_space(folder: Path) -> int:
    p = folder
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def _gated_message(w: WeightFile, status: int | None) -> str:
    token = "HF_TOKEN is set but this account has no access" if os.environ.get("HF_TOKEN") else "HF_TOKEN is not set"
    kind = "is gated" if w.gated else "refused the download (the repository may be gated, private or renamed)"
    fix = (
        f"Log in at {repo_page(w)}, accept the licence there, create a read token at https://huggingface.co/settings/tokens "
        "and export it as HF_TOKEN, then run this again."
    )
    if not w.gated:
        fix += " If the repository is gone, pass the file's path to `train_bridge config` instead."
    return f"{w.repo_id} {kind} (the Hub answered {status or 'an authorisation error'} for {w.filename}; {token}). {fix}"


def _hub_error(exc: Exception, w: WeightFile) -> WeightsError:
    """huggingface_hub's exceptions as messages that say what to do."""
    from huggingface_hub.errors import (
        HfHubHTTPError,
        RemoteEntryNotFoundError,
        RevisionNotFoundError,
    )

    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, HfHubHTTPError) and status in (401, 403):
        return GatedAccessError(_gated_message(w, status))
    if isinstance(exc, RevisionNotFoundError):
        return WeightsError(f"{w.repo_id} has no revision {w.revision}: loraprep's catalogue (prep/archs.py WEIGHTS) is out of date; pass the file's path instead")
    if isinstance(exc, RemoteEntryNotFoundError):
        return WeightsError(f"{w.repo_id} has no {w.filename} at {w.revision}: loraprep's catalogue (prep/archs.py WEIGHTS) is out of date; pass the file's path instead")
    return WeightsError(f"could not reach {w.repo_id}/{w.filename} (revision {w.revision}): {type(exc).__name__}: {exc}")


def _remote_size(w: WeightFile) -> int | None:
    from huggingface_hub import get_hf_file_metadata

    try:
        meta = get_hf_file_metadata(hub_url(w), endpoint=hub_endpoint())
    except Exception as exc:
        raise _hub_error(exc, w) from None
    return meta.size if meta.size is not None else w.size


def _verify_new(path: Path, w: WeightFile) -> str:
    digest = sha256_file(path)
    _write_record(path, w, digest)
    if w.sha256 and digest != w.sha256:
        raise WeightsError(
            f"{path}: sha256 {digest} is not the published {w.repo_id}/{w.filename}@{w.revision} ({w.sha256}); "
            "delete it and run `train_bridge models get` again"
        )
    return digest


class _RichBar:
    """The byte progress huggingface_hub reports (its `tqdm_class` protocol), as a rich bar on stderr.

    huggingface_hub calls it with desc/total/initial, enters it, and calls `update(n)` (negative
    when a resumed download had to start again); LORAPREP_NO_PROGRESS turns it off.
    """

    def __init__(self, *args: Any, desc: str = "", total: float | None = None, initial: float = 0, **_kw: Any) -> None:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        from prep.cli.common import console

        self._p: Any = None
        if os.environ.get("LORAPREP_NO_PROGRESS"):
            return
        cols = (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
        self._p = Progress(*cols, console=console, transient=False)
        self._task = self._p.add_task(Path(desc).name or desc, total=total, completed=initial)
        self._p.start()

    def update(self, n: float = 1) -> None:
        if self._p is not None:
            self._p.advance(self._task, n)

    def close(self) -> None:
        if self._p is not None:
            self._p.stop()
            self._p = None

    def __enter__(self) -> _RichBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def get_weights(
    arch: str,
    roles: list[str] | None = None,
    variant: str = "",
    *,
    dry_run: bool = False,
    say: Callable[[str], None] = lambda _m: None,
) -> GetReport:
    """Download what `arch` needs into the HF cache; sizes and free space first. Raises WeightsError."""
    spec = get_arch(arch)
    files = weight_files(spec, roles, variant)
    report = GetReport(spec.name)
    missing: list[WeightFile] = []
    for w in files:
        p = cached_path(w)
        if p is not None:
            report.files.append(FileResult(spec.name, w.role, w.repo_id, w.filename, w.revision, "cached", str(p), p.stat().st_size))
        else:
            missing.append(w)
    if not missing:
        _record_unrecorded(report, files, dry_run)
        return report
    if hub_offline():
        for w in missing:
            report.files.append(FileResult(spec.name, w.role, w.repo_id, w.filename, w.revision, "missing"))
        return report
    why = probe_hub()
    if why is not None:
        raise WeightsError(f"cannot download {len(missing)} file(s) for {spec.name}: {why}. Where the Hub is unreachable, set HF_HUB_OFFLINE=1 and pass the model paths.")
    sizes = {w: _remote_size(w) for w in missing}
    total = sum(s or 0 for s in sizes.values())
    cache = hub_cache_dir()
    free = _free_space(cache)
    report.to_download, report.free = total, free
    say(f"{spec.name}: {len(missing)} file(s) to download, {human_size(total)} in total; {human_size(free)} free at {cache}")
    for w in missing:
        say(f"  {w.role}: {w.repo_id}/{w.filename} @ {w.revision[:12]} ({human_size(sizes[w])})")
    if total > free:
        raise NotEnoughSpace(
            f"{spec.name} needs {human_size(total)} ({total} bytes) but {cache} has {human_size(free)} ({free} bytes) free: "
            "free some space, or point HF_HOME / HF_HUB_CACHE at a bigger disk, and run this again"
        )
    if dry_run:
        for w in missing:
            report.files.append(FileResult(spec.name, w.role, w.repo_id, w.filename, w.revision, "would download", size=sizes[w]))
        return report
    from huggingface_hub import hf_hub_download

    for w in missing:
        try:
            path = Path(hf_hub_download(w.repo_id, w.filename, revision=w.revision, cache_dir=str(cache), endpoint=hub_endpoint(), tqdm_class=_RichBar))
        except WeightsError:
            raise
        except Exception as exc:
            raise _hub_error(exc, w) from None
        digest = _verify_new(path, w)
        report.files.append(FileResult(spec.name, w.role, w.repo_id, w.filename, w.revision, "downloaded", str(path), path.stat().st_size, digest))
    _record_unrecorded(report, files, dry_run)
    return report


def _record_unrecorded(report: GetReport, files: list[WeightFile], dry_run: bool) -> None:
    """A cached file without a record (put there by `hf download`) is hashed and recorded once."""
    if dry_run:
        return
    records = read_records()
    by_role = {w.role: w for w in files}
    for f in report.files:
        if f.status != "cached" or not f.path:
            continue
        rec = records.get(f.path)
        if rec and rec.get("size") == Path(f.path).stat().st_size:
            f.sha256 = rec.get("sha256")
            continue
        f.sha256 = _verify_new(Path(f.path), by_role[f.role])


# -- list ----------------------------------------------------------------------------------------


@dataclass
class ListedFile:
    arch: str
    role: str
    variant: str
    repo_id: str
    filename: str
    revision: str
    present: bool
    path: str | None = None
    size: int | None = None
    check: str = ""
    """"ok", "mismatch" (differs from its record or the published digest), "no record", "not verified"."""

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def list_weights(arch: str | None = None, *, verify: bool = True) -> list[ListedFile]:
    """Every catalogue file of `arch` (default: all): present in the cache?, where, size, sha256 check."""
    table = catalogue()
    specs = [get_arch(arch)] if arch else [get_arch(a) for a in table]
    records = read_records()
    hashed: dict[str, str] = {}
    out: list[ListedFile] = []
    for spec in specs:
        for w in table.get(spec.name, ()):
            p = cached_path(w)
            item = ListedFile(spec.name, w.role, w.variant, w.repo_id, w.filename, w.revision, p is not None)
            if p is not None:
                item.path, item.size = str(p), p.stat().st_size
                rec = records.get(str(p))
                if not verify:
                    item.check = "not verified"
                else:
                    if str(p) not in hashed:
                        hashed[str(p)] = sha256_file(p)
                    digest = hashed[str(p)]
                    expected = [d for d in ((rec or {}).get("sha256"), w.sha256) if d]
                    if any(d != digest for d in expected):
                        item.check = "mismatch"
                    elif rec is None:
                        item.check = "no record" + (" (matches the published sha256)" if w.sha256 else "")
                    else:
                        item.check = "ok"
            out.append(item)
    return out


# -- for config ----------------------------------------------------------------------------------


def cached_role_files(spec: ArchSpec) -> dict[str, tuple[WeightFile, Path]]:
    """role -> (catalogue file, cached path) for the roles `config` may fill (default roles only).

    File-system lookups only (no network, no hashing): a file whose record says its sha256
    differs from the published one is skipped. The default variant wins over the others.
    Raises WeightsError for a bad $LORAPREP_WEIGHTS.
    """
    records = read_records()
    out: dict[str, tuple[WeightFile, Path]] = {}
    table = catalogue().get(spec.name, ())
    default_roles = {w.role for w in table if not w.variant and w.by_default}
    for w in sorted(table, key=lambda x: x.variant != ""):
        if w.role not in default_roles or w.role in out:
            continue
        p = cached_path(w)
        if p is None:
            continue
        rec = records.get(str(p))
        if rec and w.sha256 and rec.get("size") == p.stat().st_size and rec.get("sha256") != w.sha256:
            continue
        out[w.role] = (w, p)
    return out
