"""`prep import SRC -o DIR`: bring images, videos (and their captions) in from a zip or a folder, safely.

Videos (mp4, mov, webm, mkv, m4v, avi; `prep.video.VIDEO_SUFFIXES`) are copied byte for byte and
named by the same rules as images; a GIF is copied either way and counts as a video when it has
more than one frame (`prep.video.is_video_path`), as `prep clips` will treat it.

Zip members are checked before anything is written: absolute paths, drive letters, `..` and
symlinks are refused; member count and total uncompressed size are capped (zip bombs), and an
archive whose entries overlap or declare more data than it holds (the overlapping-entry bomb)
is refused whole. Members that are encrypted, use a compression Python cannot read, carry a
false UTF-8 flag or a name longer than the filesystem allows are skipped one by one with the
reason. macOS and Windows litter (`__MACOSX/`, `._*`, `.DS_Store`, `Thumbs.db`) is skipped at
any depth. Names are made safe on Windows and every rename is recorded. Nothing is overwritten
silently: a rerun skips files already imported with the same bytes, and a different file
wanting an existing name gets a new one (recorded), the same one for an image and its caption.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import os
import stat
import struct
import zipfile
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from pydantic import Field

from prep.dataset import CAPTION_EXTENSION
from prep.fsutil import DiskFull, atomic_open, safe_component, sha256_file
from prep.images import is_image_path, unsupported_reason
from prep.inputs import NotRegularFile, input_problem, open_input, printable
from prep.lock import output_lock
from prep.manifest import Manifest, Record
from prep.options import StageOptions
from prep.video import VIDEO_SUFFIXES, is_animated_gif

STEP = "import"
JUNK_NAMES = {".DS_Store", "Thumbs.db", "desktop.ini", "Icon\r"}
JUNK_DIRS = {"__MACOSX", ".Spotlight-V100", ".Trashes", ".fseventsd"}
DEFAULT_MAX_MEMBERS = 20_000
DEFAULT_MAX_TOTAL_BYTES = 8 * 1024**3
DEFAULT_MAX_RATIO = 200.0
"""Largest uncompressed/compressed ratio accepted for one member (images barely compress)."""


class ImportRefused(Exception):
    """The whole source is refused before anything was written (bomb, not a zip, ...)."""


class ImportOptions(StageOptions):
    """The options of `prep import` (its flags and `loraprep.toml`'s [import]), declared once."""

    max_members: int = Field(DEFAULT_MAX_MEMBERS, gt=0, description="Refuse archives with more files than this.", json_schema_extra={"cli": ("--max-files",)})
    max_total_bytes: int = Field(DEFAULT_MAX_TOTAL_BYTES, gt=0, description="Refuse archives larger than this uncompressed (bytes; on the command line --max-total-size in GiB).", json_schema_extra={"cli": None})
    max_ratio: float = Field(DEFAULT_MAX_RATIO, gt=1, description="Refuse zip members that expand more than this many times (images barely compress).")
    flatten: bool = Field(False, description="Put every file directly in the output folder (names made unique) instead of keeping subfolders.", json_schema_extra={"cli": ("--flatten",)})
    include_captions: bool = Field(True, description="Import the .txt captions beside the images.", json_schema_extra={"cli": ("--captions/--no-captions",)})
    include_videos: bool = Field(True, description="Import videos (mp4, mov, webm, mkv, m4v, avi) for `prep clips`.", json_schema_extra={"cli": ("--videos/--no-videos",)})
    dry_run: bool = Field(False, description="List what would be imported; write nothing.", json_schema_extra={"cli": ("--dry-run",)})


@dataclass
class ImportEntry:
    source: str
    """Name inside the zip, or path relative to the source folder."""
    output: str | None
    status: str  # ok | skipped | renamed | refused | ignored | failed
    reason: str | None = None
    kind: str | None = None  # image | video | caption, for what was imported

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class ImportReport:
    source: str
    output: str
    entries: list[ImportEntry] = field(default_factory=list)
    dry_run: bool = False

    def count(self, status: str) -> int:
        return sum(1 for e in self.entries if e.status == status)

    @property
    def imported(self) -> int:
        return self.count("ok") + self.count("renamed")

    def kind_count(self, kind: str) -> int:
        """Imported (or already there) files of one kind: image, video or caption."""
        return sum(1 for e in self.entries if e.kind == kind and e.status in ("ok", "renamed", "skipped"))

    @property
    def problems(self) -> list[ImportEntry]:
        return [e for e in self.entries if e.status in ("refused", "failed")]

    @property
    def n_failed(self) -> int:
        return len(self.problems)

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "output": self.output,
            "dry_run": self.dry_run,
            "counts": {s: self.count(s) for s in ("ok", "renamed", "skipped", "ignored", "refused", "failed")},
            "kinds": {k: self.kind_count(k) for k in ("image", "video", "caption")},
            "entries": [e.to_json() for e in self.entries],
        }


