"""The generic caption pipeline: modes, trigger, resume, statuses, pruning, manifest."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import pytest

from captioning.backends.base import CaptionOptions, CaptionResult, Estimate
from captioning.backends.wd14 import WD14Backend
from captioning.pipeline import caption_folder
from captioning.tags import TagRules, Thresholds
from prep.manifest import Manifest
from wd_tiny import build_tiny_wd14, solid

RED = 'sage_character, kirisame marisa, red hair, don\'t say "lazy", red theme, 1girl, solo, long hair, closed eyes'
GREEN = "sage_character, cat ears, ^_^, green theme, 1girl, solo, long hair, closed eyes"
BLUE = "sage_character, hatsune miku, blue eyes, >_<, blue theme, 1girl, solo, long hair, closed eyes"


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return build_tiny_wd14(tmp_path_factory.mktemp("wd") / "m")


@pytest.fixture()
def data(tmp_path) -> Path:
    d = tmp_path / "imgs"
    d.mkdir()
    for name, rgb in (("a_red", (255, 0, 0)), ("b_green", (0, 255, 0)), ("c_blue", (0, 0, 255))):
        solid(rgb, (64, 64)).save(d / f"{name}.png")
    return d


def opts(model: Path, **kw) -> CaptionOptions:
    return CaptionOptions(trigger="sage_character", model=str(model), batch_size=kw.pop("batch_size", 2), **kw)


def read(p: Path) -> str:
    return p.read_text(encoding="utf-8")


def test_captions_exact_with_trigger_first_and_manifest(model, data, digest):
    before = {k: v for k, v in digest(data).items() if k.endswith(".png")}
    rep = caption_folder(data, "wd14", opts(model))
    assert rep.exit_code() == 0 and rep.count("ok") == 3
    assert read(data / "a_red.txt") == RED + "\n"
    assert read(data / "b_green.txt") == GREEN + "\n"
    assert read(data / "c_blue.txt") == BLUE + "\n"
    after = {k: v for k, v in digest(data).items() if k.endswith(".png")}
    assert before == after  # originals untouched
    recs = {r.id: r for r in Manifest.in_folder(data).step_records("caption")}
    assert set(recs) == {"a_red.png", "b_green.png", "c_blue.png"}
    r = recs["a_red.png"]
    assert r.status == "ok" and r.outputs == ["a_red.txt"] and len(r.source_sha256) == 64 and r.data["backend"] == "wd14"
    assert rep.tag_frequency["1girl"] == 3 and "sage_character" not in rep.tag_frequency
    assert rep.keep_tokens == 1 and "keep_tokens = 1" in rep.keep_tokens_hint()


def test_modes_on_existing_captions(model, data):
    (data / "a_red.txt").write_text("old tag, 1girl\n")
    (data / "b_green.txt").write_text("old tag, 1girl\n")
    (data / "c_blue.txt").write_text("old tag, 1girl\n")
    rep = caption_folder(data, "wd14", opts(model), mode="skip")
    assert rep.count("skipped") == 3 and read(data / "a_red.txt") == "old tag, 1girl\n"

    rep = caption_folder(data, "wd14", opts(model), mode="append")
    assert rep.count("ok") == 3
    assert read(data / "a_red.txt").startswith("sage_character, old tag, 1girl, kirisame marisa, red hair")
    assert read(data / "a_red.txt").count("1girl") == 1

    (data / "b_green.txt").write_text("old tag, 1girl\n")
    rep = caption_folder(data, "wd14", opts(model), mode="prepend", resume=False)
    assert read(data / "b_green.txt") == GREEN + ", old tag\n"

    rep = caption_folder(data, "wd14", opts(model), mode="overwrite")
    assert read(data / "c_blue.txt") == BLUE + "\n"


def test_rerun_same_settings_resumes_without_rewriting(model, data):
    caption_folder(data, "wd14", opts(model), mode="overwrite")
    mtimes = {p.name: p.stat().st_mtime_ns for p in data.glob("*.txt")}
    rep = caption_folder(data, "wd14", opts(model), mode="overwrite")
    assert rep.count("resumed") == 3 and rep.count("ok") == 0
    assert {p.name: p.stat().st_mtime_ns for p in data.glob("*.txt")} == mtimes
    # changed settings re-caption in overwrite mode
    rep = caption_folder(data, "wd14", opts(model), mode="overwrite", rules=TagRules(exclude=("solo",)))
    assert rep.count("ok") == 3 and "solo" not in read(data / "a_red.txt")


class Killed(KeyboardInterrupt):
    pass


class DiesAfterFirstBatch(WD14Backend):
    """A real WD14 backend that is 'killed' while its second batch is in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []
        self.calls = 0

    def caption_batch(self, items, options):
        self.calls += 1
        if self.calls == 2:
            raise Killed()
        out = super().caption_batch(items, options)
        self.seen += [r.id for r in out]
        return out


