"""Runs on the remote: start a command in its own session, output to a file, and print its pid.

`python -m train_bridge.remote.detach OUT -- CMD...`. Unlike `nohup cmd &` from a
non-interactive shell (which starts it with SIGINT ignored, so Python would never see
Ctrl-C), the command gets default SIGINT, so `kill -INT` stops training as Ctrl-C does locally.
It survives the ssh connection dropping: new session, no terminal, stdin from /dev/null.
A small supervisor stays as its parent and reaps it: in containers whose PID 1 reaps nothing
(many GPU pods) an orphan would stay a zombie and look alive to `kill -0` / `tail --pid`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys


def supervise(out: str, cmd: list[str]) -> int:
    # SIGINT stays as Python set it (caught), so the command starts with the default action;
    # `kill -INT` is sent to the command's pid only, never to us.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    with open(out, "ab") as fh:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT)
    print(proc.pid, flush=True)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 1)
    rc = proc.wait()
    with open(out + ".exit", "w", encoding="utf-8") as fh:
        fh.write(f"{rc}\n")
    return 0


def main(argv: list[str]) -> int:
    supervised = bool(argv) and argv[0] == "--supervise"
    if supervised:
        argv = argv[1:]
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m train_bridge.remote.detach OUT -- CMD...", file=sys.stderr)
        return 2
    out, cmd = argv[0], argv[2:]
    if supervised:
        return supervise(out, cmd)
    sup = subprocess.Popen(
        [sys.executable, "-m", "train_bridge.remote.detach", "--supervise", out, "--", *cmd],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    assert sup.stdout is not None
    line = sup.stdout.readline().decode().strip()
    sup.stdout.close()
    if not line.isdigit():
        print("the supervisor did not start the command", file=sys.stderr)
        return 1
    print(line, flush=True)
    os._exit(0)  # leave the supervisor running; do not wait for it


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
