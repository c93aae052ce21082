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

from prep.cli.common import EXIT_OK, EXIT_USAGE, RichProgress, console, emit_json, exit_code_for, fail, interrupted_exit
from prep.remote import RemoteError, redact
from prep.variations import DEFAULT_STYLES, VariationOptions, render_variations


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


def render_variations_cmd(
    ctx: typer.Context,
    src: str = typer.Argument(..., metavar="RENDERS", help="Folder of 3D renders (with optional .txt captions). Read only."),
    out: Path = typer.Option(..., "--out", "-o", file_okay=False, help="Output folder: originals + variations + captions + manifest + contact sheet."),
    style: list[str] = typer.Option([], "--style", "-s", help="A style, e.g. 'oil painting portrait'. Repeat for more."),
    styles: str | None = typer.Option(None, "--styles", help="Styles separated by '|' or ';' (a style may contain commas)."),
    styles_file: Path | None = typer.Option(None, "--styles-file", exists=True, dir_okay=False, help="One style per line."),
    per_image: int = typer.Option(2, "--per-image", "-n", min=0, help="Variations per render (styles rotate across renders)."),
    strength: float | None = typer.Option(None, "--strength", min=0.01, max=1.0, help="img2img strength; default by model family (FLUX 0.6, SDXL 0.45)."),
    backend: str = typer.Option("replicate", "--backend", "-b", help="replicate (hosted, default) or diffusers (local GPU)."),
    model: str | None = typer.Option(None, "--model", "-m", help="replicate: owner/name[:version] (flux-dev, sdxl presets); diffusers: HF id or local folder."),
    trigger: str | None = typer.Option(None, "--trigger", "-t", help="Trigger word put first in every caption."),
    original_tag: str = typer.Option("3d render", "--original-tag", help="Tag added to the originals' captions."),
    max_synthetic_share: float = typer.Option(0.5, "--max-synthetic-share", min=0.0, max=1.0, help="Cap variations at this share of the output set (1 = no cap)."),
    seed: int = typer.Option(0, "--seed", help="Mixed into every per-image seed; change it for fresh samples."),
    steps: int | None = typer.Option(None, "--steps", min=1, help="Inference steps (default by family)."),
    guidance: float | None = typer.Option(None, "--guidance", help="Guidance scale (default by family)."),
    negative_prompt: str | None = typer.Option(None, "--negative-prompt", help="Negative prompt where the model takes one ('' for none)."),
    max_side: int = typer.Option(1024, "--max-side", min=64, help="Scale larger renders down to this before img2img."),
    batch_size: int = typer.Option(1, "--batch-size", min=1, help="diffusers: images per pipeline call."),
    workers: int | None = typer.Option(None, "--workers", "-j", min=1, help="replicate: predictions in flight (default 4)."),
    rpm: float = typer.Option(300.0, "--rpm", min=1.0, help="replicate: most prediction creates per minute."),
    poll_interval: float = typer.Option(1.0, "--poll-interval", min=0.01, hidden=True, help="replicate: seconds between status polls."),
    model_input: list[str] = typer.Option([], "--input", help="replicate: extra model input KEY=VALUE (repeatable)."),
    device: str = typer.Option("auto", "--device", help="diffusers: auto, cuda, cuda:1, mps, cpu."),
    dtype: str = typer.Option("auto", "--dtype", help="diffusers: auto (bf16/fp16 on GPU, fp32 on CPU), bf16, fp16, fp32."),
    ip_adapter: str | None = typer.Option(None, "--ip-adapter", help="diffusers: REPO/[SUBFOLDER/]FILE, e.g. h94/IP-Adapter/sdxl_models/ip-adapter_sdxl.bin."),
    ip_adapter_scale: float = typer.Option(0.6, "--ip-adapter-scale", min=0.0, max=2.0),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Include subfolders (kept in the output)."),
    contact_sheet: bool = typer.Option(True, "--contact-sheet/--no-contact-sheet"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show the plan (styles, seeds, captions); write and bill nothing."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable report on stdout."),
) -> None:
    """Turn each render into the original plus style variations (img2img), captioned by style."""
    try:
        folder, style_list = resolve_styles_and_src(src, list(ctx.args), style, styles, styles_file)
        extra = parse_inputs(model_input)
    except click.BadParameter as exc:
        console.print(f"[red]error:[/red] {exc.format_message()}")
        raise typer.Exit(EXIT_USAGE) from None
    if backend not in ("replicate", "diffusers"):
        raise fail(f"unknown backend {backend!r}: use replicate or diffusers", EXIT_USAGE)
    opts = VariationOptions(
        styles=style_list, per_image=per_image, strength=strength, backend=backend, model=model, trigger=trigger,
        original_tag=original_tag, max_synthetic_share=max_synthetic_share, seed=seed, steps=steps, guidance=guidance,
        negative_prompt=negative_prompt, max_side=max_side, batch_size=batch_size, workers=workers, rpm=rpm,
        device=device, dtype=dtype, ip_adapter=ip_adapter, ip_adapter_scale=ip_adapter_scale, recursive=recursive,
        contact_sheet=contact_sheet, dry_run=dry_run, backend_options=({"extra_input": extra} if extra else {}) | ({"poll_interval": poll_interval} if backend == "replicate" else {}),
    )
    try:
        report = render_variations(folder, out, opts, progress=RichProgress(not as_json))
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
        console.print(f"[yellow]warning:[/yellow] {w}")
    if r.dry_run:
        console.print(f"would copy {r.originals} originals and make {r.planned} variations ({r.resumed} already done) with {r.backend} {r.model}, strength {r.strength}")
        for v in r.variations[:40]:
            console.print(f"  {v['id']}  seed {v['seed']}  [dim]{v['caption']}[/dim]")
        if len(r.variations) > 40:
            console.print(f"  ... {len(r.variations) - 40} more")
        return
    console.print(f"{r.originals} originals copied, {r.generated} variations made, {r.resumed} already done, {len(r.failed)} failed  ({r.backend} {r.model}, strength {r.strength})")
    for f in r.failed[:20]:
        console.print(f"[red]  {f['id']}: {f['reason']}[/red]")
    if r.contact_sheet:
        console.print(f"contact sheet: {r.contact_sheet}")
    if any(f.get("status") == "retryable" for f in r.failed):
        console.print("  some predictions did not finish in time: run the same command again to resume them (nothing is billed twice)")