class Counting(WD14Backend):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def caption_batch(self, items, options):
        self.seen += [i.id for i in items]
        return super().caption_batch(items, options)


def test_killed_run_resumes_and_captions_only_the_rest(model, tmp_path):
    d = tmp_path / "six"
    d.mkdir()
    for i in range(6):
        solid((255, 0, 0) if i % 2 else (0, 0, 255), (48, 48)).save(d / f"{i}.png")
    out = tmp_path / "out"
    dying = DiesAfterFirstBatch()
    with pytest.raises(KeyboardInterrupt):
        caption_folder(d, "wd14", opts(model), output=out, backend=dying)
    assert dying.seen == ["0.png", "1.png"]
    assert sorted(p.name for p in out.glob("*.txt")) == ["0.txt", "1.txt"]
    assert not list(out.glob(".*.tmp"))  # no half-written files
    counting = Counting()
    rep = caption_folder(d, "wd14", opts(model), output=out, backend=counting)
    assert counting.seen == ["2.png", "3.png", "4.png", "5.png"]
    assert rep.count("resumed") == 2 and rep.count("ok") == 4
    assert sorted(p.name for p in out.glob("*.txt")) == [f"{i}.txt" for i in range(6)]
    assert not list(d.glob("*.txt"))  # -o: nothing written beside the images


KILLER = """
import os, signal, sys
from pathlib import Path
from captioning.backends.base import CaptionOptions
from captioning.pipeline import caption_folder

folder, target, when, mode = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
state = {"renamed": False}

def hook(event, args):  # Python's own audit events: the kill lands exactly between two of our writes
    if event == "os.rename" and str(args[1]).endswith(target):
        if when == "before_file":
            os.kill(os.getpid(), signal.SIGKILL)
        state["renamed"] = True
    elif event == "open" and state["renamed"] and str(args[0]).endswith("manifest.jsonl"):
        os.kill(os.getpid(), signal.SIGKILL)  # after_file: the caption is there, its record is not

sys.addaudithook(hook)
caption_folder(folder, "wd14", CaptionOptions(trigger="sage_character", model=sys.argv[5], batch_size=1), mode=mode)
"""


def _killed_at(data: Path, model: Path, when: str, mode: str = "skip") -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", KILLER, str(data), "b_green.txt", when, mode, str(model)], cwd=root,
                          env={**__import__("os").environ, "PYTHONPATH": str(root)}, capture_output=True, timeout=120, check=False)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]


def test_killed_after_the_caption_before_its_record_counts_as_ours(model, data):
    """The old order (file, then record) made such a caption look like the user's: skipped, left
    out of the tag statistics and of --prune-core."""
    _killed_at(data, model, "after_file")
    assert read(data / "b_green.txt") == GREEN + "\n" and Manifest.in_folder(data).get("caption", "b_green.png").status == "writing"
    counting = Counting()
    rep = caption_folder(data, "wd14", opts(model), backend=counting)
    assert "b_green.png" not in counting.seen and {o.id: o.status for o in rep.outcomes}["b_green.png"] == "resumed"
    assert rep.count("ok") + rep.count("resumed") == 3 and rep.count("skipped") == 0
    assert Manifest.in_folder(data).get("caption", "b_green.png").status == "ok"