@dataclass
class _Member:
    """A file to import, from a zip or a folder."""

    name: str  # as in the source, for messages
    parts: list[str]  # path components after cleaning
    size: int
    open: Any  # () -> BinaryIO


def _is_junk(parts: list[str]) -> bool:
    return any(p in JUNK_DIRS for p in parts[:-1]) or parts[-1] in JUNK_NAMES or parts[-1].startswith("._")


def _wanted(name: str, opts: ImportOptions) -> bool:
    """Judged on the safe name, so 'photo.png ' (trailing space) still counts as a PNG."""
    p = Path(safe_component(PurePosixPath(name.replace("\\", "/")).name or name))
    return (is_image_path(p) or (opts.include_videos and p.suffix.lower() in VIDEO_SUFFIXES)
            or (opts.include_captions and p.suffix.lower() == CAPTION_EXTENSION))


def _kind(name: str, target: Path | None = None) -> str:
    """image, video or caption, by name; a GIF written to `target` is a video when animated."""
    ext = PurePosixPath(name).suffix.lower()
    if ext == CAPTION_EXTENSION:
        return "caption"
    if ext == ".gif":
        return "video" if target is not None and is_animated_gif(target) else "image"
    return "video" if ext in VIDEO_SUFFIXES else "image"


def _unwanted(name: str) -> ImportEntry:
    """A file not imported: an image format we cannot read is refused with the fix (never silently ignored)."""
    reason = unsupported_reason(safe_component(PurePosixPath(name.replace("\\", "/")).name or name))
    if reason:
        return ImportEntry(name, None, "refused", f"{reason}; then import it again")
    return ImportEntry(name, None, "ignored", "not an image, video or caption")


def _zip_name(info: zipfile.ZipInfo) -> str:
    """Member name, fixing UTF-8 names stored without the UTF-8 flag (decoded as CP437)."""
    name = info.filename
    if not info.flag_bits & 0x800:
        try:
            name = name.encode("cp437").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            pass
    return name


def _unsafe_reason(name: str) -> str | None:
    n = name.replace("\\", "/")
    if n.startswith("/") or (len(n) > 1 and n[1] == ":") or n.startswith("//"):
        return "absolute path in archive (zip-slip): refused"
    if any(p == ".." for p in n.split("/")):
        return "'..' in archive path (zip-slip): refused"
    return None


class _PatchedFile(io.RawIOBase):
    """A read-only view of a file with a few bytes replaced (never written to disk): used to
    clear a false UTF-8 flag in the central directory so Python's zipfile can list the rest."""

    def __init__(self, fh: BinaryIO, patches: dict[int, bytes]):
        self._fh, self._patches, self._pos = fh, patches, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        self._pos = self._fh.seek(offset, whence)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, b: Any) -> int:
        self._fh.seek(self._pos)
        data = bytearray(self._fh.read(len(b)))
        for off, rep in self._patches.items():
            for i, byte in enumerate(rep):
                j = off + i - self._pos
                if 0 <= j < len(data):
                    data[j] = byte
        b[: len(data)] = data
        self._pos += len(data)
        return len(data)



