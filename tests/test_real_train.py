"""Real sd-scripts training through `train_bridge` on CPU: Anima and SDXL, full-size random weights.

Opt-in (minutes per architecture, GBs of RAM), never part of the default suite:

    LORAPREP_REAL_TRAIN=1 LORAPREP_SD_SCRIPTS=/path/to/sd-scripts \\
    LORAPREP_SD_SCRIPTS_PYTHON=/path/to/its/venv/bin/python pytest tests/test_real_train.py

Optional: LORAPREP_REAL_TRAIN_ARCHS=anima,sdxl (default both), LORAPREP_REAL_WEIGHTS=<cache
folder> (the random weights, built once, ~5.5 GB for Anima, ~7 GB for SDXL).

Per architecture, in order: `setup --path --check` (the trainer imports with its own Python),
`config` at 256 px for 4 steps, `check` with the trainer's parser, `launch` (parsed steps and
loss, checkpoint/sample/state events, a finite LoRA with non-zero lora_up), `status`, then
`--resume` to 8 steps that continues from step 4. Then `--auto-retry-oom` driven by a real
out-of-memory: the trainer's Python runs under an address-space limit (prlimit) that its
first attempt does not fit in, and the retry's config does (the wrapper lifts the limit for it).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_trainer import helpers as h

_ENV = h.real_env()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(isinstance(_ENV, str), reason=_ENV if isinstance(_ENV, str) else "")]
ARCHS = [a for a in os.environ.get("LORAPREP_REAL_TRAIN_ARCHS", "anima,sdxl").split(",") if a]
# peak RSS measured here (docs/train_bridge-launch.md); below this much available RAM the run would only be OOM-killed
NEEDS_GB = {"anima": 9, "sdxl": 22}


def _available_gb() -> float:
    with open("/proc/meminfo", encoding="ascii") as fh:
        info = {line.split(":")[0]: int(line.split()[1]) for line in fh}
    return info["MemAvailable"] / 2**20


@pytest.fixture(scope="module", params=ARCHS)
def prepared(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """setup, weights, the dataset: what every run of one architecture needs."""
    arch = request.param
    if _available_gb() < NEEDS_GB[arch]:
        pytest.skip(f"{arch} needs ~{NEEDS_GB[arch]} GB of available RAM for a CPU run; {_available_gb():.1f} GB available")
    checkout, python = _ENV  # type: ignore[misc]
    if arch == "anima" and (why := h.tokenizer_problem(checkout)):
        pytest.fail(why)
    tmp = tmp_path_factory.mktemp(f"real-{arch}")
    env = h.run_env(checkout, python, tmp / "home")
    # setup on the existing checkout with its venv: registers it, writes the marker, and --check imports it
    venv = Path(python).parent.parent
    h.cli(["train_bridge", "setup", "sd-scripts", "--path", str(checkout), "--venv", str(venv), "--skip-torch"], env=env, timeout=1800)
    chk = h.cli(["train_bridge", "setup", "sd-scripts", "--path", str(checkout), "--venv", str(venv), "--check", "--json"], env=env, timeout=600)
    return {"arch": arch, "tmp": tmp, "env": env, "python": python, "checkout": checkout, "imports": json.loads(chk.stdout),
            "files": h.build_weights(checkout, python, arch), "dataset": h.make_dataset(tmp)}


@pytest.fixture(scope="module")
def trained(prepared: dict) -> dict:
    """One real 4-step run per architecture, shared by the tests below (they run in file order)."""
    t = dict(prepared)
    arch, env, checkout, python = t["arch"], t["env"], t["checkout"], t["python"]
    run = h.write_run(arch, t["dataset"], t["tmp"] / "run", t["files"], env)
    check = h.cli(["train_bridge", "check", str(run), "--sd-scripts", str(checkout), "--python", python, "--json"], env=env, timeout=600, check=False)
    res, mem, wall = h.launch_measured(["train_bridge", "launch", str(run), "--no-gpu-check", "--json"], env, run, timeout=3600)
    t.update(run=run, check=check, launch=res, mem=mem, wall=wall)
    return t


def test_setup_check_imports_the_real_trainer(prepared: dict) -> None:
    rep = prepared["imports"]
    assert rep["passed"], rep
    assert "sdxl_train_network" in rep["ok"] and "anima_train_network" in rep["ok"]
    assert rep["versions"]["torch"] and rep["versions"]["torchvision"]


def test_check_with_the_trainers_parser(trained: dict) -> None:
    r = trained["check"]
    assert r.returncode == 0, r.stdout + r.stderr
    rep = json.loads(r.stdout)
    said = json.dumps(rep)
    assert "parser and dataset validator accept it" in said and "the trainer computes the same 4 steps" in said


def test_launch_trains_4_steps_with_parsed_progress_and_events(trained: dict) -> None:
    r = trained["launch"]
    assert r.returncode == 0, r.stderr[-5000:]
    out = json.loads(r.stdout)
    assert out["status"] == "done"
    prog = out["commands"][0]["progress"]
    assert prog["step"] == 4 and prog["total"] == 4 and prog["epoch"] == 1 and prog["epochs"] == 1
    assert prog["avr_loss"] is not None and 0 < prog["avr_loss"] < 100  # a finite loss, parsed from the bar
    assert prog["rate_it_s"] and prog["rate_it_s"] > 0
    assert prog["states_saved"] >= 1 and prog["checkpoints"]
    name = f"{trained['arch']}_real"
    err = trained["launch"].stderr
    assert f"checkpoint {trained['run']}/output/{name}.safetensors" in " ".join(err.split()) or name in err
    assert "sample" in err and "state" in err  # printed as they appeared
    st = json.loads((trained["run"] / "status.json").read_text())
    assert st["state"] == "done" and st["files"]["samples"] and st["files"]["states"]


def test_the_lora_is_finite_and_learned_something(trained: dict) -> None:
    lora = trained["run"] / "output" / f"{trained['arch']}_real.safetensors"
    stats = h.lora_up_stats(trained["python"], lora)
    assert stats["finite"] and stats["lora_up"] > 0
    assert stats["max_abs_up"] > 0  # lora_up starts at zero: non-zero means the optimizer stepped


def test_status_reads_the_real_run(trained: dict) -> None:
    r = h.cli(["train_bridge", "status", str(trained["run"]), "--json"], env=trained["env"])
    st = json.loads(r.stdout)
    assert st["state"] == "done" and st["progress"]["step"] == 4
    assert st["last_loss"] is not None and st["samples"] and st["checkpoints"]
    assert st["states"][-1]["step"] == 4 and st["states"][-1]["epoch"] == 1


def test_resume_to_8_steps_continues_from_step_4(trained: dict) -> None:
    run = trained["run"]
    h.set_epochs(run, 2)  # the user raises the epochs, then resumes
    res, mem, wall = h.launch_measured(["train_bridge", "launch", str(run), "--resume", "--no-gpu-check", "--json"], trained["env"], run, timeout=3600)
    trained.update(resume=res, resume_mem=mem, resume_wall=wall)
    _report(trained)
    assert res.returncode == 0, res.stderr[-5000:]
    out = json.loads(res.stdout)
    cmd = out["commands"][0]
    assert cmd["resume"]["verified"] is True, cmd["resume"]
    assert "--resume" in cmd["argv"]
    prog = cmd["progress"]
    assert prog["state_loaded_step"] == 4 and prog["first_epoch"] == 2  # the trainer loaded step 4 and started at epoch 2, not 1
    assert prog["global_step"] == 8 and prog["total"] == 8
    st = json.loads(h.cli(["train_bridge", "status", str(run), "--json"], env=trained["env"]).stdout)
    assert st["states"][-1]["step"] == 8 and st["states"][-1]["epoch"] == 2
    assert len(st["samples"]) >= 2


def test_auto_retry_oom_after_a_real_out_of_memory(prepared: dict) -> None:
    """A memory limit the first attempt does not fit in; the retry's copy of the config runs free."""
    trained = prepared
    if trained["arch"] != "anima" or not shutil.which("prlimit"):
        pytest.skip("the real-OOM retry runs once, for Anima, where prlimit (util-linux) exists")
    tmp, env = trained["tmp"], trained["env"]
    run = tmp / "run-oom"
    # the 16gb preset's loader settings (2 persistent workers): the host advice can change them
    h.write_run("anima", trained["dataset"], run, trained["files"], env, extra_sets=["max_data_loader_n_workers=2", "persistent_data_loader_workers=true"])
    wrapper = tmp / "python-limited"
    wrapper.write_text(
        "#!/bin/sh\n# the retry's config (train.oom-retry1.toml) runs without the limit\n"
        'case "$*" in *oom-retry*) exec "$REAL_PY" "$@";; esac\n'
        'exec prlimit --as="$LIMIT" "$REAL_PY" "$@"\n'
    )
    wrapper.chmod(0o755)
    oom_env = {**env, "REAL_PY": trained["python"], "LIMIT": str(int(os.environ.get("LORAPREP_REAL_OOM_LIMIT", str(6 * 2**30))))}
    r = h.cli(["train_bridge", "launch", str(run), "--no-gpu-check", "--auto-retry-oom", "--python", str(wrapper), "--json"], env=oom_env, timeout=3600, check=False)
    out = json.loads(r.stdout)
    first, retry = out["commands"][0], out["commands"][-1]
    assert first["status"] == "host_oom", first
    assert first["progress"]["host_oom"] and "allocat" in first["message"].lower()
    assert out["retry"] is not None and out["retry"]["changes"], out
    assert (run / "train.oom-retry1.toml").is_file()
    assert retry["status"] == "done" and r.returncode == 0, r.stderr[-4000:]
    assert json.loads((run / "run.json").read_text())["oom_retries"][0]["kind"] == "host"


def _report(t: dict) -> None:
    """LORAPREP_REAL_TRAIN_REPORT=FILE: the bench's figures for these runs (wall, s/step, peak RSS per step)."""
    dest = os.environ.get("LORAPREP_REAL_TRAIN_REPORT")
    if not dest:
        return
    phases = [h.phase_report("launch 4 steps", t["launch"], t["mem"], t["wall"]), h.phase_report("--resume to step 8", t["resume"], t["resume_mem"], t["resume_wall"])]
    p = Path(dest)
    old = json.loads(p.read_text()) if p.is_file() else []
    old = [r for r in old if r.get("arch") != t["arch"]]
    p.write_text(json.dumps([*old, {"arch": t["arch"], "phases": phases, "cpus": os.cpu_count()}], indent=1) + "\n")
