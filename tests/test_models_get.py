"""`train_bridge models get/list` against a stand-in Hub on 127.0.0.1, and `config` filling roles from the cache.

Each command runs in a fresh process, as a user's would, so huggingface_hub reads HF_ENDPOINT,
HF_HOME, HF_HUB_OFFLINE and HF_TOKEN from that environment; loraprep's sha256 record goes to a
temporary LORAPREP_HOME. The stub (tests/stubs/hf_hub_stub.py) logs every request, so a test can
say that nothing was downloaded before the size check, that a resumed GET asked for a Range,
and that offline means no request at all.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

from prep.archs import ARCH_NAMES, REGISTRY, WEIGHTS
from tests.bridge_helpers import make_dataset, make_models
from tests.stubs.hf_hub_stub import HubStub

ROOT = Path(__file__).resolve().parents[1]
TB = "import sys; from train_bridge.cli import main; sys.argv[0] = 'train_bridge'; main()"
SDXL = ("stabilityai/stable-diffusion-xl-base-1.0", "sd_xl_base_1.0.safetensors")


@pytest.fixture
def hub() -> Iterator[HubStub]:
    stub = HubStub().start()
    yield stub
    stub.stop()


def run_tb(tmp_path: Path, hub: HubStub | None, *args: str, offline: bool = False, token: str | None = None, extra: dict[str, str] | None = None, cwd: Path | None = None, stderr_fd: int | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING", "LORAPREP_")) and k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env.update(
        HF_ENDPOINT=hub.url if hub else "http://127.0.0.1:9",
        HF_HUB_OFFLINE="1" if offline else "0",
        HF_HOME=str(tmp_path / "hf-home"),
        HF_HUB_CACHE=str(tmp_path / "hf-cache"),
        HF_HUB_DISABLE_TELEMETRY="1",
        LORAPREP_HOME=str(tmp_path / "loraprep-home"),
        LORAPREP_NO_PROGRESS="1",
        NO_PROXY="127.0.0.1,localhost",
        PYTHONPATH=str(ROOT),
        COLUMNS="250",
    )
    if token:
        env["HF_TOKEN"] = token
    env.update(extra or {})
    if stderr_fd is not None:
        return subprocess.run([sys.executable, "-c", TB, *args], env=env, stdout=subprocess.PIPE, stderr=stderr_fd, text=True, timeout=120, cwd=cwd or tmp_path, check=False)
    return subprocess.run([sys.executable, "-c", TB, *args], env=env, capture_output=True, text=True, timeout=120, cwd=cwd or tmp_path, check=False)


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def local_tb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The same CLI in this process, for commands that never touch the network (list, config, check, offline get).

    Every path they read (HF cache, loraprep's record, $LORAPREP_WEIGHTS, HF_HUB_OFFLINE) is read
    when the command runs, so setting the environment here is what a fresh process would see.
    """
    from typer.testing import CliRunner

    from train_bridge.cli import app

    def invoke(*args: str, extra: dict[str, str] | None = None) -> Result:
        for k in ("HF_TOKEN", "LORAPREP_WEIGHTS"):
            monkeypatch.delenv(k, raising=False)
        env = {"HF_HUB_CACHE": str(tmp_path / "hf-cache"), "LORAPREP_HOME": str(tmp_path / "loraprep-home"), "HF_HUB_OFFLINE": "1", "LORAPREP_NO_PROGRESS": "1", **(extra or {})}
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        res = CliRunner().invoke(app, list(args), catch_exceptions=False)
        return Result(res.exit_code, res.stdout, res.stderr)

    return invoke


def records(tmp_path: Path) -> dict[str, dict]:
    return json.loads((tmp_path / "loraprep-home" / "weights.json").read_text())["files"]