_CD = struct.Struct(zipfile.structCentralDir)
_LOCAL = struct.Struct(zipfile.structFileHeader)


def _false_utf8_entries(fh: BinaryIO) -> tuple[dict[int, bytes], dict[int, str]]:
    """Central-directory entries flagged UTF-8 (bit 11) whose name is not UTF-8: patches that
    clear the flag, and the names (shown with escapes) by entry index."""
    endrec = zipfile._EndRecData(fh)  # type: ignore[attr-defined]
    if not endrec:
        raise zipfile.BadZipFile("no end of central directory")
    size_cd = endrec[zipfile._ECD_SIZE]  # type: ignore[attr-defined]
    start = endrec[zipfile._ECD_LOCATION] - size_cd  # type: ignore[attr-defined]
    if endrec[zipfile._ECD_SIGNATURE] == zipfile.stringEndArchive64:  # type: ignore[attr-defined]
        start -= zipfile.sizeEndCentDir64 + zipfile.sizeEndCentDir64Locator  # type: ignore[attr-defined]
    fh.seek(start)
    cd = fh.read(size_cd)
    patches: dict[int, bytes] = {}
    bad: dict[int, str] = {}
    pos = index = 0
    while pos + _CD.size <= len(cd):
        f = _CD.unpack_from(cd, pos)
        if f[zipfile._CD_SIGNATURE] != zipfile.stringCentralDir:  # type: ignore[attr-defined]
            break
        nlen, elen, clen = f[zipfile._CD_FILENAME_LENGTH], f[zipfile._CD_EXTRA_FIELD_LENGTH], f[zipfile._CD_COMMENT_LENGTH]  # type: ignore[attr-defined]
        flags = f[zipfile._CD_FLAG_BITS]  # type: ignore[attr-defined]
        raw = cd[pos + _CD.size : pos + _CD.size + nlen]
        if flags & 0x800:
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                patches[start + pos + 8] = struct.pack("<H", flags & ~0x800)
                bad[index] = raw.decode("utf-8", "backslashreplace")
        pos += _CD.size + nlen + elen + clen
        index += 1
    return patches, bad


def _open_zip(src: Path, stack: ExitStack) -> tuple[zipfile.ZipFile, dict[int, str]]:
    """The archive, plus the entries (by index) whose UTF-8 flag lies about their name; Python's
    zipfile refuses the whole archive for one such name, so the flag is cleared in a view."""
    try:
        return stack.enter_context(zipfile.ZipFile(src)), {}
    except zipfile.BadZipFile as exc:
        raise ImportRefused(f"{src}: not a readable zip ({exc}); re-create the archive or import the folder") from None
    except UnicodeDecodeError:
        pass
    fh = stack.enter_context(open(src, "rb"))  # zipfile leaves a file object it was given open
    try:
        patches, bad = _false_utf8_entries(fh)
        return stack.enter_context(zipfile.ZipFile(_PatchedFile(fh, patches))), bad  # type: ignore[arg-type]
    except (zipfile.BadZipFile, UnicodeDecodeError, OSError, struct.error, AttributeError) as exc:
        raise ImportRefused(f"{src}: not a readable zip ({exc}); re-create the archive or import the folder") from None


