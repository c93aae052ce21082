"""`train_bridge attach`: reconnect to a run started with `launch --remote` (thin over remote.session).

The `--remote` options of `launch` live in cli_launch; both build a `RemoteOptions` through
`remote_options()` here, so each option is read in one place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from prep.cli.common import console, emit_json, show


def parse_env_pairs(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in pairs:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ValueError(f"--remote-env {item!r}: expected NAME=VALUE (secrets such as HF_TOKEN are forwarded from your environment; do not put them here)")
        out[key] = value
    return out


def remote_options(remote: str, **kw: Any) -> Any:
    from train_bridge.remote.session import RemoteOptions

    env = parse_env_pairs(kw.pop("remote_env", None) or [])
    return RemoteOptions(remote=remote, remote_env=env, **{k: v for k, v in kw.items() if v is not None})


def print_remote_result(res: Any, as_json: bool) -> None:
    if res.status == "dry_run":
        for line in res.plan:
            console.print(f"  • {line}")
    elif res.status == "done":
        console.print(f"[green]training finished on the remote[/green]; {len(res.pulled)} files pulled into the run's output folder")
    else:
        color = "yellow" if res.status in ("disconnected", "interrupted") else "red"
        console.print(f"[{color}]{res.status}:[/{color}] {res.message}")
        for i, sug in enumerate((res.advice or {}).get("suggestions") or [], 1):
            console.print(f"  {i}. [bold]{sug.get('key')}[/bold]: {sug.get('current')!r} → {sug.get('proposed')!r} — {sug.get('why')}   ({' '.join(sug.get('set') or [])})")
    if as_json:
        emit_json(res.as_dict())


def run_remote(fn: Any, run_dir: Path, opts: Any, plain: bool, as_json: bool) -> None:
    """Drive launch_remote / attach_remote with the live view; exit with the run's code."""
    import signal

    from train_bridge.progress_view import LiveView
    from train_bridge.remote.target import RemoteError

    def _interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    view = LiveView(console, live=False if plain else None)
    try:
        previous = signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops it as Ctrl-C does
    except ValueError:  # not the main thread
        previous = None
    try:
        res = fn(run_dir, opts, view)
    except RemoteError as exc:
        view.close()
        console.print("[red]error:[/red] " + show(str(exc)), soft_wrap=True)
        if as_json:
            emit_json({"status": "error", "exit_code": exc.code, "message": str(exc)})
        raise typer.Exit(exc.code) from None
    except KeyboardInterrupt:
        view.close()
        console.print("[yellow]interrupted[/yellow] before the remote training started")
        raise typer.Exit(130) from None
    finally:
        view.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    print_remote_result(res, as_json)
    raise typer.Exit(res.exit_code)


def attach_cmd(
    run_dir: Path = typer.Argument(..., help="A run folder started with `train_bridge launch RUN --detach` (local) or `--remote ...` (holds remote.json)."),
    identity: Path | None = typer.Option(None, "--identity", "-i", help="Remote runs: private key for ssh (default: the one launch used, else your ssh agent)."),
    reconnect: int = typer.Option(3, "--reconnect", help="Remote runs: times to retry a dropped connection before giving up (then attach again)."),
    pull_every: float = typer.Option(5.0, "--pull-every", help="Remote runs: seconds between pulls of new checkpoints and samples."),
    stop: bool = typer.Option(False, "--stop", help="Local runs: stop the training cleanly (as Ctrl-C in the launch would), then follow it to the end."),
    plain: bool = typer.Option(False, "--plain", help="Plain progress lines instead of a live bar."),
    as_json: bool = typer.Option(False, "--json", help="Machine output on stdout."),
) -> None:
    """Bring a run's terminal view back: a local `launch --detach` run (follow its log and status
    to the end; Ctrl-C leaves it training), or a remote run (catch up, pull new outputs, follow)."""
    if (run_dir / "remote.json").is_file():
        if stop:
            console.print("[red]error:[/red] --stop is for local runs; a remote run stops with Ctrl-C in `train_bridge attach` (it asks the remote launcher to stop).")
            raise typer.Exit(2)
        from train_bridge.remote.session import attach_remote

        opts = remote_options("attach", identity=identity, reconnect=reconnect, pull_every_s=pull_every)
        run_remote(attach_remote, run_dir, opts, plain, as_json)
        return
    if not (run_dir / "status.json").is_file():
        console.print(
            f"[red]error:[/red] {run_dir} has neither status.json nor remote.json: it was never launched "
            f"(start it with `train_bridge launch {run_dir} --detach`, or without --detach to watch it)."
        )
        raise typer.Exit(2)
    attach_local(run_dir, stop=stop, plain=plain, as_json=as_json)


def attach_local(run_dir: Path, *, stop: bool, plain: bool, as_json: bool) -> None:
    """Follow a local run with the launch's live view; exit with the run's exit code."""
    import os
    import signal

    from train_bridge.launch import pid_alive, read_status
    from train_bridge.progress_view import LiveView, progress_line
    from train_bridge.runspec import RunSpecError
    from train_bridge.status import follow_run

    st = read_status(run_dir)
    pid = st.get("launcher_pid")
    if stop:
        if st.get("state") in ("running", "starting") and pid_alive(pid):
            os.kill(pid, signal.SIGTERM)  # the launcher takes it as Ctrl-C: SIGINT to the trainer, then waits
            console.print(f"asked the launcher (pid {pid}) to stop the trainer; following it to the end")
        else:
            console.print(f"{run_dir} is not training (state {st.get('state')}); nothing to stop")
    view = LiveView(console, live=False if plain else None)
    try:
        final = follow_run(run_dir, view)
    except RunSpecError as exc:
        view.close()
        console.print(f"[red]error:[/red] {show(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        view.close()
        console.print(
            f"[yellow]detached[/yellow]: the run keeps training (launcher pid {read_status(run_dir).get('launcher_pid')}). "
            f"`train_bridge attach {run_dir}` follows it again; `train_bridge attach {run_dir} --stop` stops it cleanly."
        )
        raise typer.Exit(130) from None
    finally:
        view.close()
    state = final.get("state")
    code = final.get("exit_code")
    if state == "done":
        console.print(f"[green]{final.get('message') or 'training finished'}[/green]")
    elif state in ("failed", "oom", "interrupted"):
        console.print(f"[red]{state}:[/red] {final.get('message') or ''}")
        if state == "interrupted":
            console.print(f"continue later with: [bold]train_bridge launch {run_dir} --resume[/bold]")
    else:
        console.print(f"[yellow]{state}[/yellow]: the launcher is not running; `train_bridge status {run_dir}` shows where it stopped")
        code = 1 if code is None else code
    p = final.get("progress") or {}
    if p:
        from train_bridge.logparse import TrainProgress

        console.print("  " + progress_line(TrainProgress(
            step=p.get("step") or 0, step_offset=p.get("step_offset") or 0, total=p.get("total"), epoch=p.get("epoch"),
            epochs=p.get("epochs"), avr_loss=p.get("avr_loss"), loss=p.get("loss"), rate=p.get("rate_it_s"), eta_s=p.get("eta_s"),
        )))
    if as_json:
        emit_json({"run_dir": str(run_dir), **final})
    raise typer.Exit(int(code or 0))


def register(app: typer.Typer) -> None:
    app.command("attach")(attach_cmd)