def test_catalogue_covers_every_architecture_with_cited_pins() -> None:
    """Every architecture loraprep configures can be fetched; pins are commits or main, digests are sha256."""
    assert set(WEIGHTS) == set(ARCH_NAMES)
    for arch, files in WEIGHTS.items():
        spec = REGISTRY[arch]
        roles = {m.name for m in spec.models}
        assert {m.name for m in spec.models if m.required} <= {w.role for w in files if not w.variant}, arch
        for w in files:
            assert w.role in roles, (arch, w.role)
            assert w.revision == "main" or (len(w.revision) == 40 and int(w.revision, 16) >= 0), w
            assert w.sha256 is None or (len(w.sha256) == 64 and int(w.sha256, 16) >= 0), w
            assert not (w.sha256 and w.revision == "main"), f"a digest needs the revision it was published for: {w}"
    assert all(w.gated for w in WEIGHTS["flux"] if w.repo_id == "black-forest-labs/FLUX.1-dev")
    assert all(w.gated for w in WEIGHTS["sd3"])


def test_variant_and_roles_pick_files() -> None:
    from train_bridge.models import WeightsError, weight_files

    assert [w.filename for w in weight_files("flux", ["dit"], "schnell")] == ["flux1-schnell.safetensors"]
    assert [w.role for w in weight_files("sdxl")] == ["checkpoint"]  # the VAE is optional: only with --role vae
    assert [w.role for w in weight_files("sdxl", ["vae"])] == ["vae"]
    with pytest.raises(WeightsError, match="no downloadable role 'qwen3'.*its roles: dit, ae, clip_l, t5xxl"):
        weight_files("flux", ["qwen3"])
    with pytest.raises(WeightsError, match="no variant 'turbo'.*schnell"):
        weight_files("flux", variant="turbo")


def test_resume_after_dropped_connection_and_sha256_record(tmp_path: Path, hub: HubStub, local_tb) -> None:
    from train_bridge.models import human_size

    # larger than huggingface_hub's 10 MiB read chunk, so the dropped first GET has written some of it
    data = os.urandom(3 * 10 * 1024 * 1024 + 12345)
    digest = hub.add(*SDXL, data)
    hub.drop_first.add(SDXL)
    res = run_tb(tmp_path, hub, "models", "get", "sdxl")
    assert res.returncode == 0, res.stderr
    # the total size and free space are said before the download
    assert f"1 file(s) to download, {human_size(len(data))} in total" in res.stderr and "free at" in res.stderr
    gets = hub.gets(SDXL[1])
    assert len(gets) == 2 and gets[0]["range"] is None, gets
    start = int(gets[1]["range"].removeprefix("bytes=").rstrip("-"))  # resumed, not restarted
    assert 0 < start <= len(data) // 2, gets
    cached = next(tmp_path.glob("hf-cache/models--stabilityai--stable-diffusion-xl-base-1.0/snapshots/*/sd_xl_base_1.0.safetensors"))
    assert cached.read_bytes() == data
    rec = records(tmp_path)[str(cached)]
    assert rec["sha256"] == digest and rec["size"] == len(data) and rec["repo_id"] == SDXL[0]

    listed = local_tb("models", "list", "sdxl", "--json")
    assert listed.returncode == 0, listed.stderr
    row = next(r for r in json.loads(listed.stdout) if r["role"] == "checkpoint")
    assert row["present"] and row["path"] == str(cached) and row["size"] == len(data) and row["check"] == "ok"
    vae = next(r for r in json.loads(listed.stdout) if r["role"] == "vae")
    assert not vae["present"]

    # a second get downloads nothing
    again = local_tb("models", "get", "sdxl", extra={"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": hub.url})
    assert again.returncode == 0 and "cached" in again.stderr
    assert len(hub.gets(SDXL[1])) == 2

    # a file changed after download is caught by list
    blob = cached.resolve()
    blob.write_bytes(b"x" * len(data))
    bad = local_tb("models", "list", "sdxl", "--json")
    assert bad.returncode == 1
    assert next(r for r in json.loads(bad.stdout) if r["role"] == "checkpoint")["check"] == "mismatch"


