"""Applying the trigger rule to a folder of captions (the library side of `prep trigger`).

`TriggerOptions` is the one declaration of the step's options (CLI flags and project file);
`STAGE.run(src, out, options)` rewrites the captions in place when `out` is `src` (or None),
else writes each image (hard-linked where it can) with its triggered caption into `out`,
leaving `src` untouched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field

from prep.dataset import discover, read_caption
from prep.fsutil import atomic_write_text, link_or_copy
from prep.options import StageOptions
from prep.trigger import Trigger, apply_trigger, validate_trigger


class TriggerOptions(StageOptions):
    """The options of `prep trigger`, declared once."""

    trigger: Trigger = Field("", description="The trigger word, exact casing (inside a loraprep project: its [project] trigger).", json_schema_extra={"cli": ("--trigger", "-t")})
    recursive: bool = Field(False, description="Include subfolders.", json_schema_extra={"cli": ("--recursive", "-r")})
    create_missing: bool = Field(False, description="Write a caption holding only the trigger for images without one.", json_schema_extra={"cli": ("--create-missing",)})
    dry_run: bool = Field(False, description="Report what would change; write nothing.", json_schema_extra={"cli": ("--dry-run",)})


@dataclass
class TriggerReport:
    total: int = 0
    changed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def n_failed(self) -> int:
        return len(self.errors)

    def to_json(self) -> dict[str, Any]:
        return {"total": self.total, "changed": self.changed, "missing": self.missing, "errors": self.errors}


def apply_trigger_to_folder(
    folder: Path, trigger: str, *, recursive: bool = False, create_missing: bool = False, dry_run: bool = False, out: Path | None = None
) -> TriggerReport:
    """Make `trigger` first, exactly once, in each `.txt` caption under `folder` (or in copies under `out`)."""
    if not trigger or not trigger.strip():
        raise ValueError("a trigger word is required: pass --trigger/-t WORD (inside a loraprep project: [project] trigger)")
    trigger = validate_trigger(trigger)
    folder = Path(folder)
    dest_root = None if out is None or Path(out).resolve() == folder.resolve() else Path(out)
    rep = TriggerReport()
    items = discover(folder, recursive=recursive, exclude=[dest_root] if dest_root else [])
    rep.errors.extend(s.message for s in items.skipped)  # named, never opened
    for item in items:
        try:
            text = read_caption(item.caption_path)
        except ValueError as exc:
            rep.errors.append(str(exc))
            continue
        if text is None:
            rep.missing.append(item.id)
            if not create_missing and dest_root is None:
                continue
        rep.total += 1
        new = apply_trigger(text or "", trigger) if (text is not None or create_missing) else None
        if dest_root is None:
            if new is not None and (new != text or not item.caption_path.exists()):
                rep.changed.append(item.id)
                if not dry_run:
                    atomic_write_text(item.caption_path, new + "\n")
            continue
        image_dst = dest_root / item.id
        if new is not None and new != text:
            rep.changed.append(item.id)
        if not dry_run:
            image_dst.parent.mkdir(parents=True, exist_ok=True)
            if not image_dst.exists():
                link_or_copy(item.path, image_dst)
            if new is not None:
                atomic_write_text(image_dst.with_suffix(".txt"), new + "\n")
    return rep


class TriggerStage:
    """`prep trigger` as a stage: in place when `out` is `src` or None, else into `out`."""

    name = "trigger"
    Options = TriggerOptions

    def run(self, src: Path, out: Path | None, options: TriggerOptions, *, progress: object = None) -> TriggerReport:
        o = options
        return apply_trigger_to_folder(src, o.trigger, recursive=o.recursive, create_missing=o.create_missing, dry_run=o.dry_run, out=out)


STAGE = TriggerStage()
