"""--remote runpod against a RunPod API stand-in on 127.0.0.1 (tests/stubs/runpod_stub.py):
pod create, poll, stop, terminate, and a failure in each; the pod is never left running silently."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from fake_trainer.helpers import make_run, make_trainer_root, run_cli
from stubs.runpod_stub import PodApi
from test_remote_ssh import Box, box  # noqa: F401  (the sshd fixture: the pod's ssh)

from train_bridge.remote.runpod import (
    PodLease,
    RunPodClient,
    RunPodError,
    create_lease,
    gpu_type_ids,
)
from train_bridge.remote.session import RemoteOptions, attach_remote, launch_remote
from train_bridge.remote.target import RemoteError, RemoteRecord


@pytest.fixture()
def api(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> PodApi:
    stub = PodApi().start()
    monkeypatch.setenv("RUNPOD_API_URL", stub.url)
    monkeypatch.setenv("RUNPOD_API_KEY", stub.key)
    monkeypatch.setenv("LORAPREP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LORAPREP_SSH_CONFIG", "/dev/null")
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    yield stub
    stub.stop()


class Notes(list):
    def __call__(self, kind: str, data: dict) -> None:
        if kind == "notice":
            self.append((data["level"], data["text"]))

    def text(self) -> str:
        return "\n".join(t for _, t in self)


def _pub(tmp: Path) -> Path:
    p = tmp / "key.pub"
    p.write_text("ssh-ed25519 AAAAC3Nza test@here\n")
    return p


def test_a_pod_is_created_trained_on_and_stopped_at_the_end(tmp_path: Path, api: PodApi, box: Box) -> None:  # noqa: F811
    api.ssh_port = box.port
    trainer = make_trainer_root(tmp_path)
    run = make_run(tmp_path, fake_args=["--sleep", "0.02"], epochs=2)
    notes = Notes()
    opts = RemoteOptions(
        remote="runpod", gpu="A100 80GB", identity=box.key, remote_dir=str(box.dir), remote_python=sys.executable,
        trainer_dir=str(trainer), trainer_python=sys.executable, gpu_check=False, pull_every_s=0.3, poll_s=0.05, ready_timeout_s=20,
    )
    res = launch_remote(run, opts, notes)
    assert res.status == "done", notes.text()
    assert {"lora-000001.safetensors", "lora.safetensors"} <= {p.name for p in (tmp_path / "output").iterdir()}
    ops = api.ops()
    assert ops[0] == "POST /v1/pods" and ops[-1] == "POST /v1/pods/pod1/stop"
    assert sum(1 for o in ops if o == "GET /v1/pods/pod1") >= 2  # polled until ssh was up
    body = api.calls[0][2]
    assert body["gpuTypeIds"] == ["NVIDIA A100 80GB PCIe", "NVIDIA A100-SXM4-80GB"] and body["ports"] == ["22/tcp"]
    assert body["env"]["PUBLIC_KEY"] == body["env"]["SSH_PUBLIC_KEY"] == Path(str(box.key) + ".pub").read_text().strip()
    assert all(auth == f"Bearer {api.key}" for *_, auth in api.calls)
    assert api.pods["pod1"]["desiredStatus"] == "EXITED"
    assert "pod pod1 stopped" in notes.text()
    rec = json.loads((run / "remote.json").read_text())
    assert rec["kind"] == "runpod" and rec["pod_id"] == "pod1" and rec["port"] == box.port
    assert api.key not in (run / "remote.json").read_text() and api.key not in (run / "status.json").read_text()


def test_create_failure_makes_nothing_and_says_so(tmp_path: Path, api: PodApi) -> None:
    api.fail["create"] = 500
    run = make_run(tmp_path)
    r = run_cli(["launch", str(run), "--remote", "runpod", "--gpu", "RTX 4090", "--identity", str(_pub(tmp_path))[:-4]], tmp_path, RUNPOD_API_URL=api.url, RUNPOD_API_KEY=api.key)
    flat = " ".join(r.stderr.split())
    assert r.returncode == 1, r.stderr
    assert "could not create a RTX 4090 pod" in flat and "No pod was made" in flat and "500" in flat
    assert api.ops() == ["POST /v1/pods"]


def test_runpod_needs_a_key_and_a_gpu(tmp_path: Path, api: PodApi, monkeypatch: pytest.MonkeyPatch) -> None:
    run = make_run(tmp_path)
    r = run_cli(["launch", str(run), "--remote", "runpod"], tmp_path)
    assert r.returncode == 2 and "--gpu" in r.stderr
    monkeypatch.delenv("RUNPOD_API_KEY")
    r = run_cli(["launch", str(run), "--remote", "runpod", "--gpu", "A100 80GB"], tmp_path, RUNPOD_API_KEY="")
    assert r.returncode == 2 and "RUNPOD_API_KEY" in r.stderr
    assert api.calls == []


def test_a_wrong_key_is_named(tmp_path: Path, api: PodApi) -> None:
    client = RunPodClient("wrong")
    with pytest.raises(RunPodError, match="401.*API key is wrong"):
        client.get_pod("pod1")


def test_pod_that_exits_while_waiting_is_stopped_and_reported(tmp_path: Path, api: PodApi) -> None:
    api.exit_on_poll = True
    notes = Notes()
    run = make_run(tmp_path)
    opts = RemoteOptions(remote="runpod", gpu="A100 80GB", identity=Path(str(_pub(tmp_path))[:-4]), poll_s=0.01, ready_timeout_s=5)
    with pytest.raises(RemoteError, match="went to EXITED before it was ready"):
        launch_remote(run, opts, notes)
    assert api.ops()[-1] == "POST /v1/pods/pod1/stop"  # released, not left behind
    assert "pod pod1 stopped" in notes.text()


def test_poll_failure_releases_the_pod(tmp_path: Path, api: PodApi) -> None:
    api.fail["get"] = 500
    notes = Notes()
    run = make_run(tmp_path)
    opts = RemoteOptions(remote="runpod", gpu="A100 80GB", identity=Path(str(_pub(tmp_path))[:-4]), poll_s=0.01, ready_timeout_s=5, on_finish="terminate")
    with pytest.raises(RemoteError, match="answered 500"):
        launch_remote(run, opts, notes)
    assert api.ops()[-1] == "DELETE /v1/pods/pod1" and "pod1" not in api.pods
    assert "terminated" in notes.text()


def test_ctrl_c_while_waiting_stops_the_pod(tmp_path: Path, api: PodApi) -> None:
    api.ready_after = 10**6

    def observer(kind: str, data: dict) -> None:
        if kind == "notice" and "waiting for pod" in data["text"]:
            raise KeyboardInterrupt

    run = make_run(tmp_path)
    opts = RemoteOptions(remote="runpod", gpu="A100 80GB", identity=Path(str(_pub(tmp_path))[:-4]), poll_s=0.01)
    with pytest.raises(KeyboardInterrupt):
        launch_remote(run, opts, observer)
    assert api.ops() == ["POST /v1/pods", "POST /v1/pods/pod1/stop"]


def _lease(api: PodApi, notes: Notes, tmp: Path) -> PodLease:
    return create_lease("A100 80GB", _pub(tmp), lambda level, text: notes.append((level, text)), name="t")


def test_stop_and_terminate_failures_say_the_pod_may_still_bill(tmp_path: Path, api: PodApi) -> None:
    notes = Notes()
    lease = _lease(api, notes, tmp_path)
    api.fail["stop"] = 500
    with pytest.raises(RunPodError):
        lease.release("stop")
    assert "IT MAY STILL BE RUNNING AND BILLING" in notes.text() and "console.runpod.io" in notes.text()
    api.fail["terminate"] = 502
    with pytest.raises(RunPodError):
        lease.release("terminate")
    assert notes.text().count("MAY STILL BE RUNNING") == 2
    del api.fail["terminate"]
    assert lease.release("terminate") == "terminate" and api.pods == {}


def test_keep_leaves_the_pod_running_and_says_it_bills(tmp_path: Path, api: PodApi) -> None:
    notes = Notes()
    lease = _lease(api, notes, tmp_path)
    assert lease.release("keep") == "kept"
    assert "STILL RUNNING and billing" in notes.text()
    assert api.ops() == ["POST /v1/pods"]


def test_attach_to_a_preempted_pod_says_how_to_resume(tmp_path: Path, api: PodApi) -> None:
    notes = Notes()
    lease = _lease(api, notes, tmp_path)
    api.pods[lease.pod_id]["desiredStatus"] = "EXITED"  # the host reclaimed it
    run = make_run(tmp_path)
    state = tmp_path / "output" / "lora-000001-state"
    state.mkdir(parents=True)
    (state / "train_state.json").write_text(json.dumps({"current_epoch": 1, "current_step": 4}))
    RemoteRecord("runpod", "root", "127.0.0.1", 1, "/x/r", "/x/r/run", "/x/r/output", "python3", pid=42, log="/x/r/run/logs/a.log", pod_id=lease.pod_id, gpu="A100 80GB").write(run)
    res = attach_remote(run, RemoteOptions(remote="attach"), notes)
    assert res.status == "preempted" and res.exit_code == 1
    flat = " ".join(res.message.split())
    assert f"pod {lease.pod_id} is EXITED" in flat and str(state) in flat
    assert f"train_bridge launch {run} --remote runpod --gpu 'A100 80GB' --resume" in flat
    assert json.loads((run / "remote.json").read_text())["state"] == "preempted"


def test_gpu_names_map_to_runpod_ids() -> None:
    assert gpu_type_ids("a100  80gb") == ["NVIDIA A100 80GB PCIe", "NVIDIA A100-SXM4-80GB"]
    assert gpu_type_ids("NVIDIA L40S") == ["NVIDIA L40S"]
