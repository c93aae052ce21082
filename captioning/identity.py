"""Identity pruning for character LoRAs.

A character LoRA should *learn* the character's fixed look (hair colour and style, eye colour,
skin, ears, tail, wings, horns ...) and bind it to the trigger word. Tags that describe that
look compete with the trigger, so they are pruned:

- by rule (`--prune-identity`): a tag whose words end with an identity noun ("... hair",
  "... eyes", "... ears", "tail", "wings", ...) or start with an identity prefix ("hair
  between", "hair over") is dropped, unless it describes a changeable state or an action
  ("closed eyes", "hand in own hair", "holding tail", "wet hair");
- by frequency (`--prune-core F`): a tag present in at least F of the dataset's captions is
  part of what every image shares; it is dropped (count tags like `1girl`/`solo` excepted).

Word matching is by whole words with plural folding, so "cat ear" == "cat ears" and "chair"
is not "hair".
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from captioning.tags import normalize

GROUPS: dict[str, tuple[str, ...]] = {
    "hair": (
        "hair", "bangs", "sidelock", "twintail", "ponytail", "braid", "bun", "ahoge", "drill",
        "afro", "updo", "dreadlock", "hair intake", "side up", "two side up", "hime cut", "bob cut",
        "pixie cut", "buzz cut", "crew cut", "bowl cut", "bald",
    ),
    "eyes": ("eye", "pupil", "heterochromia", "eyelash", "eyebrow", "sclera", "iris", "tsurime", "tareme", "jitome"),
    "skin": ("skin", "freckle", "mole", "scar", "tan", "tanlines", "birthmark"),
    "body": (
        "ear", "animal ear fluff", "tail", "wing", "horn", "halo", "fang", "breast", "pointy ear",
        "muscular", "beard", "mustache", "stubble", "facial hair", "flat chest", "petite", "tall",
    ),
    "accessories": ("hair ornament", "hairclip", "hairband", "hair ribbon", "hair bow", "hair flower", "glasses", "eyewear", "eyepatch", "earrings", "headband"),
}
DEFAULT_GROUPS = ("hair", "eyes", "skin", "body")

IDENTITY_PREFIXES = ("hair between", "hair over", "facial")

KEEP_TAGS = {
    normalize(t)
    for t in (
        "closed eyes", "half-closed eyes", "one eye closed", "empty eyes", "rolling eyes", "glowing eyes",
        "covered eyes", "wide-eyed", "crying with eyes open", "eyes visible through hair", "no pupils",
        "wet hair", "floating hair", "messy hair", "hair down", "hair up", "hair flip", "tying hair",
        "hair blowing", "hair spread out", "multiple tails", "multiple girls", "multiple boys",
        "hair ornament removed", "breast grab", "breasts out", "fake animal ears", "animal ears removed",
        "tail wagging", "shaded face", "scar on face",
    )
}
"""Changeable states and actions that merely mention hair/eyes/ears; kept."""

KEEP_PREFIXES = (
    "holding", "hand on", "hands on", "hand in", "hands in", "hand to", "covering", "adjusting", "grabbing",
    "pulling", "touching", "playing with", "tucking", "biting", "licking", "wiping", "fixing", "hair flowing",
    "arms behind", "looking", "object on",
)
KEEP_SUFFIXES = ("grab", "pull", "removed", "focus", "through", "between breasts", "on breasts", "hair tie in mouth")

COUNT_TAGS = re.compile(r"^(\d+\+?(girl|boy|other)s?|solo|solo focus|multiple (girls|boys|others))$")


def _words(tag: str) -> list[str]:
    """Whole words of a normalized tag, plurals folded ("ears" -> "ear", "glasses" -> "glass")."""
    out = []
    for w in re.split(r"[\s\-]+", re.sub(r"\([^)]*\)", " ", tag)):
        if not w:
            continue
        if len(w) > 3 and w.endswith("es") and w[-3] in "sxh":
            w = w[:-2]
        elif len(w) > 3 and w.endswith("s") and not w.endswith("ss"):
            w = w[:-1]
        out.append(w)
    return out


def _suffix_match(words: list[str], phrase: str) -> bool:
    p = _words(phrase)
    return len(words) >= len(p) and words[-len(p):] == p


@dataclass(frozen=True)
class IdentityRules:
    """Which tags count as the character's fixed look."""

    groups: tuple[str, ...] = DEFAULT_GROUPS
    extra: tuple[str, ...] = ()
    """More identity nouns or exact tags (user-supplied)."""
    keep: tuple[str, ...] = ()
    """Tags never pruned (user-supplied), on top of `KEEP_TAGS`."""

    def is_identity(self, tag: str) -> bool:
        key = normalize(tag)
        if key in KEEP_TAGS or key in {normalize(k) for k in self.keep}:
            return False
        if any(key.startswith(p) for p in KEEP_PREFIXES) or any(key.endswith(s) for s in KEEP_SUFFIXES):
            return False
        if "identity" in self.groups or "hair" in self.groups:
            if any(key.startswith(p) for p in IDENTITY_PREFIXES):
                return True
        words = _words(key)
        if not words:
            return False
        for g in self.groups:
            for phrase in GROUPS.get(g, ()):
                if _suffix_match(words, phrase):
                    return True
        return any(_suffix_match(words, normalize(e)) for e in self.extra)


def prune_identity(tags: list[str], rules: IdentityRules | None = None) -> tuple[list[str], list[str]]:
    """(kept, pruned) for one caption's tags."""
    rules = rules or IdentityRules()
    kept, pruned = [], []
    for t in tags:
        (pruned if rules.is_identity(t) else kept).append(t)
    return kept, pruned


def core_tags(captions: Mapping[str, Iterable[str]] | Iterable[Iterable[str]], fraction: float, *,
              protect: Iterable[str] = ()) -> dict[str, float]:
    """Tags present in at least `fraction` of the captions -> their share.

    `captions`: id -> tags, or the tag lists one at a time (never all held). Count tags (`1girl`,
    `solo`, `2girls` ...) and `protect` (the trigger) are never core: they say how many people
    are in the image, not who.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"--prune-core {fraction}: give a share between 0 and 1, e.g. 0.5")
    protected = {normalize(p) for p in protect}
    counts: Counter[str] = Counter()
    n = 0
    for tags in captions.values() if isinstance(captions, Mapping) else captions:
        counts.update({normalize(t) for t in tags})
        n += 1
    if n == 0:
        return {}
    return {
        t: c / n
        for t, c in counts.items()
        if c / n >= fraction and t not in protected and not COUNT_TAGS.match(t)
    }


@dataclass
class PruneReport:
    """What pruning removed, for the run report."""

    identity: Counter[str] = field(default_factory=Counter)
    core: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return {"identity": dict(self.identity.most_common()), "core": {k: round(v, 3) for k, v in sorted(self.core.items(), key=lambda kv: -kv[1])}}
