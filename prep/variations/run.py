"""`render_variations(src, out, options)`: originals plus img2img style variations, resumable.

The source folder is only read. The output folder gets: a copy of every original with a
`3d render`-tagged caption, N variations per original with style-tagged captions, a
`manifest.jsonl` whose records carry the provenance of each variation (source, style, strength,
seed, model, backend) and its face similarity to its render, `contact_sheet.jpg` (each render
beside its variations), and `set_aside/` (variations whose face drifted from the render's, and
those over the final-set share; moved there, never deleted; see prep.variations.identity).

A manifest record is appended only after the image and its caption are on disk, so a rerun
after a kill skips finished variations; for Replicate the prediction ids in
`.loraprep/replicate_variations.jsonl` make an unfinished variation resume its prediction
instead of paying for a new one.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from pydantic import Field

from prep.contact_sheet import Tile, write_contact_sheet
from prep.dataset import caption_path_for, discover, read_caption
from prep.executor import LocalExecutor, Progress, Result, rel_or_abs
from prep.fsutil import atomic_write_text, link_or_copy, sha256_file
from prep.images import ImageLoadError, load_image, save_image
from prep.lock import output_lock
from prep.manifest import Manifest, Record
from prep.options import StageOptions
from prep.remote import RemoteError, redact
from prep.trigger import Trigger
from prep.variations.backends import (
    DEFAULT_MODELS,
    GenRequest,
    VariationBackend,
    make_backend,
)
from prep.variations.captions import (
    DEFAULT_ORIGINAL_TAG,
    img2img_prompt,
    original_caption,
    variation_caption,
)
from prep.variations.families import Family, family_of, strength_warning
from prep.variations.identity import (
    ASIDE_DIR,
    DRIFTED,
    KEPT,
    SURPLUS,
    Check,
    IdentityChecker,
    aside_id,
    choose_surplus,
    decide,
)
from prep.variations.plan import (
    PlannedVariation,
    Source,
    is_variation_name,
    plan_variations,
    synthetic_cap,
)

STEP = "render-variations"
STATE_DIR = ".loraprep"
REPLICATE_STATE = "replicate_variations.jsonl"
CONTACT_SHEET = "contact_sheet.jpg"
DEFAULT_STYLES = [
    "photorealistic portrait, dslr photo",
    "oil painting portrait",
    "digital illustration",
    "pencil sketch",
    "watercolor portrait",
]
DEFAULT_PER_IMAGE = 3
"""Candidates made per render: the low end of the 3-5 people cite (docs/render-variations.md)."""
DEFAULT_SYNTHETIC_SHARE = 0.6
"""Variations' share of the final set, about 60 % variations / 40 % originals (docs/render-variations.md)."""
DEFAULT_NEGATIVE = "3d render, cgi, blender, plastic skin"
"""Sent to models that take a negative prompt, to pull away from the render look."""


def _cli(*flags: str) -> dict[str, Any]:
    return {"cli": flags}


