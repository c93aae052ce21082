"""render-variations keeps the render's identity: real faces (scikit-image's astronaut as the
render, matplotlib's Grace Hopper as a face that drifted), a tiny ONNX model with SFace's real
input/output contract, YuNet (shipped) for the faces, and the real `replicate` client against a
stub on 127.0.0.1 whose "model" restyles the face or, for one style, paints someone else.

Drifted and surplus variations are moved to set_aside/ (asserted on disk), nothing is deleted,
and a rerun neither pays nor embeds again."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageOps

pytest.importorskip("replicate")
pytest.importorskip("onnx")
pytest.importorskip("skimage")

from typer.testing import CliRunner  # noqa: E402

from prep.cli import app  # noqa: E402
from prep.manifest import Manifest  # noqa: E402
from prep.variations import VariationOptions, render_variations  # noqa: E402
from prep.variations.identity import Check, choose_surplus, decide  # noqa: E402
from tests.identity_tiny import astronaut, build_sface, grace_hopper  # noqa: E402
from tests.stubs.replicate_img_stub import ReplicateImgStub  # noqa: E402

TOKEN = "r8_fake_token_for_identity_tests_123"
SKETCH, OTHER = "pencil sketch", "portrait of another person"
MIN_IDENTITY = 0.75
"""The tiny model is not calibrated like SFace (two different people score ~0.6 on it, the
same face restyled ~0.9), so the tests pass a threshold between; the default is checked apart."""


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


class FaceStub(ReplicateImgStub):
    """img2img that keeps the face (greyscale, posterised: a 'sketch') except for the OTHER style,
    which returns another real person's face: the drift a too-high strength can cause."""

    def _make_output(self, inp: dict[str, Any], img: bytes) -> list[str]:
        with Image.open(io.BytesIO(img)) as im:
            src = im.convert("RGB")
        if OTHER in str(inp.get("prompt")):
            out = grace_hopper().resize(src.size)
        else:
            out = ImageOps.posterize(ImageOps.grayscale(src).convert("RGB"), 3)
        fid = f"out{len(self.files)}x{inp.get('seed')}"
        self.files[fid] = ("out.png", "image/png", _png(out))
        return [f"{self.url}/v1/files/{fid}"]


@pytest.fixture(scope="module")
def sface(tmp_path_factory) -> Path:
    return build_sface(tmp_path_factory.mktemp("sface") / "tiny_sface.onnx")


@pytest.fixture
def renders(tmp_path: Path) -> Path:
    src = tmp_path / "renders"
    src.mkdir()
    astronaut().resize((256, 256)).save(src / "astronaut.png")
    rng = np.random.default_rng(1)
    Image.fromarray((rng.random((128, 128, 3)) * 255).astype("uint8")).save(src / "noise.png")  # a render without a face
    (src / "astronaut.txt").write_text("1girl, 3d render, short hair, smile\n")
    return src


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and ".loraprep" not in p.parts}


def _args(renders: Path, out: Path, sface: Path, *extra: str) -> list[str]:
    return ["render-variations", str(renders), "-o", str(out), "--style", SKETCH, "--style", OTHER, "-n", "2", "--trigger", "Sage",
            "--identity-model-path", str(sface), "--min-identity", str(MIN_IDENTITY), "--poll-interval", "0.01", *extra]


