"""`loraprep studio FOLDER`: serve the studio on 127.0.0.1 with a random token in the URL.

`register(app)` adds the command to a typer app (loraprep's CLI calls it). The server library
functions (`bind`, `studio_url`, `serve`) are separate so tests and the benchmark start the
same server without the CLI.
"""

from __future__ import annotations

import ipaddress
import secrets
import socket
from pathlib import Path

import typer

from prep.cli.common import EXIT_USAGE, console, fail

LOOPBACK = "127.0.0.1"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: bool) -> None:
    """Refuse a non-loopback bind without a token (anyone on that network could edit the set)."""
    if not token and not is_loopback(host):
        raise ValueError(f"--host {host}: a studio reachable from other machines needs its token; drop --no-token "
                         "(or keep the default 127.0.0.1 and use `ssh -L PORT:127.0.0.1:PORT` from your machine)")


def bind(host: str = LOOPBACK, port: int = 0) -> socket.socket:
    """A listening socket on `host` (port 0: a free port chosen by the OS)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise ValueError(f"--host {host} --port {port}: cannot listen there ({exc.strerror}); pick another --port or leave it at 0") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def studio_url(host: str, port: int, token: str | None, page: str = "") -> str:
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"http://{shown}:{port}/{page}" + (f"?token={token}" if token else "")


def is_run_folder(folder: Path) -> bool:
    """A run folder written by `train_bridge config` (it holds run.json)."""
    return (Path(folder) / "run.json").is_file()


def serve(folder: Path, *, host: str = LOOPBACK, port: int = 0, token: bool = True, read_only: bool = False,
          trigger: str | None = None, trainer: str | None = None, open_browser: bool = False,
          run_dir: Path | None = None, launch_args: list[str] | None = None) -> None:
    """Run the studio until interrupted. A run folder alone opens the run page only."""
    import uvicorn

    from loraprep.studio.app import create_app, create_run_app, find_run_dir

    check_bind(host, token)
    secret = secrets.token_urlsafe(24) if token else None
    if is_run_folder(folder) and run_dir is None:
        app = create_run_app(folder, token=secret, loopback=is_loopback(host), read_only=read_only, launch_args=launch_args)
        what = f"studio: run {Path(folder).resolve()}{' (read-only)' if read_only else ''}"
        page = "run"
    else:
        from loraprep.studio.data import Dataset

        ds = Dataset(folder, trigger=trigger, trainer=trainer, read_only=read_only)
        app = create_app(ds, token=secret, loopback=is_loopback(host), run_dir=run_dir, launch_args=launch_args)
        run_at = find_run_dir(ds, run_dir)
        what = f"studio: {len(ds.entries)} images in {ds.images_dir}{' (read-only)' if read_only else ''}" + (f"; run page for {run_at}" if run_at else "")
        page = ""
    sock = bind(host, port)
    url = studio_url(host, sock.getsockname()[1], secret, page)
    console.print(what)
    console.print(f"open [bold]{url}[/bold]  (ctrl+c stops it)", soft_wrap=True)
    if open_browser:
        import webbrowser

        webbrowser.open(url)
    config = uvicorn.Config(app, log_level="warning", lifespan="off")
    uvicorn.Server(config).run(sockets=[sock])


def register(app: typer.Typer) -> None:
    """Add `studio` to `app`."""

    @app.command("studio")
    def studio(
        folder: Path = typer.Argument(..., help="A loraprep project folder, or any folder of images with .txt captions."),
        host: str = typer.Option(LOOPBACK, "--host", help="Address to listen on; anything but loopback needs the token."),
        port: int = typer.Option(0, "--port", help="Port (0: a free one)."),
        read_only: bool = typer.Option(False, "--read-only", help="Look only: every edit is refused and nothing is written."),
        trigger: str = typer.Option(None, "--trigger", help="The trigger word (default: the project's)."),
        trainer: str = typer.Option(None, "--trainer", help="Architecture for buckets and token budgets (default: the project's, else sdxl)."),
        no_token: bool = typer.Option(False, "--no-token", help="No token in the URL (loopback only)."),
        open_browser: bool = typer.Option(False, "--open", help="Open the address in the default browser."),
        run: Path = typer.Option(None, "--run", help="A run folder (from `train_bridge config`) for the run page (default: the project's run/ once it has run.json)."),
        launch_option: list[str] = typer.Option([], "--launch-option", help="An option the Resume button passes to `train_bridge launch RUN --resume` (e.g. --launch-option=--no-gpu-check). Repeatable."),
    ) -> None:
        """See and fix the dataset in the browser: grid, image page, filters, batch edits; watch a training run."""
        if not folder.is_dir():
            raise fail(f"{folder}: no such folder; give a loraprep project, a folder of images or a run folder", EXIT_USAGE)
        if run is not None and not is_run_folder(run):
            raise fail(f"--run {run}: no run.json there; write the run folder with `train_bridge config ... -o {run}`", EXIT_USAGE)
        try:
            check_bind(host, not no_token)
            serve(folder, host=host, port=port, token=not no_token, read_only=read_only, trigger=trigger, trainer=trainer,
                  open_browser=open_browser, run_dir=run, launch_args=list(launch_option))
        except ValueError as exc:
            raise fail(str(exc), EXIT_USAGE) from None
