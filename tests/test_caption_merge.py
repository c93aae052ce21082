"""Caption merging in one function (`captioning.merge.merge_caption`), used by the pipeline in every mode."""

from __future__ import annotations

from pathlib import Path

import pytest

from captioning.backends.base import CaptionOptions
from captioning.merge import merge_caption
from captioning.pipeline import caption_folder
from wd_tiny import build_tiny_wd14, solid

RED = 'sage_character, kirisame marisa, red hair, don\'t say "lazy", red theme, 1girl, solo, long hair, closed eyes'


@pytest.mark.parametrize(
    ("user", "gen", "mode", "want"),
    [
        ("old tag, 1girl", "1girl, red hair", "skip", "old tag, 1girl"),
        (None, "1girl, red hair", "skip", "1girl, red hair"),
        ("  ", "1girl", "skip", "1girl"),
        ("old tag, 1girl", "1girl, red hair", "overwrite", "1girl, red hair"),
        ("old tag, 1girl", None, "overwrite", "old tag, 1girl"),  # a failed image keeps the user's caption
        ("old tag, 1girl", "1girl, red hair", "append", "old tag, 1girl, red hair"),
        ("old tag, 1girl", "1girl, red hair", "prepend", "1girl, red hair, old tag"),
        ("Long_Hair, smile", "long hair, red hair", "append", "Long_Hair, smile, red hair"),  # same tag, other spelling
        ("A woman in a long red coat.", "She stands in the rain under a lamp.", "append",
         "A woman in a long red coat. She stands in the rain under a lamp."),
        ("A woman in a long red coat.", "She stands in the rain under a lamp.", "prepend",
         "She stands in the rain under a lamp. A woman in a long red coat."),
        (None, None, "append", None),
        ("", "", "overwrite", None),
    ],
)
def test_merge_caption_modes(user, gen, mode, want):
    assert merge_caption(user, gen, mode) == want


def test_merge_tags_flag_forces_tag_rules():
    # a one-word user caption and a tag list: the caller knows these are tags
    assert merge_caption("smile", "1girl, smile", "append", tags=True) == "smile, 1girl"
    assert merge_caption("a b c d e f, x", "a b c d e f, y", "append", tags=False) == "a b c d e f, x a b c d e f, y"


def test_unknown_mode_names_the_choices():
    with pytest.raises(ValueError, match="skip, overwrite, append, prepend"):
        merge_caption("a", "b", "merge")


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return build_tiny_wd14(tmp_path_factory.mktemp("wd") / "m")


def test_pipeline_append_equals_merge_caption(model, tmp_path):
    """`caption --mode append|prepend` writes exactly what merge_caption gives (then the trigger first)."""
    d = tmp_path / "d"
    d.mkdir()
    solid((255, 0, 0), (64, 64)).save(d / "a.png")
    assert caption_folder(d, "wd14", CaptionOptions(model=str(model)), output=tmp_path / "gen").count("ok") == 1
    generated = (tmp_path / "gen" / "a.txt").read_text(encoding="utf-8").strip()
    for mode in ("append", "prepend"):
        (d / "a.txt").write_text("1girl, my own tag\n", encoding="utf-8")
        caption_folder(d, "wd14", CaptionOptions(model=str(model)), mode=mode, resume=False)
        assert (d / "a.txt").read_text(encoding="utf-8") == merge_caption("1girl, my own tag", generated, mode) + "\n"


def test_keep_apart_writes_generated_only_and_skips_user_captioned(model, tmp_path):
    d = tmp_path / "crops"
    d.mkdir()
    solid((255, 0, 0), (64, 64)).save(d / "a.png")
    solid((0, 0, 255), (64, 64)).save(d / "b.png")
    (d / "a.txt").write_text("my caption\n", encoding="utf-8")
    out = tmp_path / "captions"
    opts = CaptionOptions(model=str(model), trigger="sage_character")
    rep = caption_folder(d, "wd14", opts, mode="skip", output=out, keep_apart=True)
    assert rep.count("skipped") == 1 and rep.count("ok") == 1 and not (out / "a.txt").exists()
    rep = caption_folder(d, "wd14", opts, mode="append", output=out, keep_apart=True)
    assert (out / "a.txt").read_text(encoding="utf-8") == RED + "\n"  # generated only: merged later
    assert (d / "a.txt").read_text(encoding="utf-8") == "my caption\n"
    # the mode decides only what is captioned: prepend re-captions nothing
    rep = caption_folder(d, "wd14", opts, mode="prepend", output=out, keep_apart=True)
    assert rep.count("resumed") == 2 and rep.count("ok") == 0