def test_drifted_face_is_set_aside_restyled_face_kept_and_a_rerun_pays_nothing(renders, tmp_path, sface, digest, monkeypatch):
    before = digest(renders)
    out = tmp_path / "varied"
    with FaceStub() as stub:
        monkeypatch.setenv("REPLICATE_API_TOKEN", TOKEN)
        monkeypatch.setenv("REPLICATE_BASE_URL", stub.url)
        r = CliRunner().invoke(app, _args(renders, out, sface, "--max-synthetic-share", "0.5", "--json"))
        assert r.exit_code == 0, r.output
        rep = json.loads(r.stdout)
        assert len(stub.preds) == 4 and rep["generated"] == 4

        sketch, other = "astronaut__pencil-sketch_1.png", "astronaut__portrait-of-another-person_1.png"
        noise = ["noise__portrait-of-another-person_1.png", "noise__pencil-sketch_1.png"]  # render 1 starts at style 1
        # the same face restyled stays in the set; another person's face is kept aside, on disk, with its caption
        assert (out / sketch).is_file() and not (out / other).exists()
        assert (out / "set_aside/drifted" / other).is_file() and (out / "set_aside/drifted" / other).with_suffix(".txt").is_file()
        aside = {a["id"]: a for a in rep["set_aside"]}
        assert aside[other]["kind"] == "drifted" and aside[other]["similarity"] < MIN_IDENTITY and "below" in aside[other]["reason"]
        ident = rep["identity"]
        assert ident["model"] == "sface" and ident["threshold"] == MIN_IDENTITY and ident["drifted"] == [other]
        # the faceless render keeps its variations, unchecked, with a note; the share (0.5 of 2 renders -> 2
        # variations) keeps the astronaut's faithful one and one of noise's, the other waits in surplus
        assert {u["id"] for u in ident["unchecked"]} >= {noise[0]} and "no face" in ident["unchecked"][0]["note"]
        assert rep["cap"] == 2 and rep["dropped_by_cap"] == 1
        assert aside[noise[1]]["kind"] == "surplus" and (out / "set_aside/surplus" / noise[1]).is_file()
        assert (out / noise[0]).is_file()

        recs = {v.id: v for v in Manifest.in_folder(out).step_records("render-variations") if v.data.get("kind") == "variation"}
        assert recs[sketch].data["identity"]["similarity"] >= MIN_IDENTITY and recs[sketch].data["identity"]["source_face"]
        assert recs[other].outputs[0] == f"set_aside/drifted/{other}"
        assert recs[noise[0]].data["identity"]["source_face"] is False
        # nothing deleted: every variation is somewhere, the sources are untouched
        assert all((out / rec.outputs[0]).is_file() for rec in recs.values())
        assert digest(renders) == before

        # rerun: no prediction, no embedding, nothing moves
        emb = out / ".loraprep" / "embeddings"
        n_emb = sorted(p.name for p in emb.rglob("*.npy"))
        layout = _files(out)
        mtimes = {p: (out / p).stat().st_mtime_ns for p in layout if p.endswith(".png") and "contact" not in p}
        r = CliRunner().invoke(app, _args(renders, out, sface, "--max-synthetic-share", "0.5"))
        assert r.exit_code == 0, r.output
        assert len(stub.preds) == 4
        assert "set aside" in r.output and other in r.output and "drifted" in r.output and "surplus" in r.output
        assert sorted(p.name for p in emb.rglob("*.npy")) == n_emb and _files(out) == layout
        assert {p: (out / p).stat().st_mtime_ns for p in mtimes} == mtimes

        # a lower threshold and no cap: decided again from the recorded similarities, files come back, still nothing paid
        rep2 = render_variations(renders, out, VariationOptions(
            styles=[SKETCH, OTHER], per_image=2, trigger="Sage", identity_model_path=str(sface), min_identity=0.5, max_synthetic_share=1.0,
            backend_options={"api_token": TOKEN, "base_url": stub.url, "poll_interval": 0.01}))
        assert len(stub.preds) == 4 and rep2.generated == 0 and rep2.resumed == 4 and rep2.identity["embedded_now"] == 0
        assert rep2.set_aside == [] and (out / other).is_file() and (out / noise[1]).is_file()
        assert not any((out / "set_aside").rglob("*.png"))


def test_a_run_killed_after_moving_a_file_finds_it_instead_of_paying_again(renders, tmp_path, sface):
    out = tmp_path / "varied"
    with FaceStub() as stub:
        opts = VariationOptions(styles=[SKETCH, OTHER], per_image=2, trigger="Sage", identity_model_path=str(sface), min_identity=MIN_IDENTITY,
                                max_synthetic_share=1.0, backend_options={"api_token": TOKEN, "base_url": stub.url, "poll_interval": 0.01})
        rep = render_variations(renders, out, opts)
        assert rep.generated == 4 and [a["id"] for a in rep.set_aside] == ["astronaut__portrait-of-another-person_1.png"]
        # as if killed between the rename and its manifest record: the kept sketch sits in set_aside/
        vid = "astronaut__pencil-sketch_1.png"
        (out / "set_aside/surplus").mkdir(parents=True)
        shutil.move(out / vid, out / "set_aside/surplus" / vid)
        rep = render_variations(renders, out, opts)
        assert len(stub.preds) == 4 and rep.generated == 0 and rep.resumed == 4
        assert (out / vid).is_file() and not (out / "set_aside/surplus" / vid).exists()


def test_default_threshold_is_the_models_published_one_and_the_model_is_needed_before_paying(renders, tmp_path, sface, monkeypatch):
    with FaceStub() as stub:
        base = dict(styles=[SKETCH], per_image=1, trigger="Sage", max_synthetic_share=1.0,
                    backend_options={"api_token": TOKEN, "base_url": stub.url, "poll_interval": 0.01})
        rep = render_variations(renders, tmp_path / "a", VariationOptions(identity_model_path=str(sface), **base))
        assert rep.identity["threshold"] == 0.363 and "published" in rep.identity["threshold_source"]  # OpenCV's SFace value
        # no identity model anywhere (offline, empty cache): refused before any prediction is created
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
        monkeypatch.delenv("LORAPREP_SFACE_MODEL", raising=False)
        n = len(stub.preds)
        from prep.models import ModelNotAvailable

        with pytest.raises(ModelNotAvailable, match="identity-model-path"):
            render_variations(renders, tmp_path / "b", VariationOptions(**base))
        assert len(stub.preds) == n
        rep = render_variations(renders, tmp_path / "c", VariationOptions(identity_check=False, **base))
        assert rep.generated == 2 and rep.identity == {"enabled": False, "checked": 0, "embedded_now": 0, "kept": 2, "drifted": [], "unchecked": []}


