"""Every options class that takes a trigger refuses one that would break captions or sample prompts."""

from __future__ import annotations

import importlib

import pytest
from pydantic import ValidationError

OPTION_CLASSES = [
    "prep.layout:LayoutOptions",
    "prep.trigger_step:TriggerOptions",
    "prep.variations.run:VariationOptions",
    "captioning.pipeline:CaptionStageOptions",
    "captioning.lint:LintOptions",
]


def _cls(spec: str):
    mod, name = spec.split(":")
    return getattr(importlib.import_module(mod), name)


@pytest.mark.parametrize("spec", OPTION_CLASSES)
@pytest.mark.parametrize("bad", ["sks --w 64", "sks\nchar", "sks\x07"])
def test_a_trigger_that_breaks_captions_is_refused(spec: str, bad: str) -> None:
    cls = _cls(spec)
    assert "trigger" in cls.model_fields
    with pytest.raises(ValidationError, match="trigger"):
        cls.model_validate({**_required(cls), "trigger": bad})


@pytest.mark.parametrize("spec", OPTION_CLASSES)
def test_a_trigger_is_literal_text(spec: str) -> None:
    cls = _cls(spec)
    opts = cls.model_validate({**_required(cls), "trigger": r"sage\1_[x]"})
    assert opts.trigger == r"sage\1_[x]"


def _required(cls) -> dict:
    return {n: "x" for n, f in cls.model_fields.items() if f.is_required() and n != "trigger"}
