"""JSON documents written in pieces: a 100k-image report is never one text in memory.

A report's `to_json(stream=True)` gives its per-image parts as iterators; `json_pieces` writes
each as an array, one element per line, and everything else as `json.dumps(indent=2)` would, so
a report without iterators reads exactly as before. `emit_json` (stdout) and `write_json` (an
atomic file) both go through here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prep.fsutil import atomic_open

_BLOCK = 1 << 16


def _streams(v: Any) -> bool:
    """`v` is an iterator, or a dict with one somewhere inside (see `json_pieces`)."""
    return isinstance(v, Iterator) or (isinstance(v, dict) and any(_streams(x) for x in v.values()))


def json_pieces(data: Any, depth: int = 0) -> Iterator[str]:
    """The JSON text of `data` in pieces. An iterator (a report's images, read back as they are
    written), at the top or inside dicts, becomes an array, one element per line, never a list;
    everything else is indented as `json.dumps(indent=2)` would."""
    enc = json.JSONEncoder(indent=2, ensure_ascii=False, default=str)
    if not _streams(data):
        text = enc.encode(data) if depth else None
        if text is None:
            yield from enc.iterencode(data)
        else:  # nested in a streamed dict: indented to its depth
            yield text.replace("\n", "\n" + "  " * depth)
        return
    line = json.JSONEncoder(ensure_ascii=False, default=str)
    pad = "\n" + "  " * (depth + 1)
    if isinstance(data, Iterator):
        yield "["
        any_item = False
        for item in data:
            yield ("," if any_item else "") + pad
            yield line.encode(item)  # one shot: the C encoder (iterencode is pure Python, 4 s per 100k)
            any_item = True
        yield ("\n" + "  " * depth + "]") if any_item else "]"
        return
    yield "{"
    for i, (k, v) in enumerate(data.items()):
        yield ("," if i else "") + pad + json.dumps(str(k), ensure_ascii=False) + ": "
        yield from json_pieces(v, depth + 1)
    yield "\n" + "  " * depth + "}"


def json_blocks(data: Any) -> Iterator[bytes]:
    """The UTF-8 text of `data` in blocks of about 64 KiB. A name that is not UTF-8 (a lone
    surrogate, the OS's bytes) is written as the escape `\\udcXX`, which `json.loads` reads
    back as the same name."""
    chunks: list[str] = []
    size = 0
    for chunk in json_pieces(data):
        chunks.append(chunk)
        size += len(chunk)
        if size >= _BLOCK:
            yield "".join(chunks).encode("utf-8", "backslashreplace")
            chunks, size = [], 0
    if chunks:
        yield "".join(chunks).encode("utf-8", "backslashreplace")


def write_json(path: Path | str, data: Any) -> None:
    """`data` as an indented JSON file, written atomically and in pieces (see `json_pieces`)."""
    with atomic_open(Path(path), "wb") as fh:
        for block in json_blocks(data):
            fh.write(block)
