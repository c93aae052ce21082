"""Reading a user's caption file without ever losing it.

`prep.dataset.read_caption` refuses a file that is not UTF-8 (ValueError). The caption
pipeline must then keep that file untouched in every mode and say how to fix it, so this
module turns that refusal into `UnreadableCaption` with a guess of the file's encoding and the
command that converts it. The guess is a heuristic of ours (byte-order marks, the NUL pattern of
UTF-16, else whether the bytes decode as Windows-1252); it names the likely encoding, it does
not prove it.
"""

from __future__ import annotations

import codecs
from pathlib import Path

from prep.dataset import read_caption


class UnreadableCaption(ValueError):
    """A caption file that is not UTF-8; the message names the file, the likely encoding and the fix."""

    def __init__(self, path: Path, encoding: str | None):
        self.path = path
        self.encoding = encoding
        guess = f"it looks like {encoding}" if encoding else "its encoding is unknown"
        src = encoding.split(" ")[0] if encoding else "ENCODING"
        super().__init__(
            f"{path}: caption is not UTF-8 ({guess}); it was left untouched. Re-save it as UTF-8 "
            f"(e.g. `iconv -f {src} -t UTF-8 '{path.name}' > fixed.txt` and rename fixed.txt to '{path.name}'), then run again"
        )


def guess_encoding(data: bytes) -> str | None:
    """A likely encoding of caption bytes that are not UTF-8 (None when no guess fits)."""
    for bom, name in ((codecs.BOM_UTF32_LE, "UTF-32LE"), (codecs.BOM_UTF32_BE, "UTF-32BE"),
                      (codecs.BOM_UTF16_LE, "UTF-16LE"), (codecs.BOM_UTF16_BE, "UTF-16BE")):
        if data.startswith(bom):
            return f"{name} (byte-order mark)"
    if len(data) >= 4:
        even, odd = data[0::2], data[1::2]
        if odd.count(0) > len(odd) // 2 and even.count(0) < len(even) // 4:
            return "UTF-16LE"
        if even.count(0) > len(even) // 2 and odd.count(0) < len(odd) // 4:
            return "UTF-16BE"
    try:
        data.decode("cp1252")
        return "CP1252 (Windows-1252 / Latin-1)"
    except UnicodeDecodeError:
        return None


def read_user_caption(path: Path) -> str | None:
    """The caption at `path` (stripped), None when there is none; raises UnreadableCaption if it is not UTF-8."""
    try:
        return read_caption(path)
    except ValueError:
        try:
            data = path.read_bytes()
        except OSError:
            data = b""
        raise UnreadableCaption(path, guess_encoding(data)) from None
