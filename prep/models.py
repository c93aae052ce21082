"""Resolving model files: an explicit path, an environment variable, or the Hugging Face cache.

One function for every model the project runs (face detectors, WD taggers), so offline use
works the same everywhere: pass a path, or set the variable, or pre-fill the HF cache and set
HF_HUB_OFFLINE=1. Downloads go through huggingface_hub (honours HF_HOME, HF_TOKEN) and are
pinned by revision, so a model that changes upstream does not change results silently.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


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


def _from_path(path: Path, filename: str) -> Path | None:
    if path.is_file():
        return path
    if path.is_dir() and (path / filename).is_file():
        return path / filename
    return None


def resolve_model_file(ref: ModelRef, explicit: str | os.PathLike[str] | None = None, *, filename: str | None = None) -> Path:
    """Path to `filename` (default `ref.filename`) of `ref`.

    Order: `explicit` path (a file, or a folder holding the file) > `ref.env_var` > the HF
    cache (downloading when online). Never prints or returns a token.
    """
    name = filename or ref.filename
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
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError as exc:  # pragma: no cover - core dependency
        raise ModelNotAvailable("huggingface_hub is not installed: pip install huggingface_hub") from exc
    try:
        return Path(hf_hub_download(ref.repo_id, name, revision=ref.revision, repo_type=ref.repo_type))
    except LocalEntryNotFoundError:
        hint = f" or set ${ref.env_var}" if ref.env_var else ""
        raise ModelNotAvailable(
            f"{ref.repo_id}/{name} is not in the Hugging Face cache and cannot be downloaded (offline?). "
            f"Download it once online, or pass its path{hint}."
        ) from None
    except Exception as exc:
        hint = f" or set ${ref.env_var}" if ref.env_var else ""
        raise ModelNotAvailable(
            f"could not get {ref.repo_id}/{name} (revision {ref.revision}): {type(exc).__name__}. "
            f"Check the network and HF_TOKEN, or pass the file's path{hint}."
        ) from None


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
