"""`prep clips SRC -o OUT [--fps 16] [--frames 81] [--split-scenes] [--max-clips-per-video N]`.

Thin over `prep.clips` (options: `prep.clips.ClipsOptions`); see docs/video.md.
"""

from __future__ import annotations

from pathlib import Path

import typer

from prep.cli.common import (
    EXIT_USAGE,
    RichProgress,
    console,
    emit_json,
    exit_code_for,
    fail,
    interrupted_exit,
    show,
)
from prep.clips import CLIPS_JSONL, SHEETS_DIR, STAGE, ClipsOptions
from prep.options import options_command


def register(app: typer.Typer) -> None:
    app.command("clips")(clips)


@options_command(ClipsOptions)
def clips(
    src: Path = typer.Argument(..., exists=True, file_okay=False, metavar="SRC", help="Folder of videos (mp4, mov, webm, mkv, m4v, avi, animated gif); read only."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write the clips, clips.jsonl, contact_sheets/ and manifest.jsonl into."),
    as_json: bool = typer.Option(False, "--json", help="JSON report on stdout."),
    *,
    options: ClipsOptions,
) -> None:
    """Cut videos into training clips: the trainer's fps, exactly 4N+1 frames, upright, no bars, bucket-sized."""
    try:
        report = STAGE.run(src, out, options, progress=RichProgress(enabled=not as_json))
    except ValueError as exc:
        raise fail(str(exc), EXIT_USAGE) from None
    except KeyboardInterrupt:
        raise interrupted_exit() from None
    if as_json:
        emit_json(report.to_json())
    else:
        verb = "would write" if options.dry_run else "wrote"
        s = report.to_json()["summary"]
        console.print(f"{verb} {s['clips']} clip(s) of {options.frames} frames at {options.target_fps:g} fps from {s['videos']} video(s) "
                      f"to {show(out)} ({s['encoded']} encoded with {report.encoder}, {s['reused']} kept from an earlier run)")
        if not options.dry_run and s["clips"]:
            console.print(f"  records: {show(out / CLIPS_JSONL)}; frames that train: {show(out / SHEETS_DIR)}/")
        for r in report.items:
            for w in r.warnings:
                console.print(f"[yellow]note:[/yellow] {show(r.id)}: {show(w)}")
            if r.status == "empty":
                console.print(f"[yellow]no clip:[/yellow] {show(r.id)}: {show(r.reason)}")
        for r in report.failed:
            console.print(f"[red]failed:[/red] {show(r.id)}: {show(r.reason)}")
    raise typer.Exit(exit_code_for(report.n_failed, len(report.items)))
