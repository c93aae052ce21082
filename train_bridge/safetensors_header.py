"""Read a .safetensors header without loading tensors (a few KB to a few MB of JSON).

Why: a wrong or truncated model file only fails deep inside the trainer, minutes after
launch. The header tells cheaply whether a file is a safetensors file at all, whether it is
complete, which tensors it holds (so a VAE passed as `--dit` is caught) and their dtype
(musubi needs `--mixed_precision` equal to the DiT dtype).
"""

from __future__ import annotations

import json
import re
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

MAX_HEADER = 256 * 1024 * 1024


class HeaderError(ValueError):
    pass


@dataclass
class Header:
    path: Path
    tensors: dict[str, dict]
    metadata: dict[str, str]
    data_end: int
    file_size: int

    @property
    def complete(self) -> bool:
        return self.file_size >= self.data_end

    def dtypes(self, pattern: str | None = None) -> Counter[str]:
        rx = re.compile(pattern) if pattern else None
        return Counter(t["dtype"] for k, t in self.tensors.items() if rx is None or rx.search(k))

    def main_dtype(self, pattern: str | None = None) -> str | None:
        c = self.dtypes(pattern)
        return c.most_common(1)[0][0] if c else None

    def matches(self, patterns: tuple[str, ...]) -> bool:
        rxs = [re.compile(p) for p in patterns]
        return any(rx.search(k) for k in self.tensors for rx in rxs)

    def count_indices(self, pattern: str) -> int:
        """How many distinct integers group 1 of `pattern` takes (e.g. transformer blocks)."""
        rx = re.compile(pattern)
        return len({m.group(1) for k in self.tensors if (m := rx.search(k))})


def read_header(path: Path | str) -> Header:
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        raw = fh.read(8)
        if len(raw) < 8:
            raise HeaderError(f"{path}: too small to be a .safetensors file ({size} bytes)")
        (n,) = struct.unpack("<Q", raw)
        if n <= 1 or n > MAX_HEADER or n > size - 8:
            raise HeaderError(f"{path}: not a .safetensors file (header length {n} is impossible for a {size}-byte file)")
        blob = fh.read(n)
    try:
        doc = json.loads(blob.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HeaderError(f"{path}: not a .safetensors file (header is not JSON: {exc})") from None
    if not isinstance(doc, dict):
        raise HeaderError(f"{path}: not a .safetensors file (header is not a JSON object)")
    meta = doc.pop("__metadata__", {}) or {}
    end = 0
    for name, t in doc.items():
        if not isinstance(t, dict) or "dtype" not in t or "data_offsets" not in t:
            raise HeaderError(f"{path}: malformed tensor entry {name!r}")
        end = max(end, int(t["data_offsets"][1]))
    return Header(path, doc, meta, 8 + n + end, size)


def is_pickle_zip(path: Path) -> bool:
    """True for a torch `.pth` (zip archive, or a legacy pickle starting with PROTO)."""
    with open(path, "rb") as fh:
        head = fh.read(4)
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


MIXED_PRECISION_FOR_DTYPE = {"F16": "fp16", "BF16": "bf16", "F32": "no"}
