"""prep dedupe: resized, re-encoded and mirrored copies grouped; the right copy kept; never deletes."""

from __future__ import annotations

import json

import pytest
from PIL import ImageOps
from typer.testing import CliRunner

from badimages import gradient
from prep.dedupe import STAGE, DedupeOptions, dedupe_folder, hamming, is_derived_name, phash_pair
from prep.options import OptionsError, load_options
from prep.stage import StageReport


def test_hash_distances_match_expectations(astronaut, lfw_faces):
    from PIL import Image

    h = phash_pair(astronaut)
    assert hamming(h[0], phash_pair(astronaut.resize((256, 256)))[0]) <= 2
    mirrored = phash_pair(ImageOps.mirror(astronaut))
    assert hamming(h[0], mirrored[0]) > 16 and hamming(h[1], mirrored[0]) <= 2
    other = phash_pair(Image.fromarray((lfw_faces[0] * 255).astype("uint8")))
    assert hamming(h[0], other[0]) > 16


def test_dedupe_groups_moves_and_keeps_largest(tmp_path, astronaut, digest):
    d = tmp_path / "raw"
    d.mkdir()
    astronaut.save(d / "big.png")
    (d / "big.txt").write_text("caption of big")
    astronaut.resize((256, 256)).save(d / "small.jpg", quality=80)
    (d / "small.txt").write_text("caption of small")
    ImageOps.mirror(astronaut).resize((300, 300)).save(d / "mirror.png")
    gradient(200, 200, seed=1).save(d / "other.png")
    rep = dedupe_folder(d, workers=2)
    assert len(rep.groups) == 1
    g = rep.groups[0]
    assert g.keep == "big.png" and set(g.others) == {"small.jpg", "mirror.png"}
    assert g.mirrored == ["mirror.png"]
    assert rep.moved == []
    before = digest(d)
    dry = dedupe_folder(d, move_to=tmp_path / "dupes", dry_run=True)
    assert len(dry.moved) == 3 and digest(d) == before
    rep2 = dedupe_folder(d, move_to=tmp_path / "dupes")
    assert sorted(p.name for p in (tmp_path / "dupes").iterdir()) == ["mirror.png", "small.jpg", "small.txt"]
    assert sorted(p.name for p in d.iterdir()) == ["big.png", "big.txt", "other.png"]
    assert (d / "big.txt").read_text() == "caption of big" and rep2.captions_copied == []
    assert len(rep2.moved) == 3
    total = {**digest(d), **digest(tmp_path / "dupes")}
    assert set(before.values()) == set(total.values())  # nothing lost


def test_no_mirror_option(tmp_path, astronaut):
    d = tmp_path / "raw"
    d.mkdir()
    astronaut.save(d / "a.png")
    ImageOps.mirror(astronaut).save(d / "b.png")
    assert len(dedupe_folder(d).groups) == 1
    assert dedupe_folder(d, mirror=False).groups == []


def test_expression_variants_are_not_duplicates(tmp_path, anime_dir):
    """Sprites that differ only in facial expression hash identically but are kept apart."""
    import shutil

    from prep.dedupe import HashedImage, PixelVerifier

    d = tmp_path / "sprites"
    d.mkdir()
    for name in ("sylvie_blue_normal.png", "sylvie_blue_smile.png", "sylvie_blue_surprised.png"):
        shutil.copy(anime_dir / name, d / name)
    from prep.images import load_image

    src = load_image(d / "sylvie_blue_normal.png").image
    src.resize((167, 350)).save(d / "normal_small.png")  # a real duplicate of one of them
    hashes = {p.name: phash_pair(load_image(p).image)[0] for p in d.iterdir()}
    assert hamming(hashes["sylvie_blue_normal.png"], hashes["sylvie_blue_smile.png"]) <= 2  # the hash cannot tell
    rep = dedupe_folder(d)
    assert [(g.keep, g.others) for g in rep.groups] == [("sylvie_blue_normal.png", ["normal_small.png"])]
    assert len(dedupe_folder(d, verify=False).groups[0].others) == 3  # hash alone lumps them together
    v = PixelVerifier()
    h = lambda n: HashedImage(n, d / n, (1, 1), 1, 0, 0)  # noqa: E731
    assert v.difference(h("sylvie_blue_normal.png"), h("sylvie_blue_smile.png")) > 2 * v.difference(h("sylvie_blue_normal.png"), h("normal_small.png"))


def test_the_original_is_kept_over_its_larger_mirror(tmp_path, astronaut):
    """Pixels cannot tell an image from its mirror (each is the other's); the name can."""
    d = tmp_path / "raw"
    d.mkdir()
    astronaut.resize((400, 400)).save(d / "astro.png")
    ImageOps.mirror(astronaut).save(d / "astro_flipped.png")  # larger, but a made copy
    (g,) = dedupe_folder(d).groups
    assert g.keep == "astro.png" and g.others == ["astro_flipped.png"] and g.mirrored == ["astro_flipped.png"]


