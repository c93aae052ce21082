"""prep dedupe: resized, re-encoded and mirrored copies grouped; the largest kept; never deletes."""

from __future__ import annotations

from PIL import ImageOps

from badimages import gradient
from prep.dedupe import dedupe_folder, hamming, phash_pair


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
    assert sorted(p.name for p in d.iterdir()) == ["big.png", "other.png"]
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