def test_decisions_and_fair_surplus():
    assert decide(None, 0.5) == ("kept", None)
    assert decide(Check("sface", None, False, None), 0.5)[0] == "kept"
    assert decide(Check("sface", None, True, None), 0.5) == ("drifted", "no face found in the variation")
    assert decide(Check("sface", 0.49, True), 0.5)[0] == "drifted" and decide(Check("sface", 0.5, True), 0.5)[0] == "kept"
    # 3 renders, 3 candidates each, room for 4: every render keeps its best, then the best second
    cands = [(f"{s}{i}", s, sim, n) for n, (s, i, sim) in enumerate(
        [("a", 1, 0.9), ("a", 2, 0.8), ("a", 3, 0.7), ("b", 1, 0.6), ("b", 2, 0.95), ("b", 3, 0.5), ("c", 1, None), ("c", 2, None), ("c", 3, None)])]
    assert choose_surplus(cands, 4) == {"a3", "b1", "b3", "c2", "c3"}  # kept: b2, a1, c1 (round 0), a2 (best of round 1)
    assert choose_surplus(cands, None) == set() and choose_surplus(cands, 9) == set()
    assert choose_surplus(cands, 3) == {"a2", "a3", "b1", "b3", "c2", "c3"}


def test_loraprep_run_renders_adds_identity_checked_variations(tmp_path, sface, monkeypatch):
    """`loraprep run` on a 3D-render project: crop -> caption -> trigger -> variations (05_renders) -> lint -> layout."""
    from loraprep.cli import app as loraprep_app
    from loraprep.project import Project
    from tests.wd_tiny import build_tiny_wd14

    raw = tmp_path / "raw"
    raw.mkdir()
    astronaut().save(raw / "hero.png")
    project = tmp_path / "project"
    models = tmp_path / "models"
    proj = Project(source=str(raw), trigger="sage_char", trainer="anima", resolution=512, workers=1)
    proj.crop.framing, proj.crop.detector = "bust", "photo"
    proj.caption.model = str(build_tiny_wd14(tmp_path / "wd", batch=None))
    proj.train.models = {k: str(models / f"{k}.safetensors") for k in ("dit", "qwen3", "vae")}
    proj.variations.styles, proj.variations.per_image = [SKETCH, OTHER], 2
    proj.variations.identity_model_path = str(sface)
    project.mkdir()
    proj.save(project / "loraprep.toml")

    def run(*extra: str) -> dict:
        res = CliRunner().invoke(loraprep_app, ["run", "-o", str(project), "--json", *extra], catch_exceptions=False)
        assert res.exit_code == 0, res.output
        return json.loads(res.stdout)

    with FaceStub() as stub:
        monkeypatch.setenv("REPLICATE_API_TOKEN", TOKEN)
        monkeypatch.setenv("REPLICATE_BASE_URL", stub.url)
        rep = run("--renders")
        st = {s["name"]: s for s in rep["stages"]}
        names = [s["name"] for s in rep["stages"]]
        assert names.index("trigger") < names.index("variations") < names.index("lint") and st["variations"]["status"] == "done"
        v = st["variations"]["summary"]
        assert v["generated"] == 2 and len(stub.preds) == 2
        # one render, share 0.6: one variation kept; the published threshold (0.363) passes both faces of the
        # tiny model, so the other-person one waits in surplus (the less faithful of the two)
        other = "hero__portrait-of-another-person_1.png"
        assert v["set_aside"] == {other: f"set_aside/surplus/{other}"} and (project / "05_renders/set_aside/surplus" / other).is_file()
        renders = project / "05_renders"
        assert (renders / "hero.png").is_file() and (renders / "hero__pencil-sketch_1.png").is_file()
        assert (renders / "hero__pencil-sketch_1.txt").read_text().startswith("sage_char, pencil sketch")
        assert "3d render" in (renders / "hero.txt").read_text()
        img_dir = next((project / "dataset" / "img").iterdir())
        caps = sorted(c.read_text() for c in img_dir.glob("*.txt"))  # layout renames; the captions say which is which
        assert len(list(img_dir.glob("*.png"))) == 2 and len(caps) == 2  # the set-aside one is not trained on
        assert any("3d render" in c for c in caps) and any(c.startswith("sage_char, pencil sketch") for c in caps)
        assert Project.load(project / "loraprep.toml").variations.enabled  # --renders is saved

        rep = run()
        assert {s["name"]: s["status"] for s in rep["stages"]}["variations"] == "up-to-date" and len(stub.preds) == 2

        # a stricter threshold in loraprep.toml: decided again from the recorded similarity, nothing paid again
        proj = Project.load(project / "loraprep.toml")
        proj.variations.min_identity = MIN_IDENTITY
        proj.save(project / "loraprep.toml")
        rep = run()
        v = {s["name"]: s for s in rep["stages"]}["variations"]["summary"]
        assert len(stub.preds) == 2 and v["resumed"] == 2 and v["drifted"] == [other]
        assert (renders / "set_aside/drifted" / other).is_file() and not (renders / "set_aside/surplus" / other).exists()