def _check_layout(src: Path, zf: zipfile.ZipFile, infos: list[zipfile.ZipInfo]) -> None:
    """Refuse, before extracting anything, an archive whose members share bytes (the
    overlapping-entry zip bomb: many entries pointing into one deflate kernel) or declare more
    compressed data than the file holds."""
    size = src.stat().st_size
    declared = sum(i.compress_size for i in infos)
    if declared > size:
        raise ImportRefused(
            f"{src}: its members declare {declared:,} compressed bytes but the archive holds {size:,} "
            "(an overlapping-entry zip bomb): refused before extracting anything"
        )
    fp = zf.fp
    assert fp is not None
    spans: list[tuple[int, int, str]] = []
    for info in infos:
        fp.seek(info.header_offset)
        head = fp.read(_LOCAL.size)
        if len(head) != _LOCAL.size or head[:4] != zipfile.stringFileHeader:  # type: ignore[attr-defined]
            raise ImportRefused(f"{src}: member {info.filename!r} points at no file header (a damaged or crafted archive): refused; re-create it")
        f = _LOCAL.unpack(head)
        end = info.header_offset + _LOCAL.size + f[zipfile._FH_FILENAME_LENGTH] + f[zipfile._FH_EXTRA_FIELD_LENGTH] + info.compress_size  # type: ignore[attr-defined]
        spans.append((info.header_offset, end, info.filename))
    spans.sort()
    for (_s0, e0, n0), (s1, _e1, n1) in itertools.pairwise(spans):
        if e0 > s1:
            raise ImportRefused(
                f"{src}: members {n0!r} and {n1!r} overlap in the archive (an overlapping-entry zip bomb): refused before extracting anything"
            )
    if spans and spans[-1][1] > zf.start_dir:  # type: ignore[attr-defined]
        raise ImportRefused(f"{src}: member {spans[-1][2]!r} runs into the archive's directory (a crafted archive): refused before extracting anything")


def _readable_methods() -> set[int]:
    methods = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED}
    for mod, method in (("bz2", zipfile.ZIP_BZIP2), ("lzma", zipfile.ZIP_LZMA)):
        try:
            __import__(mod)
            methods.add(method)
        except ImportError:
            pass
    return methods


_METHOD_NAMES = {0: "store", 1: "shrink", 6: "implode", 8: "deflate", 9: "deflate64", 12: "bzip2", 14: "lzma", 93: "zstandard", 95: "xz", 96: "jpeg", 97: "wavpack", 98: "ppmd", 99: "aes"}


def _member_problem(info: zipfile.ZipInfo, readable: set[int]) -> str | None:
    """Why this member cannot be read (encrypted, a compression zipfile lacks), or None."""
    if info.flag_bits & 0x1 or info.compress_type == 99:
        return "encrypted (password-protected) member: skipped; unzip it with its password and import the folder"
    if info.compress_type not in readable:
        name = _METHOD_NAMES.get(info.compress_type, "unknown")
        return (f"compressed with {name} (method {info.compress_type}), which cannot be read here: skipped; "
                "re-create the archive with deflate (the usual zip setting) or import the unzipped folder")
    return None


def _zip_members(src: Path, opts: ImportOptions, report: ImportReport, stack: ExitStack) -> Iterator[_Member]:
    zf, false_utf8 = _open_zip(src, stack)  # open until the import ends: members are read after the listing
    all_infos = zf.infolist()
    infos = [i for i in all_infos if not i.is_dir()]
    if len(infos) > opts.max_members:
        raise ImportRefused(
            f"{src}: {len(infos)} files is above the limit of {opts.max_members} (zip-bomb guard); "
            "raise --max-files if the archive is trusted"
        )
    total = sum(i.file_size for i in infos)
    if total > opts.max_total_bytes:
        raise ImportRefused(
            f"{src}: {total / 1e9:.1f} GB uncompressed is above the limit of {opts.max_total_bytes / 1e9:.1f} GB "
            "(zip-bomb guard); raise --max-total-size if the archive is trusted"
        )
    _check_layout(src, zf, all_infos)
    readable = _readable_methods()
    for index, info in enumerate(all_infos):
        if info.is_dir():
            continue
        if index in false_utf8:
            report.entries.append(ImportEntry(false_utf8[index], None, "refused", "name flagged UTF-8 but not valid UTF-8 (a broken archive tool): skipped; rename it and re-zip"))
            continue
        name = _zip_name(info)
        mode = info.external_attr >> 16
        if info.create_system == 3 and stat.S_ISLNK(mode):
            report.entries.append(ImportEntry(name, None, "refused", "symlink in archive: refused"))
            continue
        reason = _unsafe_reason(name)
        if reason:
            report.entries.append(ImportEntry(name, None, "refused", reason))
            continue
        parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
        if not parts or _is_junk(parts):
            report.entries.append(ImportEntry(name, None, "ignored", "system file (macOS/Windows metadata)"))
            continue
        if not _wanted(name, opts):
            report.entries.append(_unwanted(name))
            continue
        problem = _member_problem(info, readable)
        if problem:
            report.entries.append(ImportEntry(name, None, "refused", problem))
            continue
        if info.compress_size and info.file_size / info.compress_size > opts.max_ratio:
            report.entries.append(
                ImportEntry(name, None, "refused", f"compression ratio {info.file_size / info.compress_size:.0f}:1 looks like a zip bomb: refused")
            )
            continue
        yield _Member(name, parts, info.file_size, lambda info=info: zf.open(info))


