"""`caption lint`: each problem is caught, clean captions pass."""

from __future__ import annotations

from pathlib import Path

import pytest
from wd_tiny import solid

from captioning.lint import approx_tokens, lint_folder


def make(d: Path, captions: dict[str, str | None]) -> Path:
    d.mkdir(exist_ok=True)
    for name, text in captions.items():
        solid((10, 20, 30), (16, 16)).save(d / f"{name}.png")
        if text is not None:
            (d / f"{name}.txt").write_text(text, encoding="utf-8")
    return d


def codes(rep, item):
    return sorted(i.code for i in rep.issues if i.id == item)


def test_each_problem_is_caught(tmp_path):
    long = "sage_character, " + ", ".join(f"extraordinarily detailed tag number {i}" for i in range(30))
    d = make(tmp_path / "d", {
        "ok": "sage_character, 1girl, smile, school uniform",
        "nocap": None,
        "empty": "  \n",
        "missing": "1girl, smile",
        "late": "1girl, sage_character, smile",
        "case": "Sage_Character, 1girl",
        "twice": "sage_character, smile, standing, sage_character",
        "dups": "sage_character, smile, Smile, long_hair, long hair",
        "long": long,
        "ident": "sage_character, 1girl, blue eyes, twintails, closed eyes",
        "prose": "sage_character The image shows a girl with long silver hair.",
    })
    rep = lint_folder(d, trigger="sage_character", trainer="sdxl")
    assert rep.images == 11 and rep.captions == 10 and rep.approximate
    assert codes(rep, "ok.png") == []
    assert codes(rep, "nocap.png") == ["no_caption"]
    assert codes(rep, "empty.png") == ["empty"]
    assert codes(rep, "missing.png") == ["trigger_missing"]
    assert codes(rep, "late.png") == ["trigger_not_first"]
    assert codes(rep, "case.png") == ["trigger_case", "trigger_only"]  # the trigger and 1girl: nothing else
    assert codes(rep, "twice.png") == ["duplicate_tags", "trigger_repeated"]
    assert "duplicate_tags" in codes(rep, "dups.png")
    assert codes(rep, "long.png") == ["over_budget"]
    ident = [i for i in rep.issues if i.id == "ident.png"]
    assert [i.code for i in ident] == ["identity_tags"] and "blue eyes, twintails" in ident[0].message
    assert "closed eyes" not in ident[0].message
    assert sorted(codes(rep, "prose.png")) == ["boilerplate", "identity_tags"]


def test_budget_per_trainer(tmp_path):
    text = "sage_character, " + ", ".join(f"tag{i} word" for i in range(60))
    d = make(tmp_path / "b", {"x": text})
    assert approx_tokens(text) > 225
    assert codes(lint_folder(d, trainer="sdxl"), "x.png") == ["over_budget"]
    assert codes(lint_folder(d, trainer="sd3", max_token_length=225), "x.png") == (["over_budget"] if approx_tokens(text) > 225 else [])
    assert codes(lint_folder(d, trainer="flux"), "x.png") == []
    assert lint_folder(d, trainer="anima").budget == 512
    assert lint_folder(d, trainer="sdxl", max_token_length=150).budget == 150
    with pytest.raises(ValueError):
        lint_folder(d, trainer="flux", max_token_length=150)


def test_style_sets_are_not_checked_for_identity(tmp_path):
    d = make(tmp_path / "s", {"x": "mystyle, 1girl, blue eyes"})
    assert codes(lint_folder(d, trigger="mystyle", lora_type="style"), "x.png") == []


def test_approx_tokens_is_generous_for_clip_like_text():
    assert approx_tokens("1girl, solo") >= 4  # 1 girl , solo
    assert approx_tokens("a b c") == 3


# -- identity problems: another character's tag, trigger-only captions, near-identical scenes --------


