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
    run_dir: Path = typer.Argument(..., help="A run folder started with `train_bridge launch RUN --remote ...` (holds remote.json)."),
    identity: Path | None = typer.Option(None, "--identity", "-i", help="Private key for ssh (default: the one launch used, else your ssh agent)."),
    reconnect: int = typer.Option(3, "--reconnect", help="Times to retry a dropped connection before giving up (then attach again)."),
    pull_every: float = typer.Option(5.0, "--pull-every", help="Seconds between pulls of new checkpoints and samples."),
    plain: bool = typer.Option(False, "--plain", help="Plain progress lines instead of a live bar."),
    as_json: bool = typer.Option(False, "--json", help="Machine output on stdout."),
) -> None:
    """Reconnect to a remote run: catch up on its log, pull new outputs, follow it to the end."""
    from train_bridge.remote.session import attach_remote

    opts = remote_options("attach", identity=identity, reconnect=reconnect, pull_every_s=pull_every)
    if not (run_dir / "remote.json").is_file():
        console.print(f"[red]error:[/red] {run_dir} has no remote.json: it was not launched with --remote (local runs: `train_bridge status {run_dir}`).")
        raise typer.Exit(2)
    run_remote(attach_remote, run_dir, opts, plain, as_json)


def register(app: typer.Typer) -> None:
    app.command("attach")(attach_cmd)
