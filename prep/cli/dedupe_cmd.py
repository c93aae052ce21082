"""`prep dedupe DIR [--move-to DUPES]`: find near-duplicates (mirrors too); never delete.

The options are `prep.dedupe.DedupeOptions` (declared once there, also `[dedupe]` of
loraprep.toml); this command only adds the folder and `--json`, and runs `prep.dedupe.STAGE`.
"""

from __future__ import annotations

from pathlib import Path

import typer

from prep.cli.common import EXIT_PARTIAL, RichProgress, console, emit_json, show
from prep.dedupe import STAGE, DedupeOptions
from prep.options import options_command


def register(app: typer.Typer) -> None:
    app.command("dedupe")(dedupe)


@options_command(DedupeOptions)
def dedupe(
    folder: Path = typer.Argument(..., exists=True, file_okay=False, help="Dataset folder."),
    as_json: bool = typer.Option(False, "--json", help="JSON report on stdout."),
    *,
    options: DedupeOptions,
) -> None:
    """Group near-duplicate images by perceptual hash; keep the original, captioned, largest copy of each group."""
    move_to = Path(options.move_to) if options.move_to else None
    report = STAGE.run(folder, move_to, options, progress=RichProgress())
    if as_json:
        emit_json(report.to_json())
    else:
        n = sum(len(g.others) for g in report.groups)
        console.print(f"{report.images} images, {len(report.groups)} duplicate groups, {n} duplicates (threshold {options.threshold}/64)")
        for g in report.groups:
            mirrored = f" (mirrored: {', '.join(g.mirrored)})" if g.mirrored else ""
            console.print(f"  keep {show(g.keep)}  <-  {', '.join(f'{show(o)} [{g.distances[o]}]' for o in g.others)}{show(mirrored)}")
        if move_to is not None:
            verb = "would move" if options.dry_run else "moved"
            console.print(f"{verb} {len(report.moved)} files to {show(move_to)}")
            for a, b in report.captions_copied:
                console.print(f"  caption {'would be ' if options.dry_run else ''}copied to the kept image: {show(a)} -> {show(b)}")
        elif report.groups:
            console.print("nothing moved: pass --move-to DUPES to move duplicates out (nothing is ever deleted)")
        for r in report.failed:
            console.print(f"  [red]unreadable[/red] {show(r.reason)}")
        for sk in report.skipped:  # never opened: symlink loops, FIFOs, formats Pillow cannot read
            console.print(f"  [red]skipped[/red] {show(sk.message)}")
    if report.n_failed:
        raise typer.Exit(EXIT_PARTIAL)
