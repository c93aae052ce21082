"""Trigger-word placement: first, exactly once, exact casing.

Used by `prep trigger` for captions a user already has and by `caption` after generating
(VLMs drop or move the trigger about a quarter of the time). Idempotent: applying it twice
gives the same caption.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PLACEHOLDER = "[trigger]"


@dataclass(frozen=True)
class TriggerChange:
    before: str
    after: str

    @property
    def changed(self) -> bool:
        return self.before != self.after


def trigger_pattern(trigger: str) -> re.Pattern[str]:
    """Whole-word, case-insensitive matcher for `trigger`.

    Underscores and spaces in the trigger match each other (tag rules turn `sage_character`
    into `sage character`). `caption lint` finds triggers with the same pattern.
    """
    parts = [re.escape(p) for p in re.split(r"[ _]+", trigger.strip()) if p]
    body = r"[ _]+".join(parts)
    return re.compile(rf"(?<![\w]){body}(?![\w])", re.IGNORECASE)


def apply_trigger(caption: str, trigger: str, *, separator: str = ", ", refer_as: str = "the subject") -> str:
    """Return `caption` with `trigger` first, exactly once.

    - A `[trigger]` placeholder is replaced (the first becomes the leading trigger).
    - Tag captions (comma-separated): every tag equal to the trigger is removed, then the
      trigger is put first.
    - Prose that mentions the trigger mid-sentence keeps its meaning: later mentions become
      `refer_as`, so the trigger still appears exactly once.
    """
    trig = trigger.strip()
    if not trig:
        raise ValueError("the trigger word is empty")
    text = caption.replace("\r\n", "\n").strip()
    pat = trigger_pattern(trig)
    text = re.sub(re.escape(PLACEHOLDER), trig, text, flags=re.IGNORECASE)

    # Leading occurrence: "trig, ..." or "Trig is a woman ..." → keep one, fix casing.
    lead = re.match(rf"^\s*({pat.pattern})\s*(?:,\s*)?", text, flags=re.IGNORECASE)
    rest = text[lead.end():] if lead else text
    # "Sage_character is a woman ..." (no comma after it) is a sentence that starts with it.
    starts_sentence = bool(lead) and not text[lead.end(1):].lstrip().startswith(",")

    # Drop standalone tags equal to the trigger, then rewrite remaining prose mentions.
    segments = [s for s in re.split(r"\s*,\s*", rest)] if rest else []
    kept: list[str] = []
    for seg in segments:
        if pat.fullmatch(seg.strip()):
            continue
        kept.append(pat.sub(refer_as, seg))
    rest = ", ".join(s for s in kept if s != "")

    if starts_sentence and rest:
        return f"{trig} {rest}"
    return f"{trig}{separator}{rest}" if rest else trig


def retrigger(caption: str, trigger: str, **kw: str) -> TriggerChange:
    return TriggerChange(caption, apply_trigger(caption, trigger, **kw))