def test_killed_before_the_caption_replaced_the_users_is_captioned_again(model, data):
    (data / "b_green.txt").write_text("old tag, 1girl\n")
    _killed_at(data, model, "before_file", mode="overwrite")
    assert read(data / "b_green.txt") == "old tag, 1girl\n"
    rec = Manifest.in_folder(data).get("caption", "b_green.png")
    assert rec.status == "writing"  # never "ok" for a caption that is not there
    counting = Counting()
    rep = caption_folder(data, "wd14", opts(model), mode="overwrite", backend=counting)
    assert "b_green.png" in counting.seen and {o.id: o.status for o in rep.outcomes}["b_green.png"] == "ok"
    assert read(data / "b_green.txt") == GREEN + "\n"


def test_overwriting_a_caption_with_the_same_text_resumes_on_rerun(model, data):
    (data / "a_red.txt").write_text(RED + "\n")  # already what the tagger writes
    caption_folder(data, "wd14", opts(model), mode="overwrite")
    counting = Counting()
    rep = caption_folder(data, "wd14", opts(model), mode="overwrite", backend=counting)
    assert counting.seen == [] and rep.count("resumed") == 3


def test_output_mirrors_subfolders(model, tmp_path):
    d = tmp_path / "nested"
    (d / "sub").mkdir(parents=True)
    solid((255, 0, 0)).save(d / "sub" / "x.png")
    out = tmp_path / "o"
    rep = caption_folder(d, "wd14", opts(model), output=out, recursive=True)
    assert rep.count("ok") == 1 and read(out / "sub" / "x.txt") == RED + "\n"
    assert (out / "manifest.jsonl").exists() and not (d / "manifest.jsonl").exists()


def test_prune_identity_and_core(model, data):
    rep = caption_folder(data, "wd14", opts(model), prune_identity_tags=True, prune_core=0.9)
    red = read(data / "a_red.txt")
    assert red == 'sage_character, kirisame marisa, don\'t say "lazy", red theme, 1girl, solo\n'
    assert rep.pruned.identity == {"long hair": 3, "red hair": 1, "cat ears": 1, "blue eyes": 1}
    assert rep.pruned.core == {"closed eyes": 1.0}
    assert "closed eyes" not in rep.tag_frequency
    # the manifest keeps the generated tags, so a rerun prunes the same way
    rec = Manifest.in_folder(data).get("caption", "a_red.png")
    assert "closed eyes" in rec.data["tags"]


def test_mcut_rules_reach_the_backend(model, data):
    caption_folder(data, "wd14", opts(model), rules=TagRules(thresholds=Thresholds(mcut=True)))
    # red general scores: .993 .982 .953 .900 .818 .731 | .450 .269 ~0: the largest gap is .731 -> .450
    assert read(data / "a_red.txt") == RED.removesuffix(", closed eyes") + "\n"
    caption_folder(data, "wd14", opts(model), rules=TagRules(thresholds=Thresholds(general=0.95, character=0.99)), mode="overwrite")
    assert read(data / "a_red.txt") == "sage_character, red hair, don't say \"lazy\", red theme\n"


class Scripted:
    """A sentence backend that answers from a script (stands in for a remote API)."""

    name: ClassVar[str] = "scripted"
    needs_key: ClassVar[str | None] = None
    kind: ClassVar[str] = "text"

    def __init__(self, script: dict[str, tuple[str, str]]):
        self.script = script
        self.state_dirs: list[Path | None] = []
        self.calls: list[str] = []

    def caption_batch(self, items, options):
        self.state_dirs.append(options.state_dir)
        out = []
        for it in items:
            self.calls.append(it.id)
            status, payload = self.script[it.id]
            if status == "raise":
                raise RuntimeError(payload)
            if status == "ok":
                out.append(CaptionResult(it.id, "ok", text=payload, data={"model": "scripted-1"}))
            else:
                out.append(CaptionResult(it.id, status, reason=f"{it.path}: {payload}"))
        return out

    def estimate(self, n, options):
        return Estimate(images=n, seconds=n * 2.0, cost_usd=n * 0.001)


