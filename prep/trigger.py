"""Trigger-word placement: first, exactly once, exact casing.

Used by `prep trigger` for captions a user already has and by `caption` after generating
(VLMs drop or move the trigger about a quarter of the time). Idempotent: applying it twice
gives the same caption.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Annotated

from pydantic import AfterValidator

PLACEHOLDER = "[trigger]"
SAMPLE_OPTION_MARK = " --"
"""sd-scripts splits each sample-prompt line on " --" into the prompt and its options (--n, --w,
--s ...; ../shared/reference/train_bridge.md), so a trigger holding it would add options."""


def trigger_problem(trigger: str) -> str | None:
    """Why `trigger` cannot be a trigger word, or None. Checked once, by every option that takes one."""
    if "\n" in trigger or "\r" in trigger or "\u2028" in trigger or "\u2029" in trigger:
        return "it holds a line break: captions would become two lines and sample prompts two prompts; use one line"
    bad = sorted({f"U+{ord(c):04X}" for c in trigger if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")})
    if bad:
        return f"it holds control character(s) {', '.join(bad)}, invisible in captions and prompts; type the word plainly"
    text = trigger.strip()
    if SAMPLE_OPTION_MARK in f" {text}":
        return ("it holds ' --', which sd-scripts reads as the start of a sample-prompt option (--n, --w ...): "
                "drop the dashes or write it without the space")
    return None


def validate_trigger(trigger: str) -> str:
    """`trigger` stripped; ValueError with the reason for a line break, control character or ' --'."""
    problem = trigger_problem(trigger)
    if problem is not None:
        raise ValueError(f"trigger {trigger!r} is refused: {problem}")
    return trigger.strip()


Trigger = Annotated[str, AfterValidator(validate_trigger)]
"""A trigger word option (stripped; refused with the reason when it would break captions or sample
prompts). Every options class that takes a trigger uses it, like `prep.options.ArchName`."""


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
    trig = validate_trigger(trigger)
    if not trig:
        raise ValueError("the trigger word is empty")
    text = caption.replace("\r\n", "\n").strip()
    pat = trigger_pattern(trig)
    # replacements are functions: the trigger and `refer_as` are literal text, never regex templates
    text = re.sub(re.escape(PLACEHOLDER), lambda _m: trig, text, flags=re.IGNORECASE)

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
        kept.append(pat.sub(lambda _m: refer_as, seg))
    rest = ", ".join(s for s in kept if s != "")

    if starts_sentence and rest:
        return f"{trig} {rest}"
    return f"{trig}{separator}{rest}" if rest else trig


def retrigger(caption: str, trigger: str, **kw: str) -> TriggerChange:
    return TriggerChange(caption, apply_trigger(caption, trigger, **kw))
