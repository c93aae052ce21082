"""`prep check DIR`: everything that will bite at training time, found before it does.

One pass over the folder decodes each image once, at reduced size where the format allows
(JPEG DCT scaling), which is enough to prove it decodes, read its real upright size, see
transparency, hash it for duplicates and measure its quality (`prep.quality`: blur,
monochrome, JPEG artefacts; with `--faces`, the face region and a face too small for the
framing). With `--reference DIR` (or `--identity` without references) each face is embedded
(`prep.identity`, cached by content hash outside DIR) and images of someone else are flagged.
Read-only: nothing in DIR is written.
"""

from __future__ import annotations

import os
import statistics
import sys
from array import array
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from prep.buckets import BucketSpec, bucket_label, bucket_spec_for
from prep.dataset import ImageItem, discover, orphan_captions, read_caption
from prep.dedupe import (
    DEFAULT_THRESHOLD,
    HashColumns,
    HashedImage,
    PixelVerifier,
    group_duplicates,
    image_hashes,
)
from prep.executor import EngineOptions, Result, default_workers, make_executor
from prep.images import DEFAULT_MAX_PIXELS, ImageLoadError, load_image
from prep.inputs import printable
from prep.options import ArchName
from prep.quality import (
    BLOCKINESS_MIN_HEADER,
    BLOCKINESS_THRESHOLD,
    BLUR_THRESHOLD,
    FACE_BLUR_THRESHOLD,
    JPEG_MIN_QUALITY,
    MONO_THRESHOLD,
    measure,
)
from prep.results import ResultList, decode_fields, encode_fields

CHECK_DRAFT = (256, 256)
IDENTITY_DRAFT = (512, 512)
"""Reduced decode when faces are embedded: an SFace/CCIP crop needs more pixels than a check
(a 12 MP JPEG then decodes at 1/4 instead of 1/8)."""
QUALITY_KINDS = ("blurry", "monochrome", "face_small", "jpeg_artifacts", "no_face", "off_model", "outside_cluster")
"""The quality and identity flags, each a key of `CheckReport.problems()` (and a studio filter `check:KIND`)."""


def default_cache_dir() -> Path:
    """Where embeddings are cached (never inside the folder checked): $LORAPREP_HOME/cache, else the XDG cache."""
    home = os.environ.get("LORAPREP_HOME")
    if home:
        return Path(home).expanduser() / "cache"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "loraprep"
MP_BINS = [(0, 0.25), (0.25, 0.5), (0.5, 1), (1, 2), (2, 4), (4, 12), (12, float("inf"))]


