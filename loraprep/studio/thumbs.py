"""Thumbnails made once per image content and kept on disk.

The key is the SHA-256 of the file's bytes (plus the thumbnail size), so a renamed or copied
image reuses its thumbnail and an edited one gets a new one. A (path, size, mtime) memo avoids
re-hashing within a session. The cache lives in the project's `.loraprep/thumbs/`, or for a
plain folder in `$XDG_CACHE_HOME/loraprep/thumbs` (default `~/.cache`), never beside the
user's images. Images are opened only through `prep.images.load_image`.
"""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path

from prep.fsutil import atomic_write_bytes, sha256_file
from prep.images import ImageLoadError, load_image

THUMB_SIZE = 256
"""Long side in pixels (loraprep's choice: sharp on a 2x screen at the grid's 128 px tiles)."""


def default_cache_dir(project_state: Path | None) -> Path:
    if project_state is not None:
        return project_state / "thumbs"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "loraprep" / "thumbs"


class ThumbCache:
    def __init__(self, folder: Path, size: int = THUMB_SIZE):
        self.folder = Path(folder)
        self.size = size
        self._memo: dict[tuple[str, int, int], str] = {}
        self._lock = threading.Lock()
        self.built = 0

    def key(self, path: Path) -> str:
        st = path.stat()
        memo_key = (str(path), st.st_size, st.st_mtime_ns)
        with self._lock:
            hit = self._memo.get(memo_key)
        if hit is None:
            hit = sha256_file(path)
            with self._lock:
                self._memo[memo_key] = hit
        return hit

    def get(self, path: Path) -> Path:
        """The thumbnail file of `path` (made now if missing). Raises ImageLoadError or OSError."""
        digest = self.key(path)
        out = self.folder / digest[:2] / f"{digest}_{self.size}.webp"
        if out.is_file():
            return out
        img = load_image(path, draft_size=(self.size, self.size)).image
        img.thumbnail((self.size, self.size))
        buf = io.BytesIO()
        img.save(buf, format="WEBP", quality=80, method=0)
        atomic_write_bytes(out, buf.getvalue())
        self.built += 1
        return out


__all__ = ["THUMB_SIZE", "ImageLoadError", "ThumbCache", "default_cache_dir"]
