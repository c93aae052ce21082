"""A run's results that do not all have to fit in memory.

A stage report keeps one result per image (crops.jsonl, the contact sheets and the summary are
made from them). At 100k images those results held ~340 MiB of the crop driver's 630 MiB. A
`ResultList` keeps them in memory up to `spill_at` and beyond that in an anonymous temporary
file (gone when the list is, even after a kill), holding only where each one is: 8 bytes per
result. Reading them back is sequential `pread`s of data the page cache still has, up to 1 MiB
at a time. A result is stored as `marshal` of its fields (plain JSON-like data: 6 us a result
to read back against 9 for a pickled dataclass), pickled when marshal would not give the same
back (`encode_fields`). Subclasses keep other per-image records the same way (check's facts).
"""

from __future__ import annotations

import heapq
import marshal
import os
import pickle
import sys
import tempfile
import weakref
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, overload

from prep.executor import Result
from prep.fsutil import DiskFull, is_disk_full

SPILL_AT = 10_000
"""Results kept in memory before the rest go to disk (chosen: 10k results are ~35 MiB, and no
test-sized or everyday run pays for a file)."""


_READ_AT_MOST = 1 << 20


def encode_fields(fields: Any) -> bytes:
    """`marshal` of `fields` (plain data), or a pickle where marshal would not give the same back.

    marshal takes anything with a buffer as bytes: a numpy float or array would come back as
    its raw bytes. So the marshalled text is read back and compared; anything else is pickled.
    """
    try:
        b = marshal.dumps(fields)
        if marshal.loads(b) == fields:
            return b"M" + b
    except (ValueError, TypeError):  # an object marshal refuses; an array's ambiguous truth value
        pass
    return b"P" + pickle.dumps(fields, protocol=pickle.HIGHEST_PROTOCOL)


def decode_fields(b: bytes | memoryview) -> Any:
    return marshal.loads(b[1:]) if b[0] == 77 else pickle.loads(b[1:])  # 77: "M"


def _dump(r: Result) -> bytes:
    return encode_fields([r.id, r.status, r.source, r.outputs, r.reason, r.data])


def _undump(b: bytes | memoryview) -> Result:
    return Result(*decode_fields(b))


class ResultList(Sequence[Result]):
    """A list of results: append, extend, sort, iterate, index. Results are not to be changed
    after they are appended (a spilled one is a copy).

    A subclass keeps other per-image records the same way by overriding `_encode`, `_decode`
    and `_status` (check's facts: `prep.check.FactList`); each record needs an `id`."""

    _encode: Callable[[Any], bytes] = staticmethod(_dump)
    _decode: Callable[[bytes | memoryview], Any] = staticmethod(_undump)

    @staticmethod
    def _status(r: Any) -> str:
        return r.status

    def __init__(self, items: Iterable[Result] = (), *, spill_at: int | None = None, dir: Path | None = None):
        self._mem: list[Result] | None = []
        self._spill_at = SPILL_AT if spill_at is None else spill_at
        self._dir = dir
        self._fd: int | None = None
        self._places = array("Q")  # offset << 32 | length, in list order
        self._ids: list[str] = []  # kept in memory (with the statuses): ordering and choosing read no result
        self._statuses: list[str] = []
        self._end = 0
        self._pending: list[bytes] = []
        self.extend(items)

    # -- writing
    def append(self, r: Result) -> None:
        self._ids.append(r.id)
        self._statuses.append(sys.intern(self._status(r)))
        if self._mem is not None:
            self._mem.append(r)
            if len(self._mem) > self._spill_at:
                self._spill()
            return
        b = self._encode(r)
        self._places.append(self._end << 32 | len(b))
        self._end += len(b)
        self._pending.append(b)
        if len(self._pending) >= 256:
            self._flush()

    def extend(self, items: Iterable[Result]) -> None:
        for r in items:
            self.append(r)

    def _spill(self) -> None:
        d = self._dir if self._dir is not None and self._dir.is_dir() else None
        # unlinked at once: nothing left behind, even by a kill; closed once its fd is duplicated
        fh = tempfile.TemporaryFile(dir=d)  # noqa: SIM115
        self._fd = os.dup(fh.fileno())
        fh.close()
        weakref.finalize(self, os.close, self._fd)
        mem, self._mem = self._mem or [], None
        for r in mem:
            b = self._encode(r)
            self._places.append(self._end << 32 | len(b))
            self._end += len(b)
            self._pending.append(b)
        self._flush()

    def _flush(self) -> None:
        if not self._pending or self._fd is None:
            return
        blob = b"".join(self._pending)
        start = self._end - len(blob)
        done = 0
        try:
            while done < len(blob):
                done += os.pwrite(self._fd, blob[done:], start + done)
        except OSError as exc:
            if is_disk_full(exc):  # named like every other write: the folder, and what to do
                raise DiskFull(self._dir or tempfile.gettempdir(), exc) from exc
            raise
        self._pending.clear()

    # -- reading
    def __len__(self) -> int:
        return len(self._mem) if self._mem is not None else len(self._places)

    def _load(self, place: int) -> Result:
        assert self._fd is not None
        return self._decode(os.pread(self._fd, place & 0xFFFFFFFF, place >> 32))

    def __iter__(self) -> Iterator[Result]:
        if self._mem is not None:
            yield from self._mem
            return
        self._flush()
        assert self._fd is not None
        places, i, n = self._places, 0, len(self._places)
        while i < n:  # one read for each run of results that lie next to each other on disk
            start = places[i] >> 32
            end, j = start + (places[i] & 0xFFFFFFFF), i + 1
            while j < n and places[j] >> 32 == end and end - start < _READ_AT_MOST:
                end += places[j] & 0xFFFFFFFF
                j += 1
            block = memoryview(os.pread(self._fd, end - start, start))
            for k in range(i, j):
                off = (places[k] >> 32) - start
                yield self._decode(block[off:off + (places[k] & 0xFFFFFFFF)])
            i = j

    @overload
    def __getitem__(self, i: int) -> Result: ...
    @overload
    def __getitem__(self, i: slice) -> list[Result]: ...
    def __getitem__(self, i: int | slice) -> Result | list[Result]:
        if self._mem is not None:
            return self._mem[i]
        self._flush()
        if isinstance(i, slice):
            return [self._load(p) for p in self._places[i]]
        return self._load(self._places[i])

    def sort(self, key: Callable[[Result], Any] | None = None, reverse: bool = False) -> None:
        """In place, like list.sort (`key` required); on disk only the places move."""
        if key is None:
            raise TypeError("ResultList.sort needs a key (or use sort_by_id)")
        self._permute(sorted(range(len(self)), key=[key(r) for r in self].__getitem__, reverse=reverse))

    def sort_by_id(self) -> None:
        """Sorted by id without reading a result."""
        self._permute(sorted(range(len(self)), key=self._ids.__getitem__))

    def first(self, n: int, key: Callable[[str, str], Any]) -> list[Result]:
        """The `n` results smallest by `key(id, status)`, in that order, reading only those."""
        return [self[i] for i in heapq.nsmallest(n, range(len(self)), key=lambda i: key(self._ids[i], self._statuses[i]))]

    def _permute(self, order: list[int]) -> None:
        self._ids = [self._ids[i] for i in order]
        self._statuses = [self._statuses[i] for i in order]
        if self._mem is not None:
            self._mem = [self._mem[i] for i in order]
        else:
            self._places = array("Q", (self._places[i] for i in order))

    @property
    def spilled(self) -> bool:
        return self._mem is None

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (list(self),))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} results{', on disk' if self.spilled else ''})"
