"""The per-output-folder manifest: what each step did to each image.

JSON Lines, one record per item per step. A record is appended with a single `write()` on an
`O_APPEND` file descriptor, so a killed run leaves at most one torn last line, which reading
ignores, and the next append cuts away (a record without only its newline is kept and ended),
so a torn line never swallows a good record nor stays behind. A full disk truncates the short write away and raises `prep.fsutil.DiskFull`: a record
is either whole or absent. The latest record for (step, id) wins, which lets a rerun skip
finished work.

Each line starts `{"step": ..., "id": ..., "status": ...` (the other keys follow, sorted), so
finding a folder's latest records reads those three strings, not the whole line (a 100k-image
caption manifest is 170 MB of JSON: 5.5 s to parse whole, once for the index and once more for
each record used). Lines written before this order (sorted keys) are parsed whole, and so is
a last line without its newline, the only place a torn record can be.

A record may carry its source's `source_stat` (size, mtime_ns, inode, device, `stat_key`): a
rerun that finds the same stat trusts the recorded content hash (`Manifest.recorded_sha256`)
instead of reading the file again, so only what changed is hashed.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from prep.fsutil import DiskFull, is_disk_full, sweep_stale_temps

Status = Literal["ok", "skipped", "failed", "retryable", "blocked", "flagged", "writing"]
DONE_STATUSES = frozenset({"ok", "skipped", "flagged", "blocked"})
MANIFEST_NAME = "manifest.jsonl"


@dataclass(slots=True)  # one per image: no __dict__ each (100k-image runs)
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


def stat_key(path: Path | str) -> list[int]:
    """size, mtime_ns, inode and device of a file (following links, as reading it does): the same
    four numbers mean the same bytes for every writer that does not forge mtimes, without a read.
    Raises OSError when the file cannot be stat'ed."""
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev]