class VariationOptions(StageOptions):
    """The options of `prep render-variations` (its flags and the project file), declared once.

    `styles` comes on the command line from --style/--styles/--styles-file (parsed by the
    command); `backend_options` is for code only (tokens never come from a file or a flag).
    """

    styles: list[str] = Field(default_factory=lambda: list(DEFAULT_STYLES), description="Styles, one variation style each.", json_schema_extra={"cli": None})
    per_image: int = Field(DEFAULT_PER_IMAGE, ge=0, description="Variations made per render (styles rotate across renders); the most faithful are kept under --max-synthetic-share.", json_schema_extra=_cli("--per-image", "-n"))
    strength: float | None = Field(None, ge=0.01, le=1.0, description="img2img strength; default by model family (FLUX 0.6, SDXL 0.45).")
    backend: str = Field("replicate", description="replicate (hosted, default) or diffusers (local GPU).", json_schema_extra=_cli("--backend", "-b"))
    model: str | None = Field(None, description="replicate: owner/name[:version] (flux-dev, sdxl presets); diffusers: HF id, local diffusers folder or single-file .safetensors checkpoint.", json_schema_extra=_cli("--model", "-m"))
    checkpoint_config: str | None = Field(None, description="diffusers, single-file --model: a diffusers-format folder or Hub repo id of the same family with the component configs (default: the family's base repo, if already in the HF cache).")
    trigger: Trigger | None = Field(None, description="Trigger word put first in every caption (inside a loraprep project: its [project] trigger).", json_schema_extra=_cli("--trigger", "-t"))
    original_tag: str = Field(DEFAULT_ORIGINAL_TAG, description="Tag added to the originals' captions.")
    max_synthetic_share: float = Field(DEFAULT_SYNTHETIC_SHARE, ge=0.0, le=1.0, description="Most variations kept, as a share of originals + variations in the final set; the rest go to set_aside/surplus (1 = no cap).")
    identity_check: bool = Field(True, description="Compare each variation's face with its render's and set drifted ones aside.", json_schema_extra=_cli("--identity-check/--no-identity-check"))
    identity_model: str = Field("auto", description="sface (photos, 3D renders), ccip (anime), or auto (by --identity-detector).")
    identity_model_path: str | None = Field(None, description="Identity model file (default: the HF cache at the pinned revision; env LORAPREP_SFACE_MODEL).")
    identity_detector: str = Field("photo", description="Face detector for the identity check: photo, anime or auto.")
    min_identity: float | None = Field(None, ge=-1.0, le=1.0, description="Face similarity below which a variation is set aside (default: the model's published same-identity threshold, SFace 0.363).")
    seed: int = Field(0, description="Mixed into every per-image seed; change it for fresh samples.")
    steps: int | None = Field(None, ge=1, description="Inference steps (default by family).")
    guidance: float | None = Field(None, description="Guidance scale (default by family).")
    negative_prompt: str | None = Field(None, description="Negative prompt where the model takes one ('' for none; default: one against the render look).")
    max_side: int = Field(1024, ge=64, description="Scale larger renders down to this before img2img (never up).")
    batch_size: int = Field(1, ge=1, description="diffusers: images per pipeline call.")
    workers: int | None = Field(None, ge=1, description="replicate: predictions in flight (default 4).", json_schema_extra=_cli("--workers", "-j"))
    rpm: float | None = Field(300.0, ge=1.0, description="replicate: most prediction creates per minute.")
    device: str = Field("auto", description="diffusers: auto, cuda, cuda:1, mps, cpu.")
    dtype: str = Field("auto", description="diffusers: auto (bf16/fp16 on GPU, fp32 on CPU), bf16, fp16, fp32.")
    ip_adapter: str | None = Field(None, description="diffusers: REPO/[SUBFOLDER/]FILE, e.g. h94/IP-Adapter/sdxl_models/ip-adapter_sdxl.bin.")
    ip_adapter_scale: float = Field(0.6, ge=0.0, le=2.0, description="diffusers: IP-Adapter scale.")
    recursive: bool = Field(False, description="Include subfolders (kept in the output).", json_schema_extra=_cli("--recursive", "-r"))
    copy_originals: bool = Field(True, description="Copy each render (captioned with --original-tag) beside its variations.")
    contact_sheet: bool = Field(True, description="Write contact_sheet.jpg.", json_schema_extra=_cli("--contact-sheet/--no-contact-sheet"))
    dry_run: bool = Field(False, description="Show the plan (styles, seeds, captions); write and bill nothing.", json_schema_extra=_cli("--dry-run"))
    backend_options: dict[str, Any] = Field(default_factory=dict, description="Passed to the backend (api_token, base_url, poll_interval, timeout, policy, extra_input).", json_schema_extra={"cli": None})


