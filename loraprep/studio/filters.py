"""The studio's filter language: loraprep's findings combined with AND / OR / NOT, kept in the URL.

    lint:trigger_missing OR lint:identity_tags
    crop:no_face AND NOT tag:"simple background"
    -tag:smile tokens>60 (check:small OR dup)

Terms: `lint:CODE`, `crop:FLAG`, `check:KIND`, `dup` (any duplicate group) or `dup:KEEP_ID`,
`tag:NAME` (has the tag; `-tag:NAME` or `NOT tag:NAME` lacks it), `rating:NAME` (the WD
tagger's rating: general, sensitive, questionable, explicit), `check:blurry` and the other
quality/identity flags of `prep check` (monochrome, face_small, jpeg_artifacts, no_face,
off_model, outside_cluster), `text:WORDS` (caption
contains, case-insensitive), `tokens>N` / `tokens<N` (the trainer's encoder), `is:flagged`
(any finding), `is:edited` (a hand edit in overrides.json), `is:rejected`, `id:PART`; a bare
word searches the caption text. Terms side by side are ANDed; AND binds tighter than OR.
Quotes group words: `tag:"long hair"`. An empty filter matches everything.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from captioning.tags import RATINGS, normalize

if TYPE_CHECKING:
    from loraprep.studio.data import Dataset, Entry

Pred = Callable[["Entry", "Dataset"], bool]

_TOKEN = re.compile(r'\(|\)|-?[\w.]+(?::|[<>]=?)"[^"]*"|"[^"]*"|[^\s()]+')


class FilterError(ValueError):
    """A filter that cannot be parsed; the message says where."""


def _unquote(s: str) -> str:
    return s[1:-1] if len(s) >= 2 and s[0] == s[-1] == '"' else s


def _atom(tok: str) -> Pred:
    neg = tok.startswith("-") and len(tok) > 1
    if neg:
        tok = tok[1:]
    m = re.fullmatch(r"tokens([<>]=?)(\d+)", tok)
    if m:
        op, n = m.group(1), int(m.group(2))
        cmp = {"<": int.__lt__, ">": int.__gt__, "<=": int.__le__, ">=": int.__ge__}[op]
        pred: Pred = lambda e, ds: cmp(ds.token_count(e), n)
    elif ":" in tok:
        key, _, val = tok.partition(":")
        val = _unquote(val)
        key = key.lower()
        if key in ("lint", "crop", "check"):
            want = f"{key}:{val}"
            pred = lambda e, ds: want in e.findings
        elif key == "dup":
            want = f"dup:{val}"
            pred = (lambda e, ds: want in e.findings) if val else (lambda e, ds: any(k.startswith("dup:") for k in e.findings))
        elif key == "tag":
            nt = normalize(val)
            pred = lambda e, ds: nt in e.norm_tags
        elif key == "rating":
            if val.lower() not in RATINGS:
                raise FilterError(f"rating:{val}: use rating:{', rating:'.join(RATINGS)}")
            want_rating = val.lower()
            pred = lambda e, ds: e.rating == want_rating
        elif key == "text":
            low = val.lower()
            pred = lambda e, ds: low in (e.text or "").lower()
        elif key == "id":
            low = val.lower()
            pred = lambda e, ds: low in e.id.lower()
        elif key == "is":
            if val == "flagged":
                pred = lambda e, ds: bool(e.findings)
            elif val == "edited":
                pred = lambda e, ds: e.edited
            elif val == "rejected":
                pred = lambda e, ds: e.rejected
            else:
                raise FilterError(f"is:{val}: use is:flagged, is:edited or is:rejected")
        else:
            raise FilterError(f"{tok}: unknown filter key {key!r} (lint, crop, check, dup, tag, rating, text, tokens, is, id)")
    elif tok == "dup":
        pred = lambda e, ds: any(k.startswith("dup:") for k in e.findings)
    else:
        low = _unquote(tok).lower()
        pred = lambda e, ds: low in (e.text or "").lower()
    if neg:
        inner = pred
        return lambda e, ds: not inner(e, ds)
    return pred


class _Parser:
    def __init__(self, text: str):
        self.toks = _TOKEN.findall(text)
        self.i = 0

    def peek(self) -> str | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self) -> str:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def expr(self) -> Pred:
        parts = [self.term()]
        while self.peek() == "OR":
            self.take()
            parts.append(self.term())
        return parts[0] if len(parts) == 1 else (lambda e, ds: any(p(e, ds) for p in parts))

    def term(self) -> Pred:
        parts = [self.factor()]
        while self.peek() not in (None, ")", "OR"):
            if self.peek() == "AND":
                self.take()
            parts.append(self.factor())
        return parts[0] if len(parts) == 1 else (lambda e, ds: all(p(e, ds) for p in parts))

    def factor(self) -> Pred:
        tok = self.peek()
        if tok is None:
            raise FilterError("the filter ends where a term is expected")
        if tok == "NOT":
            self.take()
            inner = self.factor()
            return lambda e, ds: not inner(e, ds)
        if tok == "(":
            self.take()
            inner = self.expr()
            if self.peek() != ")":
                raise FilterError("a '(' is not closed")
            self.take()
            return inner
        if tok in (")", "AND", "OR"):
            raise FilterError(f"unexpected {tok!r}")
        return _atom(self.take())


def parse_filter(text: str | None) -> Pred:
    """A predicate for `text` (everything when empty); FilterError naming the problem."""
    if not text or not text.strip():
        return lambda e, ds: True
    p = _Parser(text)
    pred = p.expr()
    if p.peek() is not None:
        raise FilterError(f"unexpected {p.peek()!r}")
    return pred


def describe_terms() -> list[tuple[str, str]]:
    """(example, meaning) rows for the help on the page."""
    return [
        ("lint:trigger_missing", "caption lacks the trigger"),
        ("lint:identity_tags", "character's fixed-look tags left"),
        ("lint:over_budget", "over the encoder's token budget"),
        ("crop:no_face / crop:multi_face / crop:small_source", "crop flags"),
        ("check:small / check:transparent / check:exif_rotated", "prep check flags"),
        ("check:blurry / check:monochrome / check:face_small / check:jpeg_artifacts", "prep check quality flags"),
        ("check:off_model / check:outside_cluster / check:no_face", "someone else, or no face (prep check --reference / --identity)"),
        ("lint:other_character / lint:trigger_only / lint:near_identical", "captions teaching the wrong identity"),
        ("rating:explicit", "the WD tagger's rating (general, sensitive, questionable, explicit)"),
        ("dup", "in a duplicate group"),
        ('tag:"long hair"  -tag:smile', "has / lacks a tag"),
        ("text:smiling", "caption contains"),
        ("tokens>60", "token count of the trainer's encoder"),
        ("is:flagged  is:edited  is:rejected", "any finding / hand-edited / set aside"),
        ("a OR b, a AND b, NOT a, ( )", "combine"),
    ]