def test_the_captioned_copy_is_kept_over_a_larger_uncaptioned_one(tmp_path, astronaut):
    d = tmp_path / "raw"
    d.mkdir()
    astronaut.save(d / "a.png")
    astronaut.resize((256, 256)).save(d / "b.jpg", quality=90)
    (d / "b.txt").write_text("sage_character, astronaut")
    (g,) = dedupe_folder(d).groups
    assert g.keep == "b.jpg" and g.others == ["a.png"]
    rep = dedupe_folder(d, move_to=tmp_path / "dupes")
    assert (d / "b.txt").read_text() == "sage_character, astronaut" and rep.captions_copied == []
    assert sorted(p.name for p in (tmp_path / "dupes").iterdir()) == ["a.png"]


def test_a_caption_never_leaves_the_kept_image(tmp_path, astronaut, digest):
    """The kept original has no caption, its moved mirror has one: the caption is copied, not lost."""
    d = tmp_path / "raw"
    d.mkdir()
    astronaut.save(d / "astro.png")
    ImageOps.mirror(astronaut).save(d / "astro_mirror.png")
    (d / "astro_mirror.txt").write_text("sage_character, white spacesuit")
    before = digest(d)
    dry = dedupe_folder(d, move_to=tmp_path / "dupes", dry_run=True)
    assert dry.captions_copied == [(str(d / "astro_mirror.txt"), str(d / "astro.txt"))]
    assert digest(d) == before and not (tmp_path / "dupes").exists()
    rep = dedupe_folder(d, move_to=tmp_path / "dupes")
    assert rep.groups[0].keep == "astro.png"
    assert sorted(p.name for p in d.iterdir()) == ["astro.png", "astro.txt"]
    assert (d / "astro.txt").read_text() == "sage_character, white spacesuit"
    # the duplicate keeps its own copy of the caption in the move-to folder
    assert sorted(p.name for p in (tmp_path / "dupes").iterdir()) == ["astro_mirror.png", "astro_mirror.txt"]
    assert (tmp_path / "dupes" / "astro_mirror.txt").read_text() == "sage_character, white spacesuit"
    assert rep.to_json()["captions_copied"] == [{"from": str(d / "astro_mirror.txt"), "to": str(d / "astro.txt")}]


@pytest.mark.parametrize(
    "name,derived",
    [("a_flipped.png", True), ("mirror.png", True), ("a copy.png", True), ("a (2).jpg", True), ("hflip-a.png", True), ("flipbook.png", False), ("mirrorball.jpg", False), ("img_2.png", False)],
)
def test_derived_names(name, derived):
    assert is_derived_name(name) is derived


def test_stage_runs_with_typed_options(tmp_path, astronaut):
    d = tmp_path / "raw"
    d.mkdir()
    astronaut.save(d / "a.png")
    astronaut.resize((200, 200)).save(d / "b.png")
    assert STAGE.name == "dedupe" and STAGE.Options is DedupeOptions
    report = STAGE.run(d, tmp_path / "dupes", DedupeOptions(workers=1))
    assert isinstance(report, StageReport) and report.n_failed == 0
    assert report.to_json()["duplicates"] == 1 and (tmp_path / "dupes" / "b.png").is_file()
    assert STAGE.run(d, None, DedupeOptions()).to_json()["moved"] == []  # no folder: report only
    with pytest.raises(OptionsError, match="threshold"):
        load_options(DedupeOptions, {"threshold": "8"}, where="loraprep.toml [dedupe]")
    with pytest.raises(OptionsError, match="unknown key"):
        load_options(DedupeOptions, {"treshold": 8}, where="loraprep.toml [dedupe]")
    with pytest.raises(OptionsError, match="threshold"):
        load_options(DedupeOptions, {"threshold": 65}, where="loraprep.toml [dedupe]")


def test_cli_flags_come_from_the_options(tmp_path, astronaut):
    from prep.cli import app

    d = tmp_path / "raw"
    d.mkdir()
    astronaut.save(d / "a.png")
    ImageOps.mirror(astronaut).save(d / "b.png")
    runner = CliRunner()
    res = runner.invoke(app, ["dedupe", str(d), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["duplicates"] == 1
    res = runner.invoke(app, ["dedupe", str(d), "--no-mirror", "--json", "--move-to", str(tmp_path / "dupes")])
    assert res.exit_code == 0 and json.loads(res.stdout)["duplicates"] == 0
    res = runner.invoke(app, ["dedupe", str(d), "--threshold", "99"])
    assert res.exit_code == 2 and "--threshold" in res.output
