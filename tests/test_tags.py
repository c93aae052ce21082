"""Tag rules: thresholds, MCut, ordering, underscores/kaomoji, exclude/replace/always-first."""

from __future__ import annotations

import numpy as np
import pytest

from captioning.backends.base import Tag
from captioning.tags import (
    KAOMOJI, TagRules, Thresholds, display_name, mcut_threshold, normalize, parse_replacements, split_tags,
)


def reference_mcut(probs: np.ndarray) -> float:
    """The reference tagger's MCut, written out independently."""
    s = probs[probs.argsort()[::-1]]
    d = s[:-1] - s[1:]
    t = d.argmax()
    return float((s[t] + s[t + 1]) / 2)


def test_mcut_matches_reference_on_random_vectors():
    rng = np.random.default_rng(0)
    batch = rng.beta(0.3, 2.0, size=(50, 200))
    got = mcut_threshold(batch)
    assert got.shape == (50,)
    for row, thr in zip(batch, got):
        assert thr == pytest.approx(reference_mcut(row), abs=1e-12)
    assert mcut_threshold(batch[0]) == pytest.approx(reference_mcut(batch[0]))


def test_mcut_finds_the_largest_gap_not_the_smallest():
    p = np.array([0.95, 0.93, 0.90, 0.20, 0.18, 0.01])
    assert mcut_threshold(p) == pytest.approx((0.90 + 0.20) / 2)


def test_mcut_select_with_character_floor():
    cats = np.array([9, 0, 0, 0, 0, 4, 4, 4])
    probs = np.array([[0.9, 0.9, 0.85, 0.1, 0.05, 0.12, 0.02, 0.01]])
    mask = Thresholds(mcut=True).select(probs, cats)[0]
    assert mask.tolist() == [True, True, True, False, False, False, False, False]  # char mcut 0.07 floored to 0.15
    mask2 = Thresholds(mcut=True, character_floor=0.05).select(probs, cats)[0]
    assert mask2[5] and not mask2[6]


def test_fixed_thresholds_are_inclusive_and_per_category():
    cats = np.array([0, 0, 4, 4])
    probs = np.array([[0.35, 0.3499, 0.85, 0.84]], dtype=np.float32)  # model outputs are float32
    mask = Thresholds(general=0.35, character=0.85).select(probs, cats)[0]  # compared in float32, like sd-scripts
    assert mask.tolist() == [True, False, True, False]


def tags(*spec):
    return [Tag(n, s, c) for n, s, c in spec]


SAMPLE = tags(
    ("general", 0.9, "rating"), ("sensitive", 0.2, "rating"),
    ("1girl", 0.99, "general"), ("long_hair", 0.7, "general"), ("^_^", 0.8, "general"),
    ("hatsune_miku", 0.95, "character"), ("solo", 0.97, "general"), ("sage_(loraprep)", 0.9, "character"),
)


def test_default_rules_confidence_order_characters_first_spaces_kaomoji():
    assert TagRules().apply(SAMPLE) == ["hatsune miku", "sage (loraprep)", "1girl", "solo", "^_^", "long hair"]


def test_category_order_keeps_model_order():
    assert TagRules(order="category").apply(SAMPLE) == ["hatsune miku", "sage (loraprep)", "1girl", "long hair", "^_^", "solo"]


def test_no_character_first_sorts_everything_by_confidence():
    assert TagRules(character_first=False).apply(SAMPLE)[:3] == ["1girl", "solo", "hatsune miku"]


def test_rating_first_or_last_is_argmax():
    assert TagRules(include_rating=True).apply(SAMPLE)[0] == "general"
    assert TagRules(include_rating=True, rating_last=True).apply(SAMPLE)[-1] == "general"
    assert "sensitive" not in TagRules(include_rating=True).apply(SAMPLE)


def test_underscores_and_escapes():
    r = TagRules(underscores=True, escape_parens=True).apply(SAMPLE)
    assert "long_hair" in r and "sage_\\(loraprep\\)" in r and "^_^" in r
    assert display_name("(o)_(o)") == "(o)_(o)" and display_name(">_<") == ">_<"
    assert display_name("looking_at_viewer") == "looking at viewer"
    assert {"^_^", ">_<", "o_o", "x_x"} <= KAOMOJI


def test_exclude_and_replace_accept_either_form():
    r = TagRules(exclude=("long hair", "Hatsune_Miku"), replace=parse_replacements(["1girl=woman", "solo="])).apply(SAMPLE)
    assert r == ["sage (loraprep)", "woman", "^_^"]


def test_replacement_that_creates_a_duplicate_is_dropped():
    r = TagRules(replace=parse_replacements(["solo=1girl"])).apply(SAMPLE)
    assert r.count("1girl") == 1


def test_always_first_keeps_given_order_and_ignores_absent():
    r = TagRules(always_first=("solo", "long_hair", "not_there")).apply(SAMPLE)
    assert r[:2] == ["solo", "long hair"] and "not_there" not in r


def test_duplicates_removed_and_max_tags():
    dup = SAMPLE + tags(("long hair", 0.6, "general"), ("Long_Hair", 0.5, "general"))
    r = TagRules().apply(dup)
    assert sum(normalize(x) == "long hair" for x in r) == 1
    assert TagRules(max_tags=2).apply(SAMPLE) == ["hatsune miku", "sage (loraprep)"]


def test_select_tags_for_backends_that_do_not_threshold():
    out = Thresholds(general=0.75, character=0.92).select_tags(SAMPLE)
    assert [t.name for t in out] == ["general", "sensitive", "1girl", "^_^", "hatsune_miku", "solo"]


def test_parse_helpers():
    assert parse_replacements(["a_b = c d"]) == {"a b": "c d"}
    with pytest.raises(ValueError, match="OLD=NEW"):
        parse_replacements(["nope"])
    assert split_tags(["a, b", "c"]) == ["a", "b", "c"]
    assert normalize(" Long_Hair ") == "long hair" and normalize("\\(x\\)") == "(x)" and normalize(">_<") == ">_<"


def test_every_caption_of_a_run_shares_one_string_per_tag():
    """100k captions of a WD vocabulary: the written tag names are shared, not rebuilt per image
    (the manifest index keeps every caption's tag list)."""
    rules = TagRules()
    a = rules.apply([Tag("long_hair", 0.9, "general"), Tag("blue_eyes", 0.8, "general")])
    b = rules.apply([Tag("blue_eyes", 0.7, "general"), Tag("long_hair", 0.6, "general")])
    assert a == ["long hair", "blue eyes"] and b == ["blue eyes", "long hair"]
    assert a[0] is b[1] and a[1] is b[0]
    assert TagRules(underscores=True).apply([Tag("long_hair", 0.9, "general")]) == ["long_hair"]
