"""prep layout: kohya folder shape, links never moves, safe names, stale caches, resume."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from prep.cli import app
from prep.layout import LayoutOptions, layout_dataset, safe_stem, subset_folder_name


def _src(tmp: Path, n: int = 4, *, captions: bool = True) -> Path:
    src = tmp / "src"
    src.mkdir()
    for i in range(n):
        Image.new("RGB", (64 + i * 8, 64), (i * 40, 0, 0)).save(src / f"img {i}.png")
        if captions:
            (src / f"img {i}.txt").write_text(f"a woman, look {i}", encoding="utf-8")
    return src


def test_layout_shape_links_and_captions(tmp_path: Path, digest) -> None:
    src = _src(tmp_path)
    before = digest(src)
    rep = layout_dataset(src, tmp_path / "ds", LayoutOptions(trigger="sage_character", repeats=10, class_token="woman"))
    folder = tmp_path / "ds" / "img" / "10_sage_character woman"
    assert Path(rep.image_dir) == folder
    imgs = sorted(folder.glob("*.png"))
    assert [p.name for p in imgs] == [f"sage_character_{i:04d}.png" for i in range(1, 5)]
    # hard links: same inode as the original, originals untouched and still in place
    assert all(os.stat(p).st_nlink == 2 for p in imgs)
    assert os.path.samefile(imgs[0], src / "img 0.png")
    assert digest(src) == before
    cap = (folder / "sage_character_0001.txt").read_text(encoding="utf-8")
    assert cap.strip() == "sage_character, a woman, look 0"
    meta = json.loads((tmp_path / "ds" / "layout.json").read_text())
    assert meta["trigger"] == "sage_character" and meta["repeats"] == 10 and meta["class_token"] == "woman"
    assert (tmp_path / "ds" / "manifest.jsonl").is_file()
    assert rep.count("hardlink") == 4 and not rep.failed


def test_copy_mode_and_uncaptioned_get_trigger(tmp_path: Path) -> None:
    src = _src(tmp_path, 2, captions=False)
    rep = layout_dataset(src, tmp_path / "ds", LayoutOptions(trigger="ohwx", repeats=3, link="copy"))
    folder = tmp_path / "ds" / "img" / "3_ohwx"
    assert all(os.stat(p).st_nlink == 1 for p in folder.glob("*.png"))
    assert (folder / "ohwx_0001.txt").read_text().strip() == "ohwx"
    assert any("no caption" in w for w in rep.warnings)


def test_regularisation_folder(tmp_path: Path) -> None:
    src = _src(tmp_path, 3)
    reg = tmp_path / "regs"
    reg.mkdir()
    for i in range(2):
        Image.new("RGB", (32, 32)).save(reg / f"r{i}.jpg")
    rep = layout_dataset(src, tmp_path / "ds", LayoutOptions(trigger="ohwx", repeats=5, class_token="woman", reg_dir=reg, reg_repeats=2))
    rfolder = tmp_path / "ds" / "reg" / "2_woman"
    assert sorted(p.name for p in rfolder.iterdir()) == ["woman_0001.jpg", "woman_0001.txt", "woman_0002.jpg", "woman_0002.txt"]
    assert (rfolder / "woman_0001.txt").read_text().strip() == "woman"
    assert rep.n_images == 3 and rep.n_reg == 2


def test_reg_needs_class_token(tmp_path: Path) -> None:
    src = _src(tmp_path, 1)
    with pytest.raises(ValueError, match="class-token"):
        layout_dataset(src, tmp_path / "ds", LayoutOptions(trigger="x", reg_dir=src))


def test_reg_inside_output_is_refused(tmp_path: Path, digest) -> None:
    """Pointing --reg at an earlier layout's reg folder would rename its files over each other."""
    src = _src(tmp_path, 1)
    reg = tmp_path / "regs"
    reg.mkdir()
    for i in range(2):
        Image.new("RGB", (32, 32), (i * 100, 0, 0)).save(reg / f"r{i}.png")
    opts = LayoutOptions(trigger="ohwx", class_token="woman", reg_dir=reg)
    rep = layout_dataset(src, tmp_path / "ds", opts)
    rfolder = Path(rep.reg_dir or "")
    Image.new("RGB", (32, 32), (0, 0, 255)).save(rfolder / "added.png")
    before = digest(rfolder)
    opts.reg_dir = rfolder
    with pytest.raises(ValueError, match="inside the output folder"):
        layout_dataset(src, tmp_path / "ds", opts)
    with pytest.raises(ValueError, match="inside the output folder"):
        layout_dataset(Path(rep.image_dir), tmp_path / "ds", LayoutOptions(trigger="ohwx"))
    assert digest(rfolder) == before


