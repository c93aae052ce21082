"""Resolving model files: an explicit path, an environment variable, a shipped file, or the HF cache.

One function for every model the project runs (face detectors, WD taggers), so offline use
works the same everywhere. Order: a path the user gives (flag) > the model's environment
variable > a file shipped inside the package (YuNet) > the Hugging Face cache > a download.

- `HF_HUB_OFFLINE=1` (read when a model is resolved, not only at import): only the cache is
  looked at; no connection is attempted.
- Online, a model that is not cached costs one short reachability probe of the Hub
  (`HUB_PROBE_TIMEOUT` seconds, no retries) before huggingface_hub downloads it, so an
  unreachable Hub is reported in seconds instead of after huggingface_hub's retry loop.
- Pins: a `ModelRef` names a revision and, where we know it, the sha256 of the tested file; a
  cached, downloaded or shipped file that does not match is an error (a path the user gives is
  trusted as is). Where each pin comes from: docs/models.md.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path

HUB_PROBE_TIMEOUT = 4.0
"""Seconds the reachability probe waits for the Hub to answer (override: LORAPREP_HUB_TIMEOUT)."""

_TRUE = {"1", "on", "yes", "true"}


class ModelNotAvailable(RuntimeError):
    """The model file could not be found or downloaded; the message says how to provide it."""


@dataclass(frozen=True)
class ModelRef:
    """Where a model file comes from by default."""

    repo_id: str
    filename: str
    revision: str = "main"
    env_var: str | None = None
    """Environment variable that may hold a path to the file (or to a folder holding it)."""
    repo_type: str = "model"
    sha256: str | None = None
    """sha256 of the file we tested; checked for shipped, cached and downloaded copies."""
    bundled: Path | None = None
    """A copy shipped inside the package, used before the Hub (no download, no network)."""
    flag: str | None = None
    """The command-line flag that takes the file's path, named in errors."""


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) as set now; huggingface_hub's import-time value otherwise."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        value = os.environ.get(var)
        if value is not None and value.strip() != "":
            if value.strip().lower() in _TRUE:
                return True
            if var == "HF_HUB_OFFLINE":
                return False
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - core dependency
        return False
    return bool(constants.HF_HUB_OFFLINE)


