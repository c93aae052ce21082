"""prep import against hostile and broken archives: each bad member is skipped with its name
and a reason and never aborts the import; an overlapping-entry zip bomb is refused before
anything is written; an image and its caption keep one name when renamed."""

from __future__ import annotations

import io
import os
import shutil
import struct
import subprocess
import zipfile
import zlib
from pathlib import Path

import pytest
from badimages import gradient

from prep.importer import ImportRefused, import_source
from hardening import figure


def _png(seed: int = 0) -> bytes:
    b = io.BytesIO()
    gradient(32, 24, seed=seed).save(b, "PNG")
    return b.getvalue()


def _patch_member(data: bytes, name: str, *, flags_or: int = 0, method: int | None = None, name_bytes: bytes | None = None) -> bytes:
    """Rewrite one member's local and central headers the way a broken or exotic zip tool
    writes them (flag bits, compression method, raw name bytes of the same length)."""
    buf = bytearray(data)
    raw = name.encode()
    for sig, flag_at, name_at in ((b"PK\x03\x04", 6, 30), (b"PK\x01\x02", 8, 46)):
        pos = 0
        while (pos := buf.find(sig, pos)) >= 0:
            if buf[pos + name_at : pos + name_at + len(raw)] == raw:
                flags = struct.unpack_from("<H", buf, pos + flag_at)[0] | flags_or
                struct.pack_into("<H", buf, pos + flag_at, flags)
                if method is not None:
                    struct.pack_into("<H", buf, pos + flag_at + 2, method)
                if name_bytes is not None:
                    assert len(name_bytes) == len(raw)
                    buf[pos + name_at : pos + name_at + len(raw)] = name_bytes
            pos += 4
    return bytes(buf)


def _hostile_zip(path: Path) -> Path:
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("good/one.png", _png(1))
        z.writestr("good/one.txt", "1girl")
        z.writestr("locked.png", _png(2))
        z.writestr("deflate64.png", _png(3))
        z.writestr("bad_X_name.png", _png(4))
        z.writestr("a" * 300 + ".png", _png(5))
        z.writestr("/".join(["d" * 200] * 22) + "/deep.png", _png(6))
        z.writestr("good/two.png", _png(7))
    data = b.getvalue()
    data = _patch_member(data, "locked.png", flags_or=0x1)  # encrypted (traditional PKWARE)
    data = _patch_member(data, "deflate64.png", method=9)  # a method Python cannot decompress
    data = _patch_member(data, "bad_X_name.png", flags_or=0x800, name_bytes=b"bad_\xff_name.png")  # UTF-8 flag, not UTF-8
    path.write_bytes(data)
    return path


def test_each_bad_member_is_skipped_with_a_reason_and_the_rest_imported(tmp_path):
    z = _hostile_zip(tmp_path / "hostile.zip")
    out = tmp_path / "out"
    rep = import_source(z, out)
    by = {e.source: e for e in rep.entries}
    assert (out / "good" / "one.png").read_bytes() == _png(1) and (out / "good" / "two.png").read_bytes() == _png(7)
    assert (out / "good" / "one.txt").read_text() == "1girl"
    assert by["locked.png"].status == "refused" and "encrypted" in by["locked.png"].reason
    assert by["deflate64.png"].status == "refused" and "deflate64" in by["deflate64.png"].reason
    bad = by["bad_\\xff_name.png"]  # shown with escapes, never decoded wrongly
    assert bad.status == "refused" and "UTF-8" in bad.reason
    assert by["a" * 300 + ".png"].status == "refused" and "304 bytes" in by["a" * 300 + ".png"].reason
    deep = next(e for e in rep.entries if e.source.endswith("/deep.png"))
    assert deep.status == "refused" and "longer than" in deep.reason
    assert rep.imported == 3 and rep.n_failed == 5
    figure("bad_input", 5, 5, note="zip members: encrypted, deflate64, false UTF-8 flag, 300-byte name, too-deep path")
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == ["good/one.png", "good/one.txt", "good/two.png", "manifest.jsonl"]  # no temp files, no lock left


