"""What every CLI of the project shares: stderr console, exit codes, progress, JSON output.

Human output and progress go to stderr; `--json` puts machine output alone on stdout.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import click
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from typer.core import TyperGroup

from prep.inputs import printable
from prep.jsonout import json_blocks

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3
# train_bridge launch/status use 3 for "trainer out of memory" (issue 7; train_bridge.launch.EXIT_OOM):
# a launch has no partial state, so the code cannot be confused there.
EXIT_INTERRUPTED = 130

console = Console(stderr=True, highlight=False)


class Group(TyperGroup):
    """Every command's group: problems of the shared pieces end as one clean error, not a traceback.

    A full disk (`prep.fsutil.DiskFull`) or an output folder another run holds
    (`prep.lock.OutputLocked`) can surface from any command that writes; they are reported
    here once instead of in each command.
    """

    def invoke(self, ctx: click.Context) -> Any:
        from prep.fsutil import DiskFull
        from prep.lock import OutputLocked
        from prep.ray_engine import RayUnavailable  # does not import ray

        try:
            return super().invoke(ctx)
        except OutputLocked as exc:
            raise fail(str(exc), EXIT_USAGE) from None
        except DiskFull as exc:
            raise fail(str(exc), EXIT_FAILED) from None
        except RayUnavailable as exc:  # --engine ray without Ray, or a cluster it cannot reach
            raise fail(str(exc), EXIT_USAGE) from None


def make_app(name: str, help: str, **kw: Any) -> typer.Typer:
    """A typer app that is always a group (even with one command), help on -h too."""
    kw.setdefault("cls", Group)
    app = typer.Typer(
        name=name,
        help=help,
        no_args_is_help=True,
        pretty_exceptions_show_locals=False,
        rich_markup_mode="rich",
        add_completion=False,
        context_settings={"help_option_names": ["-h", "--help"]},
        **kw,
    )

    @app.callback()
    def _group() -> None:
        pass

    _group.__doc__ = help
    return app


class RichProgress:
    """Adapter from the executor's progress protocol to a rich bar on stderr."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and not os.environ.get("LORAPREP_NO_PROGRESS")
        self._p: Progress | None = None
        self._task: Any = None

    def start(self, total: int, description: str) -> None:
        if not self.enabled:
            return
        self._p = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self._p.start()
        self._task = self._p.add_task(description, total=total)

    def advance(self, n: int = 1) -> None:
        if self._p is not None:
            self._p.advance(self._task, n)

    def stop(self) -> None:
        if self._p is not None:
            self._p.stop()
            self._p = None


def emit_json(data: Any) -> None:
    """Machine output: one JSON document on stdout.

    A file name that is not UTF-8 reaches here as a lone surrogate (the OS's bytes); it is
    written as the JSON escape `\\udcXX`, which `json.loads` turns back into the same name.
    """
    # Streamed in 64 KiB pieces: the whole text of a 100k-image report (and its re-encoded copy)
    # would cost hundreds of MiB on top of the report itself.
    out = sys.stdout
    for block in json_blocks(data):
        out.write(block.decode("utf-8"))
    out.write("\n")
    out.flush()


def show(name: object) -> str:
    """A file name (or any user text) for a rich message: shown literally, never as markup.

    `[bold]x.png` stays `[bold]x.png`, and bytes that are not UTF-8 are shown as `\\xNN`.
    Every CLI wraps the names it interpolates into `console.print` with it.
    """
    return escape(printable(str(name)))


def fail(message: str, code: int = EXIT_FAILED) -> typer.Exit:
    """Print `message` on stderr and return an Exit to raise.

    The message is shown literally (a file name with `[brackets]` is not rich markup) and not
    re-wrapped, so the paths it names can be copied whole.
    """
    console.print("[red]error:[/red] " + show(message), soft_wrap=True)
    return typer.Exit(code)


def exit_code_for(n_failed: int, n_total: int) -> int:
    if n_failed == 0:
        return EXIT_OK
    return EXIT_FAILED if n_failed >= n_total else EXIT_PARTIAL


class DefaultCommandGroup(Group):
    """A group whose first argument may be a path instead of a subcommand.

    `caption DIR ...` runs the default command while `caption lint DIR` runs `lint`.
    Set `default_command` on a subclass (see `with_default`).
    """

    default_command: str = ""

    def resolve_command(self, ctx: click.Context, args: list[str]) -> tuple[str | None, click.Command | None, list[str]]:
        if args and args[0] not in self.commands and not args[0].startswith("-") and self.default_command:
            args = [self.default_command, *args]
        return super().resolve_command(ctx, args)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and self.default_command and args[0] not in ("-h", "--help"):
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)


def with_default(command: str) -> type[DefaultCommandGroup]:
    return type(f"DefaultGroup_{command}", (DefaultCommandGroup,), {"default_command": command})


def interrupted_exit(cleanup: Callable[[], None] | None = None) -> typer.Exit:
    if cleanup:
        cleanup()
    console.print("[yellow]interrupted[/yellow]: finished work is kept; run the same command again to resume.")
    return typer.Exit(EXIT_INTERRUPTED)