class Manifest:
    """Append-only JSONL log of step results in an output folder.

    The index kept in memory is where each (step, id)'s latest line starts, one int per record,
    not the records: a 100k-image crop index held 312 MiB as parsed records (194 MiB with shared
    strings), about 14 MiB as offsets (137 bytes a record, measured). `get` reads its one line back
    (the last few are cached)."""

    _RECENT = 32

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._index: dict[str, dict[str, int]] | None = None  # step -> id -> offset << 32 | length
        self._recent: OrderedDict[tuple[str, str], Record] = OrderedDict()
        self._rfd: int | None = None
        self._closer: weakref.finalize | None = None
        self._whole = False  # parse every line whole when indexing (after a line its head misread)

    @classmethod
    def in_folder(cls, folder: Path | str, name: str = MANIFEST_NAME) -> Manifest:
        """The manifest of an output folder; a stage opening it is about to write there, so the
        temp files a killed run left in that folder are swept now (even if nothing is redone)."""
        sweep_stale_temps(folder)
        return cls(Path(folder) / name)

    def records(self) -> Iterator[Record]:
        """Every record in file order (torn lines skipped); repeated strings shared within one pass."""
        pool: dict[str, str] = {}
        for _, _, d in self._lines():
            try:
                yield Record.from_json(_shared(d, pool))
            except (KeyError, TypeError):
                continue

    def _lines(self, needle: bytes | None = None) -> Iterator[tuple[int, int, dict[str, Any]]]:
        """(offset, length, parsed) of each whole JSON line; with `needle`, only lines holding
        those bytes are parsed (a cheap pre-filter: callers still check what they parsed)."""
        try:
            fh = open(self.path, "rb")
        except FileNotFoundError:
            return
        with fh:
            pos = 0
            for raw in fh:
                n = len(raw)
                line = raw.strip()
                if line and (needle is None or needle in line):
                    try:
                        d = json.loads(line.decode("utf-8", errors="replace"))  # a torn multi-byte tail
                    except json.JSONDecodeError:
                        d = None  # a torn last line from a killed run
                    if isinstance(d, dict):
                        yield pos, n, d
                pos += n

    def _heads(self, needle: bytes | None = None) -> Iterator[tuple[int, int, str, str, Any]]:
        """(offset, length, step, id, status) of each record line, read from the line's head
        where it has one (`_encode_line`), else from the whole line parsed."""
        try:
            fh = open(self.path, "rb")
        except FileNotFoundError:
            return
        whole = self._whole
        with fh:
            pos = 0
            for raw in fh:
                n = len(raw)
                if needle is not None and needle not in raw:
                    pos += n
                    continue
                m = None if whole or raw[-1:] != b"\n" else _HEAD.match(raw)
                if m is not None:
                    yield pos, n, _jstr(m[1]), _jstr(m[2]), _jstr(m[3])
                else:
                    line = raw.strip()
                    if line:
                        try:
                            d = json.loads(line.decode("utf-8", errors="replace"))
                        except json.JSONDecodeError:
                            d = None  # a torn last line from a killed run
                        if isinstance(d, dict) and isinstance(d.get("step"), str) and isinstance(d.get("id"), str):
                            yield pos, n, d["step"], d["id"], d.get("status")
                pos += n

    def _scan(self) -> dict[str, dict[str, int]]:
        index: dict[str, dict[str, int]] = {}
        for pos, n, step, item_id, _ in self._heads():
            by_id = index.get(step)
            if by_id is None:
                by_id = index[step] = {}
            by_id[item_id] = pos << 32 | n
        return index

    def _loaded(self) -> dict[str, dict[str, int]]:
        with self._lock:
            if self._index is None:
                self._index = self._scan()
            return self._index

    def _read(self, packed: int) -> Record | None:
        with self._lock:
            if self._rfd is None:  # one descriptor for the manifest's life, not an open per record
                try:
                    self._rfd = os.open(self.path, os.O_RDONLY)
                except FileNotFoundError:
                    return None
                self._closer = weakref.finalize(self, os.close, self._rfd)
            raw = os.pread(self._rfd, packed & 0xFFFFFFFF, packed >> 32)
        try:
            return Record.from_json(json.loads(raw.decode("utf-8", errors="replace")))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
            return None

    def latest(self) -> dict[tuple[str, str], Record]:
        """The last record for each (step, id), read now (the index keeps only where they are)."""
        return {(r.step, r.id): r for r in self.records()}

    def ids(self, step: str) -> list[str]:
        """The ids that have a record for `step`, without reading the records."""
        return list(self._loaded().get(step, ()))

    def get(self, step: str, item_id: str) -> Record | None:
        key = (step, item_id)
        for attempt in (0, 1):
            packed = self._loaded().get(step, {}).get(item_id)
            if packed is None:
                return None
            with self._lock:
                hit = self._recent.get(key)
                if hit is not None:
                    self._recent.move_to_end(key)
                    return hit
            rec = self._read(packed)
            if rec is not None and rec.step == step and rec.id == item_id:
                self._remember(key, rec)
                return rec
            with self._lock:  # the file changed under the index (another writer), or a line is not what
                self._index = None  # its head says: read it again once, every line parsed whole
                self._whole = True
                self._recent.clear()
                if self._closer is not None:
                    self._closer()  # the file may have been replaced: open it anew
                self._rfd = self._closer = None
        return None

    def _remember(self, key: tuple[str, str], rec: Record) -> None:
        with self._lock:
            self._recent[key] = rec
            self._recent.move_to_end(key)
            while len(self._recent) > self._RECENT:
                self._recent.popitem(last=False)

    def is_done(self, step: str, item_id: str, source_sha256: str | None = None) -> bool:
        """True when (step, id) finished, for the same source bytes, and its outputs still exist."""
        rec = self.get(step, item_id)
        if rec is None or rec.status not in DONE_STATUSES:
            return False
        if source_sha256 is not None and rec.source_sha256 not in (None, source_sha256):
            return False
        base = self.path.parent
        return all((base / o).exists() if not os.path.isabs(o) else Path(o).exists() for o in rec.outputs)

    def recorded_sha256(self, step: str, item_id: str, stat: list[int]) -> str | None:
        """The recorded content hash of (step, id) when its source still has the recorded stat."""
        rec = self.get(step, item_id)
        if rec is None or rec.source_sha256 is None or rec.data.get("source_stat") != stat:
            return None
        return rec.source_sha256

    def append(self, record: Record) -> None:
        line = _encode_line(record.to_json())
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
            except OSError as exc:
                if is_disk_full(exc):
                    raise DiskFull(self.path, exc) from exc
                raise
            try:
                start, n = _append_line(fd, line, self.path)
            finally:
                os.close(fd)
            loaded = self._index is not None
            if loaded:
                self._index.setdefault(record.step, {})[record.id] = start << 32 | n
            self._recent.pop((record.step, record.id), None)
        if loaded:
            self._remember((record.step, record.id), record)

    def extend(self, records: Iterable[Record]) -> None:
        for r in records:
            self.append(r)

    def statuses(self, step: str) -> dict[str, str]:
        """id -> latest status for `step`, in one read and without building records (a
        100k-image crop folder's manifest is listed this way each time the folder is)."""
        out: dict[str, str] = {}
        for _, _, s, item_id, status in self._heads(b'"step": ' + json.dumps(step).encode()):  # how _encode_line writes it
            if s == step:
                out[item_id] = str(status)
        return out

    def step_records(self, step: str) -> list[Record]:
        """The latest record of each id for `step`, read now."""
        return list({r.id: r for r in self.records() if r.step == step}.values())


