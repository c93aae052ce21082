"""status of a run folder: from status.json, from the log alone, and when the launcher vanished."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from fake_trainer.helpers import make_run, make_trainer_root, run_cli

from train_bridge.launch import LaunchOptions, launch_run
from train_bridge.status import collect_status


def test_status_after_a_run_lists_progress_loss_checkpoints_samples(tmp_path: Path) -> None:
    root = make_trainer_root(tmp_path)
    run = make_run(tmp_path)
    assert launch_run(run, LaunchOptions(trainer_dir=root, python=sys.executable, gpu_check=False)).exit_code == 0
    r = run_cli(["status", str(run), "--json"], tmp_path)
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert st["state"] == "done" and st["exit_code"] == 0
    assert st["progress"]["step"] == 12 and st["progress"]["total"] == 12
    assert st["last_loss"] == pytest.approx(0.0259, rel=0.05)
    assert [Path(c).name for c in st["checkpoints"]] == ["lora-000001.safetensors", "lora-000002.safetensors", "lora.safetensors"]
    assert len(st["samples"]) == 3
    assert st["states"][-1]["path"].endswith("lora-state") and st["states"][-1]["step"] == 12
    r = run_cli(["status", str(run)], tmp_path)
    assert "step 12/12" in r.stderr and "lora.safetensors" in r.stderr and "resumable from" in r.stderr


def test_status_from_a_log_alone_and_a_dead_launcher(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    (run / "logs").mkdir()
    (run / "logs" / "20260101-000000.log").write_bytes(
        b"\nepoch 2/10\n\rsteps:  15%|#5        | 52/350 [02:10<12:25, 0.40it/s, avr_loss=0.114]"
    )
    (run / "status.json").write_text(json.dumps({"state": "running", "launcher_pid": 2**22 + 12345}))
    st = collect_status(run)
    assert st["state"] == "stopped (launcher gone)"
    assert st["progress"]["step"] == 52 and st["progress"]["epoch"] == 2
    assert st["last_loss"] == pytest.approx(0.114)
    assert st["checkpoints"] == [] and st["states"] == []


def test_status_of_a_non_run_folder_is_a_usage_error(tmp_path: Path) -> None:
    r = run_cli(["status", str(tmp_path)], tmp_path)
    assert r.returncode == 2 and "not a run folder" in r.stderr


def test_status_of_a_huge_log_reads_head_and_tail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import train_bridge.status as status_mod

    monkeypatch.setattr(status_mod, "HEAD_BYTES", 200)
    monkeypatch.setattr(status_mod, "TAIL_BYTES", 400)
    run = make_run(tmp_path)
    (run / "logs").mkdir()
    bars = "".join(f"\rsteps:  {i // 5}%|#| {i}/500 [00:{i % 60:02d}<00:10, 9.0it/s, avr_loss=0.{i:03d}]" for i in range(1, 500))
    (run / "logs" / "a.log").write_bytes(("  total optimization steps / x: 500\nepoch 1/5\n" + bars).encode())
    st = collect_status(run)
    assert st["progress"]["step"] == 499 and st["progress"]["total"] == 500
    assert st["last_loss"] == pytest.approx(0.499)


def test_status_of_a_malformed_run_json_is_one_clear_error(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    (run / "run.json").write_text('{"version": 1, "trainer": "sd-scripts", "commands": [')
    r = run_cli(["status", str(run)], tmp_path)
    assert r.returncode == 2
    text = " ".join(r.stderr.split())
    assert "run.json is not valid JSON" in text and "train_bridge config" in text
    spec = json.loads('{"version": 1, "trainer": "sd-scripts", "commands": [{"name": "train", "script": "x.py", "args": []}]}')
    (run / "run.json").write_text(json.dumps(spec))  # valid JSON, but no output_dir: RunSpec's own message
    r = run_cli(["status", str(run)], tmp_path)
    assert r.returncode == 2 and "output_dir is missing" in " ".join(r.stderr.split())