def _folder_members(src: Path, opts: ImportOptions, report: ImportReport, exclude: Path | None) -> Iterator[_Member]:
    for dirpath, dirnames, filenames in os.walk(src, followlinks=False):
        d = Path(dirpath)
        if exclude is not None and (d.resolve() == exclude or exclude in d.resolve().parents):
            dirnames[:] = []
            continue
        keep = []
        for dn in sorted(dirnames):
            if (d / dn).is_symlink():
                report.entries.append(ImportEntry(printable((d / dn).relative_to(src).as_posix()), None, "refused", "symlinked folder: not followed"))
            elif dn in JUNK_DIRS or dn.startswith("."):
                continue
            else:
                keep.append(dn)
        dirnames[:] = keep
        for fn in sorted(filenames):
            p = d / fn
            rel = p.relative_to(src).as_posix()
            shown = printable(rel)  # reports and JSON get escapes; the file is read by its real name
            parts = rel.split("/")
            if _is_junk(parts):
                continue
            if p.is_symlink():
                problem = input_problem(p)
                reason = f"{problem}" if problem else "symlink: not followed (copy the real file in)"
                report.entries.append(ImportEntry(shown, None, "refused", reason))
                continue
            if not _wanted(fn, opts):
                report.entries.append(_unwanted(shown))
                continue
            what = {"caption": "caption", "video": "video"}.get(_kind(fn), "image")
            problem = input_problem(p, what=what)  # a FIFO named x.txt would block the copy forever
            if problem:
                report.entries.append(ImportEntry(shown, None, "refused", problem))
                continue
            try:
                size = os.lstat(p).st_size
            except OSError as exc:
                report.entries.append(ImportEntry(shown, None, "failed", f"cannot read it ({exc.strerror})"))
                continue
            yield _Member(shown, parts, size, lambda p=p, what=what: open_input(p, what=what))


def _hash_stream(fh: BinaryIO) -> str:
    h = hashlib.sha256()
    while chunk := fh.read(1 << 20):
        h.update(chunk)
    return h.hexdigest()


def _copy_limited(src: BinaryIO, dst: BinaryIO, limit: int) -> str:
    """Stream at most `limit` bytes; returns sha256. Guards against lying size headers."""
    h = hashlib.sha256()
    n = 0
    while chunk := src.read(1 << 20):
        n += len(chunk)
        if n > limit:
            raise ImportRefused(f"member grew past its declared size ({limit} bytes): refused as a zip bomb")
        h.update(chunk)
        dst.write(chunk)
    return h.hexdigest()


_TEMP_EXTRA = 24
"""Bytes a temp name beside a file adds (`.NAME.XXXXXXXX.tmp` from prep.fsutil.atomic_open)."""


