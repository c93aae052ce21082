"""Tag rules: which tags a tagger's scores turn into, and how they are written.

Two layers, so that the expensive part stays vectorised:

- `Thresholds.select(probs, categories)` works on the whole score matrix of a batch
  (`[N, K]` numpy): per-category thresholds or MCut, no per-tag Python loop.
- `TagRules.apply(tags)` works on the few tags an image kept: rating choice, order,
  underscores (kaomoji kept), `--replace`, `--exclude`, `--always-first`, duplicates.

User-typed tags (exclude, replace, always-first) match whatever form the user types:
`long_hair`, `long hair` and `Long Hair` are the same tag. (sd-scripts compares after its own
underscore rewrite, so users must guess the post-processed form; its `--tag_replacement` is a
silent no-op on current versions.)
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from captioning.backends.base import Tag

CATEGORY_NAMES = {9: "rating", 0: "general", 4: "character", 1: "artist", 3: "copyright", 5: "meta"}
RATINGS = ("general", "sensitive", "questionable", "explicit")
"""WD v3's rating labels (category 9; SmilingWolf's selected_tags.csv), kept in the caption records."""

KAOMOJI = frozenset(
    {
        "0_0", "(o)_(o)", "+_+", "+_-", "._.", "<o>_<o>", "<|>_<|>", "=_=", ">_<", "3_3",
        "6_9", ">_o", "@_@", "^_^", "o_o", "u_u", "x_x", "|_|", "||_||",
    }
)
"""Tags whose underscores are part of the face, not word separators."""

Order = Literal["confidence", "category"]


def normalize(tag: str) -> str:
    """Comparison key: case-folded, underscores as spaces, `\\(` unescaped, spaces squeezed."""
    t = tag.strip().replace("\\(", "(").replace("\\)", ")")
    if t not in KAOMOJI:
        t = t.replace("_", " ")
    return " ".join(t.lower().split())


@functools.lru_cache(maxsize=1 << 16)
def display_name(tag: str, *, underscores: bool = False, escape_parens: bool = False) -> str:
    """How a tag is written into a caption: spaces for underscores (kaomoji kept), optional A1111 escapes.

    Cached (a WD vocabulary is about 10k tags): every caption of a run then shares one string
    per tag, where a new one per tag per image held 3.9 KiB per image in the manifest index
    (about 390 MiB at 100k images; docs/benchmarks.md, Scale)."""
    t = tag if (underscores or tag in KAOMOJI) else tag.replace("_", " ")
    if escape_parens:
        t = t.replace("(", "\\(").replace(")", "\\)")
    return t


def mcut_threshold(probs: np.ndarray) -> np.ndarray:
    """Maximum Cut Thresholding (Largeron et al. 2012) along the last axis.

    Sort descending, find the largest gap between neighbours, cut in its middle. Works on a
    `[K]` vector or an `[N, K]` batch (one threshold per row). Diffs are taken as
    `s[i] - s[i+1]` on the descending sort, so they are non-negative (the public pitfall is
    `np.diff` on the descending sort, which is negative and finds the *smallest* gap).
    """
    p = np.atleast_2d(np.asarray(probs, dtype=np.float64))
    if p.shape[-1] < 2:  # nothing to cut between: keep what there is
        thr = np.zeros(p.shape[0])
        return thr if np.ndim(probs) > 1 else thr[0]
    s = -np.sort(-p, axis=-1)
    gaps = s[:, :-1] - s[:, 1:]
    t = gaps.argmax(axis=-1)
    rows = np.arange(p.shape[0])
    thr = (s[rows, t] + s[rows, t + 1]) / 2.0
    return thr if np.ndim(probs) > 1 else thr[0]


@dataclass(frozen=True)
class Thresholds:
    """Which scores pass. `p >= threshold` (sd-scripts' comparison); MCut cuts with `p > cut`."""

    general: float = 0.35
    character: float = 0.85
    mcut: bool = False
    character_floor: float = 0.15
    """MCut for characters never goes below this (the reference tagger's floor)."""

    @classmethod
    def from_extra(cls, extra: Mapping[str, Any]) -> Thresholds:
        """Read `general_threshold`, `character_threshold`, `mcut`, `character_floor` from options.extra."""
        d = cls()
        return cls(
            general=float(extra.get("general_threshold", d.general)),
            character=float(extra.get("character_threshold", d.character)),
            mcut=_truthy(extra.get("mcut", d.mcut)),
            character_floor=float(extra.get("character_floor", d.character_floor)),
        )

    def to_extra(self) -> dict[str, Any]:
        return {
            "general_threshold": self.general,
            "character_threshold": self.character,
            "mcut": self.mcut,
            "character_floor": self.character_floor,
        }

    def select(self, probs: np.ndarray, categories: np.ndarray) -> np.ndarray:
        """Boolean `[N, K]` mask of passing tags. Rating tags always pass (the rule picks one later).

        Categories other than general/character (artist, copyright, meta) use the general rule.
        """
        p = np.atleast_2d(probs)
        char = categories == 4
        rating = categories == 9
        gen = ~(char | rating)
        mask = np.zeros(p.shape, dtype=bool)
        mask[:, rating] = True
        if self.mcut:
            if gen.any():
                g = p[:, gen]
                mask[:, gen] = g > mcut_threshold(g)[:, None]
            if char.any():
                c = p[:, char]
                cut = np.maximum(self.character_floor, mcut_threshold(c))
                mask[:, char] = c > cut[:, None]
        else:
            mask[:, gen] = p[:, gen] >= self.general
            mask[:, char] = p[:, char] >= self.character
        return mask

    def select_tags(self, tags: list[Tag]) -> list[Tag]:
        """Apply the thresholds to a backend's raw `Tag` list (for tag backends that do not do it)."""
        if not tags:
            return []
        cats = np.array([{"rating": 9, "character": 4}.get(t.category, 0) for t in tags])
        probs = np.array([[t.score for t in tags]], dtype=np.float64)
        keep = self.select(probs, cats)[0]
        return [t for t, k in zip(tags, keep) if k]


def _truthy(v: Any) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("1", "true", "yes", "on")
    return bool(v)


def parse_replacements(items: Iterable[str]) -> dict[str, str]:
    """`a=b` pairs to {normalized a: b}. `a=` removes `a`. Raises ValueError on a missing `=`."""
    out: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--replace {item!r}: write it as OLD=NEW (NEW may be empty to drop the tag)")
        src, dst = item.split("=", 1)
        if not src.strip():
            raise ValueError(f"--replace {item!r}: the tag to replace is empty")
        out[normalize(src)] = dst.strip()
    return out


def split_tags(items: Iterable[str]) -> list[str]:
    """Flatten repeated and comma-separated CLI values into tags."""
    out: list[str] = []
    for item in items:
        out.extend(t.strip() for t in item.split(",") if t.strip())
    return out


@dataclass(frozen=True)
class TagRules:
    """How selected tags become a caption's tag list."""

    thresholds: Thresholds = field(default_factory=Thresholds)
    include_rating: bool = False
    rating_last: bool = False
    character_first: bool = True
    order: Order = "confidence"
    """confidence: highest score first; category: model (CSV) order, characters then general."""
    underscores: bool = False
    """Keep underscores (default writes spaces, except kaomoji)."""
    escape_parens: bool = False
    exclude: tuple[str, ...] = ()
    replace: Mapping[str, str] = field(default_factory=dict)
    always_first: tuple[str, ...] = ()
    max_tags: int | None = None

    def apply(self, tags: list[Tag]) -> list[str]:
        """The caption's tags, in order, written form, without duplicates."""
        ratings = [t for t in tags if t.category == "rating"]
        chars = [t for t in tags if t.category == "character"]
        others = [t for t in tags if t.category not in ("rating", "character")]
        if self.order == "confidence":
            chars = sorted(chars, key=lambda t: -t.score)
            others = sorted(others, key=lambda t: -t.score)
        body = chars + others if self.character_first else (
            sorted(chars + others, key=lambda t: -t.score) if self.order == "confidence" else others + chars
        )
        rating_tag = max(ratings, key=lambda t: t.score) if (self.include_rating and ratings) else None

        excluded = {normalize(e) for e in self.exclude}
        out: list[str] = []
        seen: set[str] = set()
        for t in body:
            name = self._rewrite(t.name)
            if name is None:
                continue
            key = normalize(name)
            if key in excluded or key in seen:
                continue
            seen.add(key)
            out.append(name)
        if self.max_tags is not None:
            out = out[: self.max_tags]
        if self.always_first:
            firsts: list[str] = []
            for want in self.always_first:  # first listed ends up first
                k = normalize(want)
                hit = next((x for x in out if normalize(x) == k), None)
                if hit is not None:
                    firsts.append(hit)
            out = firsts + [x for x in out if x not in firsts]
        if rating_tag is not None:
            r = self._rewrite(rating_tag.name)
            if r is not None and normalize(r) not in excluded and normalize(r) not in seen:
                out = out + [r] if self.rating_last else [r] + out
        return out

    def _rewrite(self, raw: str) -> str | None:
        key = normalize(raw)
        if key in self.replace:
            new = self.replace[key]
            return new if new else None
        return display_name(raw, underscores=self.underscores, escape_parens=self.escape_parens)


def split_caption(text: str) -> list[str]:
    """A tag caption's tags (comma-separated, whitespace trimmed, empties dropped)."""
    return [t for t in (t.strip() for t in text.split(",")) if t]


CHARACTER = 4
"""The character category of a WD `selected_tags.csv` (Danbooru's category 4)."""


def read_character_tags(csv_path: str | Path) -> set[str]:
    """Normalised names of the character-category rows of a WD `selected_tags.csv`."""
    import csv

    with open(csv_path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    if not rows or [c.strip().lower() for c in rows[0][:3]] != ["tag_id", "name", "category"]:
        raise ValueError(f"{csv_path}: not a WD selected_tags.csv (header must start tag_id,name,category)")
    out = set()
    for r in rows[1:]:
        if len(r) >= 3 and r[2].strip().lstrip("-").isdigit() and int(r[2]) == CHARACTER:
            out.add(normalize(r[1]))
    return out


def known_character_tags(tags_csv: str | Path | None = None) -> tuple[set[str], str | None]:
    """(character tags, where from) without any network: `tags_csv` when given, else the WD
    model folder in $LORAPREP_WD14_MODEL, else the default tagger's CSV in the Hugging Face cache;
    (empty set, None) when none is at hand."""
    import os

    if tags_csv:
        p = Path(tags_csv).expanduser()
        p = p / "selected_tags.csv" if p.is_dir() else p
        if not p.is_file():
            raise ValueError(f"--tags-csv {tags_csv}: no such file; pass a WD selected_tags.csv or the tagger's folder")
        return read_character_tags(p), str(p)
    from captioning.backends.wd14 import DEFAULT_REPO, ENV_VAR, TAGS_FILE

    env = os.environ.get(ENV_VAR)
    if env and (Path(env).expanduser() / TAGS_FILE).is_file():
        p = Path(env).expanduser() / TAGS_FILE
        return read_character_tags(p), str(p)
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(DEFAULT_REPO, TAGS_FILE)
    except Exception:
        hit = None
    if isinstance(hit, str):
        try:
            return read_character_tags(hit), f"{DEFAULT_REPO}/{TAGS_FILE} (cache)"
        except (OSError, ValueError):
            pass
    return set(), None
