"""The run page's data and routes (Starlette TestClient), the samples table and the checkpoint grid.

Runs are real fake-trainer runs (`train_bridge launch` of tests/fake_trainer) or run folders
written the way launch writes them; sample files are named as sd-scripts 48d368fa names them
(`library/train_util.py` sample_image_inference).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fake_trainer.helpers import launch_args, make_run, make_trainer_root, run_cli
from PIL import Image
from starlette.testclient import TestClient

from loraprep.studio.app import create_app, create_run_app
from loraprep.studio.data import Dataset
from loraprep.studio.run_page import loss_svg
from train_bridge.progress_view import LossHistory, scheduled_lr, smooth
from train_bridge.samples import (
    HEADER_H,
    LABEL_W,
    PAD,
    collect_run_samples,
    parse_sample_name,
    read_prompts,
    render_grid,
)

TOKEN = "t0k"
COLORS = [(220, 30, 30), (30, 200, 30), (30, 30, 220)]


def png(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (64, 64)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


@pytest.fixture
def finished(tmp_path: Path) -> Path:
    """A fake run launched to the end (3 epochs x 4 steps), its samples replaced by real PNGs
    named per step, two prompts."""
    run = make_run(tmp_path, epochs=3, steps_per_epoch=4)
    res = run_cli(launch_args(run, make_trainer_root(tmp_path)), tmp_path)
    assert res.returncode == 0, res.stdout
    (run / "sample_prompts.txt").write_text("# comment\nohwx, 1girl, smile --w 512 --h 512 --d 42\n\nohwx, full body --w 512 --d 42\n", encoding="utf-8")
    sample = tmp_path / "output" / "sample"
    for p in sample.iterdir():
        p.unlink()  # the fake's placeholders are not images
    for col, epoch in enumerate((1, 2, 3)):
        for prompt in (0, 1):
            png(sample / f"lora_e{epoch:06d}_{prompt:02d}_2026010100000{col}_42.png", COLORS[col], (64 + 32 * prompt, 64))
    png(sample / "lora_000006_00_20260101000009_42.png", (250, 250, 0))  # a step sample between checkpoints
    (sample / "notes.png").write_bytes(b"not a trainer sample")
    return run


def test_sample_names_as_sd_scripts_writes_them(tmp_path: Path) -> None:
    s = parse_sample_name(Path("my_lora_v2_000250_01_20260101120000_42.png"))
    assert (s.output_name, s.step, s.epoch, s.prompt, s.seed) == ("my_lora_v2", 250, None, 1, 42)
    e = parse_sample_name(Path("x_e000003_00_20260101120000.png"), steps_per_epoch=40)
    assert (e.epoch, e.step, e.seed, e.when) == (3, 120, None, "epoch 3 (step 120)")
    assert parse_sample_name(Path("000250_00_20260101120000_1.png")).output_name == ""  # no output_name
    assert parse_sample_name(Path("cover.png")) is None and parse_sample_name(Path("x_000250_00_20260101120000_1.txt")) is None
    p = tmp_path / "p.txt"
    p.write_text("# c\n\nfirst, tag --w 8 --d 1\n#x\nsecond\n", encoding="utf-8")
    assert read_prompts(p) == ["first, tag", "second"]


def test_samples_by_prompt_and_checkpoint(finished: Path) -> None:
    t = collect_run_samples(finished)
    assert [c.label for c in t.columns] == ["epoch 1 (step 4)", "step 6", "epoch 2 (step 8)", "epoch 3 (step 12)"]
    assert [c.checkpoint.name if c.checkpoint else None for c in t.columns] == ["lora-000001.safetensors", None, "lora-000002.safetensors", "lora.safetensors"]
    assert t.rows() == [0, 1] and t.prompt_text(0) == "ohwx, 1girl, smile" and t.prompt_text(1) == "ohwx, full body"
    assert [p.name for p in t.unnamed] == ["notes.png"]
    picked = t.only_checkpoints()
    assert [c.step for c in picked.columns] == [4, 8, 12]


def test_the_final_checkpoint_is_placed_at_the_step_a_resume_reached(finished: Path) -> None:
    """A run planned for 12 steps and resumed to 16 (the real Anima tier does 4 -> 8): the final
    `lora.safetensors` holds step 16's weights, not the plan's step 12."""
    import json

    sample = finished.parent / "output" / "sample"
    for prompt in (0, 1):
        png(sample / f"lora_e000004_{prompt:02d}_20260101000019_42.png", (10, 200, 10), (64, 64))
    st = json.loads((finished / "status.json").read_text())
    st["state"], st["progress"]["global_step"] = "done", 16
    (finished / "status.json").write_text(json.dumps(st))
    t = collect_run_samples(finished)
    final = {c.label: c.checkpoint.name if c.checkpoint else None for c in t.columns}
    assert final["epoch 4 (step 16)"] == "lora.safetensors" and final["epoch 3 (step 12)"] is None


def test_checkpoint_grid_image_size_and_cells(finished: Path, tmp_path: Path) -> None:
    out = tmp_path / "grid.png"
    res = run_cli(["samples", str(finished), "--checkpoints", "--cell", "128", "-o", str(out), "--json"], tmp_path)
    assert res.returncode == 0, res.stdout
    data = json.loads(res.stdout)
    assert [c["checkpoint"].rsplit("/", 1)[-1] for c in data["columns"]] == ["lora-000001.safetensors", "lora-000002.safetensors", "lora.safetensors"]
    im = Image.open(out).convert("RGB")
    assert im.size == (LABEL_W + 3 * (128 + PAD) + PAD, HEADER_H + 2 * (128 + PAD) + PAD)
    for ci, color in enumerate(COLORS):  # column ci holds checkpoint ci's samples, centred in their cell
        for ri in (0, 1):
            x = LABEL_W + PAD + ci * (128 + PAD) + 64
            y = HEADER_H + PAD + ri * (128 + PAD) + 64
            assert im.getpixel((x, y)) == color
    # labels: light text in the header over each column and in the prompt column of each row
    def has_text(box: tuple[int, int, int, int]) -> bool:
        return any(min(im.getpixel((x, y))) > 180 for x in range(box[0], box[2]) for y in range(box[1], box[3]))
    for ci in range(3):
        x = LABEL_W + PAD + ci * (128 + PAD)
        assert has_text((x, 4, x + 100, 22))
    for ri in range(2):
        y = HEADER_H + PAD + ri * (128 + PAD)
        assert has_text((PAD, y, LABEL_W - PAD, y + 14))
    # every sampled step, and the default output path
    res = run_cli(["samples", str(finished), "--checkpoints", "--all-steps", "--cell", "64"], tmp_path)
    assert res.returncode == 0 and Image.open(finished / "samples_grid.png").size[0] == LABEL_W + 4 * (64 + PAD) + PAD


def test_checkpoint_grid_without_samples_says_why(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    res = run_cli(["samples", str(run), "--checkpoints"], tmp_path)
    assert res.returncode == 2 and "no sample" in res.stdout + res.stderr


def test_render_grid_marks_a_missing_and_an_unreadable_sample(finished: Path) -> None:
    t = collect_run_samples(finished)
    bad = t.columns[0].samples[1].path
    bad.write_bytes(b"\x89PNG broken")
    im = render_grid(t, cell=64)
    assert im.size == (LABEL_W + 4 * (64 + PAD) + PAD, HEADER_H + 2 * (64 + PAD) + PAD)
    x, y = LABEL_W + PAD + 1 * (64 + PAD) + 60, HEADER_H + PAD + 1 * (64 + PAD) + 60  # step 6 has no prompt-1 sample
    assert im.getpixel((x, y)) == (45, 51, 61)


def test_loss_history_spans_a_resume_with_the_launch_offset(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    bar = "steps: {p}%|#| {s}/12 [00:01<00:01, 2.00it/s, avr_loss={l}]"
    (logs / "20260101-000000.log").write_text("epoch 1/3\n" + "\r".join(bar.format(p=s * 8, s=s, l=1.0 / s) for s in range(1, 7)) + "\n", encoding="utf-8")
    h = LossHistory(logs, steps_per_epoch=4, total_steps=12)
    assert [s for s, _ in h.points()] == [1, 2, 3, 4, 5, 6]
    resumed = logs / "20260101-000100.log"
    resumed.write_text('### loraprep command train: ["python", "x.py", "--resume", "out/lora-000001-state"]\nepoch 2/3\n', encoding="utf-8")
    import os
    os.utime(resumed, (os.path.getmtime(logs / "20260101-000000.log") + 5,) * 2)
    with open(resumed, "a", encoding="utf-8") as fh:  # sd-scripts' bar restarts at 0 after a resume
        fh.write("\r".join(bar.format(p=s * 8, s=s, l=0.5 / s) for s in range(1, 3)))
    os.utime(resumed, (os.path.getmtime(logs / "20260101-000000.log") + 5,) * 2)
    pts = dict(h.points())
    assert sorted(pts) == [1, 2, 3, 4, 5, 6]  # steps 5-6 redone by the resumed session: its values win
    assert pts[5] == pytest.approx(0.5) and pts[4] == pytest.approx(0.25)


def test_smooth_and_scheduled_lr() -> None:
    assert smooth([1.0, 1.0, 1.0]) == pytest.approx([1.0, 1.0, 1.0])  # debiased: no pull towards 0
    s = smooth([1.0, 0.0, 0.0, 0.0])
    assert s[0] == 1.0 and 0 < s[-1] < s[1] < 1.0
    assert scheduled_lr({"learning_rate": 1e-4}, 50, 100) == 1e-4
    assert scheduled_lr({"learning_rate": 1e-4, "lr_scheduler": "cosine"}, 50, 100) == pytest.approx(5e-5)
    assert scheduled_lr({"learning_rate": 1e-4, "lr_scheduler": "linear", "lr_warmup_steps": 10}, 5, 110) == pytest.approx(5e-5)
    assert scheduled_lr({"learning_rate": 1e-4, "lr_scheduler": "rex"}, 5, 10) is None


def test_loss_svg_draws_both_curves() -> None:
    svg = loss_svg([(1, 1.0), (2, 0.5), (3, 0.4)])
    assert 'data-points="3"' in svg and 'class="raw"' in svg and 'class="smooth"' in svg and "<svg" in svg
    assert 'data-points="0"' in loss_svg([])


def test_run_routes_need_the_token_and_refuse_what_cannot_be_done(finished: Path) -> None:
    app = create_run_app(finished, token=TOKEN)
    c = TestClient(app)
    assert c.get("/run").status_code == 403 and c.post("/api/run/stop").status_code == 403
    r = c.get(f"/run?token={TOKEN}")  # sets the cookie
    assert r.status_code == 200 and 'id="run-step"' in r.text and "12 / 12" in r.text
    assert "ohwx, 1girl, smile" in r.text and "lora_e000002_01_" in r.text
    d = c.get("/api/run").json()
    assert d["state"] == "done" and d["step"] == 12 and d["epoch"] == 3 and len(d["points"]) == 12 and not d["can_stop"] and not d["can_resume"]
    stop = c.post("/api/run/stop")
    assert stop.status_code == 409 and "not training" in stop.text
    resume = c.post("/api/run/resume")
    assert resume.status_code == 409 and "finished" in resume.text
    assert c.get("/run/sample/lora_e000001_00_20260101000000_42.png").headers["content-type"] == "image/png"
    assert c.get("/run/sample/../../run/run.json").status_code == 404
    g = c.get("/run/grid.png?cell=64")
    assert g.status_code == 200 and Image.open(__import__("io").BytesIO(g.content)).size == (LABEL_W + 3 * (64 + PAD) + PAD, HEADER_H + 2 * (64 + PAD) + PAD)
    live = c.get("/run/live")
    assert live.status_code == 200 and 'hx-trigger="every 2s' in live.text and "polyline" in live.text
    assert c.get("/").status_code == 200  # redirected to /run


def test_read_only_refuses_stop_and_resume(finished: Path) -> None:
    c = TestClient(create_run_app(finished, read_only=True))
    assert c.post("/api/run/stop").status_code == 403 and c.post("/api/run/resume").status_code == 403
    assert 'id="run-stop"' not in c.get("/run").text


def test_resume_is_refused_without_a_saved_state(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    (run / "status.json").write_text(json.dumps({"state": "interrupted", "launcher_pid": 999999999}), encoding="utf-8")
    c = TestClient(create_run_app(run))
    r = c.post("/api/run/resume")
    assert r.status_code == 409 and "no saved state" in r.text
    assert c.get("/api/run").json()["can_resume"] is False


def test_studio_on_a_project_with_a_run_shows_the_run_page(tmp_path: Path) -> None:
    from loraprep.studio.demo import make_project

    proj = make_project(tmp_path / "proj", 4)
    c = TestClient(create_app(Dataset(proj)))
    assert c.get("/run").status_code == 404 and 'id="run-link"' not in c.get("/").text  # no run yet
    run = make_run(tmp_path / "t")
    (proj / "run").mkdir()
    for f in run.iterdir():
        (proj / "run" / f.name).write_bytes(f.read_bytes())
    c = TestClient(create_app(Dataset(proj)))
    assert 'id="run-link"' in c.get("/").text
    page = c.get("/run")
    assert page.status_code == 200 and "not started" in page.text and "dataset grid" in page.text
    (proj / "run" / "run.json").write_text("{not json", encoding="utf-8")  # a broken run/ does not keep the dataset pages shut
    c = TestClient(create_app(Dataset(proj)))
    assert c.get("/").status_code == 200 and c.get("/run").status_code == 404
    with pytest.raises(ValueError, match="run.json"):
        create_app(Dataset(proj), run_dir=proj / "run")


def test_studio_cli_opens_a_run_folder(tmp_path: Path) -> None:
    from loraprep.studio.cli import is_run_folder

    run = make_run(tmp_path)
    assert is_run_folder(run) and not is_run_folder(tmp_path)
    from typer.testing import CliRunner

    from loraprep.cli import app

    res = CliRunner().invoke(app, ["studio", str(tmp_path), "--run", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "no run.json" in res.output
