"""prep import: zip-slip, symlinks, bombs, junk, Windows-unsafe names, no silent overwrite."""

from __future__ import annotations

import io
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from badimages import gradient
from prep.importer import ImportOptions, ImportRefused, import_source


def _png(seed: int = 0) -> bytes:
    b = io.BytesIO()
    gradient(32, 24, seed=seed).save(b, "PNG")
    return b.getvalue()


def _evil_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("good/one.png", _png(1))
        z.writestr("good/one.txt", "1girl")
        z.writestr("../../escape.png", _png(2))
        z.writestr("/abs/root.png", _png(3))
        z.writestr("sub/../../../up.png", _png(4))
        link = zipfile.ZipInfo("link.png")
        link.create_system = 3
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        z.writestr(link, "/etc/passwd")
        z.writestr("__MACOSX/good/._one.png", b"junk")
        z.writestr("good/._one.png", b"junk")
        z.writestr("deep/.DS_Store", b"junk")
        z.writestr("notes.pdf", b"%PDF")
        z.writestr("bad:name?.png", _png(5))
        z.writestr("trailing. .png ", _png(6))
        z.writestr("CON.png", _png(7))
        z.writestr("new\nline.png", _png(8))
    return path


def test_zip_slip_writes_nothing_outside(tmp_path):
    z = _evil_zip(tmp_path / "evil.zip")
    out = tmp_path / "area" / "out"
    out.parent.mkdir()
    rep = import_source(z, out)
    outside = [p for p in tmp_path.rglob("*") if p.is_file() and out not in p.parents and p != z]
    assert outside == []
    refused = {e.source: e.reason for e in rep.entries if e.status == "refused"}
    assert set(refused) == {"../../escape.png", "/abs/root.png", "sub/../../../up.png", "link.png"}
    assert "zip-slip" in refused["../../escape.png"] and "symlink" in refused["link.png"]
    assert (out / "good" / "one.png").is_file() and (out / "good" / "one.txt").read_text() == "1girl"
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.name != "manifest.jsonl")
    assert "good/._one.png" not in names and not any("MACOSX" in n or "DS_Store" in n for n in names)
    assert "notes.pdf" not in names
    renamed = {e.source: e.output for e in rep.entries if e.status == "renamed"}
    assert renamed["bad:name?.png"] == "bad_name_.png"
    assert renamed["CON.png"] == "_CON.png"
    assert renamed["new\nline.png"] == "new_line.png"
    assert not renamed["trailing. .png "].endswith((" ", "."))
    # renames are recorded in the manifest
    assert "unsafe name" in (out / "manifest.jsonl").read_text()


def test_rerun_skips_and_never_overwrites(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.png").write_bytes(_png(1))
    out = tmp_path / "out"
    r1 = import_source(src, out)
    assert r1.imported == 1
    r2 = import_source(src, out)
    assert r2.imported == 0 and r2.count("skipped") == 1
    (src / "a.png").write_bytes(_png(2))  # a different file wanting the same name
    r3 = import_source(src, out)
    assert [e.output for e in r3.entries if e.status == "renamed"] == ["a_2.png"]
    assert (out / "a.png").read_bytes() == _png(1)


def test_case_insensitive_collisions_get_distinct_names(tmp_path):
    z = tmp_path / "c.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("Photo.png", _png(1))
        zf.writestr("photo.png", _png(2))
    rep = import_source(z, tmp_path / "o")
    outs = sorted(e.output.lower() for e in rep.entries if e.output)
    assert len(set(outs)) == 2


def test_zip_bomb_limits(tmp_path):
    z = tmp_path / "many.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for i in range(30):
            zf.writestr(f"{i}.png", _png(i))
    with pytest.raises(ImportRefused, match="zip-bomb guard"):
        import_source(z, tmp_path / "o1", ImportOptions(max_members=10))
    with pytest.raises(ImportRefused, match="uncompressed"):
        import_source(z, tmp_path / "o2", ImportOptions(max_total_bytes=1000))
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()
    big = tmp_path / "ratio.zip"
    with zipfile.ZipFile(big, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.png", b"\0" * 5_000_000)
    rep = import_source(big, tmp_path / "o3")
    assert rep.entries[0].status == "refused" and "zip bomb" in rep.entries[0].reason


def test_folder_import_skips_symlinks_and_keeps_source(tmp_path, digest):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "b.PNG").write_bytes(_png(1))
    (src / "sub" / "b.txt").write_text("cap")
    (src / "link.png").symlink_to(src / "sub" / "b.PNG")
    before = digest(src)
    rep = import_source(src, tmp_path / "out")
    assert digest(src) == before
    assert (tmp_path / "out" / "sub" / "b.PNG").is_file()
    assert [e.source for e in rep.entries if e.status == "refused"] == ["link.png"]
    with pytest.raises(ImportRefused, match="read-only"):
        import_source(src, src)


def test_cli_dry_run_writes_nothing(tmp_path):
    z = _evil_zip(tmp_path / "evil.zip")
    out = tmp_path / "o"
    r = subprocess.run([sys.executable, "-m", "prep.cli", "import", str(z), "-o", str(out), "--dry-run", "--json"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 3  # refused members make it partial
    assert not out.exists()
    assert '"refused": 4' in r.stdout


def test_videos_imported_like_images_from_zip_and_folder(tmp_path):
    """Videos (and their captions) come in byte for byte; an animated GIF counts as a video, a still one as an image."""
    import videos as V

    from prep.video import probe_video

    made = tmp_path / "made"
    made.mkdir()
    clip = V.write_video(made / "walk.mp4", 10)
    webm = V.write_video(made / "b.webm", 5, codec="libvpx-vp9")
    anim, still = V.animated_gif(made / "moving.gif"), V.still_gif(made / "still.gif")
    zpath = tmp_path / "clips.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        z.write(clip, "phone/walk.mp4")
        z.writestr("phone/walk.txt", "a person walking")
        z.write(webm, "phone/b.webm")
        z.write(clip, "phone/SAME NAME?.MOV")
        z.write(anim, "moving.gif")
        z.write(still, "still.gif")
        z.writestr("phone/voice.m4a", b"not a video")
    out = tmp_path / "raw"
    report = import_source(zpath, out)
    assert (out / "phone/walk.mp4").read_bytes() == clip.read_bytes()
    assert (out / "phone/walk.txt").read_text() == "a person walking"
    assert probe_video(out / "phone/SAME NAME_.MOV").frames == 10  # named by the image rules (safe on Windows)
    kinds = {e.output: e.kind for e in report.entries if e.output}
    assert kinds["moving.gif"] == "video" and kinds["still.gif"] == "image" and kinds["phone/b.webm"] == "video"
    assert report.to_json()["kinds"] == {"image": 1, "video": 4, "caption": 1}
    assert any(e.source == "phone/voice.m4a" and e.status == "ignored" and "video" in e.reason for e in report.entries)
    again = import_source(zpath, out)
    assert again.count("skipped") == 6 and again.imported == 0
    # a folder too, and --no-videos leaves them out
    plain = import_source(made, tmp_path / "raw2", ImportOptions(include_videos=False))
    assert sorted(e.output for e in plain.entries if e.output) == ["moving.gif", "still.gif"]
