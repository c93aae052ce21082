"""Shared fixtures. Tests that need ../shared skip with a clear reason where it is absent."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LORAPREP_SHARED", ROOT.parent / "shared"))

os.environ.setdefault("LORAPREP_NO_PROGRESS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The machine's own caches never leak into a test: an empty HF cache and loraprep home for the
# session (a test that needs a cached model builds it there, or passes a path).
_ISOLATED = Path(tempfile.mkdtemp(prefix="loraprep-tests-"))
for _var, _sub in (("HF_HOME", "hf"), ("HF_HUB_CACHE", "hf/hub"), ("LORAPREP_HOME", "loraprep"), ("XDG_CACHE_HOME", "cache")):
    os.environ[_var] = str(_ISOLATED / _sub)
os.environ.pop("HUGGINGFACE_HUB_CACHE", None)
os.environ.pop("HF_TOKEN", None)


def _need_shared(rel: str) -> Path:
    p = SHARED / rel
    if not p.exists():
        pytest.skip(f"needs ../shared/{rel} (the team's shared folder beside the checkout; CI always has it)")
    return p


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return _need_shared("")


@pytest.fixture(scope="session")
def yunet_model() -> Path:
    return _need_shared("models/face_detection_yunet_2023mar.onnx")


@pytest.fixture(scope="session")
def anime_dir() -> Path:
    return _need_shared("testdata/anime")


@pytest.fixture(scope="session")
def astronaut() -> Image.Image:
    """A real photo with one face (scikit-image ships it; no download)."""
    data = pytest.importorskip("skimage.data")
    return Image.fromarray(data.astronaut())


@pytest.fixture(scope="session")
def lfw_faces() -> np.ndarray:
    data = pytest.importorskip("skimage.data")
    return data.lfw_subset()


def tree_digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder` (relative path -> digest) to prove inputs unchanged."""
    out: dict[str, str] = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() or p.is_symlink():
            out[p.relative_to(folder).as_posix()] = hashlib.sha256(p.read_bytes() if p.is_file() else os.readlink(p).encode()).hexdigest()
    return out


@pytest.fixture
def digest():
    return tree_digest


@pytest.fixture(scope="session")
def ray_session(tmp_path_factory):
    """One local Ray for the whole session (2 CPUs, no dashboard, usage stats off), its temp dir and
    HOME inside pytest's tmp; skipped with the reason where the [ray] extra is not installed."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'loraprep[ray]'); CI installs the extra")
    base = tmp_path_factory.mktemp("ray")
    saved = {k: os.environ.get(k) for k in ("HOME", "RAY_USAGE_STATS_ENABLED")}
    os.environ["HOME"] = str(base / "home")
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    (base / "home").mkdir()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False, _temp_dir=str(base / "t"))
    try:
        yield ray
    finally:
        ray.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