def test_names_are_safe_and_unique(tmp_path: Path) -> None:
    assert len(safe_stem("a_b_c_d_e_f").split("_")) == 4
    assert safe_stem("Café Noir") == "Cafe-Noir"
    assert subset_folder_name(10, "ohwx", "woman") == "10_ohwx woman"
    src = tmp_path / "src"
    src.mkdir()
    # same stem, different extension/case, many underscores, non-ASCII, and formats trainers skip
    Image.new("RGB", (40, 40)).save(src / "a_1_2_3_4.png")
    Image.new("RGB", (40, 40)).save(src / "A_1_2_3_4.jpg")
    Image.new("RGB", (40, 40)).save(src / "été.gif")
    Image.new("RGB", (40, 40)).save(src / "scan.tif")
    Image.new("RGB", (40, 40)).save(src / "shot.JPG")
    rep = layout_dataset(src, tmp_path / "ds", LayoutOptions(trigger="x", repeats=1, names="keep"))
    folder = Path(rep.image_dir)
    names = sorted(p.name for p in folder.iterdir() if p.suffix != ".txt")
    stems = [Path(n).stem.lower() for n in names]
    assert len(set(stems)) == len(stems) == 5
    assert all(len(Path(n).stem.split("_")) < 5 for n in names)
    assert all(n.isascii() for n in names)
    assert {Path(n).suffix for n in names} <= {".png", ".jpg"}  # gif/tif converted, .JPG lower-cased
    assert rep.count("convert") == 2


def test_stale_caches_removed_and_rerun_resumes(tmp_path: Path) -> None:
    src = _src(tmp_path, 3)
    out = tmp_path / "ds"
    layout_dataset(src, out, LayoutOptions(trigger="ohwx", repeats=2))
    folder = out / "img" / "2_ohwx"
    for name in ("ohwx_0001_0768x0768_anima.npz", "ohwx_0001_anima_te.npz", "metadata_cache.json", "old_0009.png"):
        (folder / name).write_bytes(b"x")
    rep = layout_dataset(src, out, LayoutOptions(trigger="ohwx", repeats=2))
    assert rep.count("skipped") == 3  # nothing re-linked
    assert sorted(Path(p).name for p in rep.removed) == sorted(["metadata_cache.json", "ohwx_0001_0768x0768_anima.npz", "ohwx_0001_anima_te.npz", "old_0009.png"])
    assert not list(folder.glob("*.npz"))
    # a changed caption is rewritten on the next run
    (src / "img 1.txt").write_text("new words", encoding="utf-8")
    rep = layout_dataset(src, out, LayoutOptions(trigger="ohwx", repeats=2))
    assert (folder / "ohwx_0002.txt").read_text().strip() == "ohwx, new words"
    assert rep.count("skipped") == 2


def test_changed_repeats_replaces_old_subset_folder(tmp_path: Path) -> None:
    src = _src(tmp_path, 2)
    out = tmp_path / "ds"
    layout_dataset(src, out, LayoutOptions(trigger="ohwx", repeats=2))
    layout_dataset(src, out, LayoutOptions(trigger="ohwx", repeats=7))
    assert [p.name for p in (out / "img").iterdir()] == ["7_ohwx"]


