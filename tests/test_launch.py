"""launch against a fake trainer: live progress, files, resume, exit codes, Ctrl-C, GPU check."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_trainer.helpers import cli_env, launch_args, make_run, make_trainer_root, recorded_argv, run_cli

from train_bridge.launch import EXIT_INTERRUPTED, EXIT_OOM, LaunchError, LaunchOptions, launch_run


def _opts(root: Path, **kw: object) -> LaunchOptions:
    return LaunchOptions(trainer_dir=root, python=sys.executable, gpu_check=False, **kw)  # type: ignore[arg-type]


def _musubi_opts(root: Path, **kw: object) -> LaunchOptions:
    # these runs stand in for Wan 2.2 steps without its model files: no preflight (tested with Anima below)
    return _opts(root, preflight=False, **kw)


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    return make_trainer_root(tmp_path)


def test_progress_is_seen_live_and_files_announced(tmp_path: Path, root: Path) -> None:
    run = make_run(tmp_path, fake_args=["--sleep", "0.03"])
    seen: list[tuple[str, dict]] = []
    steps_while_running: list[int] = []

    def observer(kind: str, data: dict) -> None:
        seen.append((kind, data))
        if kind == "event" and data["event"].kind == "step":
            steps_while_running.append(data["event"].data["step"])

    res = launch_run(run, _opts(root), observer)
    assert res.status == "done" and res.exit_code == 0
    # every step reached the observer as it happened, in order
    assert steps_while_running[-1] == 12 and steps_while_running == sorted(steps_while_running)
    assert len(set(steps_while_running)) >= 10
    prog = res.outcomes[0].progress
    assert (prog.step, prog.total, prog.epoch, prog.epochs) == (12, 12, 3, 3)
    assert prog.avr_loss is not None and 0 < prog.avr_loss < 0.1
    announced = [d["path"] for k, d in seen if k == "file"] + [d["event"].data["path"] for k, d in seen if k == "event" and d["event"].kind == "checkpoint"]
    names = {Path(p).name for p in announced}
    assert {"lora-000001.safetensors", "lora-000002.safetensors", "lora.safetensors"} <= names
    assert any(n.endswith(".png") for n in names)
    # each checkpoint announced once, though both the log and the folder report it
    assert sum(1 for p in announced if Path(p).name == "lora-000001.safetensors") == 1
    # the log keeps the raw stream, status.json the summary
    log = res.log_path
    assert log is not None and log.parent == run / "logs" and b"\rsteps:" in log.read_bytes()
    st = json.loads((run / "status.json").read_text())
    assert st["state"] == "done" and st["exit_code"] == 0
    assert st["progress"]["step"] == 12 and len(st["files"]["checkpoints"]) == 3
    assert st["commands"]["train"]["status"] == "done"


def test_argv_puts_accelerate_options_before_the_script(tmp_path: Path, root: Path) -> None:
    run = make_run(tmp_path, accelerate=True)
    res = launch_run(run, _opts(root, dry_run=True))
    argv = res.plan[0]["argv"]
    script = str(root / "anima_train_network.py")
    assert argv[:5] == [sys.executable, "-m", "accelerate.commands.launch", "--num_cpu_threads_per_process", "1"]
    assert argv[5] == script
    assert argv[6:8] == ["--config_file", str(run / "train.toml")]
    assert not (run / "logs").exists()  # dry run starts nothing


def test_cuda_oom_gives_exit_3_and_advice_for_this_config(tmp_path: Path, root: Path) -> None:
    run = make_run(tmp_path, fake_args=["--mode", "oom", "--fail_at", "2"])
    r = run_cli(launch_args(run, root, "--json"), tmp_path)
    assert r.returncode == EXIT_OOM == 3, r.stderr
    out = json.loads(r.stdout)
    assert out["status"] == "oom"
    keys = [s["key"] for s in out["advice"]["suggestions"]]
    # this config has gradient checkpointing off and batch 2: those come first
    assert keys[:2] == ["gradient_checkpointing", "train_batch_size"]
    assert "blocks_to_swap" in keys and "resolution" in keys and "network_dim" in keys
    batch = out["advice"]["suggestions"][1]
    assert batch["set"] == ["--set train_batch_size=1", "--set gradient_accumulation_steps=2"]
    assert "2.00 GiB" in out["advice"]["headline"]
    assert "--set gradient_checkpointing=true" in r.stderr
    assert json.loads((run / "status.json").read_text())["state"] == "oom"


def test_host_oom_kill_9_is_exit_3_with_ram_advice(tmp_path: Path, root: Path) -> None:
    run = make_run(tmp_path, fake_args=["--mode", "kill9", "--fail_at", "3"])
    res = launch_run(run, _opts(root))
    assert res.exit_code == EXIT_OOM and res.outcomes[0].returncode in (-9, 137)
    assert res.advice is not None and res.advice.kind == "host"
    assert res.advice.suggestions[0].key == "max_data_loader_n_workers"


def test_host_oom_seen_through_accelerate_which_exits_1(tmp_path: Path, root: Path) -> None:
    run = make_run(tmp_path, fake_args=["--mode", "accel_kill9", "--fail_at", "3"])
    res = launch_run(run, _opts(root))
    assert res.outcomes[0].returncode == 1
    assert res.exit_code == EXIT_OOM and res.advice is not None and res.advice.kind == "host"


def test_a_second_launch_of_a_running_run_is_refused(tmp_path: Path, root: Path) -> None:
    run = make_run(tmp_path)
    helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (run / "status.json").write_text(json.dumps({"state": "running", "launcher_pid": helper.pid, "started_at": "x"}))
        with pytest.raises(LaunchError, match=f"already being trained by process {helper.pid}") as ei:
            launch_run(run, _opts(root))
        assert ei.value.code == 2
    finally:
        helper.kill()
        helper.wait()
    assert launch_run(run, _opts(root)).exit_code == 0  # the launcher is gone: the run can start


def test_plain_failure_is_exit_1_and_names_the_error(tmp_path: Path, root: Path) -> None:
    run = make_run(tmp_path, fake_args=["--mode", "fail"])
    r = run_cli(launch_args(run, root), tmp_path)
    assert r.returncode == 1
    assert "AssertionError: network for Text Encoder" in r.stderr


def test_resume_passes_the_newest_state_and_is_verified(tmp_path: Path, root: Path) -> None:
    run = make_run(tmp_path, fake_args=["--mode", "oom", "--fail_at", "10"])  # dies in epoch 3, after 2 saved states
    assert launch_run(run, _opts(root)).exit_code == EXIT_OOM
    spec = json.loads((run / "run.json").read_text())
    spec["commands"][0]["args"] = [a for a in spec["commands"][0]["args"] if a not in ("--mode", "oom", "--fail_at", "10")]
    (run / "run.json").write_text(json.dumps(spec))
    res = launch_run(run, _opts(root, resume=True))
    assert res.exit_code == 0
    argv = recorded_argv(tmp_path)[-1]
    state = str(tmp_path / "output" / "lora-000002-state")
    assert argv[-2:] == ["--resume", state]
    check = res.outcomes[0].resume_check
    assert check is not None and check.verified is True and check.resumed_step == 8
    prog = res.outcomes[0].progress
    assert prog.first_epoch == 3
    # the trainer's bar restarted at 0 (as sd-scripts' does); the overall step continues
    assert (prog.step, prog.step_offset, prog.global_step) == (4, 8, 12)
    assert json.loads((run / "status.json").read_text())["progress"]["global_step"] == 12


def test_resume_without_state_refuses(tmp_path: Path, root: Path) -> None:
    run = make_run(tmp_path)
    with pytest.raises(LaunchError) as ei:
        launch_run(run, _opts(root, resume=True))
    assert ei.value.code == 2 and "nothing to resume" in str(ei.value)
    r = run_cli(launch_args(run, root, "--resume"), tmp_path)
    assert r.returncode == 2 and "nothing to resume" in r.stderr
    assert recorded_argv(tmp_path) == []  # the trainer never started


def test_existing_state_without_resume_refuses_silent_restart(tmp_path: Path, root: Path) -> None:
    run = make_run(tmp_path)
    assert launch_run(run, _opts(root)).exit_code == 0
    with pytest.raises(LaunchError) as ei:
        launch_run(run, _opts(root))
    assert ei.value.code == 2 and "--resume" in str(ei.value) and "--restart" in str(ei.value)
    assert launch_run(run, _opts(root, restart=True)).exit_code == 0


def test_resume_that_restarts_at_step_0_is_flagged(tmp_path: Path, root: Path) -> None:
    run = make_run(tmp_path, fake_args=["--ignore_state", "--mode", "oom", "--fail_at", "6"])
    launch_run(run, _opts(root))
    spec = json.loads((run / "run.json").read_text())
    spec["commands"][0]["args"] = [a for a in spec["commands"][0]["args"] if a not in ("--mode", "oom", "--fail_at", "6")]
    (run / "run.json").write_text(json.dumps(spec))
    res = launch_run(run, _opts(root, resume=True))
    check = res.outcomes[0].resume_check
    assert check is not None and check.verified is False and "step 0" in check.message
    assert "step 0" in res.message


def test_auto_retry_oom_applies_changes_to_a_copy(tmp_path: Path, root: Path) -> None:
    run = make_run(tmp_path, fake_args=["--oom_unless", "gradient_checkpointing = true"])
    original = (run / "train.toml").read_text()
    r = run_cli(launch_args(run, root, "--auto-retry-oom", "--json"), tmp_path)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert [o["status"] for o in out["commands"]] == ["oom", "done"]
    # the 12gb preset's memory settings, where leaner than this config (its dim 16 is not)
    assert out["retry"]["changes"] == {
        "gradient_checkpointing": True, "blocks_to_swap": 10, "train_batch_size": 1,
        "gradient_accumulation_steps": 2, "dataset.resolution": 768,
    }
    copy, ds_copy = run / "train.oom-retry1.toml", run / "dataset.oom-retry1.toml"
    assert "gradient_checkpointing = true" in copy.read_text() and "resolution = 768" in ds_copy.read_text()
    assert (run / "train.toml").read_text() == original  # the original is left alone
    spec = json.loads((run / "run.json").read_text())
    assert spec["oom_retries"][0]["to_preset"] == "12gb" and spec["oom_retries"][0]["from_preset"] == "16gb"
    assert str(copy) in spec["commands"][0]["args"] and str(ds_copy) in spec["commands"][0]["args"]  # --resume later uses them
    argvs = recorded_argv(tmp_path)
    assert str(copy) in argvs[-1] and str(copy) not in argvs[0]


def test_auto_retry_without_a_known_preset_uses_the_advice(tmp_path: Path, root: Path) -> None:
    run = make_run(tmp_path, fake_args=["--oom_unless", "gradient_checkpointing = true"], preset="custom")
    res = launch_run(run, _opts(root, auto_retry_oom=True))
    assert res.exit_code == 0 and res.retry is not None
    assert res.retry["to_preset"] is None
    assert res.retry["changes"] == {"gradient_checkpointing": True, "train_batch_size": 1, "gradient_accumulation_steps": 2}


def test_auto_retry_only_once(tmp_path: Path, root: Path) -> None:
    run = make_run(tmp_path, fake_args=["--mode", "oom", "--fail_at", "1"])
    res = launch_run(run, _opts(root, auto_retry_oom=True))
    assert res.exit_code == EXIT_OOM
    assert [o.status for o in res.outcomes] == ["oom", "oom"]


def test_musubi_steps_run_in_order_and_made_caches_are_skipped(tmp_path: Path, root: Path) -> None:
    rec = str(tmp_path / "argv.jsonl")
    out = str(tmp_path / "output")
    ds = str(tmp_path / "run" / "dataset.toml")
    cache = ["--output_dir", out, "--mode", "cache", "--record_argv", rec, "--dataset_config", ds]
    commands = [  # deliberately out of order: launch sorts caches first
        {"name": "train", "script": "wan_train_network.py", "args": ["--epochs", "1"], "base": True, "accelerate": False},
        {"name": "cache_text_encoder", "script": "wan_cache_text_encoder_outputs.py", "args": [*cache, "--output_name", "te"], "accelerate": False},
        {"name": "cache_latents", "script": "wan_cache_latents.py", "args": [*cache, "--output_name", "lat"], "accelerate": False},
    ]
    run = make_run(tmp_path, trainer="musubi-tuner", commands=commands)
    res = launch_run(run, _musubi_opts(root))
    assert res.exit_code == 0
    order = [a[a.index("--output_name") + 1] for a in recorded_argv(tmp_path)]
    assert order == ["lat", "te", "lora"]
    res = launch_run(run, _musubi_opts(root, restart=True))
    assert [o.status for o in res.outcomes] == ["skipped", "skipped", "done"]
    assert len(recorded_argv(tmp_path)) == 4
    # a changed dataset.toml makes the caches stale
    Path(ds).write_text(Path(ds).read_text() + "\n# changed\n")
    res = launch_run(run, _musubi_opts(root, restart=True))
    assert [o.status for o in res.outcomes] == ["done", "done", "done"]


def test_ctrl_c_stops_the_trainer_and_prints_resume(tmp_path: Path, root: Path) -> None:
    run = make_run(tmp_path, fake_args=["--mode", "wait", "--sleep", "0.2"], epochs=50)
    proc = subprocess.Popen(
        [sys.executable, "-c", "from train_bridge.cli import main; main()", *launch_args(run, root, "--grace", "10")],
        env=cli_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.time() + 30
    while time.time() < deadline:
        st = run / "status.json"
        if st.exists() and (json.loads(st.read_text()).get("progress") or {}).get("step", 0) >= 2:
            break
        time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("no progress in status.json")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == EXIT_INTERRUPTED == 130
    assert f"train_bridge launch {run} --resume" in err
    assert json.loads((run / "status.json").read_text())["state"] == "interrupted"
    log = next((run / "logs").glob("*.log")).read_text()
    assert "stopping on SIGINT" in log  # the trainer got SIGINT and ended itself


def _fake_smi(tmp: Path, free_mib: int) -> Path:
    p = tmp / "nvidia-smi"
    p.write_text(
        "#!" + sys.executable + "\n"
        "import sys\n"
        "if any(a.startswith('--query-gpu') for a in sys.argv):\n"
        f"    print('0, NVIDIA GeForce RTX 4060 Ti, 16380, {free_mib}')\n"
        "else:\n"
        "    print('| NVIDIA-SMI 550.54   Driver Version: 550.54   CUDA Version: 12.4 |')\n"
    )
    p.chmod(0o755)
    return p


def test_gpu_check_refuses_a_busy_gpu_with_a_clear_message(tmp_path: Path, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = make_run(tmp_path)
    opts = LaunchOptions(trainer_dir=root, python=sys.executable)  # GPU check on
    monkeypatch.setenv("LORAPREP_NVIDIA_SMI", str(_fake_smi(tmp_path, free_mib=3000)))
    with pytest.raises(LaunchError) as ei:
        launch_run(run, opts)
    assert ei.value.code == 1
    assert "2.9 GiB free of 16.0 GiB" in str(ei.value) and "--no-gpu-check" in str(ei.value)
    monkeypatch.setenv("LORAPREP_NVIDIA_SMI", str(tmp_path / "missing-smi"))
    with pytest.raises(LaunchError, match="no NVIDIA GPU found"):
        launch_run(run, opts)
    assert recorded_argv(tmp_path) == []  # refused before starting anything
    smi = _fake_smi(tmp_path, free_mib=15800)
    r = run_cli(["launch", str(run), "--trainer-dir", str(root), "--python", sys.executable], tmp_path, LORAPREP_NVIDIA_SMI=str(smi))
    assert r.returncode == 0, r.stderr
    assert "RTX 4060 Ti" in r.stderr and len(recorded_argv(tmp_path)) == 1


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("LORAPREP_SLOW_TESTS"), reason="imports torch through accelerate (~15 s); set LORAPREP_SLOW_TESTS=1")
def test_real_accelerate_launcher_runs_the_script(tmp_path: Path, root: Path) -> None:
    pytest.importorskip("accelerate")
    run = make_run(tmp_path, accelerate=True, epochs=1)
    res = launch_run(run, _opts(root))
    assert res.exit_code == 0, res.message
    assert res.outcomes[0].argv[1:3] == ["-m", "accelerate.commands.launch"]
    assert res.outcomes[0].progress.step == 4


def test_auto_retry_oom_keeps_each_expert_on_its_own_config(tmp_path: Path, root: Path) -> None:
    # Wan 2.2: train_high and train_low read different TOMLs (their own DiT and output_name).
    # A retry of the expert that ran out of memory must not point the other one at its config.
    import tomli_w

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    out = str(tmp_path / "output")
    for expert in ("high", "low"):
        cfg = {"output_dir": out, "output_name": f"lora_{expert}", "max_train_epochs": 1, "save_state": True,
               "training": {"gradient_checkpointing": False, "train_batch_size": 1}}
        (run_dir / f"train_{expert}.toml").write_text(tomli_w.dumps(cfg))
    rec = str(tmp_path / "argv.jsonl")
    common = ["--dataset_config", str(run_dir / "dataset.toml"), "--record_argv", rec]
    commands = [
        {"name": "train_high", "script": "wan_train_network.py", "accelerate": False,
         "args": ["--config_file", str(run_dir / "train_high.toml"), *common, "--oom_unless", "gradient_checkpointing = true"]},
        {"name": "train_low", "script": "wan_train_network.py", "accelerate": False,
         "args": ["--config_file", str(run_dir / "train_low.toml"), *common]},
    ]
    run = make_run(tmp_path, trainer="musubi-tuner", commands=commands, preset="custom")
    res = launch_run(run, _musubi_opts(root, auto_retry_oom=True))
    assert [o.status for o in res.outcomes] == ["oom", "done", "done"], res.message
    argvs = recorded_argv(tmp_path)
    low = [a for a in argvs if str(run_dir / "train_low.toml") in a]
    assert len(low) == 1 and len(argvs) == 3  # train_low ran once, on its own config
    names = {p.name for p in Path(out).iterdir()}
    assert "lora_low.safetensors" in names and "lora_high.safetensors" in names
    spec = json.loads((run / "run.json").read_text())
    assert str(run_dir / "train_low.toml") in spec["commands"][1]["args"]


def test_auto_retry_oom_after_a_saved_state_resumes_only_the_failed_expert(tmp_path: Path, root: Path) -> None:
    # train_high saved a state and then ran out of memory: the retry resumes train_high, while
    # train_low (no state yet) starts fresh instead of the launch dying with "nothing to resume".
    import tomli_w

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    out = str(tmp_path / "output")
    for expert in ("high", "low"):
        cfg = {"output_dir": out, "output_name": f"lora_{expert}", "max_train_epochs": 3, "save_state": True,
               "training": {"gradient_checkpointing": False, "train_batch_size": 1}}
        (run_dir / f"train_{expert}.toml").write_text(tomli_w.dumps(cfg))
    rec = str(tmp_path / "argv.jsonl")
    common = ["--dataset_config", str(run_dir / "dataset.toml"), "--record_argv", rec, "--steps_per_epoch", "4"]
    commands = [
        {"name": "train_high", "script": "wan_train_network.py", "accelerate": False,
         "args": ["--config_file", str(run_dir / "train_high.toml"), *common, "--oom_unless", "gradient_checkpointing = true", "--fail_at", "6"]},
        {"name": "train_low", "script": "wan_train_network.py", "accelerate": False,
         "args": ["--config_file", str(run_dir / "train_low.toml"), *common]},
    ]
    run = make_run(tmp_path, trainer="musubi-tuner", commands=commands, preset="custom")
    res = launch_run(run, _musubi_opts(root, auto_retry_oom=True))
    assert res.exit_code == 0 and [o.status for o in res.outcomes] == ["oom", "done", "done"], res.message
    assert res.retry is not None and res.retry["resume"] is True
    argvs = recorded_argv(tmp_path)
    assert argvs[1][argvs[1].index("--resume") + 1].endswith("lora_high-000001-state")
    assert "--resume" not in argvs[2]


def test_auto_retry_after_a_refused_host_allocation(tmp_path: Path, root: Path) -> None:
    """The OOM a memory limit gives on a CPU (what the real tier provokes with prlimit): host
    advice, and the retry's copy with fewer data-loader workers fits."""
    run = make_run(tmp_path, fake_args=["--oom_unless", "max_data_loader_n_workers = 2", "--oom_kind", "host_alloc"])
    res = launch_run(run, _opts(root, auto_retry_oom=True))
    assert [o.status for o in res.outcomes] == ["host_oom", "done"], [o.message for o in res.outcomes]
    assert res.exit_code == 0
    first = res.outcomes[0]
    assert first.progress.host_oom and "ran out of host memory" in first.message and "DefaultCPUAllocator" in first.message
    assert res.advice is not None and res.advice.kind == "host" and "tried to allocate 8 MiB" in res.advice.headline
    assert res.retry is not None and res.retry["kind"] == "host" and res.retry["changes"] == {"max_data_loader_n_workers": 2}
    assert "max_data_loader_n_workers = 2" in (run / "train.oom-retry1.toml").read_text()