def test_gated_repo_says_token_and_licence(tmp_path: Path, hub: HubStub) -> None:
    repo = "black-forest-labs/FLUX.1-dev"
    hub.add(repo, "flux1-dev.safetensors", b"d" * 1000, gated=True)
    hub.add(repo, "ae.safetensors", b"a" * 500, gated=True)
    res = run_tb(tmp_path, hub, "models", "get", "flux", "--role", "dit", "--role", "ae")
    assert res.returncode == 1
    err = " ".join(res.stderr.split())
    assert "black-forest-labs/FLUX.1-dev is gated" in err and "401" in err
    assert "HF_TOKEN is not set" in err and "accept the licence" in err and "https://huggingface.co/black-forest-labs/FLUX.1-dev" in err
    assert hub.gets() == []  # refused before downloading anything

    ok = run_tb(tmp_path, hub, "models", "get", "flux", "--role", "dit", "--role", "ae", token=hub.token)
    assert ok.returncode == 0, ok.stderr
    assert len(hub.gets()) == 2 and all(r["auth"] for r in hub.gets())
    assert hub.token not in ok.stderr + ok.stdout + res.stderr
    assert hub.token not in (tmp_path / "loraprep-home" / "weights.json").read_text()


def test_full_disk_refused_before_downloading(tmp_path: Path, hub: HubStub) -> None:
    for w in WEIGHTS["wan21-t2v"]:
        hub.add(w.repo_id, w.filename, b"w" * 100)
    dit = WEIGHTS["wan21-t2v"][0]
    hub.declared_size[(dit.repo_id, dit.filename)] = 10**18  # one exabyte: more than any test machine has free
    res = run_tb(tmp_path, hub, "models", "get", "wan21-t2v")
    assert res.returncode == 1
    err = " ".join(res.stderr.split())
    assert "wan21-t2v needs 1000000000.00 GB (1000000000000000200 bytes)" in err, err
    assert "free" in err and "HF_HUB_CACHE" in err
    assert hub.gets() == []
    assert not list(tmp_path.glob("hf-cache/**/blobs/*"))


def test_offline_only_what_is_cached_and_no_connection(tmp_path: Path, hub: HubStub, local_tb) -> None:
    hub.add(*SDXL, b"s" * 2000)
    assert run_tb(tmp_path, hub, "models", "get", "sdxl").returncode == 0
    n = len(hub.requests)
    cached = local_tb("models", "get", "sdxl", extra={"HF_ENDPOINT": hub.url})
    assert cached.returncode == 0 and "cached" in cached.stderr
    missing = run_tb(tmp_path, hub, "models", "get", "anima", offline=True)
    assert missing.returncode == 1
    err = " ".join(missing.stderr.split())
    assert "HF_HUB_OFFLINE is set and 3 file(s) are not in the cache" in err and "qwen3" in err
    assert len(hub.requests) == n  # offline: not one request


def _anima_catalogue(tmp_path: Path, hub: HubStub) -> Path:
    """The real Anima repo and file names at `main`, served by the stub with header-only safetensors.

    The catalogue's published sha256 pins cannot be met by stand-in bytes, so the entries are
    given through $LORAPREP_WEIGHTS (the override a mirror would use) without digests.
    """
    files = make_models(tmp_path / "src-models")["anima"]
    entries = []
    for w in WEIGHTS["anima"]:
        if w.variant:
            continue
        hub.add(w.repo_id, w.filename, Path(files[w.role]).read_bytes())
        entries.append({"role": w.role, "repo_id": w.repo_id, "filename": w.filename, "revision": "main"})
    cat = tmp_path / "weights-catalogue.json"
    cat.write_text(json.dumps({"anima": entries}))
    return cat


