"""`prep import SRC -o DIR`: bring images (and their captions) in from a zip or a folder, safely.

Zip members are checked before anything is written: absolute paths, drive letters, `..` and
symlinks are refused; member count and total uncompressed size are capped (zip bombs); macOS
and Windows litter (`__MACOSX/`, `._*`, `.DS_Store`, `Thumbs.db`) is skipped at any depth. Names
are made safe on Windows and every rename is recorded. Nothing is overwritten silently: a
rerun skips files already imported with the same bytes, and a different file wanting an
existing name gets a new one (recorded).
"""

from __future__ import annotations

import hashlib
import os
import stat
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from pydantic import Field

from prep.dataset import CAPTION_EXTENSION
from prep.fsutil import atomic_open, safe_component, sha256_file
from prep.images import is_image_path
from prep.manifest import Manifest, Record
from prep.options import StageOptions

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
    dry_run: bool = Field(False, description="List what would be imported; write nothing.", json_schema_extra={"cli": ("--dry-run",)})


@dataclass
class ImportEntry:
    source: str
    """Name inside the zip, or path relative to the source folder."""
    output: str | None
    status: str  # ok | skipped | renamed | refused | ignored | failed
    reason: str | None = None

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
    return is_image_path(p) or (opts.include_captions and p.suffix.lower() == CAPTION_EXTENSION)


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


def _zip_members(src: Path, opts: ImportOptions, report: ImportReport) -> Iterator[_Member]:
    try:
        zf = zipfile.ZipFile(src)
    except zipfile.BadZipFile as exc:
        raise ImportRefused(f"{src}: not a readable zip ({exc}); re-create the archive or import the folder") from None
    with zf:
        infos = [i for i in zf.infolist() if not i.is_dir()]
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
        for info in infos:
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
                report.entries.append(ImportEntry(name, None, "ignored", "not an image or caption"))
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
                report.entries.append(ImportEntry((d / dn).relative_to(src).as_posix(), None, "refused", "symlinked folder: not followed"))
            elif dn in JUNK_DIRS or dn.startswith("."):
                continue
            else:
                keep.append(dn)
        dirnames[:] = keep
        for fn in sorted(filenames):
            p = d / fn
            rel = p.relative_to(src).as_posix()
            parts = rel.split("/")
            if _is_junk(parts):
                continue
            if p.is_symlink():
                report.entries.append(ImportEntry(rel, None, "refused", "symlink: not followed (copy the real file in)"))
                continue
            if not _wanted(fn, opts):
                report.entries.append(ImportEntry(rel, None, "ignored", "not an image or caption"))
                continue
            yield _Member(rel, parts, p.stat().st_size, lambda p=p: open(p, "rb"))


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


def import_source(src: Path | str, out: Path | str, options: ImportOptions | None = None) -> ImportReport:
    """Import images and captions from a zip or a folder into `out` (created if needed)."""
    opts = options or ImportOptions()
    src, out = Path(src), Path(out)
    report = ImportReport(str(src), str(out), dry_run=opts.dry_run)
    if not src.exists():
        raise ImportRefused(f"{src}: does not exist")
    out_res = out.resolve()
    if src.is_dir():
        if out_res == src.resolve():
            raise ImportRefused("the output folder is the source folder: choose a new -o folder (inputs are read-only)")
        members = _folder_members(src, opts, report, exclude=out_res)
    elif zipfile.is_zipfile(src):
        members = _zip_members(src, opts, report)
    else:
        raise ImportRefused(f"{src}: neither a folder nor a zip archive")

    manifest = Manifest.in_folder(out)
    claimed: dict[str, str] = {}  # lower-cased output relpath -> source name (this run)
    for m in members:
        parts = [m.parts[-1]] if opts.flatten else m.parts
        safe = [safe_component(p) for p in parts]
        # keep the extension's case-insensitive form recognisable: ".JPG" stays ".JPG"
        rel = "/".join(safe)
        renamed_reason = "unsafe name made safe on Windows" if safe != parts else None
        target = out / rel
        # Never overwrite: same bytes already there -> skipped; else find a free name.
        if rel.lower() in claimed or target.exists():
            if target.exists() and not opts.dry_run and m.size == target.stat().st_size:
                with m.open() as fh:
                    digest = _hash_stream(fh)
                if digest == sha256_file(target):
                    report.entries.append(ImportEntry(m.name, rel, "skipped", "already imported (same bytes)"))
                    claimed[rel.lower()] = m.name
                    continue
            n = 2
            stem, suffix = Path(safe[-1]).stem, Path(safe[-1]).suffix
            while True:
                cand = "/".join([*safe[:-1], f"{stem}_{n}{suffix}"])
                if cand.lower() not in claimed and not (out / cand).exists():
                    break
                n += 1
            rel, target = cand, out / cand
            renamed_reason = f"name taken by another file: saved as {Path(cand).name}"
        claimed[rel.lower()] = m.name
        # Defence in depth: the final path must be inside `out`.
        if out_res not in target.resolve().parents:
            report.entries.append(ImportEntry(m.name, None, "refused", "path escapes the output folder: refused"))
            continue
        if opts.dry_run:
            report.entries.append(ImportEntry(m.name, rel, "renamed" if renamed_reason else "ok", renamed_reason))
            continue
        try:
            with m.open() as fh, atomic_open(target, "wb") as dst:
                digest = _copy_limited(fh, dst, max(m.size, 0))
        except ImportRefused as exc:
            report.entries.append(ImportEntry(m.name, None, "refused", str(exc)))
            continue
        except (OSError, zipfile.BadZipFile, EOFError) as exc:
            report.entries.append(ImportEntry(m.name, None, "failed", f"could not read it ({exc}); the archive may be damaged"))
            continue
        status = "renamed" if renamed_reason else "ok"
        report.entries.append(ImportEntry(m.name, rel, status, renamed_reason))
        manifest.append(Record(step=STEP, id=rel, status="ok", source=m.name, source_sha256=digest, outputs=[rel], reason=renamed_reason))
    return report


class ImportStage:
    """`prep import` as a stage: the CLI command and `loraprep run` both call `run`."""

    name = "import"
    Options = ImportOptions

    def run(self, src: Path, out: Path, options: ImportOptions, *, progress: object = None) -> ImportReport:
        return import_source(src, out, options)


STAGE = ImportStage()
