"""`caption DIR ...` (caption a dataset) and `caption lint DIR ...` (check its captions).

Thin: parse options into `CaptionOptions` / `TagRules`, call `caption_folder` or `lint_folder`,
render. Human output on stderr; `--json` prints one document on stdout.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from captioning.backends import UnknownBackend
from captioning.backends.base import CaptionOptions
from captioning.identity import DEFAULT_GROUPS, GROUPS, IdentityRules
from captioning.lint import TRAINERS, lint_folder
from captioning.pipeline import MODES, caption_folder
from captioning.tags import TagRules, Thresholds, parse_replacements, split_tags
from prep.cli.common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    RichProgress,
    console,
    emit_json,
    fail,
    make_app,
    with_default,
)
from prep.models import ModelNotAvailable

app = make_app("caption", "Caption a dataset (wd14 tags by default; gemini, replicate, local VLMs) and lint captions.",
               cls=with_default("run"))

LORA_TYPES = ("character", "style", "motion", "object", "concept")


def _parse_value(v: str) -> Any:
    low = v.strip().lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    try:
        return json.loads(v)
    except ValueError:
        return v


def parse_set(pairs: list[str]) -> dict[str, Any]:
    """`--set key=value` pairs to a dict (numbers, booleans and JSON parsed)."""
    out: dict[str, Any] = {}
    for p in pairs:
        if "=" not in p:
            raise ValueError(f"--set {p!r}: write it as KEY=VALUE")
        k, v = p.split("=", 1)
        out[k.strip().replace("-", "_")] = _parse_value(v)
    return out


@app.command("run", hidden=True)
def run(
    folder: Path = typer.Argument(..., exists=True, file_okay=False, help="Folder of images to caption."),
    backend: str = typer.Option("wd14", "--backend", "-b", help="wd14 (local tagger), gemini, replicate, florence2, joycaption, or a chain like wd14+gemini."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model: Hub repo id or local folder (wd14: folder holding model.onnx + selected_tags.csv)."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Hub revision (commit or tag) to pin the model."),
    trigger: Optional[str] = typer.Option(None, "--trigger", "-t", help="Trigger word: put first, exactly once, exact casing."),
    lora_type: str = typer.Option("character", "--lora-type", help="character | style | motion | object | concept (prompt presets of sentence backends)."),
    mode: str = typer.Option("skip", "--mode", help="Images that already have a caption: skip | overwrite | append | prepend."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", file_okay=False, help="Write captions (and the manifest) here instead of beside the images."),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Include subfolders."),
    general_threshold: float = typer.Option(0.35, "--general-threshold", help="Tag tagger: minimum score of general tags."),
    character_threshold: float = typer.Option(0.85, "--character-threshold", help="Tag tagger: minimum score of character tags."),
    mcut: bool = typer.Option(False, "--mcut", help="Thresholds by MCut per image instead (character floor 0.15)."),
    rating: bool = typer.Option(False, "--rating", help="Add the most likely rating tag (general/sensitive/questionable/explicit)."),
    rating_last: bool = typer.Option(False, "--rating-last", help="Put the rating tag last instead of first."),
    order: str = typer.Option("confidence", "--order", help="Tag order: confidence (highest first) | category (model order)."),
    no_character_first: bool = typer.Option(False, "--no-character-first", help="Do not put character tags before general tags."),
    keep_underscores: bool = typer.Option(False, "--keep-underscores", help="Write long_hair, not long hair."),
    escape_parens: bool = typer.Option(False, "--escape-parens", help="Write \\( \\) for A1111 prompt syntax."),
    exclude: list[str] = typer.Option([], "--exclude", "-x", help="Tags to drop (repeat or comma-separate; either long_hair or long hair)."),
    replace_: list[str] = typer.Option([], "--replace", help="OLD=NEW tag replacement (repeat); OLD= drops it."),
    always_first: list[str] = typer.Option([], "--always-first", help="Tags moved to the front when present, in the order given."),
    max_tags: Optional[int] = typer.Option(None, "--max-tags", help="Keep at most N tags (after ordering)."),
    prune_identity: bool = typer.Option(False, "--prune-identity", help="Drop tags of the character's fixed look (hair, eyes, skin, ears, tail, wings ...)."),
    identity_groups: str = typer.Option(",".join(DEFAULT_GROUPS), "--identity-groups", help=f"Groups pruned by --prune-identity: {', '.join(GROUPS)}."),
    keep_tag: list[str] = typer.Option([], "--keep-tag", help="Never prune these tags (e.g. a hairstyle that changes)."),
    prune_core: Optional[float] = typer.Option(None, "--prune-core", min=0.0, max=1.0, help="Drop tags present in at least this share of the captions (e.g. 0.6)."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | tensorrt | coreml | dml (local backends)."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Images per inference batch (local) or per dispatch (remote)."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Image decode threads (local backends)."),
    concurrency: int = typer.Option(4, "--concurrency", min=1, help="Requests in flight (remote backends)."),
    rpm: Optional[float] = typer.Option(None, "--rpm", help="Requests per minute cap (remote backends)."),
    prompt: Optional[str] = typer.Option(None, "--prompt", help="Override the backend's prompt preset (sentence backends)."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", help="Length limit of generated sentences."),
    preprocess: Optional[str] = typer.Option(None, "--preprocess", help="wd14: reference (model authors', default) | sd-scripts (its resize, for tag-for-tag parity)."),
    set_: list[str] = typer.Option([], "--set", help="Backend-specific KEY=VALUE (repeat), e.g. --set threads=2 --set draft=false."),
    no_resume: bool = typer.Option(False, "--no-resume", help="Re-caption images a previous run already finished."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Count images and estimate time and cost; write nothing."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable report on stdout."),
) -> None:
    """Caption images: tags (wd14) or sentences, trigger first, written as .txt beside each image."""
    try:
        if mode not in MODES:
            raise ValueError(f"--mode {mode!r}: use one of {', '.join(MODES)}")
        if lora_type not in LORA_TYPES:
            raise ValueError(f"--lora-type {lora_type!r}: use one of {', '.join(LORA_TYPES)}")
        if order not in ("confidence", "category"):
            raise ValueError(f"--order {order!r}: use confidence or category")
        groups = tuple(g.strip() for g in identity_groups.split(",") if g.strip())
        unknown = [g for g in groups if g not in GROUPS]
        if unknown:
            raise ValueError(f"--identity-groups: unknown {', '.join(unknown)}; use {', '.join(GROUPS)}")
        if prune_core is not None and not 0 < prune_core <= 1:
            raise ValueError("--prune-core takes a share between 0 and 1, e.g. 0.6")
        rules = TagRules(
            thresholds=Thresholds(general=general_threshold, character=character_threshold, mcut=mcut),
            include_rating=rating or rating_last,
            rating_last=rating_last,
            character_first=not no_character_first,
            order=order,  # type: ignore[arg-type]
            underscores=keep_underscores,
            escape_parens=escape_parens,
            exclude=tuple(split_tags(exclude)),
            replace=parse_replacements(replace_),
            always_first=tuple(split_tags(always_first)),
            max_tags=max_tags,
        )
        options = CaptionOptions(
            trigger=trigger, lora_type=lora_type, model=model, revision=revision,  # type: ignore[arg-type]
            device=device, batch_size=batch_size, workers=workers, prompt=prompt, max_new_tokens=max_new_tokens,
            concurrency=concurrency, rpm=rpm, extra=parse_set(set_),
        )
        if preprocess is not None:
            if preprocess not in ("reference", "sd-scripts"):
                raise ValueError(f"--preprocess {preprocess!r}: use reference or sd-scripts")
            options.extra["preprocess"] = preprocess
    except ValueError as exc:
        raise fail(str(exc), EXIT_USAGE) from None

    progress = RichProgress(enabled=not as_json)
    try:
        report = caption_folder(
            folder, backend, options, mode=mode, output=output, rules=rules,  # type: ignore[arg-type]
            prune_identity_tags=prune_identity, identity=IdentityRules(groups=groups, keep=tuple(split_tags(keep_tag))),
            prune_core=prune_core, recursive=recursive, resume=not no_resume, dry_run=dry_run, progress=progress,
        )
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
        f"failed {c['failed']}, blocked {c['blocked']} of {c['total']} images -> {report.output}"
    )
    for o in report.problems[:20]:
        console.print(f"  [red]{o.status}[/red] {o.id}: {o.reason}")
    if len(report.problems) > 20:
        console.print(f"  ... {len(report.problems) - 20} more in {report.output / 'manifest.jsonl'}")
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
def lint(
    folder: Path = typer.Argument(..., exists=True, file_okay=False, help="Folder of images with .txt captions."),
    trigger: Optional[str] = typer.Option(None, "--trigger", "-t", help="The trigger word every caption must start with."),
    trainer: str = typer.Option("sdxl", "--trainer", help=f"Whose text encoder budget applies: {', '.join(sorted(TRAINERS))}."),
    max_token_length: Optional[int] = typer.Option(None, "--max-token-length", help="CLIP trainers: 75, 150 or 225 (sd-scripts --max_token_length)."),
    lora_type: str = typer.Option("character", "--lora-type", help="character sets are checked for identity tags."),
    tokenizer: Optional[str] = typer.Option(None, "--tokenizer", help="A local tokenizer folder for exact counts (default: approximate unless cached)."),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Include subfolders."),
    strict: bool = typer.Option(False, "--strict", help="Exit 1 when any issue is found."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable report on stdout."),
) -> None:
    """Check captions: trigger, empty, duplicates, token budget, identity words."""
    try:
        report = lint_folder(folder, trigger=trigger, trainer=trainer, max_token_length=max_token_length,
                             lora_type=lora_type, tokenizer=tokenizer, recursive=recursive)
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
            console.print(f"  [{color}]{issue.code}[/{color}] {issue.id}: {issue.message}")
        if len(report.issues) > 50:
            console.print(f"  ... {len(report.issues) - 50} more (use --json for all)")
        counts = report.by_code()
        console.print("no issues" if not counts else "issues: " + ", ".join(f"{k} {v}" for k, v in counts.most_common()))
    if strict and report.issues:
        raise typer.Exit(EXIT_FAILED)


def main() -> None:
    app()
