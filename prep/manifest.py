"""The per-output-folder manifest: what each step did to each image.

JSON Lines, one record per item per step. A record is appended with a single `write()` on an
`O_APPEND` file descriptor, so a killed run leaves at most one torn last line, which reading
ignores. The latest record for (step, id) wins, which lets a rerun skip finished work.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

Status = Literal["ok", "skipped", "failed", "retryable", "blocked", "flagged"]
DONE_STATUSES = frozenset({"ok", "skipped", "flagged", "blocked"})
MANIFEST_NAME = "manifest.jsonl"


@dataclass
class Record:
    step: str
    id: str
    status: Status
    source: str = ""
    source_sha256: str | None = None
    outputs: list[str] = field(default_factory=list)
    reason: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    time: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        extra = d.pop("data")
        d.update(extra)
        return {k: v for k, v in d.items() if v is not None}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Record:
        known = {"step", "id", "status", "source", "source_sha256", "outputs", "reason", "time"}
        data = {k: v for k, v in d.items() if k not in known}
        return cls(
            step=d["step"],
            id=d["id"],
            status=d["status"],
            source=d.get("source", ""),
            source_sha256=d.get("source_sha256"),
            outputs=list(d.get("outputs") or []),
            reason=d.get("reason"),
            data=data,
            time=d.get("time", 0.0),
        )


class Manifest:
    """Append-only JSONL log of step results in an output folder."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._latest: dict[tuple[str, str], Record] | None = None

    @classmethod
    def in_folder(cls, folder: Path | str, name: str = MANIFEST_NAME) -> Manifest:
        return cls(Path(folder) / name)

    def records(self) -> Iterator[Record]:
        try:
            fh = open(self.path, encoding="utf-8")
        except FileNotFoundError:
            return
        with fh:
            for line in fh:
                line = line.strip()
                if not line:
                    continue
                try:
                    yield Record.from_json(json.loads(line))
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # a torn last line from a killed run

    def latest(self) -> dict[tuple[str, str], Record]:
        """The last record for each (step, id)."""
        with self._lock:
            if self._latest is None:
                self._latest = {(r.step, r.id): r for r in self.records()}
            return self._latest

    def get(self, step: str, item_id: str) -> Record | None:
        return self.latest().get((step, item_id))

    def is_done(self, step: str, item_id: str, source_sha256: str | None = None) -> bool:
        """True when (step, id) finished, for the same source bytes, and its outputs still exist."""
        rec = self.get(step, item_id)
        if rec is None or rec.status not in DONE_STATUSES:
            return False
        if source_sha256 is not None and rec.source_sha256 not in (None, source_sha256):
            return False
        base = self.path.parent
        return all((base / o).exists() if not os.path.isabs(o) else Path(o).exists() for o in rec.outputs)

    def append(self, record: Record) -> None:
        line = (json.dumps(record.to_json(), ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
            if self._latest is not None:
                self._latest[(record.step, record.id)] = record

    def extend(self, records: Iterable[Record]) -> None:
        for r in records:
            self.append(r)

    def step_records(self, step: str) -> list[Record]:
        return [r for (s, _), r in self.latest().items() if s == step]