def _textured(rgb: tuple[int, int, int], seed: int, size: int = 64):
    """An image of mean colour ~`rgb` (what the tiny tagger scores) with its own random structure."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    noise = rng.integers(-40, 41, size=(8, 8, 1)).repeat(size // 8, 0).repeat(size // 8, 1)
    return Image.fromarray(np.clip(np.array(rgb)[None, None, :] + noise, 0, 255).astype("uint8"))


def test_other_characters_tag_is_flagged_from_the_caption_records(tmp_path):
    from wd_tiny import build_tiny_wd14

    from captioning.backends.base import CaptionOptions
    from captioning.pipeline import caption_folder
    from prep.manifest import Manifest

    model = build_tiny_wd14(tmp_path / "wd")
    d = tmp_path / "set"
    d.mkdir()
    for i in range(3):
        _textured((0, 0, 255), seed=i).save(d / f"blue{i}.png")  # hatsune_miku for the tiny tagger
    _textured((255, 0, 0), seed=9).save(d / "red.png")  # kirisame_marisa
    rep = caption_folder(d, "wd14", CaptionOptions(model=str(model)))
    assert not rep.problems
    rec = Manifest(d / "manifest.jsonl").get("caption", "red.png")
    assert rec.data["rating"] == "general" and set(rec.data["ratings"]) == {"general", "sensitive", "questionable", "explicit"}
    assert list(rec.data["characters"]) == ["kirisame_marisa"]

    lint = lint_folder(d)
    assert lint.character == "hatsune miku"  # in 3 of 4 captions: the set's own character
    assert "other_character" in codes(lint, "red.png") and "other_character" not in codes(lint, "blue0.png")
    assert "kirisame" in next(i.message for i in lint.issues if i.id == "red.png" and i.code == "other_character")
    told = lint_folder(d, character="kirisame_marisa")
    assert {i.id for i in told.issues if i.code == "other_character"} == {"blue0.png", "blue1.png", "blue2.png"}

    # without records, the tagger's CSV says which tags are characters
    (d / "manifest.jsonl").unlink()
    assert not [i for i in lint_folder(d).issues if i.code == "other_character"]
    by_csv = lint_folder(d, tags_csv=str(model))
    assert [i.id for i in by_csv.issues if i.code == "other_character"] == ["red.png"]
    with pytest.raises(ValueError, match="tags-csv"):
        lint_folder(d, tags_csv=str(tmp_path / "nope.csv"))


def test_trigger_only_captions(tmp_path):
    d = make(tmp_path / "t", {
        "alone": "sage_character",
        "counts": "sage_character, 1girl, solo",
        "one": "sage_character, 1girl, smile",
        "sentence": "sage_character standing.",
        "prose": "sage_character stands in a sunny meadow holding a red umbrella.",
    })
    rep = lint_folder(d, trigger="sage_character", near_identical=False)
    flagged = {i.id for i in rep.issues if i.code == "trigger_only"}
    assert flagged == {"alone.png", "counts.png", "sentence.png"}
    assert not [i for i in lint_folder(d, trigger="sage_character", lora_type="style", near_identical=False).issues if i.code == "trigger_only"]


def test_near_identical_scenes_are_grouped_never_removed(tmp_path, astronaut, digest):
    import numpy as np
    from PIL import Image

    data = pytest.importorskip("skimage.data")
    d = tmp_path / "n"
    d.mkdir()
    a = np.asarray(astronaut, dtype=np.float32) / 255
    astronaut.save(d / "shot.png")
    Image.fromarray((np.clip(a * np.array([1.1, 1.0, 0.8]), 0, 1) * 255).astype("uint8")).save(d / "shot_warm.png")
    Image.fromarray((a ** 1.7 * 255).astype("uint8")).save(d / "shot_evening.jpg", quality=90)
    Image.fromarray(data.coffee()).save(d / "coffee.png")
    Image.fromarray(data.rocket()).save(d / "rocket.png")
    for p in d.glob("*.*"):
        p.with_suffix(".txt").write_text(f"sage_character, 1girl, {p.stem}", encoding="utf-8")
    before = digest(d)
    rep = lint_folder(d, trigger="sage_character")
    assert [sorted(g) for g in rep.near_identical] == [["shot.png", "shot_evening.jpg", "shot_warm.png"]]
    assert {i.id for i in rep.issues if i.code == "near_identical"} == {"shot.png", "shot_evening.jpg", "shot_warm.png"}
    assert digest(d) == before
    assert lint_folder(d, trigger="sage_character", near_identical=False).near_identical == []
    assert rep.to_json()["near_identical"] == rep.near_identical
