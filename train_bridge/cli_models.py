"""`train_bridge models get | list`: thin CLI over train_bridge.models."""

from __future__ import annotations

import typer
from rich.table import Table

from prep.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    console,
    emit_json,
    fail,
    make_app,
)
from train_bridge.trainers import ARCH_NAMES

models_app = make_app("models", "Download training weights into the Hugging Face cache, and list what is there.")


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")


@models_app.command("get")
def get(
    arch: str = typer.Argument(..., help=f"Architecture: {', '.join(ARCH_NAMES)}."),
    role: list[str] = typer.Option([], "--role", "-r", help="Only this model role (dit, vae, qwen3, t5xxl, ...). Repeatable; default: every role the architecture needs."),
    variant: str = typer.Option("", "--variant", help="Another published file for a role: flux --variant schnell, anima --variant preview."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would be downloaded, and its size; download nothing."),
    as_json: bool = typer.Option(False, "--json", help="Report on stdout."),
) -> None:
    """Download ARCH's model files (pinned revisions) into the HF cache; sizes and free space first."""
    from train_bridge.models import WeightsError, get_weights, human_size

    try:
        report = get_weights(arch, role or None, variant, dry_run=dry_run, say=lambda m: console.print(m, markup=False, soft_wrap=True))
    except KeyError as exc:
        raise fail(str(exc).strip("'\""), EXIT_USAGE) from None
    except WeightsError as exc:
        raise fail(str(exc), EXIT_FAILED) from None
    if as_json:
        emit_json(report.to_json())
    for f in report.files:
        where = f.path or f"{f.repo_id}/{f.filename}"
        console.print(f"{f.status:14} {f.role:10} {where} ({human_size(f.size)})", markup=False, soft_wrap=True)
    missing = [f for f in report.files if f.status == "missing"]
    if missing:
        console.print(
            f"[red]error:[/red] HF_HUB_OFFLINE is set and {len(missing)} file(s) are not in the cache: "
            + ", ".join(f"{f.role} ({f.repo_id}/{f.filename})" for f in missing)
            + "; unset HF_HUB_OFFLINE where the Hub is reachable, or pass the paths to `train_bridge config`"
        )
        raise typer.Exit(EXIT_FAILED)
    raise typer.Exit(EXIT_OK)


@models_app.command("list")
def list_(
    arch: str = typer.Argument(None, help="Only this architecture."),
    no_verify: bool = typer.Option(False, "--no-verify", help="Do not re-hash present files (fast; the sha256 column then says 'not verified')."),
    as_json: bool = typer.Option(False, "--json", help="JSON on stdout."),
) -> None:
    """What is in the HF cache for each architecture and role: where, its size, and whether its sha256 matches."""
    from train_bridge.models import WeightsError, human_size, list_weights

    try:
        rows = list_weights(arch, verify=not no_verify)
    except KeyError as exc:
        raise fail(str(exc).strip("'\""), EXIT_USAGE) from None
    except WeightsError as exc:
        raise fail(str(exc), EXIT_FAILED) from None
    if as_json:
        emit_json([r.to_json() for r in rows])
    else:
        t = Table(show_edge=False)
        for c in ("arch", "role", "file", "present", "size", "sha256", "path"):
            t.add_column(c)
        for r in rows:
            name = f"{r.repo_id}/{r.filename}" + (f" [{r.variant}]" if r.variant else "")
            t.add_row(r.arch, r.role, name, "yes" if r.present else "no", human_size(r.size) if r.present else "", r.check, r.path or "")
        console.print(t)
    raise typer.Exit(EXIT_FAILED if any(r.check == "mismatch" for r in rows) else EXIT_OK)