@dataclass
class VariationsReport:
    sources: int = 0
    originals: int = 0
    """Originals copied (or already present) in the output."""
    planned: int = 0
    generated: int = 0
    resumed: int = 0
    """Variations already finished by an earlier run and not regenerated."""
    failed: list[dict[str, str]] = field(default_factory=list)
    dropped_by_cap: int = 0
    """Variations set aside in set_aside/surplus because the final-set share is reached."""
    cap: int | None = None
    """Most variations the final-set share allows (None: uncapped)."""
    identity: dict[str, Any] = field(default_factory=dict)
    """model, threshold, checked, kept, drifted, unchecked (the identity pass)."""
    set_aside: list[dict[str, Any]] = field(default_factory=list)
    """Variations moved out of the final set: id, where (relative to the output), reason, similarity."""
    backend: str = ""
    model: str = ""
    strength: float = 0.0
    contact_sheet: str | None = None
    manifest: str = ""
    warnings: list[str] = field(default_factory=list)
    variations: list[dict[str, Any]] = field(default_factory=list)
    dry_run: bool = False

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def n_failed(self) -> int:
        return len(self.failed)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class VariationJob:
    """One variation to generate: plain data (an executor item)."""

    id: str
    path: Path
    """The source render (named in failure messages)."""
    source_id: str
    source_sha256: str
    style: str
    index: int
    seed: int
    prompt: str
    caption: str
    strength: float
    negative_prompt: str | None = None
    steps: int | None = None
    guidance: float | None = None

    def provenance(self, backend: str, model: str) -> dict[str, Any]:
        return {
            "kind": "variation",
            "source_id": self.source_id,
            "style": self.style,
            "index": self.index,
            "strength": self.strength,
            "seed": self.seed,
            "model": model,
            "backend": backend,
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "steps": self.steps,
            "guidance": self.guidance,
        }


REGEN_KEYS = ("style", "seed", "strength", "model", "backend", "prompt", "negative_prompt", "steps", "guidance")
"""A finished variation is regenerated only when one of these differs from the plan."""


