"""`.ci/run` itself, on a stand-in project: a fresh virtual environment (the machine's packages are
not visible in it), the README's test command inside it, and pytest's exit code 5 as a failure.

The stand-in has an in-tree build backend with no requirements and a `pytest` module of its own
(found first by `python -m pytest` from the project root) that reports what it sees and exits
with the code the test asks for, so nothing is downloaded and no real suite runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

BACKEND = '''
import base64, hashlib, zipfile
NAME, VER = "cistandin", "0"
def get_requires_for_build_editable(config_settings=None):
    return []
get_requires_for_build_wheel = get_requires_for_build_editable
def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    di = f"{NAME}-{VER}.dist-info"
    files = {
        f"{di}/METADATA": f"Metadata-Version: 2.1\\nName: {NAME}\\nVersion: {VER}\\nProvides-Extra: test\\n",
        f"{di}/WHEEL": "Wheel-Version: 1.0\\nGenerator: stand-in\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n",
    }
    record = []
    name = f"{NAME}-{VER}-py3-none-any.whl"
    with zipfile.ZipFile(f"{wheel_directory}/{name}", "w") as z:
        for path, text in files.items():
            data = text.encode()
            z.writestr(path, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{path},sha256={digest},{len(data)}")
        z.writestr(f"{di}/RECORD", "\\n".join(record + [f"{di}/RECORD,,"]) + "\\n")
    return name
build_wheel = build_editable
'''

PYPROJECT = """
[build-system]
requires = []
build-backend = "standin_backend"
backend-path = ["."]
"""

FAKE_PYTEST = """
import importlib.util, os, sys
print("PREFIX", sys.prefix)
print("NUMPY", importlib.util.find_spec("numpy") is not None)
sys.exit(int(os.environ["STANDIN_PYTEST_RC"]))
"""


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    proj = tmp_path_factory.mktemp("proj")
    (proj / ".ci").mkdir()
    shutil.copy(ROOT / ".ci" / "run", proj / ".ci" / "run")
    (proj / "pyproject.toml").write_text(PYPROJECT)
    (proj / "standin_backend.py").write_text(BACKEND)
    (proj / "pytest").mkdir()
    (proj / "pytest" / "__init__.py").write_text("")
    (proj / "pytest" / "__main__.py").write_text(FAKE_PYTEST)
    return proj


def run_ci(proj: Path, pytest_rc: int) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "VIRTUAL_ENV", "PYTHONPATH"))}
    env.update(PYTHON=sys.executable, STANDIN_PYTEST_RC=str(pytest_rc), PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    return subprocess.run(["bash", str(proj / ".ci" / "run")], cwd=str(proj), env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_ci_runs_the_readme_command_in_a_fresh_environment(standin: Path) -> None:
    import numpy  # noqa: F401  (visible here, so its absence there means a fresh environment)

    res = run_ci(standin, 3)
    assert res.returncode == 3, res.stdout + res.stderr  # pytest's own code passes through
    prefix = res.stdout.split("PREFIX ")[1].split()[0]
    assert Path(prefix).resolve() != Path(sys.prefix).resolve()
    assert "NUMPY False" in res.stdout  # the machine's site-packages are not visible
    assert not Path(prefix).exists()  # the temporary environment is removed afterwards


@pytest.mark.slow
def test_ci_fails_when_no_tests_are_collected(standin: Path) -> None:
    res = run_ci(standin, 5)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "no tests" in res.stderr


def test_ci_uses_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    command = 'pip install -e ".[test]" && python -m pytest -q'
    assert command in readme
    assert command in (ROOT / ".ci" / "run").read_text()
