"""loraprep.toml is typed by the stages' own options: wrong types and unknown keys are refused
naming the key, the section and the file; each option is declared once (in its stage)."""

from __future__ import annotations

import pytest

from loraprep.project import PROJECT_KEYS, RUN_KEYS, SECTIONS, ClipsSection, CropSection, Project
from prep.crop import CropOptions
from prep.options import OptionsError

BASE = '[project]\nsource = "raw"\ntrigger = "sage"\n'


def _load(tmp_path, text: str) -> Project:
    path = tmp_path / "loraprep.toml"
    path.write_text(text)
    return Project.load(path)


def _refused(tmp_path, text: str) -> str:
    with pytest.raises(OptionsError) as exc:
        _load(tmp_path, text)
    return str(exc.value)


def test_a_string_for_a_boolean_is_refused_not_truthy(tmp_path):
    msg = _refused(tmp_path, BASE + "[crop]\nupscale = 'no'\n")
    assert "[crop] upscale" in msg and str(tmp_path / "loraprep.toml") in msg and "boolean" in msg


def test_a_word_for_the_resolution_is_refused(tmp_path):
    msg = _refused(tmp_path, BASE.replace('trigger = "sage"', 'trigger = "sage"\nresolution = "big"'))
    assert "[project] resolution" in msg and "loraprep.toml" in msg


def test_unknown_keys_and_sections_are_named_with_the_known_ones(tmp_path):
    msg = _refused(tmp_path, BASE + "[crop]\nframming = 'bust'\n")
    assert "[crop] framming" in msg and "unknown key" in msg and "framing" in msg
    msg = _refused(tmp_path, BASE + "[cropp]\n")
    assert "[cropp]" in msg and "unknown section" in msg
    msg = _refused(tmp_path, BASE.replace('trigger = "sage"', 'trigger = "sage"\nframing = "bust"'))
    assert "[project] framing" in msg and "own section" in msg


def test_the_stages_own_checks_speak_at_load_time(tmp_path):
    msg = _refused(tmp_path, BASE + "[crop]\nframing = 'torso'\n")
    assert "[crop] framing" in msg and "torso" in msg
    msg = _refused(tmp_path, BASE.replace('trigger = "sage"', 'trigger = "sage"\ntrainer = "animaa"'))
    assert "[project] trainer" in msg and "anima" in msg


def test_missing_source_or_trigger(tmp_path):
    msg = _refused(tmp_path, '[project]\nsource = "raw"\n')
    assert "[project] trigger" in msg


def test_sections_are_the_stage_options_minus_the_projects_settings():
    """Declared once: [crop] is CropOptions' own fields (and docs), never a copy to keep in step."""
    own = set(CropOptions.model_fields) - set(PROJECT_KEYS) - set(RUN_KEYS)
    assert set(CropSection.model_fields) == own | {"enabled"}
    for name in own:
        assert CropSection.model_fields[name].description == CropOptions.model_fields[name].description
    for sec in SECTIONS:
        fields = set(Project.model_fields[{"import": "import_"}.get(sec.name, sec.name)].annotation.model_fields)
        assert not fields & (set(PROJECT_KEYS) - set(sec.own)), sec.name
    assert ClipsSection.model_fields["resolution"].annotation is str  # [clips] has its own WxH resolution


def test_clips_section_reaches_the_clips_stage_and_image_projects_ignore_it(tmp_path):
    from loraprep.project import Project

    p = Project(source="raw", trigger="walk", trainer="wan22-t2v", clips={"resolution": "480x832", "frames": 49})
    opts = p.stage_options("clips")
    assert (opts.resolution, opts.frames, opts.trainer) == ("480x832", 49, "wan22-t2v")
    Project(source="raw", trigger="sage", trainer="anima").check_stages()  # a Wan-only stage is not checked for Anima
    with pytest.raises(OptionsError, match="frames"):
        Project(source="raw", trigger="walk", trainer="wan22-t2v", clips={"frames": 80}).check_stages()


def test_the_project_settings_reach_each_stage_that_has_them(tmp_path):
    p = _load(tmp_path, BASE.replace('trigger = "sage"', 'trigger = "sage"\ntrainer = "sdxl"\nresolution = 768\nworkers = 3') + "[crop]\nframing = 'face'\n")
    crop = p.stage_options("crop")
    assert isinstance(crop, CropOptions)
    assert (crop.resolution, crop.trainer, crop.workers, crop.framing) == (768, "sdxl", 3, "face")
    check = p.stage_options("check")
    assert (check.resolution, check.trainer) == (768, "sdxl")


def test_round_trip_and_a_file_of_the_previous_version_loads(tmp_path):
    # written by loraprep run before options were typed (keys unchanged)
    old = (
        BASE.replace('trigger = "sage"', 'trigger = "sage"\ntrainer = "anima"\nresolution = 1024')
        + "[import]\nflatten = true\n\n[check]\n\n[dedupe]\nenabled = true\nthreshold = 8\nmirror = true\n\n"
        + '[crop]\nenabled = true\nframing = "bust"\ndetector = "auto"\nno_face = "center"\nall_faces = false\nupscale = true\npad = false\nbackground = "white"\nformat = "png"\n\n'
        + '[caption]\nbackend = "wd14"\ngeneral_threshold = 0.35\ncharacter_threshold = 0.85\nmcut = false\nprune_identity = true\nexclude = []\nreplace = []\nlora_type = "character"\nmode = "skip"\n\n'
        + "[layout]\nrepeats = 10\n\n[train]\n\n[train.models]\ndit = \"d.safetensors\"\n\n[train.set]\nnetwork_dim = 8\n"
    )
    p = _load(tmp_path, old)
    assert p.crop.upscale is True and p.train.set == {"network_dim": 8} and p.caption.mode == "skip"
    again = Project.from_toml(p.to_toml())
    assert again == p