def fit_for_model(image: Image.Image, max_side: int, multiple: int) -> Image.Image:
    """Scale down to fit `max_side`, then round each side down to `multiple` (latent grid)."""
    w, h = image.size
    s = min(1.0, max_side / max(w, h))
    nw = max(multiple, int(w * s) // multiple * multiple)
    nh = max(multiple, int(h * s) // multiple * multiple)
    if (nw, nh) == (w, h):
        return image
    return image.resize((nw, nh), Image.Resampling.LANCZOS)


class VariationStep:
    """Executor step: load each source, run img2img, write image + caption (atomically)."""

    def __init__(self, backend: VariationBackend, out: Path, *, max_side: int, multiple: int):
        self.backend = backend
        self.out = out
        self.max_side = max_side
        self.multiple = multiple

    def __call__(self, batch: list[VariationJob]) -> list[Result]:
        reqs = []
        for job in batch:
            li = load_image(job.path)
            reqs.append(
                GenRequest(
                    key=job.id,
                    image=fit_for_model(li.image, self.max_side, self.multiple),
                    prompt=job.prompt,
                    strength=job.strength,
                    seed=job.seed,
                    negative_prompt=job.negative_prompt,
                    steps=job.steps,
                    guidance=job.guidance,
                )
            )
        try:
            images = self.backend.generate(reqs)
        except RemoteError as exc:
            if len(batch) > 1:
                raise  # the executor retries one by one
            job = batch[0]
            status = "retryable" if exc.retryable or exc.kind == "timeout" else "failed"
            return [Result(job.id, status, source=str(job.path), reason=redact(f"{job.path}: {exc}"), data=self._data(job))]
        results = []
        for job, im in zip(batch, images, strict=True):
            dest = self.out / job.id
            save_image(im, dest)
            cap = caption_path_for(dest)
            atomic_write_text(cap, job.caption + "\n")
            data = self._data(job)
            data["size"] = list(im.size)
            results.append(Result(job.id, "ok", source=str(job.path), outputs=[job.id, rel_or_abs(cap, self.out)], data=data))
        return results

    def _data(self, job: VariationJob) -> dict[str, Any]:
        d = {k: v for k, v in self.backend.describe().items()}
        d.update(job.provenance(self.backend.name, self.backend.model))
        extra = getattr(self.backend, "provenance", None)
        if extra is not None:
            d.update(extra(job.id))
        return d


def _family_for(backend: str, model: str) -> Family:
    if backend == "replicate":
        from prep.variations.backends.replicate import preset_for
        from prep.variations.families import FAMILIES

        return FAMILIES.get(preset_for(model).family, family_of(model))
    if backend == "diffusers" and model:
        from prep.variations.backends.diffusers_backend import (
            checkpoint_family,
            is_single_file,
        )

        if is_single_file(model):
            try:
                return checkpoint_family(model)  # from the file's tensor names (its header), not its name
            except ImportError:
                pass  # no [diffusers] extra: making the backend says so
    return family_of(model)


def _sources(src: Path, out: Path, options: VariationOptions, report: VariationsReport) -> list[tuple[Source, Path]]:
    found: list[tuple[Source, Path]] = []
    for item in discover(src, recursive=options.recursive, exclude=[out]):
        if is_variation_name(item.path.name):
            report.warnings.append(f"{item.id}: looks like a variation from an earlier run; not varied again")
            continue
        try:
            caption = read_caption(item.caption_path)
            sha = sha256_file(item.path)
        except ValueError as exc:
            report.failed.append({"id": item.id, "reason": str(exc)})
            continue
        except OSError as exc:
            report.failed.append({"id": item.id, "reason": f"{item.path}: cannot read ({exc.strerror or exc}); check its permissions"})
            continue
        found.append((Source(item.id, str(item.path), sha, caption), item.path))
    return found


def _copy_original(src: Source, path: Path, out: Path, options: VariationOptions, manifest: Manifest) -> Record:
    dest = out / src.id
    caption = original_caption(src.caption, options.trigger, options.original_tag)
    cap = caption_path_for(dest)
    if not (manifest.is_done(STEP, src.id, src.sha256) and dest.exists() and sha256_file(dest) == src.sha256):
        link_or_copy(path, dest, link=False)  # byte copy, streamed: no re-encode of the user's original
    if read_caption(cap) != caption:
        atomic_write_text(cap, caption + "\n")
    rec = Record(STEP, src.id, "ok", source=str(path), source_sha256=src.sha256, outputs=[src.id, rel_or_abs(cap, out)],
                 data={"kind": "original", "caption_tag": options.original_tag})
    return rec


def _is_finished(manifest: Manifest, job: VariationJob, backend: str, model: str) -> bool:
    if not manifest.is_done(STEP, job.id, job.source_sha256):
        return False
    rec = manifest.get(STEP, job.id)
    want = job.provenance(backend, model)
    return rec is not None and all(rec.data.get(k) == want[k] for k in REGEN_KEYS)


def _contact_rows(out: Path, sources: list[Source], plan: list[PlannedVariation], cell: int = 192) -> list[list[Tile]]:
    by_src: dict[str, list[PlannedVariation]] = {}
    for v in plan:
        by_src.setdefault(v.source_id, []).append(v)
    rows: list[list[Tile]] = []
    for s in sources:
        row: list[Tile] = []
        for rel, label in [(s.id, f"original {s.id}")] + [(v.id, v.style) for v in by_src.get(s.id, [])]:
            p = out / rel if (out / rel).exists() else (Path(s.path) if rel == s.id else None)
            if p is None or not p.exists():
                continue
            try:
                row.append(Tile(load_image(p, draft_size=(cell * 2, cell * 2)).image, label))
            except ImageLoadError:
                continue
        if row:
            rows.append(row)
    return rows


def render_variations(
    src: Path | str,
    out: Path | str,
    options: VariationOptions | None = None,
    *,
    progress: Progress | None = None,
    backend: VariationBackend | None = None,
    on_result: Callable[[Result], None] | None = None,
) -> VariationsReport:
    """Copy the renders in `src` to `out` and add `per_image` style variations of each.

    A real run (not a dry run) holds `out` (prep.lock) while it bills: a second copy on the
    same folder refuses (OutputLocked) instead of paying for the same variations again.
    """
    with ExitStack() as held:
        return _render_variations(src, out, options or VariationOptions(), progress=progress, backend=backend, on_result=on_result, held=held)


def _render_variations(
    src: Path | str,
    out: Path | str,
    options: VariationOptions,
    *,
    progress: Progress | None,
    backend: VariationBackend | None,
    on_result: Callable[[Result], None] | None,
    held: ExitStack,
) -> VariationsReport:
    src, out = Path(src), Path(out)
    if src.resolve() == out.resolve():
        raise ValueError("the output folder must differ from the source folder (sources are never modified)")
    model = backend.model if backend is not None else (options.model or DEFAULT_MODELS.get(options.backend, ""))
    if options.backend not in DEFAULT_MODELS and backend is None:
        raise ValueError(f"unknown backend {options.backend!r}: use one of {', '.join(DEFAULT_MODELS)}")
    family = getattr(backend, "family", None) or _family_for(options.backend if backend is None else backend.name, model)
    strength = options.strength if options.strength is not None else family.strength
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    negative = options.negative_prompt if options.negative_prompt is not None else (DEFAULT_NEGATIVE if family.negative_prompt else None)
    negative = negative or None
    report = VariationsReport(backend=options.backend if backend is None else backend.name, model=model, strength=strength, dry_run=options.dry_run)
    warn = strength_warning(strength, family)
    if warn:
        report.warnings.append(warn)

    pairs = _sources(src, out, options, report)
    sources = [s for s, _ in pairs]
    report.sources = len(sources)
    # Every render gets its candidates; the final-set share is applied after the identity check,
    # so the set keeps the most faithful variations (prep.variations.identity.choose_surplus).
    plan = plan_variations(sources, options.styles, per_image=options.per_image, max_synthetic_share=1.0, seed=options.seed)
    report.planned = len(plan.variations)
    report.cap = synthetic_cap(len(sources), options.max_synthetic_share)
    if report.cap is not None and report.planned > report.cap:
        report.warnings.append(
            f"{report.planned} variations are made for {len(sources)} renders and at most {report.cap} kept in the final set "
            f"(--max-synthetic-share {options.max_synthetic_share}): each render keeps its most faithful ones, the rest wait in "
            f"{ASIDE_DIR}/{SURPLUS}/ (lower --per-image to make fewer, raise the share to keep more)"
        )
    by_id = {s.id: s for s in sources}
    jobs = [
        VariationJob(
            id=v.id,
            path=Path(by_id[v.source_id].path),
            source_id=v.source_id,
            source_sha256=v.source_sha256,
            style=v.style,
            index=v.index,
            seed=v.seed,
            prompt=img2img_prompt(by_id[v.source_id].caption, v.style, options.trigger),
            caption=variation_caption(by_id[v.source_id].caption, v.style, options.trigger),
            strength=strength,
            negative_prompt=negative,
            steps=options.steps,
            guidance=options.guidance,
        )
        for v in plan.variations
    ]
    report.variations = [
        {"id": j.id, "source": j.source_id, "style": j.style, "seed": j.seed, "strength": j.strength, "caption": j.caption} for j in jobs
    ]
    manifest = Manifest.in_folder(out)
    report.manifest = str(manifest.path)
    if options.dry_run:
        report.originals = len(sources) if options.copy_originals else 0
        report.resumed = sum(1 for j in jobs if _is_finished(manifest, j, report.backend, model))
        return report
    if backend is None and any(not _is_finished(manifest, j, report.backend, model) for j in jobs):
        backend = _make_backend(options, model, out)  # fails early (no token, no extra) before writing
    # Hold the folder while billing; what is finished is read again under the lock, so a run that
    # ended while this one started is not paid for twice.
    held.enter_context(output_lock(out, "prep render-variations"))
    manifest = Manifest.in_folder(out)
    _find_moved(out, manifest, jobs)
    todo: list[VariationJob] = []
    for j in jobs:
        if _is_finished(manifest, j, report.backend, model):
            report.resumed += 1
        else:
            todo.append(j)
    # The identity model must be there before anything is paid for (ModelNotAvailable says how to get it).
    checker = IdentityChecker(out, model_name=options.identity_model, model_path=options.identity_model_path,
                              detector=options.identity_detector, state_dir=STATE_DIR) if options.identity_check and jobs else None

    out.mkdir(parents=True, exist_ok=True)
    pending = {j.id: j for j in todo}
    if options.copy_originals:
        for s, path in pairs:
            try:
                manifest.append(_copy_original(s, path, out, options, manifest))
                report.originals += 1
            except OSError as exc:
                report.failed.append({"id": s.id, "reason": f"{path}: cannot copy the original ({exc})"})

    if todo:
        assert backend is not None
        step = VariationStep(backend, out, max_side=options.max_side, multiple=family.multiple)
        local = options.backend == "diffusers" and backend.name == "diffusers"
        workers = options.workers or (1 if local else 4)
        ex = LocalExecutor(workers=workers, kind="thread", batch_size=max(1, options.batch_size) if local else 1)
        for r in ex.run(step, todo, progress=progress, description="img2img"):
            sha = pending[r.id].source_sha256 if r.id in pending else None
            manifest.append(Record(STEP, r.id, r.status, source=r.source, source_sha256=sha, outputs=r.outputs, reason=r.reason, data=r.data))  # type: ignore[arg-type]
            if r.status == "ok":
                report.generated += 1
            else:
                report.failed.append({"id": r.id, "reason": redact(r.reason or r.status), "status": r.status})
            if on_result:
                on_result(r)

    _check_and_place(out, manifest, jobs, by_id, checker, options, report)

    if options.contact_sheet and sources:
        rows = _contact_rows(out, sources, plan.variations)
        if rows:
            report.contact_sheet = str(write_contact_sheet(rows, out / CONTACT_SHEET))
    return report


def _where(kind: str, vid: str) -> str:
    return vid if kind == KEPT else aside_id(kind, vid)


def _find_moved(out: Path, manifest: Manifest, jobs: list[VariationJob]) -> None:
    """A run killed between moving a variation and recording the move: find the file where it
    went, so it is not generated (and paid for) again."""
    for j in jobs:
        rec = manifest.get(STEP, j.id)
        if rec is None or rec.status != "ok" or manifest.is_done(STEP, j.id, j.source_sha256):
            continue
        for kind in (KEPT, DRIFTED, SURPLUS):
            rel = _where(kind, j.id)
            if (out / rel).is_file():
                cap = caption_path_for(out / rel)
                manifest.append(dataclasses.replace(rec, outputs=[rel, rel_or_abs(cap, out)] if cap.exists() else [rel], time=rec.time))
                break


def _move(out: Path, old: str, new: str) -> list[str]:
    """Move a variation and its caption inside the output folder (renames: atomic, never a copy)."""
    src, dst = out / old, out / new
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, dst)
    cap_src, cap_dst = caption_path_for(src), caption_path_for(dst)
    if cap_src.exists():
        os.replace(cap_src, cap_dst)
    return [new, rel_or_abs(cap_dst, out)]


def _check_and_place(
    out: Path, manifest: Manifest, jobs: list[VariationJob], by_id: dict[str, Source], checker: IdentityChecker | None,
    options: VariationOptions, report: VariationsReport,
) -> None:
    """Embed what is not embedded yet, decide kept / drifted / surplus, and move each file where its
    decision says (the manifest record follows it); captions are (re)written where the file is."""
    threshold = options.min_identity if options.min_identity is not None else (checker.threshold if checker else None)
    info: dict[str, Any] = {"enabled": checker is not None}
    if checker is not None:
        info.update(model=checker.name, threshold=threshold, threshold_source="--min-identity" if options.min_identity is not None else f"{checker.name}'s published threshold")
    checked = embedded = 0
    decisions: dict[str, tuple[str, str | None, float | None]] = {}
    order = {j.id: i for i, j in enumerate(jobs)}
    for j in jobs:
        rec = manifest.get(STEP, j.id)
        if rec is None or rec.status != "ok" or not rec.outputs or not (out / rec.outputs[0]).is_file():
            continue
        check: Check | None = None
        if checker is not None:
            check = Check.from_json(rec.data.get("identity"))
            if check is None or check.model != checker.name:  # not embedded yet (or by another model)
                check = checker.check(out / rec.outputs[0], Path(by_id[j.source_id].path), j.source_sha256)
                rec = dataclasses.replace(rec, data={**rec.data, "identity": check.to_json()})
                manifest.append(rec)
                embedded += 1
            checked += 1
        kind, note = decide(check, threshold if threshold is not None else 0.0)
        decisions[j.id] = (kind, note, check.similarity if check else None)
    cap = report.cap
    surplus = choose_surplus(((vid, jobs[order[vid]].source_id, d[2], order[vid]) for vid, d in decisions.items() if d[0] == KEPT), cap)
    unchecked: list[dict[str, Any]] = []
    for vid, (kind, note, sim) in decisions.items():
        if kind == KEPT and vid in surplus:
            kind, note = SURPLUS, f"over the final-set share ({cap} variations for {report.sources} renders at --max-synthetic-share {options.max_synthetic_share})"
        rec = manifest.get(STEP, vid)
        assert rec is not None
        want = _where(kind, vid)
        if rec.outputs[0] != want:
            try:
                outputs = _move(out, rec.outputs[0], want)
            except OSError as exc:
                report.failed.append({"id": vid, "reason": f"{out / rec.outputs[0]}: cannot move it to {want} ({exc})"})
                continue
            manifest.append(dataclasses.replace(rec, outputs=outputs))
        job = jobs[order[vid]]
        cap_path = caption_path_for(out / want)
        if read_caption(cap_path) != job.caption:
            atomic_write_text(cap_path, job.caption + "\n")  # new trigger or tag: caption changes, image need not
        if kind != KEPT:
            report.set_aside.append({"id": vid, "where": want, "reason": note, "similarity": sim, "kind": kind})
        elif note:
            unchecked.append({"id": vid, "note": note})
    report.dropped_by_cap = sum(1 for a in report.set_aside if a["kind"] == SURPLUS)
    info.update(checked=checked, embedded_now=embedded, kept=sum(1 for d in decisions.values() if d[0] == KEPT) - report.dropped_by_cap,
                drifted=[a["id"] for a in report.set_aside if a["kind"] == DRIFTED], unchecked=unchecked)
    report.identity = info


def _make_backend(options: VariationOptions, model: str, out: Path) -> VariationBackend:
    kw: dict[str, Any] = dict(options.backend_options)
    if options.backend == "replicate":
        kw.setdefault("state_path", out / STATE_DIR / REPLICATE_STATE)
        kw.setdefault("rpm", options.rpm)
        kw.setdefault("concurrency", options.workers or 4)
    else:
        kw.update(device=options.device, dtype=options.dtype, ip_adapter=options.ip_adapter, ip_adapter_scale=options.ip_adapter_scale,
                  config=options.checkpoint_config)
    return make_backend(options.backend, model, **kw)


class VariationsStage:
    """`prep render-variations` as a stage: the CLI command and `loraprep run` both call `run`."""

    name = "render-variations"
    Options = VariationOptions

    def run(self, src: Path, out: Path, options: VariationOptions, *, progress: Progress | None = None) -> VariationsReport:
        return render_variations(src, out, options, progress=progress)


STAGE = VariationsStage()
