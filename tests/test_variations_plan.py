"""render-variations planning, captions, presets and CLI parsing (no model, no network)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from prep.cli import app
from prep.variations.backends.replicate import SDXL_VERSION, preset_for
from prep.variations.captions import img2img_prompt, original_caption, variation_caption
from prep.variations.families import family_of, strength_warning
from prep.variations.plan import Source, derive_seed, is_variation_name, plan_variations, synthetic_cap

STYLES = ["oil painting portrait", "pencil sketch", "watercolor portrait"]


def _sources(n: int) -> list[Source]:
    return [Source(f"r{i}.png", f"/x/r{i}.png", f"{i:064x}") for i in range(n)]


def test_styles_rotate_across_sources_and_each_source_gets_distinct_styles():
    plan = plan_variations(_sources(3), STYLES, per_image=2, max_synthetic_share=1.0)
    assert plan.cap is None and len(plan.variations) == 6
    by_src: dict[str, list[str]] = {}
    for v in plan.variations:
        by_src.setdefault(v.source_id, []).append(v.style)
    assert by_src["r0.png"] == ["oil painting portrait", "pencil sketch"]
    assert by_src["r1.png"] == ["pencil sketch", "watercolor portrait"]
    assert all(len(set(s)) == 2 for s in by_src.values())
    counts = {s: sum(v.style == s for v in plan.variations) for s in STYLES}
    assert set(counts.values()) == {2}  # every style equally often
    assert plan.variations[0].id == "r0__oil-painting-portrait_1.png"


def test_more_variations_than_styles_numbers_repeats():
    plan = plan_variations(_sources(1), ["sketch"], per_image=3, max_synthetic_share=1.0)
    assert [v.id for v in plan.variations] == ["r0__sketch_1.png", "r0__sketch_2.png", "r0__sketch_3.png"]
    assert len({v.seed for v in plan.variations}) == 3


def test_synthetic_share_caps_round_by_round():
    assert synthetic_cap(4, 0.5) == 4 and synthetic_cap(4, 0.25) == 1 and synthetic_cap(4, 1.0) is None and synthetic_cap(4, 0.0) == 0
    plan = plan_variations(_sources(4), STYLES, per_image=3)  # default share 0.5
    assert plan.wanted == 12 and len(plan.variations) == 4 and plan.dropped == 8
    assert sorted(v.source_id for v in plan.variations) == [f"r{i}.png" for i in range(4)]  # one each, not 3+1
    with pytest.raises(ValueError):
        synthetic_cap(3, 1.5)


def test_seeds_depend_on_source_bytes_style_and_index_only():
    a = plan_variations(_sources(2), STYLES, per_image=2, max_synthetic_share=1.0)
    b = plan_variations(_sources(5), STYLES, per_image=2, max_synthetic_share=1.0)
    seeds_a = {v.id: v.seed for v in a.variations}
    assert all(seeds_a[v.id] == v.seed for v in b.variations if v.id in seeds_a)
    assert derive_seed("ab", "sketch", 0) == derive_seed("ab", "sketch", 0)
    assert len({derive_seed("ab", "sketch", 0), derive_seed("ac", "sketch", 0), derive_seed("ab", "oil", 0), derive_seed("ab", "sketch", 1), derive_seed("ab", "sketch", 0, base=7)}) == 5
    assert 0 <= derive_seed("ab", "x", 0) < 2**31


def test_same_stem_different_extension_never_collides_and_variations_are_recognised():
    srcs = [Source("a.png", "/x/a.png", "1" * 64), Source("a.jpg", "/x/a.jpg", "2" * 64)]
    ids = [v.id for v in plan_variations(srcs, ["sketch"], per_image=1, max_synthetic_share=1.0).variations]
    assert len(set(ids)) == 2 and all(is_variation_name(i.rsplit("/", 1)[-1]) for i in ids)
    assert not is_variation_name("a.png")
    with pytest.raises(ValueError, match="same file name"):
        plan_variations(srcs, ["Oil painting", "oil-painting"], per_image=1)


def test_variation_caption_trigger_first_style_next_render_words_dropped():
    cap = variation_caption("sage, 1girl, 3d, red hair, blender (medium)", "oil painting portrait", "Sage")
    assert cap == "Sage, oil painting portrait, 1girl, red hair"
    assert variation_caption(None, "pencil sketch", "Sage") == "Sage, pencil sketch"
    assert variation_caption("1girl, smiling", "pencil sketch", None) == "pencil sketch, 1girl, smiling"
    prose = variation_caption("Sage is a woman in a red coat.", "watercolor portrait", "Sage")
    assert prose.startswith("Sage is a woman") and prose.count("Sage") == 1 and "Watercolor portrait" in prose


def test_original_caption_gets_render_tag_once():
    once = original_caption("1girl, red hair", "Sage")
    assert once == "Sage, 3d render, 1girl, red hair"
    assert original_caption(once, "Sage") == once
    assert original_caption(None, None) == "3d render"


def test_prompt_leaves_out_trigger_and_render_words():
    p = img2img_prompt("sage, 1girl, 3d render, red hair", "oil painting", "Sage")
    assert p == "oil painting, 1girl, red hair"
    assert "Sage" not in img2img_prompt("A 3D render of Sage waving.", "sketch", "Sage")


def test_presets_know_model_input_names_and_family_strengths():
    flux = preset_for("black-forest-labs/flux-dev")
    assert (flux.image, flux.strength, flux.guidance, flux.seed, flux.output_format) == ("image", "prompt_strength", "guidance", "seed", "output_format")
    assert flux.negative_prompt is None and flux.family == "flux"
    sdxl = preset_for("sdxl")
    assert sdxl.ref == f"stability-ai/sdxl:{SDXL_VERSION}" and sdxl.guidance == "guidance_scale" and sdxl.negative_prompt == "negative_prompt"
    assert preset_for("stability-ai/sdxl:abc").ref == "stability-ai/sdxl:abc"
    assert family_of("black-forest-labs/flux-dev").strength == 0.6
    assert family_of("stabilityai/stable-diffusion-xl-base-1.0").strength == 0.45
    assert 0.35 <= family_of("sdxl").strength <= 0.55 and 0.5 <= family_of("flux").strength <= 0.75
    assert strength_warning(0.3, family_of("flux")) and strength_warning(0.6, family_of("flux")) is None


@pytest.fixture
def renders(tmp_path):
    from PIL import Image

    src = tmp_path / "renders"
    src.mkdir()
    for i, name in enumerate(["hero", "robot"]):
        Image.new("RGB", (40, 40), (40 * i, 90, 200)).save(src / f"{name}.png")
    (src / "hero.txt").write_text("1girl, 3d, red hair")
    return src


def test_cli_styles_forms_and_dry_run_writes_nothing(renders, tmp_path, digest):
    before = digest(renders)
    out = tmp_path / "varied"
    r = CliRunner().invoke(app, ["render-variations", str(renders), "-o", str(out), "--styles", "photorealistic portrait, dslr photo",
                                 "oil painting portrait", "pencil sketch", "--per-image", "3", "--max-synthetic-share", "1",
                                 "--trigger", "Sage", "--dry-run", "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["planned"] == 6 and rep["dry_run"] and rep["strength"] == 0.6
    assert {v["style"] for v in rep["variations"]} == {"photorealistic portrait, dslr photo", "oil painting portrait", "pencil sketch"}
    assert all(v["caption"].startswith("Sage, ") for v in rep["variations"])
    assert not out.exists() and digest(renders) == before

    r = CliRunner().invoke(app, ["render-variations", str(renders), "-o", str(out), "--style", "sketch", "--style", "oil painting",
                                 "--styles", "ink|pastel drawing", "--dry-run", "--json", "--max-synthetic-share", "1", "-n", "4"])
    assert r.exit_code == 0, r.output
    hero = [v["style"] for v in json.loads(r.stdout)["variations"] if v["source"] == "hero.png"]
    assert hero == ["sketch", "oil painting", "ink", "pastel drawing"]

    r = CliRunner().invoke(app, ["render-variations", str(renders), "-o", str(out), "stray", "--dry-run"])
    assert r.exit_code == 2
