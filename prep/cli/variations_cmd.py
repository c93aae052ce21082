"""`prep render-variations RENDERS -o OUT`: originals plus img2img style variations per render.

Styles: `--style` repeated, or `--styles "a|b|c"` (`|` or `;` between styles, since a style may
contain commas), or `--styles-file` (one per line). `--styles "a" "b" "c"` with several
quoted values also works: the extra values are taken as styles and the one existing folder
among the positional values as RENDERS.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import click
import typer

from prep.cli.common import EXIT_OK, EXIT_USAGE, RichProgress, console, emit_json, exit_code_for, fail, interrupted_exit, show
from prep.cli.where import resolve_folders, with_project_options
from prep.options import options_command
from prep.project import find_project
from prep.remote import RemoteError, redact
from prep.variations import DEFAULT_STYLES, STAGE, VariationOptions


def register(app: typer.Typer) -> None:
    app.command("render-variations", context_settings={"allow_extra_args": True})(render_variations_cmd)


def split_styles(value: str) -> list[str]:
    return [s.strip() for s in re.split(r"[|;\n]", value) if s.strip()]


def parse_inputs(pairs: list[str]) -> dict[str, Any]:
    """`KEY=VALUE` model inputs; VALUE is JSON when it parses (numbers, true/false), else text."""
    out: dict[str, Any] = {}
    for p in pairs:
        k, eq, v = p.partition("=")
        if not eq or not k.strip():
            raise typer.BadParameter(f"{p!r}: use KEY=VALUE", param_hint="--input")
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


def resolve_styles_and_src(src: str, extras: list[str], style: list[str], styles: str | None, styles_file: Path | None) -> tuple[Path, list[str]]:
    """Sort positional values into the renders folder and extra `--styles` values."""
    positional = [src, *extras]
    if extras and styles is None:
        raise typer.BadParameter(f"unexpected extra arguments {extras!r} (quote each style after --styles, or repeat --style)")
    folders = [p for p in positional if Path(p).is_dir()]
    if len(folders) != 1:
        what = "no existing folder" if not folders else f"several folders {folders!r}"
        raise typer.BadParameter(f"expected one renders folder among {positional!r}, found {what}", param_hint="RENDERS")
    folder = folders[0]
    out_styles = list(style or [])
    if styles is not None:
        out_styles += split_styles(styles)
        out_styles += [p.strip() for p in positional if p != folder and p.strip()]
    if styles_file is not None:
        out_styles += [ln.strip() for ln in styles_file.read_text(encoding="utf-8").splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    return Path(folder), out_styles or list(DEFAULT_STYLES)


@options_command(VariationOptions)
def render_variations_cmd(
    ctx: typer.Context,
    src: str = typer.Argument(None, metavar="RENDERS", show_default=False, help="Folder of 3D renders (with optional .txt captions). Read only. Default inside a loraprep project: its 01_raw."),
    out: Path = typer.Option(None, "--out", "-o", file_okay=False, show_default=False, help="Output folder: originals + variations + captions + manifest + contact sheet. Default inside a project: its 05_renders."),
    style: list[str] = typer.Option([], "--style", "-s", help="A style, e.g. 'oil painting portrait'. Repeat for more."),
    styles: str | None = typer.Option(None, "--styles", help="Styles separated by '|' or ';' (a style may contain commas)."),
    styles_file: Path | None = typer.Option(None, "--styles-file", exists=True, dir_okay=False, help="One style per line."),
    poll_interval: float = typer.Option(1.0, "--poll-interval", min=0.01, hidden=True, help="replicate: seconds between status polls."),
    model_input: list[str] = typer.Option([], "--input", help="replicate: extra model input KEY=VALUE (repeatable)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable report on stdout."),
    *,
    options: VariationOptions,
) -> None:
    """Turn each render into the original plus style variations (img2img), captioned by style."""
    project = find_project()
    try:
        if src is None and not ctx.args:
            if project is None:
                raise click.BadParameter("`prep render-variations` needs a folder of 3D renders: `prep render-variations RENDERS -o OUT` (inside a loraprep project it reads the project's 01_raw)", param_hint="RENDERS")
            src = str(project.raw)
        folder, style_list = resolve_styles_and_src(src or "", list(ctx.args), style, styles, styles_file)
        extra = parse_inputs(model_input)
    except click.BadParameter as exc:
        console.print(f"[red]error:[/red] {show(exc.format_message())}")
        raise typer.Exit(EXIT_USAGE) from None
    where = resolve_folders(
        "prep render-variations", folder, out, project_src=lambda p: p.raw, project_out=lambda p: p.renders, src_help="a folder of 3D renders", project=project
    )
    opts = with_project_options(options, where.project, section=None, top=("trigger",))
    if opts.backend not in ("replicate", "diffusers"):
        raise fail(f"unknown backend {opts.backend!r}: use replicate or diffusers", EXIT_USAGE)
    backend_options = ({"extra_input": extra} if extra else {}) | ({"poll_interval": poll_interval} if opts.backend == "replicate" else {})
    opts = opts.changed(styles=style_list, backend_options=backend_options)
    try:
        report = STAGE.run(where.src, where.out, opts, progress=RichProgress(not as_json))
    except KeyboardInterrupt:
        raise interrupted_exit() from None
    except (ValueError, RemoteError, RuntimeError) as exc:
        raise fail(redact(str(exc)), EXIT_USAGE if isinstance(exc, ValueError) or getattr(exc, "kind", "") in ("auth", "setup") else 1) from None
    if as_json:
        emit_json(report.to_json())
    else:
        _print(report)
    n_total = report.planned - report.resumed + report.sources
    code = exit_code_for(len(report.failed), max(1, n_total)) if report.failed else EXIT_OK
    if code != EXIT_OK:
        raise typer.Exit(code)


def _print(r: Any) -> None:
    for w in r.warnings:
        console.print(f"[yellow]warning:[/yellow] {show(w)}")
    if r.dry_run:
        keep = f", keep at most {r.cap} in the final set" if r.cap is not None and r.cap < r.planned else ""
        console.print(f"would copy {r.originals} originals and make {r.planned} variations ({r.resumed} already done){keep} with {r.backend} {r.model}, strength {r.strength}")
        for v in r.variations[:40]:
            console.print(f"  {show(v['id'])}  seed {v['seed']}  [dim]{show(v['caption'])}[/dim]")
        if len(r.variations) > 40:
            console.print(f"  ... {len(r.variations) - 40} more")
        return
    console.print(f"{r.originals} originals copied, {r.generated} variations made, {r.resumed} already done, {len(r.failed)} failed  ({r.backend} {r.model}, strength {r.strength})")
    ident = r.identity or {}
    if ident.get("enabled"):
        console.print(f"identity ({ident['model']}, threshold {ident['threshold']:.3f}): {ident['checked']} checked, {len(ident['drifted'])} drifted, "
                      f"{len(ident['unchecked'])} unchecked (render without a detectable face)")
    for a in r.set_aside[:40]:
        sim = f" (similarity {a['similarity']:.3f})" if a.get("similarity") is not None else ""
        console.print(f"[yellow]  set aside[/yellow] {show(a['id'])} -> {show(a['where'])}: {show(a['reason'] or a['kind'])}{sim}")
    if len(r.set_aside) > 40:
        console.print(f"  ... {len(r.set_aside) - 40} more set aside (see --json)")
    for u in ident.get("unchecked", [])[:10]:
        console.print(f"[dim]  kept unchecked {show(u['id'])}: {show(u['note'])}[/dim]")
    for f in r.failed[:20]:
        console.print(f"[red]  {show(f['id'])}: {show(f['reason'])}[/red]")
    if r.contact_sheet:
        console.print(f"contact sheet: {show(r.contact_sheet)}")
    if any(f.get("status") == "retryable" for f in r.failed):
        console.print("  some predictions did not finish in time: run the same command again to resume them (nothing is billed twice)")
