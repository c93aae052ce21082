"""setup against a local git repository standing in for sd-scripts (offline: PIP_NO_INDEX).

The packages the stand-in's requirements.txt names are wheels the test builds from its own
environment's installed copies, so setup installs into a fresh venv without a package index
and without whatever the machine's base Python happens to have.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import zipfile
from importlib.metadata import distribution
import sys
from pathlib import Path

import pytest
from fake_trainer.helpers import make_run, recorded_argv, run_cli

from train_bridge.launch import LaunchOptions, launch_run
from train_bridge.setup import choose_torch, plan_setup, resolve_trainer

GIT_ENV = {
    "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
    "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid",
}
HERE = Path(__file__).resolve().parent


def _git(args: list[str], cwd: Path) -> str:
    r = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, env={**os.environ, **GIT_ENV}, check=True)
    return r.stdout.strip()


# what fake_train.py imports besides the stdlib (tomllib is stdlib only from Python 3.11)
FAKE_TRAINER_NEEDS = ("tomli-w", "tqdm", *(("tomli",) if sys.version_info < (3, 11) else ()))


def wheel_from_installed(name: str, dest: Path) -> Path:
    """Pack an installed pure-Python distribution back into a wheel (its RECORD lists the files)."""
    dist = distribution(name)
    files = [f for f in dist.files or [] if not str(f).startswith("..") and "__pycache__" not in f.parts]
    info = next(f.parts[0] for f in files if f.parts[0].endswith(".dist-info"))
    whl = dest / f"{dist.metadata['Name'].replace('-', '_')}-{dist.version}-py3-none-any.whl"
    dest.mkdir(parents=True, exist_ok=True)
    record = []
    with zipfile.ZipFile(whl, "w") as z:
        for f in files:
            if f.parts[0] == info and f.name in ("RECORD", "INSTALLER", "REQUESTED", "direct_url.json"):
                continue
            data = Path(f.locate()).read_bytes()
            z.writestr(str(f), data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{f},sha256={digest},{len(data)}")
        z.writestr(f"{info}/RECORD", "\n".join([*record, f"{info}/RECORD,,"]) + "\n")
    return whl


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("wheels")
    for name in FAKE_TRAINER_NEEDS:
        wheel_from_installed(name, dest)
    return dest


@pytest.fixture()
def upstream(tmp_path: Path) -> tuple[Path, str, str]:
    """A repo with two commits: the pinned one (with the trainer script) and a newer one."""
    repo = tmp_path / "upstream"
    repo.mkdir()
    _git(["init", "-q", "-b", "main"], repo)
    (repo / "requirements.txt").write_text("".join(f"{n}\n" for n in FAKE_TRAINER_NEEDS))  # from the `wheels` folder
    (repo / "anima_train_network.py").write_text((HERE / "fake_trainer" / "fake_train.py").read_text())
    _git(["add", "."], repo)
    _git(["commit", "-q", "-m", "pinned"], repo)
    pinned = _git(["rev-parse", "HEAD"], repo)
    (repo / "NEWER").write_text("x")
    _git(["add", "."], repo)
    _git(["commit", "-q", "-m", "newer"], repo)
    return repo, pinned, _git(["rev-parse", "HEAD"], repo)


def _setup(tmp: Path, url: Path, commit: str, *more: str, wheels: Path | None = None) -> subprocess.CompletedProcess[str]:
    args = ["setup", "sd-scripts", "--commit", commit, "--skip-torch", *more]
    pip = {"PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_FIND_LINKS": str(wheels or tmp / "no-wheels")}
    return run_cli(args, tmp, timeout=180, LORAPREP_SD_SCRIPTS_URL=url.as_uri(), **pip)


def test_setup_clones_the_pinned_commit_makes_a_venv_and_is_idempotent(tmp_path: Path, upstream: tuple[Path, str, str], wheels: Path) -> None:
    repo, pinned, newer = upstream
    r = _setup(tmp_path, repo, pinned, "--dry-run", wheels=wheels)
    assert r.returncode == 0, r.stderr
    assert "setup will download" in r.stderr and repo.as_uri() in r.stderr and pinned in r.stderr
    home = tmp_path / "home"
    assert not (home / "trainers").exists()  # dry run touched nothing

    r = _setup(tmp_path, repo, pinned, wheels=wheels)
    assert r.returncode == 0, r.stderr
    checkout = home / "trainers" / f"sd-scripts-{pinned[:12]}"
    assert _git(["rev-parse", "HEAD"], checkout) == pinned and not (checkout / "NEWER").exists()
    marker = json.loads((checkout / ".loraprep-setup.json").read_text())
    assert marker["commit"] == pinned and marker["torch"] == "skipped"
    py = Path(marker["python"])
    assert py.exists() and py.parent.parent == checkout / ".venv-loraprep"
    out = subprocess.run([str(py), "-c", "import tomli_w, tqdm, sys; print(sys.prefix, tqdm.__file__)"], capture_output=True, text=True, check=True)
    assert str(checkout / ".venv-loraprep") in out.stdout.split()[1]  # installed into the new venv, not seen from elsewhere
    assert ".venv-loraprep" in out.stdout

    os.environ["LORAPREP_SD_SCRIPTS_URL"] = repo.as_uri()
    os.environ["LORAPREP_HOME"] = str(home)
    try:
        again = plan_setup("sd-scripts", commit=pinned, skip_torch=True)
    finally:
        del os.environ["LORAPREP_SD_SCRIPTS_URL"], os.environ["LORAPREP_HOME"]
    assert again.up_to_date and again.steps == [] and again.downloads == []

    # launch finds the trainer that setup registered, with no --trainer-dir / --python
    run = make_run(tmp_path, epochs=1)
    os.environ["LORAPREP_HOME"] = str(home)
    try:
        env = resolve_trainer("sd-scripts")
        assert env.root == checkout.resolve() and env.python == str(py)
        res = launch_run(run, LaunchOptions(gpu_check=False))
    finally:
        del os.environ["LORAPREP_HOME"]
    assert res.exit_code == 0 and res.outcomes[0].argv[0] == str(py)
    assert len(recorded_argv(tmp_path)) == 1


def test_changed_requirements_trigger_reinstall(tmp_path: Path, upstream: tuple[Path, str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    repo, pinned, _ = upstream
    monkeypatch.setenv("LORAPREP_HOME", str(tmp_path / "home"))
    checkout = tmp_path / "mine"
    _git(["clone", "-q", str(repo), str(checkout)], tmp_path)
    venv = checkout / ".venv-loraprep" / ("Scripts" if os.name == "nt" else "bin")
    venv.mkdir(parents=True)
    (venv / "python").symlink_to(sys.executable)
    head = _git(["rev-parse", "HEAD"], checkout)
    from train_bridge.setup import requirements_hash

    (checkout / ".loraprep-setup.json").write_text(json.dumps({
        "commit": head, "requirements_sha256": requirements_hash(checkout), "torch": "skipped",
        "venv": str(checkout / ".venv-loraprep"),
    }))
    plan = plan_setup("sd-scripts", path=checkout, skip_torch=True)
    assert plan.up_to_date and plan.steps == []
    assert any("checked against" in n for n in plan.notes)  # not the pinned commit: said, not changed
    (checkout / "requirements.txt").write_text("tomli-w\nrich\n")
    plan = plan_setup("sd-scripts", path=checkout, skip_torch=True)
    assert not plan.up_to_date
    assert [s.argv[-2:] for s in plan.steps] == [["-r", "requirements.txt"]]  # venv exists: only pip runs again


def test_missing_commit_is_a_clear_error(tmp_path: Path, upstream: tuple[Path, str, str]) -> None:
    repo, _, _ = upstream
    r = _setup(tmp_path, repo, "0" * 40)
    assert r.returncode == 1 and "not found" in r.stderr
    assert not list((tmp_path / "home" / "trainers").glob("sd-scripts-*"))  # no half clone left as the real folder


@pytest.mark.parametrize(
    ("cuda", "label", "torch"),
    [((12, 9), "cu128", "torch==2.7.1"), ((12, 6), "cu126", "torch==2.7.1"), ((12, 4), "cu124", "torch==2.6.0"),
     ((11, 8), "cu118", "torch==2.6.0"), (None, "cpu", "torch==2.7.1")],
)
def test_torch_build_follows_the_driver(cuda: tuple[int, int] | None, label: str, torch: str) -> None:
    b = choose_torch(cuda)
    assert b.label == label and b.packages[0] == torch
    assert b.index_url == f"https://download.pytorch.org/whl/{label}"


def test_plan_lists_torch_download_for_a_gpu_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAPREP_HOME", str(tmp_path))
    plan = plan_setup("musubi", cuda=(12, 8))
    assert plan.trainer == "musubi-tuner" and plan.commit and plan.commit.startswith("30c658c4")
    assert any("torch==2.7.1" in d and "cu128" in d for d in plan.downloads)
    kinds = [s.argv[:4] for s in plan.steps]
    assert kinds[0][:3] == ["git", "clone", "--no-checkout"]
    assert plan.steps[-1].argv[-2:] == ["-e", "."]  # musubi installs itself from pyproject


# --- torch: registry fallback, matching pairs, setup --check ------------------------------------


def fake_wheel(dest: Path, name: str, version: str, requires: tuple[str, ...] = (), body: str = "") -> Path:
    """A tiny pure-Python wheel standing in for torch / torchvision (their real wheels are GBs):
    the package reports its version and declares what the real one declares (torchvision: its torch)."""
    dest.mkdir(parents=True, exist_ok=True)
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f"__version__ = {version!r}\n{body}",
        f"{info}/METADATA": "Metadata-Version: 2.1\n" + f"Name: {name}\nVersion: {version}\n" + "".join(f"Requires-Dist: {r}\n" for r in requires),
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: loraprep-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    whl = dest / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        record = []
        for path, text in files.items():
            data = text.encode()
            z.writestr(path, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{path},sha256={digest},{len(data)}")
        z.writestr(f"{info}/RECORD", "\n".join([*record, f"{info}/RECORD,,"]) + "\n")
    return whl


def _closed_port() -> int:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: connection refused, like an unreachable index
    return port


def test_unreachable_pytorch_index_falls_back_to_the_registrys_matching_pair(
    tmp_path: Path, upstream: tuple[Path, str, str], wheels: Path
) -> None:
    repo, pinned, _ = upstream
    # the "registry": torch 2.7.1 and 2.8.0, and torchvisions for 2.7.1, 2.8.0 and a 2.9.0 it does not have
    fake_wheel(wheels, "torch", "2.7.1")
    fake_wheel(wheels, "torch", "2.8.0")
    fake_wheel(wheels, "torchvision", "0.22.1", ("torch==2.7.1",))
    fake_wheel(wheels, "torchvision", "0.23.0", ("torch==2.8.0",))
    fake_wheel(wheels, "torchvision", "0.24.0", ("torch==2.9.0",))
    index = f"http://127.0.0.1:{_closed_port()}/whl/{{label}}"
    pip = {"PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_FIND_LINKS": str(wheels), "PIP_CONSTRAINT": ""}
    # no torch flags at all: the machine's build (CPU here, or its CUDA), whose index does not answer
    r = run_cli(["setup", "sd-scripts", "--commit", pinned], tmp_path, timeout=300, LORAPREP_SD_SCRIPTS_URL=repo.as_uri(), LORAPREP_TORCH_INDEX=index, **pip)
    assert r.returncode == 0, r.stdout + r.stderr
    said = " ".join((r.stdout + r.stderr).split())
    assert "unreachable" in said and "package registry" in said
    checkout = tmp_path / "home" / "trainers" / f"sd-scripts-{pinned[:12]}"
    marker = json.loads((checkout / ".loraprep-setup.json").read_text())
    assert marker["torch_source"] == "registry (fallback)"
    assert (marker["torch_version"], marker["torchvision_version"]) == ("2.8.0", "0.23.0")  # newest pair that belongs together
    py = marker["python"]
    got = subprocess.run([py, "-c", "import torch, torchvision; print(torch.__version__, torchvision.__version__)"], capture_output=True, text=True, check=True)
    assert got.stdout.split() == ["2.8.0", "0.23.0"]

    # a torchvision made for another torch is caught, not left to fail at `import torchvision`
    from train_bridge.setup import SetupError, torch_pair

    subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--find-links", str(wheels), "torchvision==0.24.0"], check=True,
                   env={**os.environ, "PIP_CONSTRAINT": ""})
    with pytest.raises(SetupError, match=r"torchvision 0\.24\.0 was built for torch 2\.9\.0, but torch 2\.8\.0 is installed"):
        torch_pair(py)


def test_torch_override_keeps_the_pair_consistent() -> None:
    from train_bridge.setup import SetupError, matching_torchvision, parse_torch_override

    assert parse_torch_override("torch==2.5.1").packages == ("torch==2.5.1", "torchvision==0.20.1")
    assert parse_torch_override("torch==2.14.1").packages == ("torch==2.14.1", "torchvision==0.29.1")
    assert parse_torch_override("torch==2.7.1 torchvision==0.22.1").packages == ("torch==2.7.1", "torchvision==0.22.1")
    with pytest.raises(SetupError, match="not the release for torch 2.7.1 \\(0.22.1\\)"):
        parse_torch_override("torch==2.7.1 torchvision==0.21.0")
    assert matching_torchvision("2.6.0+cu124") == "0.21.0" and matching_torchvision("1.13.1") is None


def test_index_reachability(tmp_path: Path) -> None:
    import http.server
    import threading

    from train_bridge.setup import index_reachable

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        assert index_reachable(f"http://127.0.0.1:{srv.server_address[1]}/whl/cpu", timeout=5)  # 404 is an answer: pip would read it
    finally:
        srv.shutdown()
    assert not index_reachable(f"http://127.0.0.1:{_closed_port()}/whl/cpu", timeout=5)
    assert not index_reachable((tmp_path / "nope").as_uri()) and index_reachable(tmp_path.as_uri())


def test_setup_check_imports_the_trainer_once_and_names_what_is_missing(tmp_path: Path) -> None:
    root = tmp_path / "sd-scripts"
    (root / "library").mkdir(parents=True)
    (root / "library" / "__init__.py").write_text("")
    (root / "library" / "train_util.py").write_text("X = 1\n")
    (root / "library" / "config_util.py").write_text("raise RuntimeError('broken build: undefined symbol _ZN3c10')\n")
    (root / "train_network.py").write_text("import loraprep_test_not_installed_pkg\n")
    venv = tmp_path / "bare-venv"  # a trainer venv where nothing was installed: fast, and independent of this machine's packages
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = str(venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python"))
    r = run_cli(["setup", "sd-scripts", "--check", "--path", str(root), "--venv", str(venv), "--json"], tmp_path, timeout=300)
    assert r.returncode == 1, r.stdout + r.stderr
    rep = json.loads(r.stdout)
    assert not rep["passed"] and rep["python"] == py
    assert rep["versions"]["torch"] is None and {"module": "torch", "missing": "torch"}.items() <= next(m for m in rep["missing"] if m["module"] == "torch").items()
    assert "library.train_util" in rep["ok"]
    missing = {m["module"]: m["missing"] for m in rep["missing"]}
    assert missing["train_network"] == "loraprep_test_not_installed_pkg"
    assert missing["anima_train_network"] == "anima_train_network"  # every script loraprep writes configs for is imported
    assert any(e["module"] == "library.config_util" and "undefined symbol" in e["error"] for e in rep["errors"])
    assert any("--force" in f for f in rep["fixes"])
    said = " ".join(r.stderr.split())
    assert "missing train_network" in said and "loraprep_test_not_installed_pkg" in said