_UNSHARED = frozenset({"id", "source", "source_sha256", "outputs", "time"})
"""Top-level record fields that differ in every record: not worth a place in the string pool."""


def _shared(value: Any, pool: dict[str, str], top: bool = True) -> Any:
    """`value` (a parsed record) with its dict keys and repeated strings taken from `pool`.

    `json.loads` makes every key and every tag a new string object: a caption record's 60 tags
    cost about 4 KiB per record, so the index of a 100k-image folder held 783 MiB of copies of
    the same few thousand strings. One shared object per distinct string makes that 8 bytes per
    tag (measured in docs/benchmarks.md, Scale)."""
    if isinstance(value, dict):
        return {pool.setdefault(k, k): (v if top and k in _UNSHARED else _shared(v, pool, False)) for k, v in value.items()}
    if isinstance(value, list):
        return [_shared(v, pool, False) for v in value]
    if isinstance(value, str) and len(value) <= 256:
        return pool.setdefault(value, value)
    return value


_HEAD_KEYS = ("step", "id", "status")
_STR = rb'"((?:[^"\\]|\\.)*)"'
_HEAD = re.compile(rb'\{"step": ' + _STR + rb', "id": ' + _STR + rb', "status": ' + _STR + rb'[,}]')


def _jstr(raw: bytes) -> str:
    """A JSON string's body (no quotes) as text."""
    if b"\\" in raw:
        return json.loads(b'"' + raw + b'"')
    return raw.decode("utf-8", errors="replace")


def _encode_line(d: dict[str, Any]) -> bytes:
    """One JSON line: step, id and status first (what indexing reads), the other keys sorted; a
    name the OS gave as undecodable bytes (surrogates) is \\u-escaped."""
    head = {k: d[k] for k in _HEAD_KEYS if isinstance(d.get(k), str)}
    rest = {k: v for k, v in d.items() if k not in head}
    for ascii_only in (False, True):
        h = json.dumps(head, ensure_ascii=ascii_only)
        r = json.dumps(rest, ensure_ascii=ascii_only, sort_keys=True)
        text = r if not head else h if not rest else h[:-1] + ", " + r[1:]
        try:
            return (text + "\n").encode("ascii" if ascii_only else "utf-8")
        except UnicodeEncodeError:
            continue
    raise AssertionError("unreachable: ASCII JSON always encodes")


def _append_line(fd: int, line: bytes, path: Path) -> tuple[int, int]:
    """Append `line` whole or not at all (a short write on a full disk is cut away); returns where
    it starts and its length (a newline put before it to end a kept last line included)."""
    end = os.fstat(fd).st_size
    if end and os.pread(fd, 1, end - 1) != b"\n":
        end = _mend_tail(fd, end)
        if end and os.pread(fd, 1, end - 1) != b"\n":
            line = b"\n" + line
    written = 0
    try:
        while written < len(line):
            n = os.write(fd, line[written:])
            if n <= 0:
                raise OSError(28, "No space left on device")
            written += n
    except OSError as exc:
        if written and os.fstat(fd).st_size == end + written:  # nobody else appended meanwhile
            os.ftruncate(fd, end)
        if is_disk_full(exc):
            raise DiskFull(path, exc) from exc
        raise
    return end, len(line)


def _mend_tail(fd: int, end: int) -> int:
    """Cut a torn last line (a writer killed mid-record) off the file; returns the new size.

    A last line that is whole JSON and lacks only its newline is kept.
    """
    start = end
    step = 1 << 16
    while start > 0:
        lo = max(0, start - step)
        chunk = os.pread(fd, start - lo, lo)
        nl = chunk.rfind(b"\n")
        if nl >= 0:
            start = lo + nl + 1
            break
        start = lo
    tail = os.pread(fd, end - start, start)
    try:
        json.loads(tail)
        return end
    except (json.JSONDecodeError, UnicodeDecodeError):
        os.ftruncate(fd, start)
        return start
