"""Which source render gets which styles and seeds.

Planning is pure data so it can be shown with `--dry-run` and tested without a model. Two
rules from practice shape it:

- Styles rotate across sources (source i starts at style i), so with fewer variations per
  image than styles every style still appears about equally often in the set.
- Synthetic images are capped against originals (`max_synthetic_share`, default 0.5): the
  3D identity must stay the majority signal. When the cap bites, every source gets its first
  variation before any source gets its second.

Seeds are derived from (source bytes, style, index), so the same source and style always get
the same seed and a rerun reproduces the same image, whatever else is in the folder.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import PurePosixPath

VARIATION_SEP = "__"
"""Separates the source stem from the style slug in a variation's file name."""


@dataclass(frozen=True)
class Source:
    """One render to vary: its dataset id, file, content hash and caption (None when absent)."""

    id: str
    path: str
    sha256: str
    caption: str | None = None


@dataclass(frozen=True)
class PlannedVariation:
    """One image to generate. `id` is its output path relative to the output folder."""

    id: str
    source_id: str
    source_sha256: str
    style: str
    index: int
    """0-based count of earlier variations of this source in the same style."""
    seed: int


@dataclass
class Plan:
    variations: list[PlannedVariation]
    wanted: int
    """Variations asked for (sources x per_image) before the synthetic-share cap."""
    cap: int | None
    """Most variations the cap allows, or None when uncapped."""

    @property
    def dropped(self) -> int:
        return self.wanted - len(self.variations)


def style_slug(style: str, max_len: int = 32) -> str:
    """A short file-name-safe slug of a style's words: "oil painting portrait" -> "oil-painting-portrait"."""
    words = re.findall(r"[a-z0-9]+", style.lower())
    slug = ""
    for w in words:
        nxt = f"{slug}-{w}" if slug else w
        if len(nxt) > max_len:
            break
        slug = nxt
    return slug or "style"


def derive_seed(source_sha256: str, style: str, index: int, base: int = 0) -> int:
    """A 31-bit seed fixed by (source bytes, style, index, base); stable across runs and machines."""
    key = f"{base}\0{source_sha256}\0{style.strip()}\0{index}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:4], "big") & 0x7FFFFFFF


def synthetic_cap(n_sources: int, max_share: float) -> int | None:
    """Most variations allowed so they are at most `max_share` of originals + variations."""
    if not 0.0 <= max_share <= 1.0:
        raise ValueError(f"max synthetic share must be between 0 and 1, got {max_share}")
    if max_share >= 1.0:
        return None
    return math.floor(n_sources * max_share / (1.0 - max_share) + 1e-9)


def variation_id(source_id: str, style: str, index: int, ext: str = ".png", *, keep_suffix: bool = False) -> str:
    """Output id beside the copied original: `sub/name__oil-painting_1.png` (index shown 1-based)."""
    p = PurePosixPath(source_id)
    stem = f"{p.stem}_{p.suffix.lstrip('.').lower()}" if keep_suffix else p.stem
    name = f"{stem}{VARIATION_SEP}{style_slug(style)}_{index + 1}{ext}"
    return str(p.with_name(name))


def plan_variations(
    sources: list[Source],
    styles: list[str],
    *,
    per_image: int,
    max_synthetic_share: float = 0.5,
    seed: int = 0,
    ext: str = ".png",
) -> Plan:
    """Assign styles and seeds to each source, round by round, under the synthetic cap."""
    styles = [s.strip() for s in styles if s and s.strip()]
    if per_image < 0:
        raise ValueError("--per-image must be 0 or more")
    if per_image and not styles:
        raise ValueError("no styles given: pass --style at least once")
    slugs: dict[str, str] = {}
    for s in styles:
        slug = style_slug(s)
        if slug in slugs and slugs[slug] != s:
            raise ValueError(f"styles {slugs[slug]!r} and {s!r} give the same file name part {slug!r}; reword one")
        slugs[slug] = s
    ordered = sorted(sources, key=lambda s: s.id)
    # "a.png" and "a.jpg" would both give "a__style_1.png": keep their extension in the name.
    stems: dict[str, int] = {}
    for s in ordered:
        k = str(PurePosixPath(s.id).with_suffix("")).lower()
        stems[k] = stems.get(k, 0) + 1
    clash = {s.id for s in ordered if stems[str(PurePosixPath(s.id).with_suffix("")).lower()] > 1}
    cap = synthetic_cap(len(ordered), max_synthetic_share)
    wanted = len(ordered) * per_image
    out: list[PlannedVariation] = []
    # Round k gives each source its k-th variation; rounds fill in order so the cap is fair.
    used: dict[tuple[str, str], int] = {}
    for k in range(per_image):
        for i, src in enumerate(ordered):
            if cap is not None and len(out) >= cap:
                return Plan(out, wanted, cap)
            style = styles[(i + k) % len(styles)]
            idx = used.get((src.id, style), 0)
            used[(src.id, style)] = idx + 1
            out.append(
                PlannedVariation(
                    id=variation_id(src.id, style, idx, ext, keep_suffix=src.id in clash),
                    source_id=src.id,
                    source_sha256=src.sha256,
                    style=style,
                    index=idx,
                    seed=derive_seed(src.sha256, style, idx, seed),
                )
            )
    return Plan(out, wanted, cap)


def is_variation_name(name: str) -> bool:
    """True for a file name this planner produces (so a rerun never varies a variation)."""
    return re.search(rf"{VARIATION_SEP}[a-z0-9-]+_\d+\.[A-Za-z]+$", name) is not None