def hub_endpoint() -> str:
    """The Hub's base URL (HF_ENDPOINT, as huggingface_hub reads it)."""
    env = os.environ.get("HF_ENDPOINT")
    if env:
        return env.rstrip("/")
    try:
        from huggingface_hub import constants

        return str(constants.ENDPOINT).rstrip("/")
    except ImportError:  # pragma: no cover - core dependency
        return "https://huggingface.co"


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache as huggingface_hub would pick it, read now (HF_HUB_CACHE > HF_HOME/hub).

    huggingface_hub reads these at import; passing this as `cache_dir` lets a program (or a test)
    that sets them at run time get the same answer everywhere.
    """
    for var, sub in (("HF_HUB_CACHE", None), ("HUGGINGFACE_HUB_CACHE", None), ("HF_HOME", "hub")):
        value = os.environ.get(var)
        if value:
            return Path(value).expanduser() / sub if sub else Path(value).expanduser()
    try:
        from huggingface_hub import constants

        return Path(constants.HF_HUB_CACHE)
    except ImportError:  # pragma: no cover - core dependency
        xdg = os.environ.get("XDG_CACHE_HOME")
        return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "huggingface" / "hub"


def download_command(ref: ModelRef, filename: str | None = None) -> str:
    """The `hf download` command that puts the file in the cache where this resolver finds it."""
    rev = f" --revision {ref.revision}" if ref.revision != "main" else ""
    kind = f" --repo-type {ref.repo_type}" if ref.repo_type != "model" else ""
    return f"hf download {ref.repo_id} {filename or ref.filename}{rev}{kind}"


def _how_to_provide(ref: ModelRef, name: str) -> str:
    ways = []
    if ref.flag:
        ways.append(f"pass the file with {ref.flag} PATH")
    else:
        ways.append("pass the file's path")
    if ref.env_var:
        ways.append(f"set ${ref.env_var} to the file (or its folder)")
    ways.append(f"or fill the cache once where the Hub is reachable: `{download_command(ref, name)}`")
    return "; ".join(ways)


def _from_path(path: Path, filename: str) -> Path | None:
    if path.is_file():
        return path
    if path.is_dir() and (path / filename).is_file():
        return path / filename
    if path.is_dir() and (path / Path(filename).name).is_file():
        return path / Path(filename).name
    return None


_DIGESTS: dict[tuple[str, int, int], str] = {}


def _sha256(path: Path) -> str:
    """sha256 of `path`, memoised by (path, size, mtime) so a 44 MB model is hashed once per process."""
    from prep.fsutil import sha256_file

    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = sha256_file(path)
    return _DIGESTS[key]


def _verified(ref: ModelRef, path: Path, where: str) -> Path:
    if ref.sha256 is None:
        return path
    digest = _sha256(path)
    if digest != ref.sha256:
        raise ModelNotAvailable(
            f"{path} ({where}): sha256 {digest} is not the tested {ref.repo_id}/{ref.filename} "
            f"(expected {ref.sha256}). Delete it and download again (`{download_command(ref)}`), "
            f"or pass a copy you trust with {ref.flag or 'its path'}"
            + (f" or ${ref.env_var}" if ref.env_var else "")
            + " (a path you give is not checked)."
        )
    return path


def probe_hub(endpoint: str | None = None, timeout: float | None = None) -> str | None:
    """None when the Hub answers an HTTP request within `timeout`, else why not (one attempt, no retries).

    Any HTTP status counts as reachable (the download then reports auth or missing files itself);
    no token is sent.
    """
    base = endpoint or hub_endpoint()
    if timeout is None:
        try:
            timeout = float(os.environ.get("LORAPREP_HUB_TIMEOUT", HUB_PROBE_TIMEOUT))
        except ValueError:
            timeout = HUB_PROBE_TIMEOUT

    class _NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            return None

    opener = urllib.request.build_opener(_NoRedirect())
    req = urllib.request.Request(f"{base}/api/whoami-v2", method="HEAD", headers={"User-Agent": "loraprep-probe"})
    try:
        with opener.open(req, timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None  # it answered
    except urllib.error.URLError as exc:
        return f"{base} is not reachable ({exc.reason})"
    except (TimeoutError, OSError) as exc:
        return f"{base} did not answer within {timeout:g} s ({type(exc).__name__})"


def resolve_model_file(ref: ModelRef, explicit: str | os.PathLike[str] | None = None, *, filename: str | None = None) -> Path:
    """Path to `filename` (default `ref.filename`) of `ref`.

    Order: `explicit` path (a file, or a folder holding the file) > `ref.env_var` > the shipped
    copy > the HF cache > a download (skipped when HF_HUB_OFFLINE is set; one short probe first).
    Never prints or returns a token.
    """
    name = filename or ref.filename
    checked = name == ref.filename  # the sha256 pin is for the main file only
    pinned = ref if checked else replace(ref, filename=name, sha256=None, bundled=None)
    if explicit:
        p = _from_path(Path(explicit).expanduser(), name)
        if p is None:
            raise ModelNotAvailable(f"{explicit}: no {name} there; pass the model file or the folder holding it")
        return p
    if ref.env_var and os.environ.get(ref.env_var):
        env_path = Path(os.environ[ref.env_var]).expanduser()
        p = _from_path(env_path, name)
        if p is None:
            raise ModelNotAvailable(f"${ref.env_var}={env_path}: no {name} there; point it at the model file or its folder")
        return p
    if checked and ref.bundled is not None and ref.bundled.is_file():
        return _verified(ref, ref.bundled, "shipped with loraprep")
    try:
        from huggingface_hub import hf_hub_download, try_to_load_from_cache
    except ImportError as exc:  # pragma: no cover - core dependency
        raise ModelNotAvailable("huggingface_hub is not installed: pip install huggingface_hub") from exc
    what = f"{ref.repo_id}/{name} (revision {ref.revision})"
    # A pure file-system lookup: hf_hub_download(local_files_only=True) may still contact the
    # Hub (huggingface_hub >= 1.x fetches a registry for its user agent when online).
    cached = try_to_load_from_cache(ref.repo_id, name, revision=ref.revision, repo_type=ref.repo_type)
    if isinstance(cached, str) and Path(cached).is_file():
        return _verified(pinned, Path(cached), "Hugging Face cache")
    if hub_offline():
        raise ModelNotAvailable(f"{what} is not in the Hugging Face cache and HF_HUB_OFFLINE is set, so it is not downloaded. {_how_to_provide(ref, name)}.")
    why = probe_hub()
    if why is not None:
        raise ModelNotAvailable(f"{what} is not in the Hugging Face cache and cannot be downloaded: {why}. {_how_to_provide(ref, name)}.")
    try:
        path = Path(hf_hub_download(ref.repo_id, name, revision=ref.revision, repo_type=ref.repo_type))
    except Exception as exc:
        raise ModelNotAvailable(
            f"could not download {what}: {type(exc).__name__}. Check the network and HF_TOKEN; {_how_to_provide(ref, name)}."
        ) from None
    return _verified(pinned, path, "downloaded")


def onnx_providers(device: str = "auto") -> list[str]:
    """onnxruntime execution providers for `device` (auto | cpu | cuda | tensorrt | coreml | dml)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    wanted = {
        "cpu": ["CPUExecutionProvider"],
        "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
        "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
        "coreml": ["CoreMLExecutionProvider", "CPUExecutionProvider"],
        "dml": ["DmlExecutionProvider", "CPUExecutionProvider"],
    }
    if device == "auto":
        order = ["CUDAExecutionProvider", "CoreMLExecutionProvider", "DmlExecutionProvider", "CPUExecutionProvider"]
    elif device in wanted:
        order = wanted[device]
        if order[0] not in available:
            raise ModelNotAvailable(
                f"--device {device}: onnxruntime has no {order[0]} here (available: {', '.join(available)}); "
                "install onnxruntime-gpu for CUDA, or use --device cpu"
            )
    else:
        raise ValueError(f"unknown device {device!r}: use auto, cpu, cuda, tensorrt, coreml or dml")
    return [p for p in order if p in available]