class CheckOptions(EngineOptions):
    """The options of `prep check` (its flags and `loraprep.toml`'s [check]), declared once."""

    resolution: int = Field(1024, gt=0, description="Trainer resolution for bucket assignment.")
    trainer: ArchName | None = Field(None, description="Architecture whose bucket rules the bucket column follows (any prep.archs name or alias; default: sd-scripts rules, step 64).")
    min_side: int | None = Field(None, description="Flag images whose short side is below this (default resolution/2: the trainer upscales up to 2x).")
    recursive: bool = Field(False, description="Include subfolders.", json_schema_extra={"cli": ("--recursive", "-r")})
    workers: int | None = Field(None, description="Parallel workers (default: all cores).", json_schema_extra={"cli": ("--workers", "-j")})
    dup_threshold: int = Field(DEFAULT_THRESHOLD, ge=0, le=64, description="Duplicate threshold in bits of 64.")
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, gt=0, description="Refuse images with more pixels than this (decompression-bomb guard).")
    bucket_steps: int | None = Field(None, description="Bucket step (default: the architecture's, else 64; Anima also allows 16, 32 and 48).")
    max_bucket_reso: int | None = Field(None, description="Largest bucket side (default: twice the resolution, at least 1024, as train_bridge config writes it).")
    quality: bool = Field(True, description="Measure blur, monochrome and JPEG artefacts (on the decode check already makes).", json_schema_extra={"cli": ("--quality/--no-quality",)})
    faces: bool = Field(True, description="Detect faces (YuNet by default): blur measured on the face; `face_small` and `no_face` flagged (always on with --reference/--identity).", json_schema_extra={"cli": ("--faces/--no-faces",)})
    detector: Literal["photo", "anime", "auto"] = Field("photo", description="Face detector for --faces/--reference: photo (YuNet, shipped), anime, auto.")
    detector_model: str | None = Field(None, description="Detector model file (default: shipped / env var / HF cache).")
    blur_threshold: float = Field(BLUR_THRESHOLD, ge=0, description="Flag `blurry` below this variance of the Laplacian of the whole image (no face found; docs/check.md).")
    face_blur_threshold: float = Field(FACE_BLUR_THRESHOLD, ge=0, description="Flag `blurry` below this variance of the Laplacian of the face region (docs/check.md).")
    mono_threshold: float = Field(MONO_THRESHOLD, ge=0, description="Flag `monochrome` below this Lab chroma spread (grey, sepia, one hue; docs/check.md).")
    jpeg_min_quality: int = Field(JPEG_MIN_QUALITY, ge=0, le=100, description="Flag `jpeg_artifacts` when the JPEG's quantisation tables mean a quality below this.")
    blockiness_threshold: float = Field(BLOCKINESS_THRESHOLD, ge=1, description="Flag `jpeg_artifacts` when the 8x8 block-edge gradient ratio is above this (re-saved low-quality JPEGs).")
    framing: Literal["face", "bust", "upper-body", "full"] = Field("bust", description="The crop framing `face_small` is judged for (prep crop --framing).")
    min_face: int | None = Field(None, gt=0, description="Flag `face_small` when the largest face is shorter than this in px (default: the framing's face share of --min-side).")
    reference: str | None = Field(None, description="Folder of 1-5 images of the character: flag `off_model` images whose faces match none.")
    identity: bool = Field(False, description="Without references: cluster the faces and flag images outside the dominant cluster (`outside_cluster`).", json_schema_extra={"cli": ("--identity/--no-identity",)})
    identity_model: str = Field("auto", description="Embedding model: sface (photos, 3D), ccip (anime), auto (follows --detector).")
    identity_model_path: str | None = Field(None, description="Identity model file (default: env var / HF cache).")
    identity_threshold: float | None = Field(None, description="Similarity at which two faces are the same identity (default: the model's published value).")
    cache_dir: str | None = Field(None, description="Embedding cache folder (default: $LORAPREP_HOME/cache or ~/.cache/loraprep).")

    @model_validator(mode="after")
    def _buckets(self) -> CheckOptions:
        self.spec()
        return self

    def spec(self) -> BucketSpec:
        """The buckets the trainer of `trainer` uses at `resolution` (prep.archs via bucket_spec_for)."""
        return bucket_spec_for(self.trainer, self.resolution, step=self.bucket_steps, max_reso=self.max_bucket_reso)

    @property
    def wants_identity(self) -> bool:
        return self.reference is not None or self.identity

    @property
    def wants_faces(self) -> bool:
        return self.faces or self.wants_identity

    def face_floor(self) -> int | None:
        """Smallest face height (px) the framing can crop without the trainer upscaling more than 2x."""
        if self.min_face:
            return self.min_face
        from prep.framing import PRESETS

        preset = PRESETS.get(self.framing)
        if preset is None:  # full: the whole subject, no face share to keep
            return None
        return max(1, round(preset.share * (self.min_side or self.resolution // 2)))


class CheckStep:
    """Executor step: decode once (draft), collect facts, hash, measure quality; faces and
    their embeddings only when asked (`faces` / `identity`)."""

    def __init__(self, max_pixels: int = DEFAULT_MAX_PIXELS, *, quality: bool = True, faces: bool = False, detector: str = "photo",
                 detector_model: str | None = None, identity: str | None = None, identity_model_path: str | None = None,
                 cache_dir: Path | None = None, threads: int = 1):
        self.max_pixels = max_pixels
        self.quality = quality
        self.faces = faces or identity is not None
        self.detector_name = detector
        self.detector_model = detector_model
        self.identity = identity
        self.identity_model_path = identity_model_path
        self.cache_dir = cache_dir
        self.threads = threads
        self._detector: Any = None
        self._model: Any = None
        self._cache: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_detector": None, "_model": None, "_cache": None}

    @property
    def draft(self) -> tuple[int, int]:
        return IDENTITY_DRAFT if self.identity else CHECK_DRAFT

    def detector(self) -> Any:
        if self._detector is None:
            from prep.detectors import create_detector

            self._detector = create_detector(self.detector_name, model_path=self.detector_model, threads=self.threads)
        return self._detector

    def embedder(self) -> tuple[Any, Any]:
        if self._model is None:
            from prep.identity import EmbeddingCache, create_identity_model

            self._model = create_identity_model(self.identity or "auto", model_path=self.identity_model_path)
            self._cache = EmbeddingCache(self.cache_dir or default_cache_dir(), self._model.name)
        return self._model, self._cache

    def _faces(self, it: ImageItem, image: Any, scale: float) -> dict[str, Any]:
        boxes = self.detector().detect(image)
        out: dict[str, Any] = {"faces": [b.scaled(1 / scale).to_list() for b in boxes]}
        if self.identity and boxes:
            from prep.fsutil import sha256_file

            model, cache = self.embedder()
            sha = sha256_file(it.path)
            out["embeddings"] = [cache.get_or_compute(sha, b, lambda b=b: model.embed(image, b)).tolist() for b in boxes]
        return out

    def __call__(self, batch: list[ImageItem]) -> list[Result]:
        out = []
        for it in batch:
            try:
                li = load_image(it.path, draft_size=self.draft, max_pixels=self.max_pixels)
            except ImageLoadError as exc:
                out.append(Result(it.id, "failed", str(it.path), reason=exc.reason))
                continue
            data: dict[str, Any] = {
                "size": list(li.size),
                "format": li.format,
                "mode": li.mode,
                "alpha": li.has_alpha,
                "transparent": li.transparent,
                "exif_orientation": li.exif_orientation,
                "frames": li.n_frames,
                **image_hashes(li.image),
                "file_size": it.path.stat().st_size,
            }
            try:
                scale = li.image.width / max(1, li.size[0])
                found = self._faces(it, li.image, scale) if self.faces else {}
                if self.quality:
                    face = found.get("faces", [None])[0] if found.get("faces") else None
                    data["quality"] = measure(li.image, scale=scale, fmt=li.format, quantization=_quantization(it.path, li.format),
                                              face=None if face is None else [v * scale for v in face[:4]]).to_json()
                data.update(found)
            except Exception as exc:  # a model that cannot run is reported once per image, never aborts the batch
                data["quality_error"] = f"{type(exc).__name__}: {exc}"
            out.append(Result(it.id, "ok", str(it.path), data=data))
        return out


def _quantization(path: Path, fmt: str) -> dict[int, list[int]] | None:
    """A JPEG's quantisation tables, read from its header (no decode)."""
    if fmt != "JPEG":
        return None
    from PIL import Image

    try:
        with Image.open(path) as im:
            return {k: list(v) for k, v in (getattr(im, "quantization", None) or {}).items()}
    except Exception:
        return None


@dataclass(slots=True)  # one per image: no __dict__ each (100k-image runs)
class ImageFacts:
    id: str
    size: tuple[int, int]
    format: str
    mode: str
    file_size: int
    transparent: bool
    alpha: bool
    exif_orientation: int
    frames: int
    bucket: tuple[int, int]
    caption: str  # ok | missing | empty | unreadable
    quality: dict[str, Any] | None = None
    """`prep.quality.Quality.to_json()`; None with --no-quality."""
    faces: list[list[float]] | None = None
    """Face boxes `[x0, y0, x1, y1, score]` in full-image pixels, largest first; None when not looked for."""
    embeddings: list[Any] | None = field(default=None, repr=False)
    identity_score: float | None = None
    """Best face's similarity to the references (--reference)."""
    cluster: int | None = None
    """Identity cluster of the image's best face (0 = dominant; --identity)."""
    flags: dict[str, str] = field(default_factory=dict)
    """Quality/identity flag -> why (keys of QUALITY_KINDS)."""


_FACT_FIELDS = ImageFacts.__slots__  # type: ignore[attr-defined]


class FactList(ResultList):
    """Check's per-image facts, kept like a stage's results (`prep.results.ResultList`): in
    memory up to `SPILL_AT`, then in an anonymous file (a 100k-image check held ~0.8 KiB of
    facts per image). A spilled fact is a copy: facts are complete when appended."""

    @staticmethod
    def _encode(f: ImageFacts) -> bytes:  # type: ignore[override]
        return encode_fields([getattr(f, n) for n in _FACT_FIELDS])  # a list: no tuple free list kept full

    @staticmethod
    def _decode(b: bytes | memoryview) -> ImageFacts:  # type: ignore[override]
        return ImageFacts(*decode_fields(b))

    @staticmethod
    def _status(f: ImageFacts) -> str:
        return "ok"


_PER_IMAGE = ("small", "transparent", "exif_rotated", "animated", "caption_missing", "caption_empty", *QUALITY_KINDS)
"""Problems listed image by image (`CheckReport.problems`)."""


@dataclass
class CheckReport:
    folder: str
    options: CheckOptions
    images: Sequence[ImageFacts] = field(default_factory=list)
    """In id order; a `FactList` when made by `check_folder` (on disk past 10k images)."""
    errors: list[dict[str, str]] = field(default_factory=list)
    orphan_captions: list[str] = field(default_factory=list)
    caption_errors: list[dict[str, str]] = field(default_factory=list)
    duplicate_groups: list[dict[str, Any]] = field(default_factory=list)
    stem_clashes: list[list[str]] = field(default_factory=list)
    identity: dict[str, Any] | None = None
    """With --reference/--identity: the model, threshold, references and clusters used."""
    quality_errors: list[dict[str, str]] = field(default_factory=list)
    videos: dict[str, Any] | None = None
    """Videos in the folder (`prep.video.check_videos`): facts, what clips of the trainer's length keep and drop, errors by file."""
    """Images that decoded but whose quality or face measures raised (named, with the reason)."""
    flag_kinds: ClassVar[tuple[str, ...]] = QUALITY_KINDS

    @property
    def spec(self) -> BucketSpec:
        return self.options.spec()

    # derived views -------------------------------------------------------------------
    def ids(self, pred: Any) -> list[str]:
        return [f.id for f in self.images if pred(f)]

    @property
    def min_side(self) -> int:
        return self.options.min_side or self.options.resolution // 2

    def summary(self) -> dict[str, Any]:
        # one pass: past 10k images the facts are read back from disk
        widths, heights = array("I"), array("I")
        formats: Counter[str] = Counter()
        modes: Counter[str] = Counter()
        buckets: Counter[str] = Counter()
        captions: Counter[str] = Counter()
        bins = [0] * len(MP_BINS)
        for f in self.images:
            w, h = f.size
            widths.append(w)
            heights.append(h)
            formats[f.format] += 1
            modes[f.mode] += 1
            buckets[bucket_label(f.bucket)] += 1
            captions[f.caption] += 1
            m = w * h / 1e6
            for b, (lo, hi) in enumerate(MP_BINS):
                bins[b] += lo <= m < hi
        n = len(widths)
        return {
            "images": n + len(self.errors),
            "readable": n,
            "errors": len(self.errors),
            "formats": dict(formats.most_common()),
            "modes": dict(modes.most_common()),
            "size": {
                "min": [min(widths), min(heights)] if n else None,
                "median": [int(statistics.median(sorted(widths))), int(statistics.median(sorted(heights)))] if n else None,
                "max": [max(widths), max(heights)] if n else None,
                "megapixels": {self._bin_label(lo, hi): bins[b] for b, (lo, hi) in enumerate(MP_BINS)},
            },
            "captions": {
                "ok": captions["ok"],
                "missing": captions["missing"],
                "empty": captions["empty"],
                "orphans": len(self.orphan_captions),
            },
            "buckets": dict(sorted(buckets.items(), key=lambda kv: -kv[1])),
            "duplicates": sum(len(g["others"]) for g in self.duplicate_groups),
        }

    @staticmethod
    def _bin_label(lo: float, hi: float) -> str:
        return f">={lo:g} MP" if hi == float("inf") else f"{lo:g}-{hi:g} MP"

    def problems(self, *, stream: bool = False) -> dict[str, Any]:
        """Every finding, by kind; each entry names the file. `stream`: the per-image kinds as
        iterators, each reading the facts once more only when it has entries (for `emit_json`)."""
        which = self._which()
        per_image = {kind: self._entries(kind, which[kind]) for kind in _PER_IMAGE}
        if not stream:
            per_image = {kind: list(v) for kind, v in per_image.items()}
        return {
            "corrupt": self.errors,
            "small": per_image["small"],
            "transparent": per_image["transparent"],
            "exif_rotated": per_image["exif_rotated"],
            "animated": per_image["animated"],
            "caption_missing": per_image["caption_missing"],
            "caption_empty": per_image["caption_empty"],
            "caption_unreadable": self.caption_errors,
            "caption_orphans": self.orphan_captions,
            "caption_shared_stem": self.stem_clashes,
            "duplicates": self.duplicate_groups,
            **{kind: per_image[kind] for kind in QUALITY_KINDS},
            "quality_unmeasured": self.quality_errors,
        }

    def _which(self) -> dict[str, array]:
        """For each per-image kind of problem, the positions of the images that have it (one pass)."""
        out = {kind: array("I") for kind in _PER_IMAGE}
        floor = self.min_side
        for i, f in enumerate(self.images):
            if min(f.size) < floor:
                out["small"].append(i)
            if f.transparent:
                out["transparent"].append(i)
            if f.exif_orientation not in (0, 1):
                out["exif_rotated"].append(i)
            if f.frames > 1:
                out["animated"].append(i)
            if f.caption in ("missing", "empty"):
                out["caption_" + f.caption].append(i)
            for kind in f.flags:
                if kind in QUALITY_KINDS:
                    out[kind].append(i)
        return out

    def _entries(self, kind: str, where: array) -> Iterator[Any]:
        """The entries of `kind` for the images at `where` (ascending), in one sequential read."""
        if not where:
            return
        at = 0
        for i, f in enumerate(self.images):
            if i != where[at]:
                continue
            yield self._entry(kind, f)
            at += 1
            if at == len(where):
                return

    def _entry(self, kind: str, f: ImageFacts) -> Any:
        if kind == "small":
            return {"file": f.id, "size": list(f.size), "reason": f"short side {min(f.size)} px < {self.min_side} px: the trainer will upscale it"}
        if kind not in QUALITY_KINDS:
            return f.id
        entry: dict[str, Any] = {"file": f.id, "reason": f.flags[kind]}
        if kind in ("off_model",) and f.identity_score is not None:
            entry["score"] = round(f.identity_score, 4)
        if kind == "outside_cluster":
            entry["cluster"] = f.cluster
        return entry

    def to_json(self, *, stream: bool = False) -> dict[str, Any]:
        """The report as JSON data; `stream`: its images and per-image problems as iterators
        (for `emit_json`), read back as they are written instead of held as one document."""
        images = (self._image_json(f) for f in self.images)
        return {
            "folder": self.folder,
            "resolution": self.options.resolution,
            "trainer": self.options.trainer,
            "bucket_spec": {"family": self.spec.family, "steps": self.spec.steps, "min_reso": self.spec.min_reso, "max_reso": self.spec.max_reso},
            "min_side": self.min_side,
            "summary": self.summary(),
            "problems": self.problems(stream=stream),
            "images": images if stream else list(images),
            **({"identity": self.identity} if self.identity is not None else {}),
            **({"videos": self.videos} if self.videos is not None else {}),
        }

    @staticmethod
    def _image_json(f: ImageFacts) -> dict[str, Any]:
        return {
            "id": f.id,
            "size": list(f.size),
            "format": f.format,
            "mode": f.mode,
            "bucket": list(f.bucket),
            "transparent": f.transparent,
            "exif_orientation": f.exif_orientation,
            "caption": f.caption,
            **({"quality": f.quality} if f.quality is not None else {}),
            **({"faces": f.faces} if f.faces is not None else {}),
            **({"identity_score": round(f.identity_score, 4)} if f.identity_score is not None else {}),
            **({"cluster": f.cluster} if f.cluster is not None else {}),
            "flags": sorted(f.flags),
        }

    @property
    def has_errors(self) -> bool:
        return bool(self.errors or self.caption_errors or (self.videos or {}).get("errors"))

    @property
    def n_failed(self) -> int:
        """Files that could not be read (each named in `errors`)."""
        return len(self.errors)


def _caption_state(item: ImageItem) -> tuple[str, str | None]:
    try:
        text = read_caption(item.caption_path)
    except ValueError as exc:
        return "unreadable", str(exc)
    if text is None:
        return "missing", None
    return ("empty" if not text else "ok"), None


def check_folder(folder: Path | str, options: CheckOptions | None = None, *, progress: Any = None) -> CheckReport:
    """Inspect `folder` (read-only) and return a report of facts and problems."""
    opts = options or CheckOptions()
    folder = Path(folder)
    spec = opts.spec()
    items = discover(folder, recursive=opts.recursive)
    step, refs = _prepare_step(opts)
    results = make_executor(opts, workers=opts.workers, batch_size=4).run(step, items, progress=progress, description="checking")
    by_id = {it.id: it for it in items}
    report = CheckReport(printable(folder), opts)
    # never opened: symlink loops, dangling links, FIFOs and devices, formats we cannot read
    report.errors.extend({"file": s.id, "reason": s.reason} for s in items.skipped)
    # identity flags are set on the facts after all are in: those runs keep them in memory
    images = report.images = FactList(spill_at=sys.maxsize if step.identity else None)
    hashed = HashColumns()
    errors: list[tuple[str, dict[str, str]]] = []
    caption_errors: list[tuple[str, dict[str, str]]] = []
    quality_errors: list[tuple[str, dict[str, str]]] = []
    for r in results:  # facts taken as each result arrives: the results are never all held at once
        item = by_id[r.id]
        if r.status != "ok":
            errors.append((r.id, {"file": r.id, "reason": r.reason or "unreadable"}))
            continue
        d = r.data
        cap, cap_err = _caption_state(item)
        if cap_err:
            caption_errors.append((r.id, {"file": printable(item.caption_path.relative_to(folder).as_posix()), "reason": cap_err}))
        size = (d["size"][0], d["size"][1])
        facts = ImageFacts(
            id=r.id,
            size=size,
            format=d["format"],
            mode=d["mode"],
            file_size=d["file_size"],
            transparent=d["transparent"],
            alpha=d["alpha"],
            exif_orientation=d["exif_orientation"],
            frames=d["frames"],
            bucket=spec.select(*size).bucket,
            caption=cap,
            quality=d.get("quality"),
            faces=d.get("faces") if step.faces else None,
            embeddings=d.get("embeddings"),
        )
        facts.flags.update(quality_flags(facts, opts))
        images.append(facts)
        if d.get("quality_error"):
            quality_errors.append((r.id, {"file": r.id, "reason": f"quality/face measures failed: {d['quality_error']}"}))
        hashed.append(HashedImage(r.id, item.fspath, size, d["file_size"], d["hash"], d["mirror"], d["fine"], d["fine_mirror"]))
    # in id order, as when the results were sorted first
    images.sort_by_id()
    hashed.sort_by_id()
    for got, into in ((errors, report.errors), (caption_errors, report.caption_errors), (quality_errors, report.quality_errors)):
        into.extend(e for _, e in sorted(got, key=lambda t: t[0]))
    if step.identity:
        report.identity = identity_flags(images, opts, step, refs)
    report.duplicate_groups = [g.to_json() for g in group_duplicates(hashed, opts.dup_threshold, verify=PixelVerifier(), workers=opts.workers or default_workers())]
    report.orphan_captions = [printable(p.relative_to(folder).as_posix()) for p in orphan_captions(folder, items, recursive=opts.recursive)]
    stems: dict[str, list[str]] = {}
    for it in items:
        stems.setdefault(it.caption_path.as_posix().lower(), []).append(it.id)
    report.stem_clashes = [ids for ids in stems.values() if len(ids) > 1]
    report.videos = _videos(folder, opts)
    return report


def _videos(folder: Path, opts: CheckOptions) -> dict[str, Any] | None:
    """The video report when the folder holds videos, at the trainer's fps (Wan: 16) and 81 frames."""
    from prep.video import check_videos, discover_videos  # noqa: PLC0415

    if not discover_videos(folder, opts.recursive):
        return None
    fps = 16.0
    if opts.trainer:
        from prep.archs import get_arch  # noqa: PLC0415

        fps = float(get_arch(opts.trainer).video_fps or fps)
    return check_videos(folder, opts.recursive, fps=fps)


def _prepare_step(opts: CheckOptions) -> tuple[CheckStep, Any]:
    """The step for these options, with its models loaded here first, so a missing model or a
    bad reference folder stops the check once, naming the fix, before any image is read."""
    identity = None
    if opts.wants_identity:
        from prep.identity import model_for_detector

        identity = opts.identity_model if opts.identity_model != "auto" else model_for_detector(opts.detector)
    step = CheckStep(opts.max_pixels, quality=opts.quality, faces=opts.wants_faces, detector=opts.detector, detector_model=opts.detector_model,
                     identity=identity, identity_model_path=opts.identity_model_path, cache_dir=Path(opts.cache_dir) if opts.cache_dir else None,
                     threads=1)  # one ONNX thread per worker: the executor already runs an image per core
    refs = None
    if step.faces and hasattr(step.detector(), "resolve"):
        step.detector().resolve()
    if identity is not None:
        model, cache = step.embedder()
        if opts.reference is not None:
            from prep.identity import References

            refs = References.load(Path(opts.reference), model=model, detector=step.detector(), cache=cache)
    return step, refs


def quality_flags(f: ImageFacts, opts: CheckOptions) -> dict[str, str]:
    """The quality flags of one image's measures under `opts`' thresholds (flag -> why)."""
    q = f.quality
    out: dict[str, str] = {}
    if q is None:
        return out
    where = "face" if q.get("sharpness_on") == "face" else "image"
    limit = opts.face_blur_threshold if where == "face" else opts.blur_threshold
    if q["sharpness"] < limit:
        out["blurry"] = f"{where} sharpness {q['sharpness']:g} < {limit:g} (variance of the Laplacian): out of focus or motion-blurred"
    if q["chroma"] < opts.mono_threshold and not f.transparent:
        out["monochrome"] = f"chroma spread {q['chroma']:g} < {opts.mono_threshold:g}: greyscale, sepia or a single hue"
    jq, blk = q.get("jpeg_quality"), q.get("blockiness")
    if jq is not None and jq < opts.jpeg_min_quality:
        out["jpeg_artifacts"] = f"JPEG quality about {jq} (< {opts.jpeg_min_quality}): heavy compression artefacts train into the LoRA"
    elif blk is not None and blk > opts.blockiness_threshold and (jq is None or jq >= BLOCKINESS_MIN_HEADER):
        out["jpeg_artifacts"] = f"8x8 blockiness {blk:g} > {opts.blockiness_threshold:g}: re-saved from a low-quality JPEG"
    if f.faces == []:
        out["no_face"] = f"no face found by the {opts.detector} detector: not a picture of the character, or the face is hidden"
    if f.faces is not None:
        floor = opts.face_floor()
        if f.faces and floor:
            h = f.faces[0][3] - f.faces[0][1]
            if h < floor:
                out["face_small"] = (f"largest face {h:.0f} px tall < {floor} px: a {opts.framing} crop of it would be upscaled "
                                     f"more than 2x at {opts.resolution} (use a larger --framing, or drop it)")
    return out


def identity_flags(images: list[ImageFacts], opts: CheckOptions, step: CheckStep, refs: Any) -> dict[str, Any]:
    """`off_model` (with references) or `outside_cluster` (without) on `images`; `no_face` for
    images where no face was found. Returns what was used, for the report."""
    import numpy as np

    from prep.identity import cluster

    model, cache = step.embedder()
    threshold = opts.identity_threshold if opts.identity_threshold is not None else model.threshold
    info: dict[str, Any] = {"model": model.name, "threshold": threshold, "cache": str(cache.folder)}
    info["embedded"], info["from_cache"] = cache.misses, cache.hits  # a rerun embeds nothing
    with_faces = [f for f in images if f.embeddings]
    if refs is not None:
        info["references"] = [printable(x) for x in refs.files]
        for f in with_faces:
            scores = [refs.score(np.asarray(v, dtype=np.float32)) for v in f.embeddings or []]
            f.identity_score = float(max(scores))
            if f.identity_score < threshold:
                f.flags["off_model"] = f"no face matches the references (best similarity {f.identity_score:.3f} < {threshold:g})"
        for f in images:
            if f.faces == []:
                f.flags["off_model"] = "no face found, so nothing matches the references"
        return info
    vectors: list[Any] = []
    owner: list[int] = []
    for i, f in enumerate(with_faces):
        for v in f.embeddings or []:
            vectors.append(np.asarray(v, dtype=np.float32))
            owner.append(i)
    labels = cluster(vectors, threshold, model=model) if vectors else []
    per_image: dict[int, list[int]] = {}
    for i, lab in zip(owner, labels):
        per_image.setdefault(i, []).append(lab)
    sizes = Counter(labels)
    info["clusters"] = [sizes[k] for k in sorted(sizes)]
    for i, f in enumerate(with_faces):
        labs = per_image.get(i, [])
        f.cluster = min(labs) if labs else None
        if len(with_faces) >= 3 and f.cluster != 0:
            f.flags["outside_cluster"] = (f"its faces are not in the dominant identity cluster ({sizes[0]} of {len(vectors)} faces): "
                                          "someone else, or the character drawn very differently")
    return info


class CheckStage:
    """`prep check` as a stage (it writes nothing, so `out` is unused)."""

    name = "check"
    Options = CheckOptions

    def run(self, src: Path, out: Path | None, options: CheckOptions, *, progress: Any = None) -> CheckReport:
        return check_folder(src, options, progress=progress)


STAGE = CheckStage()
