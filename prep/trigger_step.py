"""Applying the trigger rule to a folder of captions (the library side of `prep trigger`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prep.dataset import discover, read_caption
from prep.fsutil import atomic_write_text
from prep.trigger import apply_trigger


@dataclass
class TriggerReport:
    total: int = 0
    changed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"total": self.total, "changed": self.changed, "missing": self.missing, "errors": self.errors}


def apply_trigger_to_folder(folder: Path, trigger: str, *, recursive: bool = False, create_missing: bool = False, dry_run: bool = False) -> TriggerReport:
    """Rewrite each `.txt` caption under `folder` so `trigger` is first, exactly once."""
    rep = TriggerReport()
    for item in discover(folder, recursive=recursive):
        try:
            text = read_caption(item.caption_path)
        except ValueError as exc:
            rep.errors.append(str(exc))
            continue
        if text is None:
            rep.missing.append(item.id)
            if not create_missing:
                continue
            text = ""
        rep.total += 1
        new = apply_trigger(text, trigger)
        if new != text or not item.caption_path.exists():
            rep.changed.append(item.id)
            if not dry_run:
                atomic_write_text(item.caption_path, new + "\n")
    return rep
