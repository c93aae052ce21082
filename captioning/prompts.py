"""Caption prompt presets per LoRA type, shared by the sentence backends (Gemini, Replicate
LLaVA, JoyCaption).

The rule behind every preset: a caption names what should stay *controllable* at inference and
leaves out what the LoRA should *bake in*. A character LoRA must not have the character's fixed
looks (eye colour, hair, face, body) in its captions, or the trigger never learns them; a style
LoRA must not have style/medium words, or the style leaks into those words instead of the
trigger. The trigger is named in the prompt so the model uses it as the subject's name, and the
pipeline still enforces it afterwards (first, exactly once), because models drop it.

`check_caption` flags captions that broke the rules anyway (the words are data, below).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from prep.trigger import apply_trigger

SYSTEM_PROMPT = (
    "You write training captions for a LoRA image dataset. A caption reads like a prompt a user would type to "
    "get this exact image: plain, concrete, natural language, present tense. Output only the caption text: no "
    "preamble, no quotes, no lists, no markdown, no line breaks."
)

_PRESETS: dict[str, str] = {
    "character": (
        "The main character in this image is named {anchor}. Start the caption with {anchor} and refer to the "
        "character only as {anchor} (never 'a woman', 'a girl', 'the character').\n"
        "Describe what changes from image to image: the action and pose, facial expression, gaze, camera framing "
        "(close-up, upper body, full body) and angle (from above, from below, from the side, three-quarter view), "
        "what the character holds or interacts with, the outfit in a few words, and the setting in one short "
        "phrase.\n"
        "Do NOT describe what is always the same about {anchor}: face, eye colour, hair colour or hairstyle, skin "
        "tone, ethnicity, age, gender, body type, species features (ears, tail, horns). Do not mention the art "
        "style or medium.\n"
        "Write 1 to 3 sentences."
    ),
    "style": (
        "This image is in the art style called {anchor}. Start the caption with {anchor}.\n"
        "Describe only the content: who or what is shown, actions, composition, framing and camera angle, setting, "
        "time of day, mood.\n"
        "Do NOT name or describe the style, medium or technique: no words like painting, illustration, drawing, "
        "sketch, watercolor, oil, digital art, anime, manga, cartoon, 3D render, CGI, photo, photograph, "
        "realistic, stylized, cel shading, line art, brushstrokes, texture, color palette. All of that is what "
        "{anchor} means.\n"
        "Write 1 to 3 sentences."
    ),
    "motion": (
        "This image (or frame) shows the motion called {anchor}. Start the caption with {anchor}.\n"
        "Describe the movement: direction, speed and timing, body mechanics, weight shift, what moves secondarily "
        "(hair, cloth), and the camera framing.\n"
        "Do NOT describe who the subject is or how they look, and leave out the background unless the motion "
        "interacts with it.\n"
        "Write 2 to 4 sentences."
    ),
    "object": (
        "The main object in this image is called {anchor}. Start the caption with {anchor} and refer to the object "
        "only as {anchor}.\n"
        "Describe where {anchor} is, how it is placed, held or used, who or what interacts with it, the framing and "
        "the surroundings.\n"
        "Do NOT describe the object's own shape, material, colour or design: that is what {anchor} means.\n"
        "Write 1 to 2 sentences."
    ),
    "concept": (
        "This image shows the concept called {anchor}. Start the caption with {anchor}.\n"
        "Describe everything else in the image (subjects, actions, setting, framing) plainly, and refer to the "
        "concept itself only as {anchor} without explaining it.\n"
        "Write 1 to 3 sentences."
    ),
}

VIDEO_SYSTEM_PROMPT = (
    "You write training captions for a LoRA video dataset (text-to-video). A caption reads like a prompt a user "
    "would type to get this exact clip: plain, concrete, natural language, present tense, what happens in the "
    "order it happens. Output only the caption text: no preamble, no quotes, no lists, no markdown, no line "
    "breaks, no timestamps."
)

_CAMERA = ("what the camera does (static, pan, tilt, zoom, dolly in or out, tracking, orbit, handheld shake) and the "
           "framing (close-up, medium shot, full body, wide shot)")

_VIDEO_PRESETS: dict[str, str] = {
    "motion": (
        "This clip shows the motion called {anchor}. Start the caption with {anchor}.\n"
        "Describe the movement over time: which body parts or things move, the direction, speed and rhythm, how the "
        "movement starts, develops and ends (its timing: sudden, gradual, looping, pauses), weight shift and body "
        f"mechanics, secondary motion (hair, cloth, dust), and {_CAMERA}.\n"
        "Do NOT describe who the subject is or how they look: no face, eye colour, hair colour or style, skin, body "
        "type, age, gender, clothing colours or design. Leave out the background unless the motion interacts with it.\n"
        "Write 2 to 4 sentences."
    ),
    "character": (
        "The main character in this clip is named {anchor}. Start the caption with {anchor} and refer to the character "
        "only as {anchor} (never 'a woman', 'a girl', 'the character').\n"
        "Describe what {anchor} does over the clip, in order: actions, gestures, pose changes, facial expression, gaze, "
        f"what {{anchor}} holds or interacts with, the outfit in a few words, the setting in one short phrase, and {_CAMERA}.\n"
        "Do NOT describe what is always the same about {anchor}: face, eye colour, hair colour or hairstyle, skin tone, "
        "ethnicity, age, gender, body type, species features. Do not mention the art style or medium.\n"
        "Write 1 to 3 sentences."
    ),
    "style": (
        "This clip is in the visual style called {anchor}. Start the caption with {anchor}.\n"
        "Describe only the content and what happens: who or what is shown, the actions in order, composition, setting, "
        f"time of day, mood, and {_CAMERA}.\n"
        "Do NOT name or describe the style, medium or technique: no words like painting, illustration, drawing, "
        "sketch, watercolor, anime, cartoon, 3D render, CGI, claymation, stop motion, film grain, photo, realistic, "
        "stylized, cel shading, line art, color palette. All of that is what {anchor} means.\n"
        "Write 1 to 3 sentences."
    ),
    "object": (
        "The main object in this clip is called {anchor}. Start the caption with {anchor} and refer to the object only "
        "as {anchor}.\n"
        f"Describe what happens with {{anchor}} over the clip: where it is, how it moves or is handled, who or what "
        f"interacts with it, the surroundings, and {_CAMERA}.\n"
        "Do NOT describe the object's own shape, material, colour or design: that is what {anchor} means.\n"
        "Write 1 to 2 sentences."
    ),
    "concept": (
        "This clip shows the concept called {anchor}. Start the caption with {anchor}.\n"
        f"Describe everything else plainly (subjects, actions in order, setting, {_CAMERA}) and refer to the concept "
        "itself only as {anchor} without explaining it.\n"
        "Write 1 to 3 sentences."
    ),
}

VIDEO_USER_PROMPT = "Write the caption for this video clip."

_DEFAULT_ANCHOR = {"character": "the character", "style": "this style", "motion": "this motion", "object": "the object", "concept": "this concept"}

USER_PROMPT = "Write the caption for this image."

# Words that should not appear in captions of a LoRA type (checked after generation).
STYLE_WORDS = (
    "painting", "painted", "illustration", "illustrated", "drawing", "drawn", "sketch", "watercolor", "watercolour",
    "oil on canvas", "digital art", "digital painting", "anime style", "manga style", "cartoon", "3d render",
    "render", "rendered", "cgi", "stylized", "stylised", "cel shading", "cel-shaded", "line art", "lineart",
    "brushstroke", "brushstrokes", "art style", "artwork",
)
IDENTITY_WORDS = (
    r"(?:blue|green|brown|red|golden|amber|grey|gray|violet|purple|hazel|heterochromatic) eyes",
    r"(?:blonde?|brunette|black|brown|red|pink|silver|white|blue|green|purple|orange) hair",
    r"(?:long|short|shoulder-length|wavy|curly|straight) hair", "freckles", "pale skin", "dark skin", "tan skin",
    "ponytail", "twintails", "pigtails", "cat ears", "fox ears", "animal ears",
)


@dataclass(frozen=True)
class Prompt:
    system: str
    user: str


def preset_names() -> list[str]:
    return sorted(_PRESETS)


def build_prompt(lora_type: str = "character", trigger: str | None = None, override: str | None = None,
                 *, video: bool = False) -> Prompt:
    """System + user prompt for a LoRA type; `override` (the --prompt flag) replaces the preset
    text (`{trigger}` in it is filled in). `video`: the preset for a clip (what happens over
    time and what the camera does; motion: the movement and its timing, never the subject's looks)."""
    if lora_type not in _PRESETS:
        raise ValueError(f"unknown LoRA type {lora_type!r}: choose one of {', '.join(preset_names())}")
    anchor = trigger.strip() if trigger and trigger.strip() else _DEFAULT_ANCHOR[lora_type]
    if override:
        body = override.replace("{trigger}", anchor).replace("{anchor}", anchor)
    else:
        body = (_VIDEO_PRESETS if video else _PRESETS)[lora_type].format(anchor=anchor)
    if video:
        return Prompt(system=VIDEO_SYSTEM_PROMPT, user=f"{body}\n\n{VIDEO_USER_PROMPT}")
    return Prompt(system=SYSTEM_PROMPT, user=f"{body}\n\n{USER_PROMPT}")


def flat_prompt(lora_type: str = "character", trigger: str | None = None, override: str | None = None,
                *, video: bool = False) -> str:
    """One string for models without a system prompt (Replicate LLaVA, JoyCaption user turn)."""
    p = build_prompt(lora_type, trigger, override, video=video)
    return f"{p.system}\n\n{p.user}"


def clean_caption(text: str) -> str:
    """One line without wrapping quotes, markdown or a 'Caption:' preamble."""
    t = text.strip()
    t = re.sub(r"^(?:here is|here's)[^:\n]*:\s*", "", t, flags=re.IGNORECASE)
    t = re.sub(r"^\**caption\**\s*:\s*", "", t, flags=re.IGNORECASE)
    t = t.replace("**", "")
    if len(t) >= 2 and t[0] == t[-1] and t[0] in "\"'`":
        t = t[1:-1].strip()
    return re.sub(r"\s+", " ", t).strip()


def check_caption(text: str, lora_type: str) -> list[str]:
    """Words a caption of this LoRA type should not contain (style words in style captions,
    fixed looks in character captions). Empty when clean."""
    low = text.lower()
    if lora_type == "style":
        pats = [re.escape(w) for w in STYLE_WORDS]
    elif lora_type in ("character", "motion"):  # a motion caption must not describe the subject's looks either
        pats = list(IDENTITY_WORDS)
    else:
        return []
    found = []
    for p in pats:
        m = re.search(rf"(?<!\w){p}(?!\w)", low)
        if m:
            found.append(m.group(0))
    return found


def finish_caption(text: str, lora_type: str, trigger: str | None, data: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A sentence backend's last step: note words this LoRA type should not have (`flags` in a
    copy of `data`, for the manifest), then put the trigger first."""
    data = dict(data)
    flags = check_caption(text, lora_type)
    if flags:
        data["flags"] = flags
    return (apply_trigger(text, trigger) if trigger else text), data