def test_a_refused_host_allocation_without_retry_is_exit_3(tmp_path: Path, root: Path) -> None:
    run = make_run(tmp_path, fake_args=["--mode", "host_alloc", "--fail_at", "2"])
    r = run_cli(launch_args(run, root, "--json"), tmp_path)
    assert r.returncode == EXIT_OOM, r.stderr
    out = json.loads(r.stdout)
    assert out["status"] == "oom" and out["advice"]["kind"] == "host"
    assert out["advice"]["suggestions"][0]["key"] == "max_data_loader_n_workers"


def test_a_new_session_does_not_show_the_last_sessions_progress(tmp_path: Path, root: Path) -> None:
    """Seen on a real resume: status.json kept the finished session's step 4/4 until the new
    session's first tick, so `status` (and the studio) showed a resumed run as already at its end."""
    run = make_run(tmp_path, epochs=1, steps_per_epoch=4, train={
        "network": {"network_module": "networks.lora_anima", "network_dim": 16, "network_alpha": 16},
        "training": {"save_state": True, "max_train_epochs": 1},
    })
    assert launch_run(run, _opts(root, preflight=False)).exit_code == 0
    assert json.loads((run / "status.json").read_text())["progress"]["step"] == 4
    import tomli_w

    (run / "train.toml").write_text(tomli_w.dumps({"network": {"network_module": "networks.lora_anima", "network_dim": 16, "network_alpha": 16},
                                                   "training": {"save_state": True, "max_train_epochs": 2}}))
    seen: list[object] = []

    def observer(kind: str, data: dict) -> None:
        if kind == "command":
            seen.append(json.loads((run / "status.json").read_text()).get("progress"))

    spec = json.loads((run / "run.json").read_text())
    i = spec["commands"][0]["args"].index("--epochs")
    spec["commands"][0]["args"][i + 1] = "2"
    (run / "run.json").write_text(json.dumps(spec))
    res = launch_run(run, _opts(root, resume=True, preflight=False), observer)
    assert res.exit_code == 0, res.message
    assert seen == [None]  # not the old {"step": 4, ...}
