"""The training handoff that cannot silently go wrong (issue 18): preflight, an edited train.toml on
--resume, --restart setting old state aside, states ordered by their global step after a resume,
the trainer's own error on failure, and `train_bridge launch ARCH` inside a loraprep project."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import tomli_w
from fake_trainer.helpers import launch_args, make_images, make_models, make_run, make_trainer_root, recorded_argv, run_cli

from train_bridge.launch import EXIT_OOM, LaunchError, LaunchOptions, launch_run
from train_bridge.resume import find_states


def _opts(root: Path, **kw: object) -> LaunchOptions:
    return LaunchOptions(trainer_dir=root, python=sys.executable, gpu_check=False, **kw)  # type: ignore[arg-type]


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    return make_trainer_root(tmp_path)


def _drop_args(run: Path, *drop: str) -> None:
    spec = json.loads((run / "run.json").read_text())
    args = spec["commands"][-1]["args"]
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a in drop:
            skip = a not in ("--save_state", "--samples")
        else:
            out.append(a)
    spec["commands"][-1]["args"] = out
    (run / "run.json").write_text(json.dumps(spec))


def _edit_train(run: Path, section: str, **values: object) -> None:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib

    doc = tomllib.loads((run / "train.toml").read_text())
    doc.setdefault(section, {}).update(values)
    (run / "train.toml").write_text(tomli_w.dumps(doc))


# --- 1. preflight -----------------------------------------------------------------------------


def test_a_missing_dit_is_refused_before_any_step_runs(tmp_path: Path, root: Path) -> None:
    rec = str(tmp_path / "argv.jsonl")
    cache = {"name": "cache_latents", "script": "wan_cache_latents.py", "accelerate": False,
             "args": ["--output_dir", str(tmp_path / "output"), "--mode", "cache", "--record_argv", rec, "--output_name", "lat"]}
    run = make_run(tmp_path, commands=[{"name": "train", "script": "anima_train_network.py", "args": [], "base": True, "accelerate": False}, cache])
    dit = tmp_path / "models" / "dit.safetensors"
    dit.unlink()
    r = run_cli(launch_args(run, root), tmp_path)
    assert r.returncode == 2, r.stderr
    assert str(dit) in r.stderr and "--dit" in r.stderr and "nothing was started" in r.stderr
    assert recorded_argv(tmp_path) == []  # not even the cache step ran
    assert not (run / "logs").exists()


# --- 2. --resume and an edited train.toml -----------------------------------------------------


def _toml_epochs_run(tmp_path: Path, epochs: int = 3) -> Path:
    """A run whose epoch count comes from train.toml, as `train_bridge config` writes it."""
    run = make_run(tmp_path)
    _drop_args(run, "--epochs")
    _edit_train(run, "training", max_train_epochs=epochs)
    return run


def test_resume_after_more_epochs_in_train_toml_trains_on(tmp_path: Path, root: Path) -> None:
    run = _toml_epochs_run(tmp_path)
    assert launch_run(run, _opts(root)).exit_code == 0
    _edit_train(run, "training", max_train_epochs=5)
    res = launch_run(run, _opts(root, resume=True))
    assert res.exit_code == 0, res.message
    assert res.outcomes[0].status == "done"  # not "skipped: already finished"
    assert any("max_train_epochs 3 -> 5" in n and "The resume uses it" in n for n in res.notices), res.notices
    argv = recorded_argv(tmp_path)[-1]
    assert argv[argv.index("--resume") + 1].endswith("lora-state")
    prog = res.outcomes[0].progress
    assert (prog.first_epoch, prog.epoch, prog.epochs) == (4, 5, 5)
    assert find_states(tmp_path / "output", "lora")[-1].step == 20  # 12 before + 8 in this session


def test_resume_refuses_a_changed_network_dim_and_says_why(tmp_path: Path, root: Path) -> None:
    run = _toml_epochs_run(tmp_path)
    assert launch_run(run, _opts(root)).exit_code == 0
    _edit_train(run, "training", max_train_epochs=5)
    _edit_train(run, "network", network_dim=32)
    r = run_cli(launch_args(run, root, "--resume"), tmp_path)
    assert r.returncode == 2
    assert "network_dim 16 -> 32" in r.stderr and "old rank" in r.stderr and "--restart" in r.stderr
    assert len(recorded_argv(tmp_path)) == 1  # the trainer did not start again


def test_resume_with_fewer_epochs_than_done_is_refused(tmp_path: Path, root: Path) -> None:
    run = _toml_epochs_run(tmp_path, epochs=3)
    assert launch_run(run, _opts(root)).exit_code == 0
    _edit_train(run, "training", max_train_epochs=2)
    with pytest.raises(LaunchError, match="at step 12 .* 8 steps in all") as ei:
        launch_run(run, _opts(root, resume=True))
    assert ei.value.code == 2


# --- 3. --restart sets old state aside --------------------------------------------------------


def test_restart_moves_old_state_aside_so_resume_cannot_pick_it_up(tmp_path: Path, root: Path) -> None:
    out = tmp_path / "output"
    run = make_run(tmp_path, fake_args=["--mode", "oom", "--fail_at", "10"])  # saves epoch 1 and 2 states, dies in 3
    assert launch_run(run, _opts(root)).exit_code == EXIT_OOM
    old = {p.name for p in out.iterdir() if not p.name.startswith(".")}
    assert {"lora-000002-state", "lora-000002.safetensors"} <= old
    with pytest.raises(LaunchError, match="contradict"):
        launch_run(run, _opts(root, resume=True, restart=True))
    # start again from 0; this time it dies in epoch 2, after one state
    _drop_args(run, "--fail_at")
    spec = json.loads((run / "run.json").read_text())
    spec["commands"][0]["args"] += ["--fail_at", "6"]
    (run / "run.json").write_text(json.dumps(spec))
    res = launch_run(run, _opts(root, restart=True))
    assert res.exit_code == EXIT_OOM
    aside = [p for p in out.iterdir() if p.name.startswith(".old-")]
    assert len(aside) == 1 and any("moved" in n and str(aside[0]) in n for n in res.notices)
    kept = {p.name for p in aside[0].iterdir()}
    assert {"lora-000001-state", "lora-000002-state", "lora-000002.safetensors", "sample"} <= kept  # nothing deleted
    assert [s.path.name for s in find_states(out, "lora")] == ["lora-000001-state"]
    # --resume continues the new run, not the old one's epoch-2 state
    _drop_args(run, "--mode", "--fail_at")
    res = launch_run(run, _opts(root, resume=True))
    assert res.exit_code == 0, res.message
    argv = recorded_argv(tmp_path)[-1]
    assert argv[argv.index("--resume") + 1] == str(out / "lora-000001-state")


# --- 4. states ordered by their global step ---------------------------------------------------


def test_states_are_ordered_by_global_step_after_a_resume(tmp_path: Path, root: Path) -> None:
    # 4 steps per epoch, 5 epochs, a step state every 5 steps. Session 1 dies at step 11:
    # states lora-000001/2 (steps 4, 8), lora-step00000005, lora-step00000010.
    out = tmp_path / "output"
    run = make_run(tmp_path, epochs=5, fake_args=["--save_every_n_steps", "5", "--mode", "oom", "--fail_at", "11"])
    assert launch_run(run, _opts(root)).exit_code == EXIT_OOM
    # Session 2 resumes from step 10 (epoch 3 on) and dies at its own step 6. sd-scripts counts the
    # session from 0: its step-5 state overwrites lora-step00000005-state and is really step 15.
    spec = json.loads((run / "run.json").read_text())
    spec["commands"][0]["args"][-1] = "6"
    (run / "run.json").write_text(json.dumps(spec))
    res = launch_run(run, _opts(root, resume=True))
    assert res.exit_code == EXIT_OOM
    assert recorded_argv(tmp_path)[-1][-2:] == ["--resume", str(out / "lora-step00000010-state")]
    own = json.loads((out / "lora-step00000005-state" / "train_state.json").read_text())
    assert own["current_step"] == 5  # session-relative, as sd-scripts writes it
    # the old step-10 state is made the newest on disk (a copy, a backup tool): mtime must not decide
    later = (out / "lora-step00000005-state").stat().st_mtime + 100
    os.utime(out / "lora-step00000010-state", (later, later))
    states = find_states(out, "lora")
    assert [(s.path.name, s.step) for s in states[-3:]] == [
        ("lora-step00000010-state", 10), ("lora-000003-state", 14), ("lora-step00000005-state", 15),
    ]
    _drop_args(run, "--mode", "--fail_at")
    res = launch_run(run, _opts(root, resume=True))
    assert res.exit_code == 0, res.message
    argv = recorded_argv(tmp_path)[-1]
    assert argv[argv.index("--resume") + 1] == str(out / "lora-step00000005-state")
    # the state's own step (5) would make sd-scripts train epochs 2-3 again; --initial_step says 15
    assert argv[argv.index("--initial_step") + 1] == "15"
    assert res.outcomes[0].progress.first_epoch == 4
    r = run_cli(["status", str(run), "--json"], tmp_path)
    assert json.loads(r.stdout)["states"][-1] == {"path": str(out / "lora-state"), "step": 23, "epoch": 5}


# --- 5. the trainer's own error ---------------------------------------------------------------


def test_failure_shows_the_trainers_error_not_accelerates_wrapper(tmp_path: Path, root: Path) -> None:
    run = make_run(tmp_path, fake_args=["--mode", "accel_fail"])
    r = run_cli(launch_args(run, root, "--json"), tmp_path)
    assert r.returncode == 1
    msg = json.loads(r.stdout)["message"]
    assert msg.startswith("train exited with 1: ValueError: unexpected key in DiT state dict")
    assert "load_anima_dit" in msg  # the frame it failed in
    assert "CalledProcessError" not in msg and "accelerate" not in msg
    assert "ValueError: unexpected key in DiT state dict" in r.stderr


# --- 6. `train_bridge launch anima` inside and outside a project ------------------------------


def test_launch_arch_inside_a_project_configures_its_dataset_then_launches(tmp_path: Path, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = tmp_path / "sage"
    models = make_models(project)
    make_images(project / "dataset", n=3)
    doc = {
        "project": {"source": "raw", "trigger": "ohwx", "trainer": "anima", "resolution": 768},
        "train": {"preset": "12gb", "models": {k: str(v.relative_to(project)) for k, v in models.items()}, "set": {"max_train_epochs": 2}},
    }
    (project / "loraprep.toml").write_text(tomli_w.dumps(doc))
    (project / "raw").mkdir()
    monkeypatch.chdir(project / "raw")  # anywhere inside the project
    common = ["--trainer-dir", str(root), "--python", sys.executable, "--no-gpu-check", "--no-accelerate"]
    r = run_cli(["launch", "anima", *common], tmp_path)
    assert r.returncode == 0, r.stderr
    spec = json.loads((project / "run" / "run.json").read_text())
    assert spec["preset"] == "12gb" and Path(spec["dataset"]).resolve() == (project / "dataset").resolve()
    train = (project / "run" / "train.toml").read_text()
    assert str(models["dit"]) in train and "max_train_epochs = 2" in train
    assert "768" in (project / "run" / "dataset.toml").read_text()
    assert (Path(spec["output_dir"]) / f"{spec['output_name']}.safetensors").exists()


def test_launch_arch_outside_a_project_says_which_folder_it_needs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    r = run_cli(["launch", "anima", "--no-gpu-check"], tmp_path)
    assert r.returncode == 2
    text = " ".join(r.stderr.split())
    assert "needs the dataset folder" in text and "loraprep.toml" in text
    assert "train_bridge launch anima DATASET" in text and "loraprep run" in text
