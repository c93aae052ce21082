"""prep check on a folder holding every bad-input kind: finishes, names each file, changes nothing."""

from __future__ import annotations

import json
import subprocess
import sys

from badimages import gradient, write_bad_folder
from prep.check import CheckOptions, check_folder


def test_check_reports_every_bad_kind_and_changes_nothing(tmp_path, digest):
    folder = tmp_path / "raw"
    write_bad_folder(folder)
    before = digest(folder)
    rep = check_folder(folder, CheckOptions(resolution=512, workers=2))
    assert digest(folder) == before
    errs = {e["file"]: e["reason"] for e in rep.errors}
    assert set(errs) == {"empty.jpg", "truncated.jpg", "corrupt.png", "notanimage.webp", "bomb.png"}
    assert "0 bytes" in errs["empty.jpg"] and "truncated" in errs["truncated.jpg"]
    assert "decompression bomb" in errs["bomb.png"]
    probs = rep.problems()
    assert probs["exif_rotated"] == ["rotated.jpg"]
    assert set(probs["transparent"]) == {"alpha.png", "palette.png"}
    assert probs["animated"] == ["anim.gif"]
    assert "good.jpg" not in probs["caption_missing"] and "rotated.jpg" in probs["caption_missing"]
    assert probs["caption_empty"] == ["cmyk.jpg"]
    assert probs["caption_orphans"] == ["orphan.txt"]
    assert [e["file"] for e in probs["caption_unreadable"]] == ["latin1.txt"]
    assert all(s["file"] for s in probs["small"])  # 96x64 images are below 256 px
    facts = {f.id: f for f in rep.images}
    assert facts["rotated.jpg"].size == (80, 120)
    assert facts["gray16.png"].mode.startswith("I")
    s = rep.summary()
    assert s["images"] == 17 and s["errors"] == 5


def test_buckets_follow_sd_scripts(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    gradient(756, 1008).save(folder / "phone.jpg", quality=80)  # 3:4 like a 3024x4032 phone photo
    gradient(540, 960).save(folder / "story.jpg", quality=80)
    gradient(1024, 1024).save(folder / "sq.png")
    rep = check_folder(folder, CheckOptions(resolution=1024, max_bucket_reso=2048))
    buckets = {f.id: f.bucket for f in rep.images}
    assert buckets == {"phone.jpg": (896, 1152), "story.jpg": (768, 1344), "sq.png": (1024, 1024)}


def test_duplicates_and_shared_stems(tmp_path, astronaut):
    folder = tmp_path / "d"
    folder.mkdir()
    g = astronaut
    g.save(folder / "a.png")
    g.resize((200, 200)).save(folder / "a_small.jpg", quality=85)
    g.transpose(0).save(folder / "a_mirror.png")
    gradient(400, 300, seed=3).save(folder / "a.jpg")  # shares a.txt with a.png
    rep = check_folder(folder)
    groups = rep.duplicate_groups
    assert len(groups) == 1 and groups[0]["keep"] == "a.png"
    assert set(groups[0]["others"]) == {"a_small.jpg", "a_mirror.png"}
    assert rep.stem_clashes == [["a.jpg", "a.png"]]


def test_cli_json_on_stdout_progress_on_stderr_and_strict(tmp_path):
    folder = tmp_path / "raw"
    write_bad_folder(folder)
    cmd = [sys.executable, "-m", "prep.cli", "check", str(folder), "--json"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["summary"]["errors"] == 5
    r2 = subprocess.run(cmd + ["--strict"], capture_output=True, text=True, timeout=120)
    assert r2.returncode == 1
    r3 = subprocess.run([sys.executable, "-m", "prep.cli", "check", str(folder)], capture_output=True, text=True, timeout=120)
    assert r3.returncode == 0 and r3.stdout == ""
    assert "truncated.jpg" in r3.stderr and "EXIF-rotated" in r3.stderr


def test_check_reports_videos_beside_images_with_what_clips_drop(tmp_path):
    from videos import corrupt, write_video

    from prep.cli import app as prep_app
    from typer.testing import CliRunner

    gradient().save(tmp_path / "a.png")
    write_video(tmp_path / "walk.mp4", 90, fps=30)  # 3 s at 30 fps -> 48 frames at 16 fps: one 33-frame clip, 15 dropped
    corrupt(tmp_path / "broken.mp4")
    rep = check_folder(tmp_path, CheckOptions(trainer="wan22-t2v", resolution=512, faces=False))
    js = rep.to_json()
    assert js["summary"]["readable"] == 1  # the image is still checked as before
    vids = js["videos"]
    assert vids["target"]["fps"] == 16.0  # Wan's fps from prep.archs
    (walk,) = vids["videos"]
    assert walk["file"] == "walk.mp4" and walk["clips"] == 0 and any("shorter than one 81-frame clip" in w for w in walk["warnings"])
    assert [e["file"] for e in vids["errors"]] == ["broken.mp4"]
    assert rep.has_errors  # an unreadable video is an error, named
    res = CliRunner().invoke(prep_app, ["check", str(tmp_path), "--trainer", "wan22-t2v", "--no-faces"])
    assert "videos" in res.output and "broken.mp4" in res.output


def test_check_without_videos_has_no_video_section(tmp_path):
    gradient().save(tmp_path / "a.png")
    assert "videos" not in check_folder(tmp_path, CheckOptions(faces=False)).to_json()
