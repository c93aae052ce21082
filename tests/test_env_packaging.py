"""What `pip install .` ships: the wheel is built from a copy of the sources and opened as a zip.

Built with `pip wheel --no-deps --no-build-isolation` (no network: setuptools and wheel come
from the test extra), so the check is about our package-data rules, not about the machine.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("prep", "captioning", "train_bridge", "loraprep")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("wheels")
    res = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    (whl,) = out.glob("loraprep-*.whl")
    return whl


def test_the_wheel_ships_yunet_and_its_licence(wheel: Path) -> None:
    from prep.detectors.yunet import YUNET_SHA256

    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        assert "prep/detectors/data/face_detection_yunet_2023mar.onnx" in names
        assert "prep/detectors/data/LICENSE-yunet.txt" in names
        assert hashlib.sha256(z.read("prep/detectors/data/face_detection_yunet_2023mar.onnx")).hexdigest() == YUNET_SHA256


def test_the_wheel_keeps_the_other_data_files(wheel: Path) -> None:
    """The pre-existing rule (json/tsv/toml/txt beside the code) still applies."""
    shipped = {p.relative_to(ROOT).as_posix() for pkg in PACKAGES for ext in ("json", "tsv", "toml") for p in (ROOT / pkg).rglob(f"*.{ext}")}
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    assert shipped <= names, sorted(shipped - names)
