"""Model families and their img2img strength ranges.

Strength is how much of the source is re-noised: too low and the render look survives, too
high and the identity drifts. The usable window differs by family (reference §3.2): SDXL
restyles while keeping identity at about 0.35-0.55, FLUX needs about 0.5-0.75.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    name: str
    strength: float
    """Default strength when `--strength` is not given."""
    recommended: tuple[float, float]
    steps: int
    guidance: float
    negative_prompt: bool
    """Whether the family's pipelines take a negative prompt."""
    multiple: int = 16
    """Width and height are rounded down to a multiple of this."""


FAMILIES: dict[str, Family] = {
    "flux": Family("flux", 0.6, (0.5, 0.75), 28, 3.0, False),
    "sdxl": Family("sdxl", 0.45, (0.35, 0.55), 30, 6.0, True),
    "sd": Family("sd", 0.45, (0.35, 0.55), 30, 7.0, True, multiple=8),
    "sd3": Family("sd3", 0.6, (0.5, 0.75), 28, 5.0, True),
    "other": Family("other", 0.5, (0.35, 0.7), 30, 5.0, True),
}


def family_of(model: str) -> Family:
    """Guess the family from a model id or path ("black-forest-labs/flux-dev" -> flux)."""
    m = model.lower().replace("_", "-")
    if "flux" in m or "chroma" in m:
        return FAMILIES["flux"]
    if "stable-diffusion-3" in m or "sd3" in m:
        return FAMILIES["sd3"]
    if "xl" in m or "pony" in m or "illustrious" in m or "noob" in m:
        return FAMILIES["sdxl"]
    if "stable-diffusion" in m or "sd-" in m or "sd15" in m:
        return FAMILIES["sd"]
    return FAMILIES["other"]


def strength_warning(strength: float, family: Family) -> str | None:
    """A hint when `strength` is outside the family's identity-keeping window, else None."""
    lo, hi = family.recommended
    if strength < lo:
        return f"strength {strength} is below {lo} for {family.name}: the 3D render look will likely survive"
    if strength > hi:
        return f"strength {strength} is above {hi} for {family.name}: identity may drift (consider --ip-adapter)"
    return None
