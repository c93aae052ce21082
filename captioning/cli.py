"""`caption DIR ...` (caption a dataset) and `caption lint DIR ...` (check its captions).

Thin: the caption command's options are generated from `CaptionStageOptions` (declared once,
also read by loraprep.toml) and it calls `captioning.pipeline.STAGE.run`, the code `loraprep run`
calls; `lint` calls `lint_folder`. `caption -h` shows the caption command itself. Human output on stderr; `--json` prints one document on stdout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, get_args

import click
import typer

from captioning.backends import UnknownBackend
from captioning.backends.base import LoraType
from captioning.lint import STAGE as LINT_STAGE
from captioning.lint import LintOptions
from captioning.pipeline import STAGE, CaptionStageOptions, parse_set
from prep.cli.common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    RichProgress,
    console,
    emit_json,
    fail,
    make_app,
    show,
    with_default,
)
from prep.models import ModelNotAvailable
from prep.options import OptionsError, load_options, options_command
from prep.project import PROJECT_FILE, ProjectDirs, find_project

__all__ = ["app", "main", "parse_set", "resolve_folders"]

class _CaptionGroup(with_default("run")):
    """`caption -h` shows the caption command itself (its options), then names `lint`."""

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        run_cmd = self.commands[self.default_command]
        run_cmd.format_help(click.Context(run_cmd, info_name=ctx.info_name, parent=ctx.parent), formatter)


app = make_app("caption", "Caption a dataset (wd14 tags by default; gemini, replicate, local VLMs) and lint captions.",
               cls=_CaptionGroup)

LORA_TYPES = get_args(LoraType)


def _project_options(proj: ProjectDirs, given: CaptionStageOptions, *, keep_apart: bool) -> CaptionStageOptions:
    """The project's caption settings (loraprep.toml [caption], its trigger and workers), overridden by the flags given.

    The same rule as `loraprep run`: identity pruning applies to character LoRAs only.
    """
    table = proj.table()
    section = {k: v for k, v in (table.get("caption") or {}).items() if k in CaptionStageOptions.model_fields}
    top = table.get("project") or {}
    base: dict[str, Any] = {**section}
    if top.get("trigger"):
        base["trigger"] = top["trigger"]
    if top.get("workers"):
        base["workers"] = top["workers"]
    data = {**base, **given.model_dump(include=given.model_fields_set), "keep_apart": keep_apart}
    opts = load_options(CaptionStageOptions, data, where=str(proj.file))
    if opts.lora_type != "character" and opts.prune_identity:
        opts = opts.changed(prune_identity=False)  # type: ignore[assignment]
    return opts  # type: ignore[return-value]


def resolve_folders(folder: Path | None, output: Path | None, options: CaptionStageOptions,
                    start: Path | None = None) -> tuple[Path, Path, CaptionStageOptions]:
    """(images, captions, options) for `caption [FOLDER] [-o OUT]`.

    With a folder: caption it (beside the images, or into `-o`). Without one, inside a project
    (a folder holding loraprep.toml): its crops into its captions folder, generated captions
    kept apart from the users' as `loraprep run` does. Outside one: a ValueError saying which
    folder is needed.
    """
    if folder is not None:
        return folder, output or folder, options
    proj = find_project(start)
    if proj is None:
        raise ValueError(
            "caption needs a folder of images: `caption FOLDER --trigger NAME` (for example the output of `prep crop`), "
            f"or run it inside a loraprep project (a folder holding {PROJECT_FILE}) to caption the project's crops"
        )
    if not proj.cropped.is_dir():
        raise ValueError(f"{proj.cropped}: the project has no crops yet; run `loraprep run` (or `prep crop`) first")
    opts = _project_options(proj, options, keep_apart=output is None)
    return proj.cropped, output or proj.captions, opts


@app.command("run", hidden=True, epilog="Also: `caption lint FOLDER` checks captions (caption lint -h).")
@options_command(CaptionStageOptions)
def run(
    folder: Optional[Path] = typer.Argument(None, exists=True, file_okay=False,
                                            help="Folder of images to caption (default inside a loraprep project: its crops)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", file_okay=False, help="Write captions (and the manifest) here instead of beside the images."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Count images and estimate time and cost; write nothing."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable report on stdout."),
    *,
    options: CaptionStageOptions,
) -> None:
    """Caption images: tags (wd14) or sentences, trigger first, written as .txt beside each image."""
    try:
        src, out, options = resolve_folders(folder, output, options)
    except (ValueError, OptionsError) as exc:
        raise fail(str(exc), EXIT_USAGE) from None

    progress = RichProgress(enabled=not as_json)
    try:
        report = STAGE.run(src, out, options, progress=progress, dry_run=dry_run)
    except (UnknownBackend, ValueError) as exc:
        raise fail(str(exc), EXIT_USAGE) from None
    except (ModelNotAvailable, NotADirectoryError) as exc:
        raise fail(str(exc), EXIT_FAILED) from None
    except KeyboardInterrupt:
        progress.stop()
        console.print("[yellow]interrupted[/yellow]: finished captions are kept; run the same command again to resume.")
        raise typer.Exit(EXIT_INTERRUPTED) from None

    if as_json:
        emit_json(report.to_json())
    else:
        _render(report)
    raise typer.Exit(0 if dry_run else report.exit_code())


def _render(report: Any) -> None:
    if report.dry_run:
        est = report.estimate
        console.print(f"[bold]dry run[/bold]: {report.to_caption} of {report.total} images would be captioned with {report.backend}")
        if est is not None:
            secs = f"~{est.seconds:.0f} s" if est.seconds is not None else "unknown time"
            cost = f"${est.cost_usd:.2f}" if est.cost_usd is not None else "unknown cost"
            console.print(f"  estimate: {secs}, {cost}" + (f" ({est.notes})" if est.notes else ""))
        return
    c = report.to_json()["counts"]
    console.print(
        f"captioned {c['ok']}, skipped {c['skipped']} (had a caption), resumed {c['resumed']}, "
        f"failed {c['failed']}, blocked {c['blocked']} of {c['total']} images -> {show(report.output)}"
    )
    for o in report.problems[:20]:
        console.print(f"  [red]{o.status}[/red] {show(o.id)}: {show(o.reason or '')}")
    if len(report.problems) > 20:
        console.print(f"  ... {len(report.problems) - 20} more in {show(report.output / 'manifest.jsonl')}")
    if report.pruned.identity:
        top = ", ".join(f"{t} ({n})" for t, n in report.pruned.identity.most_common(12))
        console.print(f"identity tags pruned: {top}")
    if report.pruned.core:
        console.print("core tags pruned: " + ", ".join(f"{t} ({s:.0%})" for t, s in sorted(report.pruned.core.items(), key=lambda kv: -kv[1])))
    if report.tag_frequency:
        top = ", ".join(f"{t} {n}" for t, n in report.tag_frequency.most_common(25))
        console.print(f"top tags: {top}")
    hint = report.keep_tokens_hint()
    if hint:
        console.print(f"[dim]{hint}[/dim]")


@app.command("lint")
@options_command(LintOptions)
def lint(
    folder: Path = typer.Argument(..., exists=True, file_okay=False, help="Folder of images with .txt captions."),
    strict: bool = typer.Option(False, "--strict", help="Exit 1 when any issue is found."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable report on stdout."),
    *,
    options: LintOptions,
) -> None:
    """Check captions: trigger, empty, duplicates, token budget, identity words, other characters' tags, trigger-only captions, near-identical scenes."""
    try:
        report = LINT_STAGE.run(folder, folder, options)
    except ValueError as exc:
        raise fail(str(exc), EXIT_USAGE) from None
    if as_json:
        emit_json(report.to_json())
    else:
        console.print(
            f"{report.images} images, {report.captions} captions; budget {report.budget} tokens ({report.encoder}, {report.trainer}); "
            f"longest {'~' if report.approximate else ''}{report.max_tokens} ({report.token_counter})"
        )
        for issue in report.issues[:50]:
            color = "red" if issue.severity == "error" else "yellow"
            console.print(f"  [{color}]{issue.code}[/{color}] {show(issue.id)}: {show(issue.message)}")
        if len(report.issues) > 50:
            console.print(f"  ... {len(report.issues) - 50} more (use --json for all)")
        counts = report.by_code()
        console.print("no issues" if not counts else "issues: " + ", ".join(f"{k} {v}" for k, v in counts.most_common()))
    if strict and report.issues:
        raise typer.Exit(EXIT_FAILED)


def main() -> None:
    app()