def _os_limits(folder: Path) -> tuple[int, int]:
    """(NAME_MAX, PATH_MAX) in bytes for the filesystem that will hold `folder`."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    limits = []
    for key, default in (("PC_NAME_MAX", 255), ("PC_PATH_MAX", 4096)):
        try:
            limits.append(int(os.pathconf(probe, key)))
        except (OSError, ValueError, AttributeError):
            limits.append(default)
    return limits[0], limits[1]


def _too_long(m: _Member, name_max: int) -> str | None:
    for part in m.parts:
        n = len(part.encode("utf-8", "surrogateescape"))
        if n > name_max:
            return f"a name in its path is {n} bytes, longer than the {name_max} bytes the filesystem allows: skipped; shorten it and import again"
    return None


def _split(name: str) -> tuple[str, str]:
    p = PurePosixPath(name)
    return (p.stem, p.suffix) if p.suffix else (name, "")


def _pair_groups(members: list[_Member]) -> list[list[_Member]]:
    """Members that must keep one stem: an image and its caption (same folder, same stem, exact
    case, as the trainer pairs them). Two members that would get the same name but for case
    (`a.png`, `a.PNG`) go to separate groups."""
    groups: dict[tuple[Any, ...], list[_Member]] = {}
    for m in members:
        stem, suffix = _split(m.parts[-1])
        key: tuple[Any, ...] = (tuple(m.parts[:-1]), stem, 0)
        while key in groups and any(_split(o.parts[-1])[1].lower() == suffix.lower() for o in groups[key]):
            key = (key[0], key[1], key[2] + 1)
        groups.setdefault(key, []).append(m)
    return list(groups.values())


def import_source(src: Path | str, out: Path | str, options: ImportOptions | None = None) -> ImportReport:
    """Import images and captions from a zip or a folder into `out` (created if needed).

    Every member is listed (and the archive checked) before anything is written. An image and
    its caption move together: when the name is taken, both get the same new stem, so they
    stay paired, also for case-only duplicates (`A.png`/`a.png` + `A.txt`/`a.txt`) on a
    case-insensitive filesystem. One member that cannot be read is reported, never fatal.
    """
    opts = options or ImportOptions()
    src, out = Path(src), Path(out)
    report = ImportReport(str(src), str(out), dry_run=opts.dry_run)
    if not src.exists():
        raise ImportRefused(f"{src}: does not exist")
    out_res = out.resolve()
    with ExitStack() as stack:
        if src.is_dir():
            if out_res == src.resolve():
                raise ImportRefused("the output folder is the source folder: choose a new -o folder (inputs are read-only)")
            members = list(_folder_members(src, opts, report, exclude=out_res))
        elif (problem := input_problem(src, what="archive")) is not None:  # a FIFO given as SRC would block is_zipfile
            raise ImportRefused(f"{printable(src)}: {problem}")
        elif zipfile.is_zipfile(src):
            members = list(_zip_members(src, opts, report, stack))
        else:
            raise ImportRefused(f"{src}: neither a folder nor a zip archive")
        if not opts.dry_run and members:
            stack.enter_context(output_lock(out, "prep import"))
        _import_members(members, out, out_res, opts, report)
    return report


def _import_members(members: list[_Member], out: Path, out_res: Path, opts: ImportOptions, report: ImportReport) -> None:
    name_max, path_max = _os_limits(out_res)
    manifest = Manifest.in_folder(out)
    claimed: dict[str, str] = {}  # lower-cased output relpath -> source name (this run)
    digests: dict[int, str] = {}

    def digest_of(m: _Member) -> str:
        if id(m) not in digests:
            with m.open() as fh:
                digests[id(m)] = _hash_stream(fh)
        return digests[id(m)]

    def same_bytes(m: _Member, target: Path) -> bool:
        try:
            return target.is_file() and m.size == target.stat().st_size and digest_of(m) == sha256_file(target)
        except (OSError, zipfile.BadZipFile, NotImplementedError, RuntimeError, ValueError, EOFError):
            return False

    usable: list[_Member] = []
    for m in members:
        reason = _too_long(m, name_max)
        safe_rel = "/".join(safe_component(p) for p in (m.parts[-1:] if opts.flatten else m.parts))
        if not reason and len(os.fsencode(str(out_res / safe_rel))) + _TEMP_EXTRA + 8 > path_max:  # + 8: room for a `_NN` rename
            reason = f"its output path would be longer than the {path_max} bytes the OS allows: skipped; import into a shorter -o folder or use --flatten"
        if reason:
            report.entries.append(ImportEntry(m.name, None, "refused", reason))
        else:
            usable.append(m)

    for group in _pair_groups(usable):
        dirs = [] if opts.flatten else [safe_component(p) for p in group[0].parts[:-1]]
        safe_names = [safe_component(m.parts[-1]) for m in group]
        base = min((_split(n)[0] for n in safe_names), key=len)
        suffixes = [_split(n)[1] for n in safe_names]
        unsafe = ["/".join([*dirs, base + suf]) != "/".join(m.parts[-1:] if opts.flatten else m.parts) for m, suf in zip(group, suffixes)]
        n = 1
        while True:
            stem = base if n == 1 else f"{base}_{n}"
            rels = ["/".join([*dirs, stem + suf]) for suf in suffixes]
            plan = []
            for m, rel in zip(group, rels):
                target = out / rel
                if rel.lower() in claimed:
                    plan = None
                    break
                if target.exists() or target.is_symlink():
                    if same_bytes(m, target):
                        plan.append("skipped")
                        continue
                    plan = None
                    break
                plan.append("write")
            if plan is not None:
                break
            n += 1
        paired = len(group) > 1
        for m, rel, action, was_unsafe in zip(group, rels, plan, unsafe):
            claimed[rel.lower()] = m.name
            target = out / rel
            if action == "skipped":
                report.entries.append(ImportEntry(m.name, rel, "skipped", "already imported (same bytes)", _kind(rel, target)))
                continue
            if n > 1:
                renamed_reason = f"name taken by another file: saved as {PurePosixPath(rel).name}" + (" (with its caption/image, still paired)" if paired else "")
            elif was_unsafe:
                renamed_reason = "unsafe name made safe on Windows"
            else:
                renamed_reason = None
            # Defence in depth: the final path must be inside `out`.
            if out_res not in target.resolve().parents:
                report.entries.append(ImportEntry(m.name, None, "refused", "path escapes the output folder: refused"))
                continue
            if opts.dry_run:
                report.entries.append(ImportEntry(m.name, rel, "renamed" if renamed_reason else "ok", renamed_reason, _kind(rel)))
                continue
            try:
                with m.open() as fh, atomic_open(target, "wb") as dst:
                    digest = _copy_limited(fh, dst, max(m.size, 0))
            except ImportRefused as exc:
                report.entries.append(ImportEntry(m.name, None, "refused", str(exc)))
                continue
            except DiskFull:
                raise  # not a damaged archive: the run stops, naming the path (nothing partial is left)
            except NotRegularFile as exc:  # swapped for a FIFO or removed since it was listed
                report.entries.append(ImportEntry(m.name, None, "refused", exc.reason))
                continue
            except (OSError, zipfile.BadZipFile, EOFError, NotImplementedError, RuntimeError, UnicodeDecodeError, ValueError) as exc:
                report.entries.append(ImportEntry(m.name, None, "failed", f"could not read it ({exc}); the archive may be damaged"))
                continue
            status = "renamed" if renamed_reason else "ok"
            report.entries.append(ImportEntry(m.name, rel, status, renamed_reason, _kind(rel, target)))
            manifest.append(Record(step=STEP, id=rel, status="ok", source=m.name, source_sha256=digest, outputs=[rel], reason=renamed_reason))


class ImportStage:
    """`prep import` as a stage: the CLI command and `loraprep run` both call `run`."""

    name = "import"
    Options = ImportOptions

    def run(self, src: Path, out: Path, options: ImportOptions, *, progress: object = None) -> ImportReport:
        return import_source(src, out, options)


STAGE = ImportStage()
