"""launch --remote against a real sshd on 127.0.0.1 (this machine stands in for the GPU box).

The sshd runs with a throwaway host key and user key and its own config; the "box" is a temp
folder. The fake trainer runs there detached; the test drops every ssh connection mid-run,
`attach` picks the stream up again, and every checkpoint and sample arrives here once.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fake_trainer.helpers import (
    cli_env,
    make_run,
    make_trainer_root,
    recorded_argv,
    run_cli,
)

SSHD = shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists() else None)


@dataclass
class Box:
    port: int
    key: Path
    proc: subprocess.Popen[bytes]
    dir: Path

    @property
    def url(self) -> str:
        return f"ssh://{_user()}@127.0.0.1:{self.port}"

    def drop_connections(self) -> int:
        """Kill the per-connection sshd processes (children of the listener we started)."""
        killed = 0
        for status in Path("/proc").glob("[0-9]*/status"):
            try:
                fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
            except OSError:
                continue
            if fields.get("PPid", "").strip() == str(self.proc.pid):
                try:
                    os.kill(int(status.parent.name), signal.SIGKILL)
                    killed += 1
                except ProcessLookupError:
                    pass
        return killed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Box]:
    if SSHD is None or shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        pytest.skip("needs OpenSSH (Debian: apt-get install openssh-server openssh-client rsync)")
    d = tmp_path_factory.mktemp("sshbox")
    for name in ("host_key", "user_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True)
    shutil.copy(d / "user_key.pub", d / "authorized_keys")
    port = _free_port()
    cfg = d / "sshd_config"
    cfg.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\nPidFile {d / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nPubkeyAuthentication yes\n"
        "MaxStartups 100\nMaxSessions 100\nLogLevel ERROR\n"
    )
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # root's sshd wants its privilege-separation folder
    log = open(d / "sshd.log", "wb")  # noqa: SIM115 - open for the life of the fixture
    proc = subprocess.Popen([SSHD, "-f", str(cfg), "-D", "-e"], stderr=log)
    deadline = time.time() + 10
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        if proc.poll() is not None:
            pytest.fail(f"sshd did not start: {(d / 'sshd.log').read_text()}")
        time.sleep(0.05)
    (d / "box").mkdir()
    yield Box(port, d / "user_key", proc, d / "box")
    proc.terminate()
    proc.wait(timeout=10)
    log.close()


def _env(tmp: Path) -> dict[str, str]:
    env = cli_env(tmp, LORAPREP_SSH_CONFIG="/dev/null")
    env.pop("SSH_AUTH_SOCK", None)
    return env


def remote_args(run: Path, box: Box, trainer: Path, *more: str, accept: bool = True) -> list[str]:
    args = [
        "launch", str(run), "--remote", box.url, "--identity", str(box.key), "--remote-dir", str(box.dir),
        "--remote-python", sys.executable, "--remote-trainer-dir", str(trainer), "--remote-trainer-python", sys.executable,
        "--no-gpu-check", "--pull-every", "0.3", "--plain", *more,
    ]
    return args + (["--accept-new-host-key"] if accept else [])


def _transfers(run: Path) -> list[dict]:
    p = run / "remote" / "transfers.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []


def _progress_step(run: Path) -> int:
    logs = list((run / "logs").glob("*.log"))
    if not logs:
        return 0
    from train_bridge.logparse import parse_text

    return parse_text(logs[0].read_text(errors="replace")).step


def test_launch_survives_a_dropped_connection_and_attach_brings_everything_back(tmp_path: Path, box: Box) -> None:
    trainer = make_trainer_root(tmp_path)
    run = make_run(tmp_path, fake_args=["--sleep", "0.3"], epochs=3)
    env = _env(tmp_path)
    env["HF_TOKEN"] = "hf_secret_value_123"
    proc = subprocess.Popen(
        [sys.executable, "-c", "from train_bridge.cli import main; main()", *remote_args(run, box, trainer, "--reconnect", "0")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    out = tmp_path / "output"
    deadline = time.time() + 30
    while time.time() < deadline and not ((out / "lora-000001.safetensors").exists() and _progress_step(run) >= 5):
        if proc.poll() is not None:
            pytest.fail(f"launch ended early ({proc.returncode}): {proc.stderr.read() if proc.stderr else ''}")
        time.sleep(0.05)
    if not (out / "lora-000001.safetensors").exists():
        proc.kill()
        pytest.fail(f"the first checkpoint was not pulled while training ran: {proc.communicate()[1][-3000:]}")
    steps_before_drop = _progress_step(run)
    assert box.drop_connections() >= 1
    dropped_at = time.strftime("%Y-%m-%dT%H:%M:%S")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1, err
    flat = "".join(err.split())  # rich wraps long lines
    assert f"train_bridgeattach{run}" in flat and "goesonthere" in flat
    rec = json.loads((run / "remote.json").read_text())
    assert rec["state"] == "disconnected" and rec["port"] == box.port and rec["pid"] > 0
    assert "hf_secret" not in (run / "remote.json").read_text()
    assert steps_before_drop < 12
    assert json.loads((run / "status.json").read_text())["state"] == "disconnected"
    st = json.loads(run_cli(["status", str(run), "--json"], tmp_path).stdout)
    assert st["state"] == "disconnected" and st["remote"]["pid"] == rec["pid"] and st["checkpoints"]  # what was pulled, here
    assert "train_bridge attach" in " ".join(run_cli(["status", str(run)], tmp_path).stderr.split())

    r = run_cli(["attach", str(run), "--plain", "--pull-every", "0.3", "--json"], tmp_path, LORAPREP_SSH_CONFIG="/dev/null", SSH_AUTH_SOCK="")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["status"] == "done"
    names = {p.name for p in out.iterdir()}
    assert {"lora-000001.safetensors", "lora-000002.safetensors", "lora.safetensors", "lora-state", "lora-000002-state"} <= names
    assert len(list((out / "sample").glob("*.png"))) == 3
    # the streamed log is whole: every step, once, across the drop
    log = next((run / "logs").glob("*.log")).read_text()
    assert _progress_step(run) == 12 and log.count("saving checkpoint:") == 3
    remote_status = json.loads((Path(rec["remote_run"]) / "status.json").read_text())
    assert remote_status["state"] == "done" and remote_status["finished_at"] >= dropped_at  # it went on without us
    st = json.loads((run / "status.json").read_text())
    assert st["state"] == "done" and st["remote"]["host"].endswith(str(box.port))
    assert all(p.startswith(str(out)) for p in st["files"]["checkpoints"])  # paths mapped back to this machine
    # nothing was fetched twice
    pulled = [f for t in _transfers(run) if t["direction"] == "pull" for f in t["files"]]
    assert len(pulled) == len(set(pulled)) and "lora.safetensors" in pulled
    # the trainer ran on the box with the rewritten paths and got the secret through the environment only
    argv = recorded_argv(tmp_path)[-1]
    config = argv[argv.index("--config_file") + 1]
    assert config.startswith(str(box.dir)) and config.endswith("/run/train.toml")
    assert argv[argv.index("--output_dir") + 1] == rec["remote_output"]
    assert "hf_secret_value_123" not in json.dumps(argv)
    remote_train = Path(config).read_text()
    assert str(tmp_path / "models") not in remote_train and "/models/" in remote_train
    assert (Path(rec["remote_root"]) / "launcher.out").exists()
    assert "hf_secret_value_123" not in (Path(rec["remote_root"]) / "launcher.out").read_text()


def _run_remote(tmp: Path, run: Path, box: Box, trainer: Path, *more: str, accept: bool = True, home: str = "home") -> subprocess.CompletedProcess[str]:
    return run_cli(remote_args(run, box, trainer, *more, accept=accept), tmp, LORAPREP_SSH_CONFIG="/dev/null", SSH_AUTH_SOCK="", LORAPREP_HOME=str(tmp / home))


def test_an_unknown_host_key_is_refused_until_accepted_and_then_recorded(tmp_path: Path, box: Box) -> None:
    trainer = make_trainer_root(tmp_path)
    run = make_run(tmp_path)
    r = _run_remote(tmp_path, run, box, trainer, "--dry-run", accept=False)
    assert r.returncode == 0  # a dry run connects to nothing
    r = _run_remote(tmp_path, run, box, trainer, "--remote-env", "LORAPREP_NVIDIA_SMI=/nonexistent", accept=False)
    flat = " ".join(r.stderr.split())
    assert r.returncode == 1 and "not known yet" in flat and "--accept-new-host-key" in flat
    kh = tmp_path / "home" / "ssh" / "known_hosts"
    assert not kh.exists() or kh.read_text() == ""
    # accepted once: recorded; the GPU check then runs on the box (which has no GPU) and says so
    with_gpu_check = [a for a in remote_args(run, box, trainer) if a != "--no-gpu-check"]
    r = run_cli([*with_gpu_check, "--remote-env", "LORAPREP_NVIDIA_SMI=/nonexistent"], tmp_path, LORAPREP_SSH_CONFIG="/dev/null", SSH_AUTH_SOCK="")
    flat = " ".join(r.stderr.split())
    assert f"[127.0.0.1]:{box.port}" in kh.read_text()
    assert r.returncode == 1 and "GPU not visible on" in flat and "no NVIDIA GPU found" in flat and "--no-gpu-check" in flat
    assert recorded_argv(tmp_path) == []  # nothing started
    # a changed host key is refused even with --accept-new-host-key
    kh.write_text(kh.read_text().split()[0] + " ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n")
    r = _run_remote(tmp_path, run, box, trainer)
    assert r.returncode == 1 and "CHANGED" in r.stderr


def test_refused_connection_is_named(tmp_path: Path, box: Box) -> None:
    run = make_run(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        r = run_cli(["launch", str(run), "--remote", f"ssh://root@127.0.0.1:{port}", "--identity", str(box.key), "--accept-new-host-key"], tmp_path, LORAPREP_SSH_CONFIG="/dev/null", SSH_AUTH_SOCK="")
    flat = " ".join(r.stderr.split())
    assert r.returncode == 1 and "was refused" in flat and f"port {port}" in flat


def test_no_space_on_the_box_is_named_before_uploading(tmp_path: Path, box: Box) -> None:
    trainer = make_trainer_root(tmp_path)
    run = make_run(tmp_path)
    df = tmp_path / "df"
    df.write_text("#!/bin/sh\necho 'Filesystem 1024-blocks Used Available Capacity Mounted'\necho '/dev/x 100000 99990 10 100% /'\n")
    df.chmod(0o755)
    r = _run_remote(tmp_path, run, box, trainer, "--remote-env", f"LORAPREP_DF={df}")
    flat = " ".join(r.stderr.split())
    assert r.returncode == 1 and "no space left on" in flat and "bigger disk" in flat
    assert not [t for t in _transfers(run) if t["direction"] == "push"]  # refused before sending anything


def test_the_secret_reaches_the_remote_environment_and_no_command_line(tmp_path: Path, box: Box, monkeypatch: pytest.MonkeyPatch) -> None:
    from train_bridge.remote.ssh import READ_ENV, Ssh, env_block
    from train_bridge.remote.target import parse_ssh_url

    monkeypatch.setenv("LORAPREP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LORAPREP_SSH_CONFIG", "/dev/null")
    ssh = Ssh(parse_ssh_url(box.url), identity=box.key, accept_new_host_key=True)
    cmd = READ_ENV + 'printf "%s\\n" "$HF_TOKEN"; tr "\\0" " " < /proc/$$/cmdline'
    assert "hf_abc" not in " ".join(ssh.argv(cmd))
    out = ssh.text(cmd, input=env_block({"HF_TOKEN": "hf_abc"})).splitlines()
    assert out[0] == "hf_abc" and "hf_abc" not in out[1]
    with pytest.raises(Exception, match="line break"):
        env_block({"HF_TOKEN": "a\nb"})
    ssh.close()


@pytest.mark.parametrize("via", ["rsync", "tar"])
def test_sync_sends_only_what_changed(tmp_path: Path, box: Box, via: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from train_bridge.remote.ssh import Ssh
    from train_bridge.remote.sync import Syncer, list_local
    from train_bridge.remote.target import parse_ssh_url

    if via == "rsync" and shutil.which("rsync") is None:
        pytest.skip("needs rsync (Debian: apt-get install rsync)")
    monkeypatch.setenv("LORAPREP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LORAPREP_SSH_CONFIG", "/dev/null")
    ssh = Ssh(parse_ssh_url(box.url), identity=box.key, accept_new_host_key=True)
    sy = Syncer(ssh, tmp_path / "transfers.jsonl", via)
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.bin").write_bytes(b"a" * 1000)
    (src / "sub" / "b.txt").write_text("b")
    dest = str(box.dir / f"sync-{via}")
    files, _ = sy.plan_push(src, dest)
    assert sy.push(src, dest, files) == ["a.bin", "sub/b.txt"]
    assert sy.plan_push(src, dest)[0] == []  # unchanged: nothing to send
    (src / "sub" / "b.txt").write_text("bb")
    assert sy.plan_push(src, dest)[0] == ["sub/b.txt"]
    back = tmp_path / "back"
    assert sy.pull(dest, back) == ["a.bin", "sub/b.txt"]
    assert sy.pull(dest, back) == []
    assert list_local(back) == list_local(Path(dest))  # sizes and mtimes kept
    assert [t["via"] for t in sy.transfers] == [via, via]
    ssh.close()


def test_attach_when_the_remote_run_is_gone_says_how_to_resume(tmp_path: Path, box: Box) -> None:
    from train_bridge.remote.target import RemoteRecord

    run = make_run(tmp_path)
    gone = str(box.dir / "never-there")
    RemoteRecord("ssh", _user(), "127.0.0.1", box.port, gone, gone + "/run", gone + "/output", sys.executable, identity=str(box.key), pid=999999, log=gone + "/run/logs/x.log").write(run)
    r = run_cli(["attach", str(run)], tmp_path, LORAPREP_SSH_CONFIG="/dev/null", SSH_AUTH_SOCK="", LORAPREP_HOME=str(tmp_path / "h2"))
    flat = " ".join(r.stderr.split())
    assert r.returncode == 1 and "not known yet" in flat  # a fresh home: the host key must be accepted first
    known = tmp_path / "kh"
    RemoteRecord("ssh", _user(), "127.0.0.1", box.port, gone, gone + "/run", gone + "/output", sys.executable, identity=str(box.key), pid=999999, log=gone + "/run/logs/x.log", known_hosts=str(known)).write(run)
    subprocess.run(["ssh", "-F", "/dev/null", "-o", "StrictHostKeyChecking=accept-new", "-o", f"UserKnownHostsFile={known}", "-o", "BatchMode=yes", "-i", str(box.key), "-p", str(box.port), f"{_user()}@127.0.0.1", "true"], check=True, capture_output=True)
    r = run_cli(["attach", str(run), "--json"], tmp_path, LORAPREP_SSH_CONFIG="/dev/null", SSH_AUTH_SOCK="")
    flat = " ".join(r.stderr.split())
    assert r.returncode == 1 and json.loads(r.stdout)["status"] == "preempted"
    assert "is gone from" in flat and f"train_bridge launch {run} --remote ssh://" in flat and "--resume" in flat


def test_dry_run_plans_setup_at_the_pinned_commit_without_connecting(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    r = run_cli(["launch", str(run), "--remote", "ssh://root@203.0.113.9:2222", "--dry-run"], tmp_path)
    assert r.returncode == 0, r.stderr
    flat = " ".join(r.stderr.split())
    assert "setup sd-scripts (pinned commit)" in flat and "launch" in flat and "--plain" in flat
    assert "upload" in flat and str(tmp_path / "images") in flat
    assert not (run / "remote.json").exists()


def test_bad_remote_addresses_are_refused() -> None:
    from train_bridge.remote.target import RemoteError, parse_ssh_url

    assert parse_ssh_url("ssh://root@1.2.3.4:22022").port == 22022
    assert parse_ssh_url("me@box").port == 22
    for bad in ("ssh://1.2.3.4", "http://root@x", "ssh://root@-oProxyCommand=x", "ssh://root:pw@host"):
        with pytest.raises(RemoteError):
            parse_ssh_url(bad)


def test_ctrl_c_stops_the_remote_trainer_and_brings_back_what_it_saved(tmp_path: Path, box: Box) -> None:
    trainer = make_trainer_root(tmp_path)
    run = make_run(tmp_path, fake_args=["--mode", "wait", "--sleep", "0.2"], epochs=50)
    proc = subprocess.Popen(
        [sys.executable, "-c", "from train_bridge.cli import main; main()", *remote_args(run, box, trainer, "--grace", "10")],
        env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.time() + 30
    while time.time() < deadline and _progress_step(run) < 2:
        if proc.poll() is not None:
            pytest.fail(f"launch ended early: {proc.stderr.read() if proc.stderr else ''}")
        time.sleep(0.05)
    again = _run_remote(tmp_path, run, box, trainer)  # launching it again while it trains there is refused
    assert again.returncode == 2 and "still training on" in again.stderr, again.stderr
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=40)
    assert proc.returncode == 130, err
    rec = json.loads((run / "remote.json").read_text())
    remote_log = next((Path(rec["remote_run"]) / "logs").glob("*.log")).read_text()
    assert "stopping on SIGINT" in remote_log, (Path(rec["remote_root"]) / "launcher.out").read_text() + err  # the remote trainer got Ctrl-C and ended itself
    assert "stopping on SIGINT" in next((run / "logs").glob("*.log")).read_text()  # and the log came back whole
    assert json.loads((run / "status.json").read_text())["state"] == "interrupted"


def test_a_lost_box_resumes_on_a_new_one_from_the_last_synced_state(tmp_path: Path, box: Box) -> None:
    trainer = make_trainer_root(tmp_path)
    run = make_run(tmp_path, fake_args=["--mode", "oom", "--fail_at", "6"])  # dies in epoch 2, after one saved state
    r = _run_remote(tmp_path, run, box, trainer)
    assert r.returncode == 3, r.stderr  # the remote's out-of-memory exit code
    assert "--set gradient_checkpointing=true" in r.stderr  # and its advice, shown here
    assert (tmp_path / "output" / "lora-000001-state" / "train_state.json").is_file()  # synced here
    rec = json.loads((run / "remote.json").read_text())
    shutil.rmtree(rec["remote_root"])  # the pod is gone; the next one starts empty
    spec = json.loads((run / "run.json").read_text())
    spec["commands"][0]["args"] = [a for a in spec["commands"][0]["args"] if a not in ("--mode", "oom", "--fail_at", "6")]
    (run / "run.json").write_text(json.dumps(spec))
    (tmp_path / "argv.jsonl").unlink()  # (an existing file named on the command line would be uploaded)
    r = _run_remote(tmp_path, run, box, trainer, "--resume", "--json")
    assert r.returncode == 0, r.stderr
    argv = recorded_argv(tmp_path)[-1]
    assert argv[-2:] == ["--resume", rec["remote_output"] + "/lora-000001-state"]  # the uploaded state, on the box
    assert {"lora.safetensors", "lora-state"} <= {p.name for p in (tmp_path / "output").iterdir()}