def test_dry_run_writes_nothing(tmp_path: Path) -> None:
    src = _src(tmp_path, 2)
    rep = layout_dataset(src, tmp_path / "ds", LayoutOptions(trigger="ohwx", dry_run=True))
    assert not (tmp_path / "ds").exists()
    assert rep.n_images == 2 and rep.dry_run


def test_cli(tmp_path: Path) -> None:
    src = _src(tmp_path, 2)
    res = CliRunner().invoke(app, ["layout", str(src), "-o", str(tmp_path / "ds"), "--trigger", "ohwx", "--repeats", "4", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["n_images"] == 2 and data["image_dir"].endswith("4_ohwx")
    res = CliRunner().invoke(app, ["layout", str(src), "-o", str(tmp_path / "ds2"), "--trigger", "x", "--reg", str(src)])
    assert res.exit_code == 2


def test_clips_folder_laid_out_with_trigger_mixed_with_images(tmp_path: Path, digest) -> None:
    """prep clips output + captions (and a few images) -> one subset folder, trigger first, unique stems."""
    import videos as V

    from prep.clips import ClipsOptions, clips_folder
    from prep.video import probe_video

    raw = tmp_path / "raw"
    raw.mkdir()
    V.write_video(raw / "walk.mp4", 40)
    clips = tmp_path / "clips"
    clips_folder(raw, clips, ClipsOptions(frames=9, resolution="128x96"))
    names = sorted(p.name for p in clips.glob("*.mp4"))
    assert len(names) == 2
    (clips / names[0]).with_suffix(".txt").write_text("a person walks to the left", encoding="utf-8")
    Image.new("RGB", (96, 64), (10, 200, 30)).save(clips / "still.png")
    (clips / "still.txt").write_text("sage_walk, a still frame", encoding="utf-8")
    V.corrupt(clips / "zz_broken.mp4")
    before = digest(clips)
    rep = layout_dataset(clips, tmp_path / "ds", LayoutOptions(trigger="sage_walk", repeats=2))
    folder = tmp_path / "ds" / "img" / "2_sage_walk"
    vids = sorted(folder.glob("*.mp4"))
    assert rep.n_videos == 2 and rep.n_images == 1 and len(vids) == 2
    stems = [p.stem for p in folder.iterdir() if p.suffix != ".txt"]
    assert len(stems) == len(set(stems)) == 3  # images and videos never share a stem (musubi's caches are by stem)
    caps = {p.name: p.with_suffix(".txt").read_text(encoding="utf-8").strip() for p in vids}
    assert sorted(caps.values()) == ["sage_walk", "sage_walk, a person walks to the left"]
    assert all(probe_video(p).frames == 9 for p in vids)
    assert [i.id for i in rep.failed] == ["zz_broken.mp4"] and "not a readable video" in rep.failed[0].reason
    assert not [w for w in rep.warnings if "4N+1" in w]  # clips by prep clips need no warning
    meta = json.loads((tmp_path / "ds" / "layout.json").read_text())
    assert sorted(meta["videos"].values()) == sorted(str(clips / n) for n in names)
    assert (tmp_path / "ds" / "buckets.json").is_file()  # the clips' buckets travel with the dataset
    assert digest(clips) == before
    again = layout_dataset(clips, tmp_path / "ds", LayoutOptions(trigger="sage_walk", repeats=2))
    assert again.count("skipped") == 3


def test_raw_video_laid_out_with_a_warning(tmp_path: Path) -> None:
    import videos as V

    src = tmp_path / "src"
    src.mkdir()
    V.write_video(src / "raw.mov", 30, fps=30)
    V.animated_gif(src / "loop.gif")
    rep = layout_dataset(src, tmp_path / "ds", LayoutOptions(trigger="t"))
    assert rep.n_videos == 1 and rep.n_images == 1  # the GIF stays an image (its first frame), as before
    assert any("raw.mov" in w and "4N+1" in w and "prep clips" in w for w in rep.warnings)
    assert any("loop.gif" in w and "animated GIF" in w for w in rep.warnings)
    assert sorted(p.suffix for p in (tmp_path / "ds" / "img" / "10_t").iterdir() if p.suffix != ".txt") == [".mov", ".png"]