def test_text_backend_statuses_trigger_and_state_dir(tmp_path):
    d = tmp_path / "t"
    d.mkdir()
    for n in "abcde":
        solid((9, 9, 9)).save(d / f"{n}.png")
    script = {
        "a.png": ("ok", "A woman with a red scarf sits on a bench."),
        "b.png": ("ok", "Sage_Character smiles at the camera while SAGE_CHARACTER waves."),
        "c.png": ("blocked", "safety block (IMAGE_SAFETY)"),
        "d.png": ("failed", "model said no"),
        "e.png": ("raise", "connection reset"),
    }
    be = Scripted(script)
    rep = caption_folder(d, "scripted", CaptionOptions(trigger="sage_character", batch_size=8, concurrency=1), backend=be)
    assert read(d / "a.txt") == "sage_character, A woman with a red scarf sits on a bench.\n"
    b = read(d / "b.txt")
    assert b.startswith("sage_character ") and b.lower().count("sage_character") == 1
    assert not (d / "c.txt").exists() and not (d / "d.txt").exists() and not (d / "e.txt").exists()
    assert rep.count("ok") == 2 and rep.count("blocked") == 1 and rep.count("failed") == 2
    assert rep.exit_code() == 3
    recs = {r.id: r for r in Manifest.in_folder(d).step_records("caption")}
    assert recs["c.png"].status == "blocked" and "IMAGE_SAFETY" in recs["c.png"].reason
    assert recs["d.png"].status == "failed" and "d.png" in recs["d.png"].reason
    assert "connection reset" in recs["e.png"].reason and "e.png" in recs["e.png"].reason
    assert set(be.state_dirs) == {d}
    # rerun: ok and blocked are done; failed ones are tried again
    be2 = Scripted({**script, "d.png": ("ok", "a cat"), "e.png": ("ok", "a dog")})
    rep2 = caption_folder(d, "scripted", CaptionOptions(trigger="sage_character", batch_size=8), backend=be2)
    assert sorted(be2.calls) == ["d.png", "e.png"]
    assert rep2.count("blocked") == 1 and rep2.count("resumed") == 2 and rep2.count("ok") == 2
    assert rep2.exit_code() == 3 and read(d / "e.txt") == "sage_character, a dog\n"
    be3 = Scripted({**script, "c.png": ("ok", "a bench")})
    rep3 = caption_folder(d, "scripted", CaptionOptions(trigger="sage_character"), backend=be3, resume=False, mode="skip")
    assert be3.calls == ["c.png"] and rep3.exit_code() == 0


def test_empty_caption_is_failed_not_written(tmp_path):
    d = tmp_path / "e"
    d.mkdir()
    solid((1, 2, 3)).save(d / "x.png")
    rep = caption_folder(d, "scripted", CaptionOptions(), backend=Scripted({"x.png": ("ok", "   ")}))
    assert rep.count("failed") == 1 and "empty caption" in rep.outcomes[0].reason and rep.exit_code() == 1
    assert not (d / "x.txt").exists()


def test_dry_run_writes_nothing_and_estimates(model, data):
    (data / "a_red.txt").write_text("have one\n")
    rep = caption_folder(data, "scripted", CaptionOptions(), backend=Scripted({}), dry_run=True)
    assert rep.to_caption == 2 and rep.estimate.cost_usd == pytest.approx(0.002)
    assert sorted(p.name for p in data.iterdir()) == ["a_red.png", "a_red.txt", "b_green.png", "c_blue.png"]
    assert json.loads(json.dumps(rep.to_json()))["to_caption"] == 2


def test_unknown_mode_is_rejected(data):
    with pytest.raises(ValueError, match="skip"):
        caption_folder(data, "wd14", CaptionOptions(), mode="replace")  # type: ignore[arg-type]


def test_a_key_in_a_backend_error_never_reaches_the_manifest(tmp_path, monkeypatch):
    key = "AIzaFAKE-KEY-0123456789"
    monkeypatch.setenv("GEMINI_API_KEY", key)
    d = tmp_path / "k"
    d.mkdir()
    solid((4, 5, 6)).save(d / "x.png")
    rep = caption_folder(d, "scripted", CaptionOptions(), backend=Scripted({"x.png": ("raise", f"400 bad request for key={key}")}))
    assert rep.count("failed") == 1 and "x.png" in rep.outcomes[0].reason and key not in rep.outcomes[0].reason
    assert key not in (d / "manifest.jsonl").read_text(encoding="utf-8")
