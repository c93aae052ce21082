"""`prep render-variations`: img2img style variations of 3D renders, captioned by style, so a
LoRA learns the identity and not the render look. See docs/render-variations.md."""

from prep.variations.run import DEFAULT_STYLES, STAGE, VariationOptions, VariationsReport, render_variations

__all__ = ["DEFAULT_STYLES", "STAGE", "VariationOptions", "VariationsReport", "render_variations"]