def test_models_get_anima_then_config_needs_no_paths(tmp_path: Path, hub: HubStub, local_tb) -> None:
    cat = _anima_catalogue(tmp_path, hub)
    ds = make_dataset(tmp_path / "data", n_reg=0)
    env = {"LORAPREP_WEIGHTS": str(cat)}
    before = local_tb("config", "anima", str(ds), "-o", str(tmp_path / "run0"), extra=env)
    assert before.returncode == 2 and "models get anima" in " ".join(before.stderr.split())

    got = run_tb(tmp_path, hub, "models", "get", "anima", extra=env)
    assert got.returncode == 0, got.stderr
    run = tmp_path / "run"
    cfg = local_tb("config", "anima", str(ds), "-o", str(run), extra=env)
    assert cfg.returncode == 0, cfg.stderr
    spec = json.loads((run / "run.json").read_text())
    train = tomllib.loads((run / "train.toml").read_text())
    flat = {k: v for sec in train.values() if isinstance(sec, dict) for k, v in sec.items()}
    for role, key in (("dit", "pretrained_model_name_or_path"), ("qwen3", "qwen3"), ("vae", "vae")):
        note = spec["derived"]["models"][role]
        assert note.startswith("filled from the Hugging Face cache: circlestone-labs/Anima/split_files/"), note
        assert flat[key] in note and Path(flat[key]).is_file() and str(tmp_path / "hf-cache") in flat[key]
    assert spec["asked"]["models"] == {}
    checked = local_tb("check", str(run))
    assert checked.returncode == 0, checked.stderr + checked.stdout


def test_config_skips_a_cached_file_whose_record_contradicts_the_pin(tmp_path: Path, hub: HubStub, local_tb) -> None:
    """A download that failed its published sha256 is never filled into a run."""
    w = WEIGHTS["anima"][2]  # the VAE, pinned with its sha256
    assert w.sha256
    hub.add(w.repo_id, w.filename, b"not the vae")
    res = run_tb(tmp_path, hub, "models", "get", "anima", "--role", "vae")
    assert res.returncode == 1 and "is not the published" in " ".join(res.stderr.split())
    ds = make_dataset(tmp_path / "data", n_reg=0)
    cfg = local_tb("config", "anima", str(ds), "-o", str(tmp_path / "run"), "--dit", "d.safetensors", "--qwen3", "q.safetensors")
    assert cfg.returncode == 2 and "missing: Qwen-Image VAE" in " ".join(cfg.stderr.split())


def test_bad_catalogue_override_is_named(tmp_path: Path, local_tb) -> None:
    cat = tmp_path / "cat.json"
    cat.write_text(json.dumps({"anima": [{"role": "clip_l", "repo_id": "a/b", "filename": "x"}]}))
    res = local_tb("models", "list", "anima", extra={"LORAPREP_WEIGHTS": str(cat)})
    assert res.returncode == 1
    err = " ".join(res.stderr.split())
    assert str(cat) in err and "anima has no role clip_l" in err
    ds = make_dataset(tmp_path / "data", n_reg=0)
    cfg = local_tb("config", "anima", str(ds), "-o", str(tmp_path / "run"), extra={"LORAPREP_WEIGHTS": str(cat)})
    assert cfg.returncode == 2 and str(cat) in "".join(cfg.stderr.split())  # rich wraps long paths here



def test_progress_bar_in_a_terminal(tmp_path: Path, hub: HubStub) -> None:
    """huggingface_hub's bar is drawn when stderr is a terminal (here a pty), not in logs."""
    import pty

    hub.add(*SDXL, b"p" * 5000)
    master, slave = pty.openpty()
    env_extra = {"LORAPREP_NO_PROGRESS": "", "TERM": "xterm"}
    try:
        res = run_tb(tmp_path, hub, "models", "get", "sdxl", extra=env_extra, stderr_fd=slave)
    finally:
        os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert res.returncode == 0
    text = out.decode(errors="replace")
    assert "sd_xl_base_1.0.safetensors" in text and "100%" in text, text
