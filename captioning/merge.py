"""Caption merging, in one place: what a user's caption and a generated one become for a mode.

`caption --mode ...` (writing beside the images or into `-o`) and `loraprep run --caption-mode`
(which keeps generated captions in their own folder and merges in a later stage) both call
`merge_caption`, so the same two captions give the same text on every path.
"""

from __future__ import annotations

from typing import Literal

from captioning.tags import normalize, split_caption

Mode = Literal["skip", "overwrite", "append", "prepend"]
MODES: tuple[str, ...] = ("skip", "overwrite", "append", "prepend")
SEPARATOR = ", "


def looks_like_tags(text: str) -> bool:
    """Tags (`1girl, red hair, smile`), not sentences: comma-separated parts of at most 4 words on average.

    The 4-word cut is our choice: Danbooru tags rarely exceed 3 words, a sentence rarely stays under 5.
    """
    parts = split_caption(text)
    return bool(parts) and sum(len(p.split()) for p in parts) / len(parts) <= 4


def merge_caption(user: str | None, generated: str | None, mode: str, *, tags: bool | None = None) -> str | None:
    """The caption an image ends up with, given the user's caption, the generated one and `mode`.

    - skip: the user's caption when it has one, else the generated one.
    - overwrite: the generated caption when there is one, else the user's (nothing is lost
      when the backend failed on that image).
    - append: the user's caption, then the generated one; prepend: the generated one first.
      Tag captions are joined with ", " and a tag already present (compared as `normalize`
      does: case, `_` vs space, `\\(`) is not repeated, the first occurrence winning. Sentence
      captions are joined with a space.

    Empty or blank captions count as none; returns None when neither has text. `tags`: whether
    the captions are tag lists (True for a tagger's output); None guesses from the text
    (both must look like tags, see `looks_like_tags`). The trigger word is not
    handled here: put it first afterwards with `prep.trigger.apply_trigger`.
    """
    if mode not in MODES:
        raise ValueError(f"unknown caption mode {mode!r}: use one of {', '.join(MODES)}")
    u = (user or "").strip() or None
    g = (generated or "").strip() or None
    if mode == "skip":
        return u or g
    if mode == "overwrite":
        return g or u
    if u is None or g is None:
        return u or g
    first, second = (u, g) if mode == "append" else (g, u)
    if tags is None:
        tags = looks_like_tags(u) and looks_like_tags(g)
    if not tags:
        return f"{first} {second}"
    head = split_caption(first)
    seen = {normalize(t) for t in head}
    out = list(head)
    for t in split_caption(second):
        key = normalize(t)
        if key not in seen:
            seen.add(key)
            out.append(t)
    return SEPARATOR.join(out)
