"""loraprep's own stages (merge) behave like the per-command tools on the same input."""

from __future__ import annotations

from PIL import Image

from captioning.merge import merge_caption
from loraprep.stages import STEPS, MergeOptions, MergeStage


def _img(path):
    Image.new("RGB", (8, 8), (200, 10, 10)).save(path)


def test_merge_appends_like_caption_mode_append(tmp_path):
    cropped, gen, out = tmp_path / "cropped", tmp_path / "gen", tmp_path / "out"
    cropped.mkdir(), gen.mkdir()
    _img(cropped / "a.png")
    _img(cropped / "b.png")
    (cropped / "a.txt").write_text("red hair, smile\n")
    (gen / "a.txt").write_text("smile, 1girl\n")
    (out).mkdir()
    (out / "gone.png").write_bytes(b"x")  # a crop that no longer exists upstream
    rep = MergeStage().run(cropped, out, MergeOptions(generated=str(gen), mode="append"))
    assert (out / "a.txt").read_text().strip() == "red hair, smile, 1girl" == merge_caption("red hair, smile", "smile, 1girl", "append")
    assert rep.without_caption == ["b.png"] and rep.n_failed == 0
    assert (out / "a.png").read_bytes() == (cropped / "a.png").read_bytes()
    assert not (out / "gone.png").exists()
    assert (cropped / "a.txt").read_text() == "red hair, smile\n"  # the user's caption is untouched


def test_every_step_is_a_stage_with_the_shared_protocol():
    names = [s.name for s in STEPS]
    assert names == ["import", "check", "dedupe", "crop", "caption", "merge", "trigger", "variations", "lint", "layout", "config", "estimate"]
    for step in STEPS:
        stage = step.stage()
        assert stage.name == step.name or (step.name, stage.name) == ("variations", "render-variations")  # the step is named by its folder
        assert callable(stage.run) and hasattr(stage.Options, "model_validate")
