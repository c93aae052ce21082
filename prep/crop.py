"""`prep crop` library side: face-centred crops sized exactly to the trainer's buckets.

`crop_folder(src, out, options)` discovers images, runs `CropStep` through the executor
(one full decode per image: detection on a box-reduced copy of it, the crop from its pixels), writes
each crop atomically with its caption, records every image in the manifest (so a rerun skips
finished images), and writes `crops.jsonl`, the contact sheet(s) and `buckets.json` (the
bucket spec every crop is a fixed point of, which `prep layout` carries into the dataset and
`train_bridge config` trains at). A source smaller than its bucket is written at the largest
bucket it fills without upscaling (the trainer's `bucket_no_upscale` rule; the record then
says `no_upscale`), unless `upscale` is set. It returns a `CropReport` and never prints;
`STAGE` is the same as a `prep.stage.Stage`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
from collections import Counter
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from pydantic import Field, field_validator, model_validator

from prep.archs import ALIASES, ARCH_NAMES, get_arch
from prep.buckets import BUCKET_RECORD, BucketSpec, bucket_record, write_bucket_record
from prep.contact_sheet import Tile, write_contact_sheet
from prep.dataset import ImageItem, UnreadableCaption, discover, read_caption
from prep.detectors import Box, create_detector
from prep.executor import ENGINE_KEYS, EngineOptions, Progress, Result, default_workers, make_executor
from prep.framing import FRAMINGS, PRESETS, CropPlan, bucket_spec, fit_without_upscale, parse_aspect, plan_face_crop, plan_full_crop
from prep.fsutil import atomic_write_bytes, safe_component, sha256_file, write_lines_if_changed
from prep.images import FORMAT_EXTENSIONS, LoadedImage, encode_image, load_image, parse_color, save_image
from prep.inputs import printable, read_input_bytes
from prep.lock import output_lock
from prep.manifest import Manifest, Record, stat_key
from prep.options import ArchName
from prep.overrides import override_plan
from prep.results import ResultList

STEP = "crop"
REPORT_NAME = "crops.jsonl"
SHEET_NAME = "contact_sheet.jpg"
DETECT_SIZE = 640
"""Long side the detectors see (YuNet's fixed input): detection runs on a reduced decode."""
MULTI_FACE_RATIO = 0.5
"""Flag an image when its second face is at least this fraction of the largest (box height)."""
SHEET_ROWS_PER_PAGE = 40
SHEET_STEP = "crop.contact_sheet"
"""Manifest step of the contact sheet pages: what each was built from."""
SHEET_RULES = 2
"""Bump when the drawing changes, so recorded pages are drawn again."""
SHEET_MAX_ROWS = 1000
"""Contact sheets are for looking at: past 25 pages, nobody does."""
SHEET_CELL = 192
THUMB_DIR = ".sheet_thumbs"
"""In the output (hidden, so no discovery reads it): each source's sheet thumbnail (JPEG, ~10 KB),
made by the step from the decode it already has, so drawing the sheet decodes no source again
(deleted unless a page shows it)."""


def _cli(*flags: str) -> dict[str, Any]:
    return {"cli": flags}


class CropOptions(EngineOptions):
    """Everything that decides what `prep crop` writes (see docs/crop.md): the one declaration
    of each option, read by `prep crop`'s flags, `loraprep.toml`'s [crop] and `loraprep run`."""

    framing: str = Field("bust", description="face | bust | upper-body | full.", json_schema_extra=_cli("--framing", "-f"))
    resolution: int = Field(1024, description="Training resolution (buckets of the same area).", gt=0)
    trainer: ArchName | None = Field(None, description="Architecture whose bucket rules the crops follow: " + ", ".join((*ARCH_NAMES, *ALIASES)) + " (default: sd-scripts rules, step 64).")
    bucket_step: int | None = Field(None, description="Bucket step (default: the architecture's; Anima also allows 16, 32 and 48).")
    min_bucket_reso: int | None = Field(None, description="Smallest bucket side (default 256).")
    max_bucket_reso: int | None = Field(None, description="Largest bucket side (default: twice the resolution, at least 1024).")
    detector: str = Field("auto", description="auto | photo (YuNet) | anime (YOLO head detector).", json_schema_extra=_cli("--detector", "-d"))
    detector_model: str | None = Field(None, description="Path to the detector's ONNX file (photo/auto: YuNet; anime: the YOLO model). Env: LORAPREP_YUNET_MODEL / LORAPREP_ANIME_MODEL.")
    anime_model: str | None = Field(None, description="Path to the anime YOLO ONNX file for --detector auto.")
    anime_target: str = Field("head", description="head (deepghs/anime_head_detection) or face (deepghs/anime_face_detection).")
    score_threshold: float | None = Field(None, description="Detector score threshold (photo 0.6, anime 0.4).", json_schema_extra=_cli("--threshold"))
    device: str = Field("cpu", description="onnxruntime device: cpu | cuda | auto.")
    no_face: str = Field("center", description="center: bucket crop around the centre; skip: write nothing. Listed in the report either way.")
    all_faces: bool = Field(False, description="One crop per face (name_f01, name_f02, ...) instead of the largest.", json_schema_extra=_cli("--all-faces"))
    upscale: bool = Field(False, description="Upscale crops smaller than the bucket to the bucket size (Lanczos). Without it a small source is written at the largest bucket it fills (the trainer's bucket_no_upscale rule) and flagged.", json_schema_extra=_cli("--upscale/--no-upscale"))
    pad: bool = Field(False, description="Keep the framing at the image edge by padding with --background instead of tightening.", json_schema_extra=_cli("--pad"))
    background: str = Field("white", description="Colour for transparent areas and padding: white, black, '#RRGGBB' or 'R,G,B'.")
    format: str = Field("png", description="png (lossless, the default) | webp-lossless (lossless, faster, smaller) | webp | jpg (lossy, quality --quality). Encode times in docs/crop.md.")
    quality: int = Field(95, description="JPEG/WebP quality.", ge=1, le=100)
    aspect: str | None = Field(None, description="Preferred aspect before bucket snapping, e.g. 1:1 or 2:3 (default per framing).")
    recursive: bool = Field(False, description="Include subfolders (mirrored in the output).", json_schema_extra=_cli("--recursive", "-r"))
    overwrite: bool = Field(False, description="Redo images a previous run finished.", json_schema_extra=_cli("--overwrite"))
    dry_run: bool = Field(False, description="Detect and plan, write nothing.", json_schema_extra=_cli("--dry-run"))
    workers: int = Field(0, description="Parallel workers (0: all cores).", ge=0, json_schema_extra=_cli("--workers", "-j"))
    contact_sheet: bool = Field(True, description="Write contact_sheet.jpg.", json_schema_extra=_cli("--sheet/--no-sheet"))
    reference: str | None = Field(None, description="Folder of 1-5 images of the character: crop the face that matches them best (not the largest) and flag `off_model` images where none does (docs/identity.md).")
    identity_model: str = Field("auto", description="Identity embedding with --reference: sface (photos, 3D renders), ccip (anime), auto (follows --detector).")
    identity_model_path: str | None = Field(None, description="Identity model file (SFace ONNX, or CCIP's folder / model_feat.onnx). Env: LORAPREP_SFACE_MODEL / LORAPREP_CCIP_MODEL.")
    identity_threshold: float | None = Field(None, description="Similarity at which a face matches the references (default: the model's published value: SFace 0.363 cosine, CCIP 1 - 0.178).")
    off_model: str = Field("keep", description="With --reference, an image where no face matches: keep (crop the largest face, flagged off_model), set-aside (crop it, then move it and its caption to --set-aside; never deleted) or skip (write nothing). Listed in the report either way.")
    set_aside: str | None = Field(None, description="Folder for --off-model set-aside (default: OUT_off_model beside the output; loraprep run: the project's off_model/).")
    decode: str = Field(
        "full",
        description="full: decode each image once at full size, detect on a box-reduced copy of it; draft: detect on a reduced JPEG decode, then decode again as large as the crops need (less memory, more time: see docs/benchmarks.md).",
    )

    @field_validator("framing")
    @classmethod
    def _framing(cls, v: str) -> str:
        if v not in FRAMINGS:
            raise ValueError(f"unknown framing {v!r}: use {', '.join(FRAMINGS)}")
        return v

    @field_validator("no_face")
    @classmethod
    def _no_face(cls, v: str) -> str:
        if v not in ("center", "skip"):
            raise ValueError(f"--no-face {v!r}: use center or skip")
        return v

    @field_validator("format")
    @classmethod
    def _format(cls, v: str) -> str:
        if v.lower() not in FORMAT_EXTENSIONS:
            raise ValueError(f"unknown output format {v!r}: use png, webp-lossless, webp or jpg")
        return v

    @field_validator("off_model")
    @classmethod
    def _off_model(cls, v: str) -> str:
        if v not in ("keep", "set-aside", "skip"):
            raise ValueError(f"--off-model {v!r}: use keep, set-aside or skip")
        return v

    @field_validator("identity_model")
    @classmethod
    def _identity_model(cls, v: str) -> str:
        from prep.identity import IDENTITY_MODELS

        if v != "auto" and v not in IDENTITY_MODELS:
            raise ValueError(f"unknown identity model {v!r}: use auto, {', '.join(IDENTITY_MODELS)}")
        return v

    @field_validator("decode")
    @classmethod
    def _decode(cls, v: str) -> str:
        if v not in ("draft", "full"):
            raise ValueError(f"decode {v!r}: use draft or full")
        return v

    @field_validator("detector")
    @classmethod
    def _detector(cls, v: str) -> str:
        if v not in ("auto", "photo", "anime"):
            raise ValueError(f"unknown detector {v!r}: use auto, photo or anime")
        return v

    @field_validator("background")
    @classmethod
    def _background(cls, v: str) -> str:
        parse_color(v)
        return v

    @field_validator("aspect")
    @classmethod
    def _aspect(cls, v: str | None) -> str | None:
        parse_aspect(v)
        return v

    @model_validator(mode="after")
    def _buckets(self) -> CropOptions:
        self.spec()  # an unknown trainer or an illegal step is refused here, naming the fix
        return self

    def validate(self) -> None:  # type: ignore[override]
        """Kept for callers of the dataclass era: a constructed CropOptions is already valid."""
        type(self).model_validate(self.model_dump())

    def spec(self, *, no_upscale: bool = False) -> BucketSpec:
        return bucket_spec(self.resolution, trainer=self.trainer, step=self.bucket_step, min_reso=self.min_bucket_reso, max_reso=self.max_bucket_reso, no_upscale=no_upscale)

    def key(self) -> str:
        """Fingerprint of the options that change the output; a rerun with other options redoes the image."""
        skip = {"overwrite", "dry_run", "workers", "contact_sheet", "device", "recursive", "decode", *ENGINE_KEYS}
        if self.reference is None:  # identity options change nothing without references: old keys stay valid
            skip |= {"reference", "identity_model", "identity_model_path", "identity_threshold", "off_model", "set_aside"}
        d = {k: v for k, v in self.model_dump(mode="json").items() if k not in skip}
        d["_rules"] = 2  # small sources are written at their no-upscale bucket since rules 2
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def ext(self) -> str:
        return FORMAT_EXTENSIONS[self.format.lower()]


@dataclass
class _Tally:
    counts: Counter[str] = field(default_factory=Counter)
    outputs: int = 0
    resumed: int = 0
    small_sources: list[str] = field(default_factory=list)
    no_face: list[str] = field(default_factory=list)
    off_model: list[str] = field(default_factory=list)
    set_aside: list[str] = field(default_factory=list)
    done: int = 0  # not failed, with buckets
    small_sides: list[float] = field(default_factory=list)  # of the done small sources' first bucket


@dataclass
class CropReport:
    """What a run did: one result per source image plus the files it wrote."""

    out: Path
    results: list[Result] | ResultList = field(default_factory=list)  # a ResultList in a run: on disk past 10k images
    report_path: Path | None = None
    contact_sheets: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    dry_run: bool = False
    resolution: int = 1024
    bucket_record: Path | None = None
    """`buckets.json` in the output: the bucket spec every crop is a fixed point of."""
    set_aside_folder: Path | None = None
    """--set-aside: where off-model crops were moved."""

    _tally_at: tuple[int, _Tally] | None = field(default=None, init=False, repr=False, compare=False)

    def tally(self) -> _Tally:
        """Every count and list the report states, from one pass over the results (at 100k
        images each pass reads them back from disk); kept while no result is added."""
        n = len(self.results)
        if self._tally_at is not None and self._tally_at[0] == n:
            return self._tally_at[1]
        t = _Tally()
        for r in self.results:
            t.counts[r.status] += 1
            t.outputs += len(r.outputs)
            t.resumed += bool(r.data.get("resumed"))
            flags = r.data.get("flags", [])
            small = "small_source" in flags and bool(r.outputs)
            if small:
                t.small_sources.append(r.id)
            if "no_face" in flags:
                t.no_face.append(r.id)
            if "off_model" in flags:
                t.off_model.append(r.id)
            t.set_aside.extend(r.data.get("set_aside", []))
            if r.status != "failed" and r.data.get("buckets"):
                t.done += 1
                if small:
                    t.small_sides.extend(math.sqrt(b[0] * b[1]) for b in r.data["buckets"][:1])
        self._tally_at = (n, t)
        return t

    def count(self, status: str) -> int:
        return self.tally().counts[status]

    @property
    def n_failed(self) -> int:
        return self.count("failed")

    @property
    def small_sources(self) -> list[str]:
        """Images written below their target bucket (no upscaling): they need bucket_no_upscale."""
        return self.tally().small_sources

    @property
    def no_upscale(self) -> bool:
        return bool(self.small_sources)

    @property
    def suggested_resolution(self) -> int | None:
        """A training resolution most sources fill, when most are smaller than the one asked for.

        The median side (square root of the area) of the no-upscale crops, floored to a multiple
        of 64 and at least 256 (loraprep's choice: half the images then train at their full
        size or more; see docs/crop.md).
        """
        t = self.tally()
        if not t.done or len(t.small_sides) * 2 <= t.done:
            return None
        sides = sorted(t.small_sides)
        side = int(sides[len(sides) // 2])
        suggestion = max(256, side - side % 64)
        return suggestion if suggestion < self.resolution else None

    @property
    def no_face(self) -> list[str]:
        return self.tally().no_face

    @property
    def off_model(self) -> list[str]:
        """Images where no face matches the references (--reference)."""
        return self.tally().off_model

    @property
    def set_aside(self) -> list[str]:
        """Crops moved out of the output into --set-aside (paths)."""
        return self.tally().set_aside

    @property
    def flagged(self) -> list[Result]:
        return [r for r in self.results if r.status == "flagged"]

    def summary(self) -> dict[str, int]:
        t = self.tally()
        out = {k: t.counts[k] for k in ("ok", "flagged", "skipped", "failed")}
        out["total"] = len(self.results)
        out["outputs"] = t.outputs
        out["resumed"] = t.resumed
        return out

    def to_json(self, stream: bool = False) -> dict[str, Any]:
        """The report as JSON data; `stream`: its images as an iterator (for `emit_json`), read
        back one at a time instead of listed."""
        return {
            "out": str(self.out),
            "dry_run": self.dry_run,
            "summary": self.summary(),
            "report": str(self.report_path) if self.report_path else None,
            "contact_sheets": [str(p) for p in self.contact_sheets],
            "warnings": self.warnings,
            "bucket_record": str(self.bucket_record) if self.bucket_record else None,
            "no_upscale": self.no_upscale,
            "small_sources": self.small_sources,
            "suggested_resolution": self.suggested_resolution,
            **({"off_model": self.off_model, "set_aside": self.set_aside} if self.off_model else {}),
            "images": (report_line(r) for r in self.results) if stream else [report_line(r) for r in self.results],
        }


def report_line(r: Result) -> dict[str, Any]:
    """One `crops.jsonl` line."""
    d = r.data
    return {
        "id": r.id,
        "source": printable(r.source),
        "outputs": r.outputs,
        "faces": d.get("faces", []),
        "crop": d.get("crop", []),
        "bucket": d.get("bucket"),
        "crop_face": d.get("crop_face", []),
        "status": r.status,
        "reason": r.reason,
        "flags": d.get("flags", []),
        "detector": d.get("detector"),
        "share": d.get("share", []),
        "scale": d.get("scale", []),
        "target": d.get("target", []),
        "size": d.get("size"),
        **({"identity": d["identity"]} if d.get("identity") is not None else {}),
        **({"set_aside": d["set_aside"]} if d.get("set_aside") else {}),
    }


# --- the per-image step ---------------------------------------------------------------------


def _alpha_bbox(img: LoadedImage) -> tuple[float, float, float, float] | None:
    """Bounding box of the visible pixels in full-resolution coordinates, or None if opaque."""
    if not img.transparent or img.alpha is None:
        return None
    bbox = img.alpha.getbbox()
    if not bbox:
        return None
    s = 1.0 / img.scale
    return (bbox[0] * s, bbox[1] * s, bbox[2] * s, bbox[3] * s)


def _for_detection(image: Image.Image) -> tuple[Image.Image, int]:
    """A cheap integer box-reduction to about the detector input (at least DETECT_SIZE on the
    long side, so the letterbox resize after it only shrinks a little), and its factor."""
    factor = max(1, max(image.size) // DETECT_SIZE)
    return (image.reduce(factor) if factor > 1 else image), factor


def _is_multi(faces: Sequence[Box]) -> bool:
    return len(faces) >= 2 and faces[1].height >= MULTI_FACE_RATIO * faces[0].height


class CropStep:
    """Picklable `step(batch) -> list[Result]`; the detector is created lazily, once per worker."""

    def __init__(
        self, options: CropOptions, out: Path, names: dict[str, str], threads: int = 0, overrides: dict[str, list[float]] | None = None,
        digests: dict[str, tuple[str, list[int]]] | None = None, *, key: str | None = None, references: Any = None, cache_folder: Path | None = None,
    ):
        self.options = options
        self.references = references
        """`prep.identity.References` with --reference: the face that matches them is cropped."""
        self.cache_folder = cache_folder
        self._cache: Any = None
        self.digests = digests or {}
        """Content hash and stat of sources the driver already hashed: never read twice for it."""
        self.overrides = overrides or {}
        """Hand-drawn crop boxes by source id (`prep.overrides`, the studio): used instead of the face."""
        self.out = Path(out)
        self.names = names
        self.threads = threads
        self.spec = options.spec()
        self.spec_no_upscale = options.spec(no_upscale=True)
        self.framing = PRESETS.get(options.framing)
        self.aspect = parse_aspect(options.aspect)
        self.background = parse_color(options.background)
        self.key = key or options.key()
        self._detector: Any = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_detector"] = None
        return state

    @property
    def cache(self) -> Any:
        """Embeddings by content hash and box (`prep.identity.EmbeddingCache`), under the output's .loraprep/."""
        if self._cache is None and self.references is not None and not self.options.dry_run:  # --dry-run writes nothing
            from prep.identity import EmbeddingCache
            from prep.project import STATE_DIR

            self._cache = EmbeddingCache(self.cache_folder or self.out / STATE_DIR, self.references.model.name)
        return self._cache

    def match(self, image: Image.Image, boxes: list[Box], sha: str) -> dict[str, Any]:
        """Each face's similarity to the references (embedded once per face, cached) and the one that matches best."""
        refs = self.references
        cache = self.cache
        vectors = [cache.get_or_compute(sha, b, lambda b=b: refs.model.embed(image, b)) if cache is not None else refs.model.embed(image, b) for b in boxes]
        pick, best = refs.best_match(image, boxes, vectors=vectors)
        return {
            "model": refs.model.name,
            "threshold": round(refs.model.threshold, 4),
            "scores": [round(refs.score(v), 4) for v in vectors],
            "face": pick,
            "score": round(best, 4) if boxes else None,
        }

    @property
    def detector(self) -> Any:
        if self._detector is None:
            o = self.options
            kw: dict[str, Any] = {"device": o.device, "threads": self.threads}
            if o.detector == "anime":
                kw.update(model_path=o.detector_model or o.anime_model, target=o.anime_target)
            else:
                kw["model_path"] = o.detector_model
            if o.detector == "auto":
                kw.update(anime_model_path=o.anime_model, anime_target=o.anime_target)
            if o.score_threshold is not None:
                kw["score_threshold"] = o.score_threshold
            self._detector = create_detector(o.detector, **kw)
        return self._detector

    def __call__(self, batch: list[ImageItem]) -> list[Result]:
        return [self.process(item) for item in batch]

    def output_names(self, item: ImageItem, n: int) -> list[str]:
        base = self.names.get(item.id) or Path(item.id).with_suffix("").as_posix()
        if n == 1 and not self.options.all_faces:
            return [base + self.options.ext]
        return [f"{base}_f{i + 1:02d}{self.options.ext}" for i in range(n)]

    def chosen(self, faces: list[Box], pick: int | None = None) -> list[int]:
        """Indices of the faces that get a crop: all (--all-faces), the matching one (`pick`), else the largest."""
        if not faces:
            return []
        if self.options.all_faces:
            return list(range(len(faces)))
        return [pick if pick is not None else 0]

    def plan(self, size: tuple[int, int], faces: list[Box], subject: tuple[float, float, float, float] | None,
             pick: int | None = None) -> tuple[list[CropPlan], list[str]]:
        """The crops for one image and the flags they raise (`pick`: the face to crop instead of the largest)."""
        o = self.options
        flags: list[str] = []
        if not faces:
            flags.append("no_face")
            if o.no_face == "skip":
                return [], flags
            return [plan_full_crop(size, subject, self.spec, pad=o.pad)], flags
        if _is_multi(faces):
            flags.append("multi_face")
        chosen = [faces[i] for i in self.chosen(faces, pick)]
        plans = []
        for f in chosen:
            rect = (f.x0, f.y0, f.x1, f.y1)
            if self.framing is None:
                plans.append(plan_full_crop(size, subject, self.spec, face=rect, pad=o.pad))
            else:
                plans.append(plan_face_crop(size, rect, self.framing, self.spec, pad=o.pad, aspect=self.aspect))
        return plans, flags

    def process(self, item: ImageItem) -> Result:
        o = self.options
        known = self.digests.get(item.id)
        if known is not None:
            sha, source_stat = known
        else:
            source_stat = stat_key(item.path)  # before the read: a change during it shows next time
            sha = sha256_file(item.path)
        draft = (DETECT_SIZE, DETECT_SIZE) if o.decode == "draft" else None
        first = load_image(item.path, background=self.background, draft_size=draft, keep_alpha=True)
        width, height = first.size
        det_image, factor = _for_detection(first.image)
        found = self.detector.detect(det_image)
        faces = [b.scaled(factor / first.scale).clipped(width, height) for b in found]
        subject = _alpha_bbox(first)
        if o.contact_sheet and not o.dry_run:
            self._write_thumb(det_image, sha)  # from the reduced copy: a few ms, no decode later
        identity = self.match(det_image, found, sha) if self.references is not None and found else None
        off_model = identity is not None and identity["face"] is None  # no face at all is `no_face`, as without references
        pick = identity["face"] if identity is not None else None
        plans, flags = self.plan((width, height), faces, subject, pick=pick)
        if off_model:
            flags.append("off_model")
            if o.off_model == "skip":
                plans = []
        face_index = self.chosen(faces, pick)
        override = self.overrides.get(item.id)
        if override is not None:
            plans = [override_plan(override, (width, height), self.spec)]
            flags.append("override")
            if off_model:  # a crop drawn by hand (the studio) is the user's decision: never set aside
                off_model = False
                flags.remove("off_model")
        for p in plans:
            if not self.spec.is_fixed_point(p.bucket):  # the whole point of the step
                raise AssertionError(f"bucket {p.bucket} is not a fixed point of {self.spec}")
        small = [p for p in plans if p.scale > 1.0 + 1e-6]
        n_planned = len(plans)
        keep = list(range(n_planned))
        targets = [p.bucket for p in plans]
        too_small = 0
        if small:
            flags.append("upscaled" if o.upscale else "small_source")
        if small and not o.upscale:
            face_of = [faces[i] for i in face_index]
            fitted: list[CropPlan] = []
            keep = []
            for i, p in enumerate(plans):
                q: CropPlan | None = p
                if p.scale > 1.0 + 1e-6:
                    f = face_of[i] if i < len(face_of) else None
                    q = fit_without_upscale(p, self.spec_no_upscale, keep=(f.x0, f.y0, f.x1, f.y1) if f is not None else None)
                    if q is not None and not self.spec_no_upscale.is_fixed_point(q.bucket):
                        raise AssertionError(f"bucket {q.bucket} is not a fixed point of {self.spec_no_upscale}")
                if q is None:
                    too_small += 1
                    continue
                fitted.append(q)
                keep.append(i)
            targets = [targets[i] for i in keep]
            plans = fitted
        if any(p.padded for p in plans):
            flags.append("padded")
        if first.exif_rotated:
            flags.append("exif_rotated")
        writable = plans
        names = self.output_names(item, n_planned)
        out_names = [names[i] for i in keep]

        outputs: list[str] = []
        if writable and not o.dry_run:
            need = min(1.0, max(p.scale for p in writable))
            img = first if first.scale >= need - 1e-9 else self._load_for(item, first, need)
            for name, p in zip(out_names, writable):
                crop = self._render(img, p)
                dest = self.out / name
                save_image(crop, dest, fmt=o.format, quality=o.quality)
                outputs.append(name)
                self._copy_caption(item, dest)
        elif o.dry_run:
            outputs = out_names

        reasons = []
        if off_model and identity is not None:
            best = identity["score"]
            seen = f"best similarity {best:.3f} < {identity['threshold']:g}" if best is not None else "no face to compare"
            done = "not cropped (--off-model skip)" if o.off_model == "skip" else ("cropped the largest face" if faces else "bucket crop around the centre")
            reasons.append(f"off-model: no face matches the references ({seen}, {identity['model']}): {done}")
        if "no_face" in flags:
            reasons.append("no face found: " + ("skipped (--no-face skip)" if o.no_face == "skip" else "bucket crop around the centre"))
        if "multi_face" in flags and identity is not None and not off_model:
            reasons.append(f"{len(faces)} faces: cropped face {pick + 1}, the one matching the references (similarity {identity['score']:.3f})")
        elif "multi_face" in flags:
            reasons.append(f"{len(faces)} faces; the second is at least half the size of the largest: check the identity")
        if "small_source" in flags:
            shrunk = [(targets[n], p.bucket) for n, p in enumerate(writable) if tuple(p.bucket) != tuple(targets[n])]
            if shrunk:
                (tw, th), (bw, bh) = shrunk[0]
                reasons.append(
                    f"source smaller than the {tw}x{th} bucket: written at {bw}x{bh}, the largest bucket it fills without upscaling "
                    "(train with bucket_no_upscale, which train_bridge config reads from buckets.json); pass --upscale for the full size or lower --resolution"
                )
            if too_small:
                reasons.append(f"crop smaller than one bucket step ({self.spec.steps} px): not written; pass --upscale or a smaller --bucket-step")
        elif "upscaled" in flags:
            reasons.append(f"upscaled {max(p.scale for p in small):.2f}x with Lanczos")
        if "padded" in flags:
            reasons.append("crop ran past the image edge: padded with the background colour")
        try:
            read_caption(item.caption_path)  # the one caption rule: reported here, never rewritten
        except UnreadableCaption as exc:
            flags.append("caption_unreadable")
            reasons.append(str(exc))
        status = "skipped" if (not plans and ("no_face" in flags or off_model)) else ("flagged" if reasons else "ok")
        data = {
            "faces": [b.to_list() for b in faces],
            "crop": [list(p.box) for p in writable],
            "crop_face": [face_index[i] if faces and i < len(face_index) else None for i in keep],
            "bucket": list(writable[0].bucket) if writable else (list(plans[0].bucket) if plans else None),
            "buckets": [list(p.bucket) for p in writable],
            "share": [round(p.share, 4) if p.share is not None else None for p in writable],
            "scale": [round(p.scale, 4) for p in writable],
            "target": [list(t) for t in targets],
            "flags": flags,
            "detector": getattr(faces[0], "detector", None) if faces else self.options.detector,
            "size": [width, height],
            "sha256": sha,
            "source_stat": source_stat,
            "options": self.key,
            "override": override,
        }
        if identity is not None:
            data["identity"] = identity
        return Result(id=item.id, status=status, source=str(item.path), outputs=outputs, reason="; ".join(reasons) or None, data=data)

    def _write_thumb(self, image: Image.Image, sha: str) -> None:
        """The sheet's source thumbnail from this decode (a cache: a failed write only costs a decode later)."""
        path = thumb_path(self.out, sha, self.options.decode)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:  # temp + rename (readers see all or nothing); no fsync: a lost thumbnail is a decode later
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(encode_image(sheet_thumb(image, SHEET_CELL), "jpg", 90))
            os.replace(tmp, path)
        except OSError:
            tmp.unlink(missing_ok=True)

    def _load_for(self, item: ImageItem, first: LoadedImage, need: float) -> LoadedImage:
        """Decode again, just large enough that every crop is a downscale (JPEG DCT scaling)."""
        w, h = first.size
        draft = (math.ceil(w * need), math.ceil(h * need))
        img = load_image(item.path, background=self.background, draft_size=draft)
        if img.scale < need - 1e-9:  # draft overshot downwards (should not happen): full decode
            img = load_image(item.path, background=self.background)
        return img

    def _render(self, img: LoadedImage, plan: CropPlan) -> Image.Image:
        s = img.scale
        x0, y0, x1, y1 = (v * s for v in plan.box)
        src = img.image
        if plan.padded:
            ox, oy = math.floor(x0), math.floor(y0)
            cw, ch = math.ceil(x1) - ox, math.ceil(y1) - oy
            canvas = Image.new("RGB", (cw, ch), self.background)
            canvas.paste(src, (-ox, -oy))
            src, x0, y0, x1, y1 = canvas, x0 - ox, y0 - oy, x1 - ox, y1 - oy
        return src.resize(plan.bucket, Image.Resampling.LANCZOS, box=(x0, y0, x1, y1), reducing_gap=3.0)

    def _copy_caption(self, item: ImageItem, dest: Path) -> None:
        if item.caption_path.is_file():  # a folder, FIFO or device named like the caption is never opened
            atomic_write_bytes(dest.with_suffix(".txt"), read_input_bytes(item.caption_path, what="caption file"))


# --- the folder-level driver ----------------------------------------------------------------


_RESERVED_STEMS = {"contact_sheet", "crops", "manifest"}


def output_stems(items: Sequence[ImageItem]) -> dict[str, str]:
    """Output path (without extension) per item: same relative stem, disambiguated on collisions.

    `a.jpg` and `a.png` in one folder would both become `a.png`; they get `a_jpg` / `a_png`.
    """
    stems: dict[str, list[ImageItem]] = {}
    for it in items:
        stem = Path(it.id).with_suffix("").as_posix().lower()
        stems.setdefault(stem, []).append(it)
    out: dict[str, str] = {}
    for group in stems.values():
        for it in group:
            p = Path(it.id)
            parts = [safe_component(x) for x in p.parent.parts]
            name = safe_component(p.stem if len(group) == 1 else f"{p.stem}_{p.suffix.lstrip('.').lower()}")
            if not parts and (name.lower() in _RESERVED_STEMS or name.lower().startswith("contact_sheet_")):
                name += "_img"  # never overwrite our own reports
            out[it.id] = "/".join([*parts, name])
    return out


def _previous_result(rec: Record) -> Result:
    data = dict(rec.data)
    data["resumed"] = True
    return Result(id=rec.id, status=rec.status, source=rec.source, outputs=list(rec.outputs), reason=rec.reason, data=data)


def _remove_stale(out: Path, old: Sequence[str], new: Sequence[str]) -> None:
    """Delete outputs an earlier run wrote for this image that this run did not write again."""
    keep = set(new)
    for name in old:
        if name in keep:
            continue
        p = (out / name).resolve()
        if out.resolve() not in p.parents:
            continue
        for q in (p, p.with_suffix(".txt")):
            try:
                q.unlink()
            except FileNotFoundError:
                pass


def crop_overrides_for(src: Path) -> dict[str, list[float]]:
    """The studio's crop boxes when `src` is a project's 01_raw (keys are its image ids), else none."""
    from prep.overrides import OverridesError, load_overrides
    from prep.project import find_project

    proj = find_project(src)
    if proj is None or Path(src).resolve() != proj.raw.resolve():
        return {}
    try:
        ov = load_overrides(proj.root)
    except OverridesError:
        raise ValueError(f"{proj.root / 'overrides.json'}: cannot read the studio's hand edits; fix or delete it") from None
    return {sid: ov.crop(sid) for sid in ov.crops}  # type: ignore[misc]


def crop_folder(src: Path | str, out: Path | str, options: CropOptions | None = None, *, progress: Progress | None = None) -> CropReport:
    """Crop every image of `src` into `out` (see the module docstring). Raises ValueError on bad options.

    A real run holds `out` (prep.lock) from reading its manifest to writing its report, so a
    second run on the same folder refuses (OutputLocked) instead of redoing the same crops.
    """
    with ExitStack() as held:
        return _crop_folder(src, out, options or CropOptions(), progress, held)


def _crop_folder(src: Path | str, out: Path | str, options: CropOptions, progress: Progress | None, held: ExitStack) -> CropReport:
    options.validate()
    src, out = Path(src), Path(out)
    if src.resolve() == out.resolve():
        raise ValueError(f"{out}: the output folder must differ from the source folder (originals are never overwritten)")
    items = discover(src, recursive=options.recursive, exclude=[out])
    if not options.dry_run:
        held.enter_context(output_lock(out, "prep crop"))
    report = CropReport(out=out, dry_run=options.dry_run, resolution=options.resolution,
                        set_aside_folder=aside_folder(options, out) if options.off_model == "set-aside" else None,
                        results=ResultList(dir=out))
    # named, never opened: symlink loops, FIFOs, devices, formats we cannot read
    report.results.extend(Result(s.id, "failed", str(s.path), reason=s.message) for s in items.skipped)
    names = output_stems(items)
    manifest = Manifest.in_folder(out)
    key = crop_key(options)
    overrides = crop_overrides_for(src)

    todo: list[ImageItem] = []
    digests: dict[str, tuple[str, list[int]]] = {}
    for it in items:
        rec = manifest.get(STEP, it.id)
        if rec is not None and not options.overwrite and rec.data.get("options") == key and rec.data.get("override") == overrides.get(it.id):
            try:  # an unchanged stat is an unchanged source: its recorded hash, no read
                st = stat_key(it.path)
                sha = manifest.recorded_sha256(STEP, it.id, st) or sha256_file(it.path)
            except OSError:
                sha = None
            if sha and manifest.is_done(STEP, it.id, sha):
                if rec.data.get("source_stat") != st and not options.dry_run:  # touched, same bytes: trust the stat next time
                    manifest.append(Record(rec.step, rec.id, rec.status, rec.source, rec.source_sha256, list(rec.outputs), rec.reason, {**rec.data, "source_stat": st}))
                report.results.append(_previous_result(rec))
                continue
            if sha:
                digests[it.id] = (sha, st)
        todo.append(it)

    workers = options.workers or default_workers()
    threads = max(1, (os.cpu_count() or 1) // workers)
    step = CropStep(options, out, names, threads=threads, overrides=overrides, digests=digests, key=key)
    try:
        det = step.detector
        if hasattr(det, "check"):
            det.check()
        elif hasattr(det, "resolve"):
            det.resolve()
        report.warnings.extend(getattr(det, "warnings", []))
    except Exception:
        if todo:
            raise
    if options.reference is not None and todo:  # a bad reference stops here, before any image is cropped
        step.references = load_references(options, step.detector, out)
    executor = make_executor(options, workers=workers, kind="thread")
    for r in executor.run(step, todo, progress=progress, description="cropping"):
        if not options.dry_run and options.off_model == "set-aside" and "off_model" in r.data.get("flags", []) and r.outputs:
            set_aside(r, out, aside_folder(options, out))
        if not options.dry_run:
            old = manifest.get(STEP, r.id)  # read back here, not held for every image
            if old is not None and r.status != "failed":
                _remove_stale(out, old.outputs, r.outputs)
            manifest.append(
                Record(step=STEP, id=r.id, status=r.status, source=printable(r.source), source_sha256=r.data.get("sha256"), outputs=r.outputs, reason=r.reason, data=r.data)  # type: ignore[arg-type]
            )
        report.results.append(r)
    report.results.sort_by_id()
    if not options.dry_run:  # sources that left the input folder (rejected in the studio, deleted): their crops go too
        present = {it.id for it in items} | {s.id for s in items.skipped}
        for gone in manifest.ids(STEP):
            rec = manifest.get(STEP, gone) if gone not in present else None
            if rec is not None:
                _remove_stale(out, rec.outputs, [])

    if not options.dry_run:
        out.mkdir(parents=True, exist_ok=True)
        report.report_path = out / REPORT_NAME
        write_lines_if_changed(report.report_path, lambda: (json.dumps(report_line(r), ensure_ascii=False) + "\n" for r in report.results))
        if options.contact_sheet and report.results:
            rows = report.results.first(SHEET_MAX_ROWS, key=lambda rid, status: (status == "ok", rid))  # problems first
            if len(report.results) > SHEET_MAX_ROWS:
                report.warnings.append(f"contact sheets show {SHEET_MAX_ROWS} of {len(report.results)} images (flagged ones first); crops.jsonl lists all")
            report.contact_sheets = write_sheets(rows, out, background=parse_color(options.background), manifest=manifest, decode=options.decode)
        arch = get_arch(options.trainer).name if options.trainer else None
        spec = options.spec(no_upscale=report.no_upscale)
        record_path = out / BUCKET_RECORD
        if _read_json_or_none(record_path) == bucket_record(spec, arch=arch, written_by="prep crop"):
            report.bucket_record = record_path  # unchanged: kept with its mtime
        else:
            report.bucket_record = write_bucket_record(out, spec, arch=arch, written_by="prep crop")
    if report.suggested_resolution:
        report.warnings.append(
            f"{len(report.small_sources)} of {len(report.results)} sources are smaller than the {options.resolution} px buckets "
            f"(written without upscaling): consider --resolution {report.suggested_resolution}"
        )
    return report


def crop_key(options: CropOptions) -> str:
    """The options key, plus the reference images' contents when there are references."""
    key = options.key()
    if options.reference is None:
        return key
    from prep.identity import reference_digest

    return hashlib.sha256(f"{key}:{reference_digest(options.reference)}".encode()).hexdigest()[:16]


def load_references(options: CropOptions, detector: Any, out: Path) -> Any:
    """The identity model and the reference embeddings for --reference (ReferenceError / ModelNotAvailable name the fix)."""
    from prep.identity import EmbeddingCache, References, create_identity_model, model_for_detector
    from prep.project import STATE_DIR

    name = options.identity_model if options.identity_model != "auto" else model_for_detector(options.detector)
    model = create_identity_model(name, model_path=options.identity_model_path, device=options.device, threshold=options.identity_threshold)
    cache = EmbeddingCache(out / STATE_DIR, model.name) if not options.dry_run else None
    return References.load(options.reference, model=model, detector=detector, cache=cache)  # type: ignore[arg-type]


def aside_folder(options: CropOptions, out: Path) -> Path:
    """Where --off-model set-aside moves crops: --set-aside, else OUT_off_model beside the output."""
    return Path(options.set_aside) if options.set_aside else out.parent / f"{out.name}_off_model"


def set_aside(r: Result, out: Path, folder: Path) -> None:
    """Move an off-model image's crops (and captions) from `out` into `folder`, same relative
    names. Nothing there is overwritten: the same bytes already there (a rerun) count as moved,
    anything else gets a free name (`name_2.png`). The result then lists them under
    `set_aside` instead of `outputs`."""
    moved = []
    for name in r.outputs:
        src = out / name
        dst = folder / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        n = 2
        while dst.exists() and not _same_bytes(src, dst):  # the first free name, or our own earlier copy
            dst = (folder / name).with_name(f"{Path(name).stem}_{n}{Path(name).suffix}")
            n += 1
        for a, b in ((src, dst), (src.with_suffix(".txt"), dst.with_suffix(".txt"))):
            if not a.is_file():
                continue
            if b.exists() and _same_bytes(a, b):
                a.unlink()  # our own crop, already set aside by an earlier run
            elif b.exists():
                continue  # a caption of someone else's there: leave both where they are
            elif _same_device(a.parent, b.parent):
                os.replace(a, b)
            else:
                _copy_then_remove(a, b)
        moved.append(str(dst))
    r.data["set_aside"] = moved
    r.outputs = []
    why = f"set aside in {printable(folder)}"
    r.reason = f"{r.reason}; {why}" if r.reason else why


def _same_bytes(a: Path, b: Path) -> bool:
    try:
        return a.stat().st_size == b.stat().st_size and a.read_bytes() == b.read_bytes()
    except OSError:
        return False


def _same_device(a: Path, b: Path) -> bool:
    try:
        return os.stat(a).st_dev == os.stat(b).st_dev
    except OSError:
        return False


def _copy_then_remove(a: Path, b: Path) -> None:
    """Across file systems: an atomic copy first, the original removed only once the copy is whole."""
    atomic_write_bytes(b, a.read_bytes())
    a.unlink()


class CropStage:
    """`prep crop` as a stage: the CLI command and `loraprep run` both call `run`."""

    name = "crop"
    Options = CropOptions

    def run(self, src: Path, out: Path, options: CropOptions, *, progress: Progress | None = None) -> CropReport:
        return crop_folder(src, out, options, progress=progress)


STAGE = CropStage()


# --- contact sheet --------------------------------------------------------------------------


def sheet_thumb(image: Image.Image, cell: int) -> Image.Image:
    """A source's tile picture: at most `cell` on the long side (what the sheet draws), by a box
    reduction then one small resize, so making it from a 12 MP decode costs a few ms."""
    f = max(1, min(image.width, image.height) // (2 * cell))
    im = image.reduce(f) if f > 1 else image.copy()
    im.thumbnail((cell, cell), Image.Resampling.BILINEAR)
    return im


def thumb_path(out: Path, sha: str, decode: str) -> Path:
    return out / THUMB_DIR / f"{sha[:32]}_{decode}.jpg"


def _source_tile(r: Result, background: tuple[int, int, int], cell: int, out: Path | None = None, decode: str = "full") -> Tile:
    label = f"{r.id} [{r.status}]"
    sha, size = r.data.get("sha256"), r.data.get("size")
    thumb = thumb_path(out, sha, decode) if out is not None and sha and size and cell == SHEET_CELL else None
    try:  # the step's thumbnail of this very content; else decode the source (small JPEG decode)
        im = load_image(thumb).image if thumb is not None and thumb.is_file() else None
        full_w = size[0] if im is not None else 0
    except Exception:
        im = None
    if im is None:
        try:
            img = load_image(r.source, background=background, draft_size=(cell * 2, cell * 2))
        except Exception:
            return Tile(Image.new("RGB", (cell, cell), (90, 0, 0)), label + " unreadable")
        im, full_w = img.image, img.size[0]
        im.thumbnail((cell * 2, cell * 2))
    s = im.width / full_w
    boxes = [tuple(v * s for v in f[:4]) for f in r.data.get("faces", [])]
    crops = [tuple(v * s for v in c) for c in r.data.get("crop", [])]
    colors = [(255, 40, 40)] * len(boxes) + [(40, 220, 40)] * len(crops)
    return Tile(im, label, boxes + crops, colors)  # type: ignore[arg-type]


def _output_tile(out: Path, name: str, cell: int) -> Tile:
    try:
        loaded = load_image(out / name, draft_size=(cell, cell))
        im = loaded.image
        im.thumbnail((cell, cell))
        w, h = loaded.size
        return Tile(im, f"{Path(name).name} {w}x{h}")
    except Exception:
        return Tile(Image.new("RGB", (cell, cell), (90, 0, 0)), f"{name} missing")


def _read_text_or_none(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _read_json_or_none(path: Path) -> Any:
    text = _read_text_or_none(path)
    try:
        return json.loads(text) if text is not None else None
    except json.JSONDecodeError:
        return None


def _stat_or_none(path: Path | str) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _page_key(rows: Sequence[Result], out: Path, background: tuple[int, int, int], cell: int) -> str:
    """What one sheet page shows: its rows (report lines), their sources' content hashes, their
    crops' sizes and mtimes, and how it is drawn. The same key means the same picture."""
    parts: list[Any] = [SHEET_RULES, cell, list(background)]
    for r in rows:
        source = r.data.get("sha256") or _stat_or_none(r.source)  # the same bytes draw the same tile
        parts.append([report_line(r), source, [_stat_or_none(out / n) for n in r.outputs]])
    return hashlib.sha256(json.dumps(parts, ensure_ascii=True, default=str).encode()).hexdigest()


def write_sheets(
    results: Sequence[Result], out: Path, *, background: tuple[int, int, int] = (255, 255, 255), cell: int = SHEET_CELL,
    rows_per_page: int = SHEET_ROWS_PER_PAGE, manifest: Manifest | None = None, decode: str = "full",
) -> list[Path]:
    """`contact_sheet.jpg` (then `contact_sheet_002.jpg`, ...): each source with its face (red)
    and crop (green) boxes, followed by its crops.

    With `manifest`, each page records what it was built from (`_page_key`) and its own size and
    mtime; a page whose rows and file are unchanged is kept, not drawn again (a rerun with
    nothing to do decodes nothing)."""
    paths: list[Path] = []
    for page, start in enumerate(range(0, len(results), rows_per_page), start=1):
        page_rows = results[start : start + rows_per_page]
        name = SHEET_NAME if page == 1 else f"contact_sheet_{page:03d}.jpg"
        path = out / name
        if manifest is not None:
            page_key = _page_key(page_rows, out, background, cell)
            rec = manifest.get(SHEET_STEP, name)
            if rec is not None and rec.data.get("rows") == page_key and rec.data.get("sheet") == _stat_or_none(path):
                paths.append(path)
                continue
        rows = []
        for r in page_rows:
            rows.append([_source_tile(r, background, cell, out, decode), *(_output_tile(out, n, cell) for n in r.outputs)])
        paths.append(write_contact_sheet(rows, path, written_by="prep crop", cell=cell))  # recorded as out's report
        if manifest is not None:
            manifest.append(Record(SHEET_STEP, name, "ok", outputs=[name], data={"rows": page_key, "sheet": _stat_or_none(path)}))
    for stale in sorted(out.glob("contact_sheet_*.jpg")):  # crop's own output folder: earlier pages
        if stale not in paths:
            stale.unlink()
    shown = {thumb_path(out, r.data["sha256"], decode).name for r in results if r.data.get("sha256")}
    for old in sorted((thumb_path(out, "x", decode).parent).glob("*.jpg")):  # thumbnails no page shows
        if old.name not in shown:
            old.unlink(missing_ok=True)
    return paths