def _better_zip_bomb(path: Path, n: int = 30, kernel_size: int = 2_000_000) -> Path:
    """Fifield's "better zip bomb" shape: one deflate kernel at the end of the file, shared by
    every member; each member's local header is quoted by the previous member's stored block,
    so the entries overlap and each decompresses to (all later headers + the kernel)."""
    kernel = zlib.compressobj(9, zlib.DEFLATED, -15)
    kdata = kernel.compress(b"\0" * kernel_size) + kernel.flush()
    names = [f"{i:03d}.png".encode() for i in range(n)]
    headers_len = [30 + len(nm) for nm in names]
    # layout: [LH0][quote0][LH1][quote1]...[LH(n-1)][kernel]
    offsets, pos = [], 0
    for i in range(n):
        offsets.append(pos)
        pos += headers_len[i] + (5 if i < n - 1 else 0)
    kernel_at = pos
    blob = bytearray()
    infos = []
    for i in range(n):
        rest_start = offsets[i] + headers_len[i]
        csize = kernel_at + len(kdata) - rest_start
        quoted = b"".join(_lh(names[j], 0, 0, 0) for j in range(i + 1, n))  # placeholder sizes, fixed below
        infos.append((csize, len(quoted) + kernel_size))
    # Headers carry the real sizes and CRCs; quoted copies are the same bytes, so compute
    # the uncompressed content from the final header bytes (build back to front).
    final_headers: list[bytes] = [b""] * n
    crcs = [0] * n
    for i in reversed(range(n)):
        tail = b"".join(final_headers[j] for j in range(i + 1, n))
        crcs[i] = zlib.crc32(tail + b"\0" * kernel_size)
        final_headers[i] = _lh(names[i], crcs[i], infos[i][0], len(tail) + kernel_size)
    for i in range(n):
        blob += final_headers[i]
        if i < n - 1:
            ln = len(final_headers[i + 1])
            blob += b"\x00" + struct.pack("<HH", ln, ln ^ 0xFFFF)  # stored, non-final block quoting the next header
    blob += kdata
    cd = bytearray()
    for i in range(n):
        usize = len(b"".join(final_headers[j] for j in range(i + 1, n))) + kernel_size
        cd += struct.pack("<4s4B4HL2L5H2L", b"PK\x01\x02", 20, 3, 20, 0, 0, 8, 0, 0, crcs[i], infos[i][0], usize, len(names[i]), 0, 0, 0, 0, 0o644 << 16, offsets[i]) + names[i]
    eocd = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, n, n, len(cd), len(blob), 0)
    path.write_bytes(bytes(blob + cd + eocd))
    return path


def _lh(name: bytes, crc: int, csize: int, usize: int) -> bytes:
    return struct.pack("<4s2B4HL2L2H", b"PK\x03\x04", 20, 0, 0, 8, 0, 0, crc, csize, usize, len(name), 0) + name


def test_overlapping_entry_zip_bomb_is_refused_before_extracting(tmp_path):
    z = _better_zip_bomb(tmp_path / "bomb.zip")
    size = z.stat().st_size
    with zipfile.ZipFile(z) as zf:  # a working bomb: Python's zipfile would inflate it
        infos = zf.infolist()
        declared = sum(i.file_size for i in infos)
        assert declared > 50 * 1024 * 1024 and size < 10_000
        assert len(zf.read(infos[-1])) == infos[-1].file_size
    out = tmp_path / "out"
    with pytest.raises(ImportRefused, match="overlap|declare") as ei:
        import_source(z, out)
    assert "zip bomb" in str(ei.value) and str(z) in str(ei.value)
    assert not out.exists()  # nothing written, not even the folder
    figure("bad_input", 1, 1, note="overlapping-entry zip bomb refused before extracting")


