"""Reading a user's caption file without ever losing it.

The rule is prep's, one for every command (`prep.dataset.read_caption`): a caption that is not
UTF-8, or a caption path that is a folder, FIFO, device or broken link, raises
`UnreadableCaption` naming the file, the likely encoding (a heuristic: `guess_encoding`) and
the fix. The caption pipeline then keeps that file untouched in every mode.
"""

from __future__ import annotations

from pathlib import Path

from prep.dataset import UnreadableCaption, guess_encoding, read_caption

__all__ = ["UnreadableCaption", "guess_encoding", "read_user_caption"]


def read_user_caption(path: Path) -> str | None:
    """The caption at `path` (stripped), None when there is none; raises UnreadableCaption if it cannot be read."""
    return read_caption(path)
