"""Captions and prompts for originals and their style variations.

Whatever a caption names is not absorbed into the trigger. So each variation's caption carries
its style words, and each original carries a `3d render` tag: the render look binds to that
tag and the painted look to the style words, leaving only the identity for the trigger. The
trigger stays first (via `prep.trigger.apply_trigger`). Style words go right after the trigger,
not at the end, so a 75-token truncation in the trainer never cuts them off.
"""

from __future__ import annotations

import re

from prep.trigger import apply_trigger

DEFAULT_ORIGINAL_TAG = "3d render"

RENDER_TAGS = frozenset(
    {
        "3d",
        "3d render",
        "3d rendering",
        "3d model",
        "3d (artwork)",
        "3d art",
        "render",
        "rendered",
        "cgi",
        "blender",
        "blender (medium)",
        "octane render",
        "unreal engine",
        "mmd",
        "koikatsu (medium)",
    }
)
"""Tags that describe the render look; dropped from variation captions and prompts."""

_RENDER_PHRASE = re.compile(r"\b3d[- ]render(?:ing)?\b", re.IGNORECASE)


def _segments(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"\s*,\s*", text) if s.strip()]


def is_tag_caption(text: str) -> bool:
    """Comma-separated short tags (booru style) rather than prose sentences."""
    segs = _segments(text)
    if not segs:
        return True
    if re.search(r"[.!?](\s|$)", text):
        return False
    return all(len(s.split()) <= 6 for s in segs)


def _norm(tag: str) -> str:
    return re.sub(r"[\s_]+", " ", tag.strip().lower())


def strip_render_words(text: str) -> str:
    """Remove render-look tags (tag captions) or turn "3D render" into "picture" (prose)."""
    if is_tag_caption(text):
        return ", ".join(s for s in _segments(text) if _norm(s) not in RENDER_TAGS)
    return _RENDER_PHRASE.sub("picture", text).strip()


def _trigger_pattern(trigger: str) -> re.Pattern[str]:
    parts = [re.escape(p) for p in re.split(r"[ _]+", trigger.strip()) if p]
    return re.compile(r"(?<![\w])" + r"[ _]+".join(parts) + r"(?![\w])", re.IGNORECASE)


def _has_tag(text: str, tag: str) -> bool:
    return _norm(tag) in {_norm(s) for s in _segments(text)}


def with_medium(source_caption: str | None, medium: str, trigger: str | None) -> str:
    """`trigger, medium, rest of caption`. Prose whose subject is the trigger keeps its sentence
    and gets the medium as a closing sentence. Idempotent for an already-tagged caption."""
    medium = medium.strip()
    body = (source_caption or "").strip()
    if not body:
        return apply_trigger(medium, trigger) if trigger else medium
    if trigger:
        triggered = apply_trigger(body, trigger)
        trig = trigger.strip()
        if triggered == trig:
            rest = ""
        elif triggered.startswith(trig + ", "):
            rest = triggered[len(trig) + 2 :]
        else:  # "Trig is a woman ..." — the trigger is the sentence's subject; keep the sentence
            if medium.lower() in triggered.lower():
                return triggered
            text = triggered.rstrip()
            if text.endswith((".", "!", "?")):
                return f"{text} {medium[:1].upper()}{medium[1:]}."
            return f"{text}, {medium}"
        if _has_tag(rest, medium):
            rest = ", ".join(s for s in _segments(rest) if _norm(s) != _norm(medium)) if is_tag_caption(rest) else rest
        return ", ".join(p for p in (trig, medium, rest) if p)
    if _has_tag(body, medium) and is_tag_caption(body):
        body = ", ".join(s for s in _segments(body) if _norm(s) != _norm(medium))
    return ", ".join(p for p in (medium, body) if p)


def variation_caption(source_caption: str | None, style: str, trigger: str | None) -> str:
    """Caption for one variation: trigger first, then the style words, then the source's content
    with render-look words removed (a watercolor is not a 3D render)."""
    body = strip_render_words(source_caption or "")
    return with_medium(body, style, trigger)


def original_caption(source_caption: str | None, trigger: str | None, tag: str = DEFAULT_ORIGINAL_TAG) -> str:
    """Caption for a copied original: trigger first, then the render tag (once), then the rest."""
    return with_medium(source_caption, tag, trigger) if tag.strip() else (
        apply_trigger(source_caption or "", trigger) if trigger else (source_caption or "")
    )


def img2img_prompt(source_caption: str | None, style: str, trigger: str | None) -> str:
    """What the image model is asked for: the style words first, then what the picture shows.

    The trigger is a made-up word the base model does not know, so it is left out, and so are
    render-look words that would pull the output back towards the 3D look."""
    body = strip_render_words(source_caption or "")
    if trigger and body:
        pat = _trigger_pattern(trigger)
        if is_tag_caption(body):
            body = ", ".join(s for s in _segments(body) if not pat.fullmatch(s))
        else:
            body = pat.sub("the character", body)
        body = body.strip(" ,")
    return ", ".join(p for p in (style.strip(), body) if p)