def test_clashing_image_is_renamed_with_its_caption(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.png").write_bytes(_png(1))  # an earlier, different a.png
    (out / "a.txt").write_text("red hair")  # ... whose caption is byte-identical to the new one
    (out / "b.txt").write_text("an orphan caption")  # a caption whose image is gone
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.png").write_bytes(_png(2))
    (src / "a.txt").write_text("red hair")
    (src / "b.png").write_bytes(_png(3))
    (src / "b.txt").write_text("blue hair")
    rep = import_source(src, out)
    got = {e.source: e.output for e in rep.entries}
    assert got == {"a.png": "a_2.png", "a.txt": "a_2.txt", "b.png": "b_2.png", "b.txt": "b_2.txt"}
    assert (out / "a_2.png").read_bytes() == _png(2) and (out / "a_2.txt").read_text() == "red hair"
    assert (out / "b_2.txt").read_text() == "blue hair" and (out / "b.txt").read_text() == "an orphan caption"
    assert "with its caption" in next(e.reason for e in rep.entries if e.source == "a.png")
    again = import_source(src, out)  # a rerun finds the same pairs and writes nothing
    assert again.imported == 0 and again.count("skipped") == 4


def _case_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as z:  # interleaved, as archivers list them
        z.writestr("A.png", _png(1))
        z.writestr("a.png", _png(2))
        z.writestr("a.txt", "lower caption")
        z.writestr("A.txt", "UPPER caption")
    return path


def _assert_case_pairs(out: Path, rep) -> None:
    outs = [e.output for e in rep.entries if e.output]
    assert len(outs) == 4 and len({o.lower() for o in outs}) == 4  # can coexist on any filesystem
    by_src = {e.source: e.output for e in rep.entries}
    for img, cap, text, seed in (("A.png", "A.txt", "UPPER caption", 1), ("a.png", "a.txt", "lower caption", 2)):
        o_img, o_cap = by_src[img], by_src[cap]
        assert Path(o_img).stem == Path(o_cap).stem  # still paired
        assert (out / o_img).read_bytes() == _png(seed) and (out / o_cap).read_text() == text


def test_case_only_duplicates_from_a_zip_stay_paired(tmp_path):
    z = _case_zip(tmp_path / "case.zip")
    out = tmp_path / "out"
    rep = import_source(z, out)
    _assert_case_pairs(out, rep)
    again = import_source(z, out)
    assert again.imported == 0 and again.count("skipped") == 4


@pytest.fixture
def casefold_dir(tmp_path):
    """A real case-insensitive folder (ext4 casefold on a loop device); skips where the
    kernel (CONFIG_UNICODE), the tools or the privileges to mount one are missing."""
    if os.geteuid() != 0 or not shutil.which("mkfs.ext4") or not shutil.which("chattr"):
        pytest.skip("needs root, mkfs.ext4 and chattr to mount a case-insensitive ext4 image")
    img, mnt = tmp_path / "ci.img", tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["truncate", "-s", "16M", str(img)], check=True)
    r = subprocess.run(["mkfs.ext4", "-q", "-F", "-O", "casefold", "-E", "encoding=utf8", str(img)], capture_output=True)
    if r.returncode != 0 or subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a casefold ext4 image here (kernel without CONFIG_UNICODE, or no loop devices)")
    try:
        d = mnt / "ci"
        d.mkdir()
        subprocess.run(["chattr", "+F", str(d)], check=True)
        yield d
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_case_only_duplicates_on_a_case_insensitive_filesystem(tmp_path, casefold_dir):
    (casefold_dir / "probe").write_text("")
    assert (casefold_dir / "PROBE").exists()
    (casefold_dir / "probe").unlink()
    z = _case_zip(tmp_path / "case.zip")
    rep = import_source(z, casefold_dir / "out")
    _assert_case_pairs(casefold_dir / "out", rep)
