"""Preflight for a run folder (or loose TOML files): catch what the trainer would not.

Offline, always: model files exist and are what they claim (safetensors header complete,
expected tensor names, Wan DiT dtype equal to `mixed_precision`, SD3 text encoders present),
the dataset is non-empty, every image has a `.txt` caption with the trigger in it, every image
lands in its bucket without a resize or crop (else it is listed), every training key exists in
the trainer's real option list with the type the parser expects, and the dataset TOML passes
the trainer's schema rules (reference §3.2, §6.3). With `--sd-scripts PATH` or `--musubi PATH`
it also runs the trainer's own parser and dataset validator in the trainer's Python
(`trainer_probe.py`, a subprocess with an argv list) and compares its step count with ours.

`preflight(run_dir)` is the part that makes a trainer fail at load (model files, dataset
folders): `launch` calls it before starting anything, and `check` runs the same functions.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prep.dataset import read_caption
from prep.images import ImageLoadError, stored_size
from train_bridge.estimate import estimate_from
from train_bridge.model_paths import is_hub_id, missing_text_encoders
from train_bridge.options import load_option_list
from train_bridge.runspec import RunSpec, RunSpecError, read_dataset_toml, read_train_toml
from train_bridge.safetensors_header import MIXED_PRECISION_FOR_DTYPE, HeaderError, is_pickle_zip, read_header
from train_bridge.trainers import ArchSpec, get_arch, trainer_for
from train_bridge.trainers.base import VIDEO_SUFFIXES, glob_exact
from train_bridge.validate import flatten_like_trainer, validate_flat

PROBE = Path(__file__).with_name("trainer_probe.py")
REBUCKET_NAMES_SHOWN = 5


@dataclass
class CheckItem:
    level: str  # ok | warning | error
    area: str  # models | dataset | config | captions | trainer
    message: str


@dataclass
class CheckReport:
    target: str
    arch: str
    items: list[CheckItem] = field(default_factory=list)
    trainer: list[dict[str, Any]] = field(default_factory=list)
    rebucketed: list[dict[str, Any]] = field(default_factory=list)
    """Every image the trainer would resize or crop to fit its bucket."""

    def add(self, level: str, area: str, message: str) -> None:
        self.items.append(CheckItem(level, area, message))

    @property
    def errors(self) -> list[CheckItem]:
        return [i for i in self.items if i.level == "error"]

    @property
    def warnings(self) -> list[CheckItem]:
        return [i for i in self.items if i.level == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "arch": self.arch,
            "ok": self.ok,
            "errors": [i.__dict__ for i in self.errors],
            "warnings": [i.__dict__ for i in self.warnings],
            "passed": [i.__dict__ for i in self.items if i.level == "ok"],
            "rebucketed": self.rebucketed,
            "trainer": self.trainer,
        }


# -- models ----------------------------------------------------------------------------------------


def check_model(spec: ArchSpec, name: str, value: str, report: CheckReport, *, mixed_precision: str | None = None) -> None:
    m = spec.model(name)
    p = Path(value)
    if not p.exists():
        if is_hub_id(value, m):
            report.add("warning", "models", f"{name}: {value!r} is a Hugging Face id (not a path that exists); not checked offline")
        else:
            report.add("error", "models", f"{name}: {value} does not exist")
        return
    if p.is_dir():
        if m.allow_dir:
            report.add("ok", "models", f"{name}: folder {p}")
        else:
            report.add("error", "models", f"{name}: {p} is a folder; {spec.name} needs a file ({m.help})")
        return
    if p.suffix in (".pth", ".pt", ".bin", ".ckpt"):
        if is_pickle_zip(p):
            report.add("ok", "models", f"{name}: {p.name} (torch pickle, contents not checked)")
        else:
            report.add("error", "models", f"{name}: {p} is not a torch checkpoint (bad magic bytes); re-download it")
        return
    try:
        h = read_header(p)
    except (HeaderError, OSError) as exc:
        report.add("error", "models", f"{name}: {exc}; re-download it")
        return
    if not h.complete:
        report.add("error", "models", f"{name}: {p} is truncated ({h.file_size} of {h.data_end} bytes); re-download it")
        return
    if m.expect and not h.matches(m.expect):
        sample = ", ".join(list(h.tensors)[:3])
        report.add("error", "models", f"{name}: {p.name} is not the expected {m.help} (tensors: {sample}, ...); wrong file for --{name.replace('_', '-')}?")
        return
    report.add("ok", "models", f"{name}: {p.name} ({len(h.tensors)} tensors)")
    if spec.mixed_precision_from_dit and name in ("dit", "dit_high") and mixed_precision:
        dt = h.main_dtype(r"blocks\.\d+\..*weight$")
        want = MIXED_PRECISION_FOR_DTYPE.get(dt or "")
        if want and want != "no" and want != mixed_precision:
            report.add("error", "models", f"{name}: weights are {dt} but mixed_precision = {mixed_precision!r}; musubi asserts they match (set --set mixed_precision={want})")


def check_models(spec: ArchSpec, run: RunSpec, flats: dict[str, dict[str, Any]], report: CheckReport) -> None:
    """Every model path a command passes or a training config names."""
    checked: set[tuple[str, str]] = set()
    for cname, flat in flats.items():
        given: dict[str, str] = {}
        for m in spec.models:
            if (m.name == "dit_high") != (cname == "train_high") and m.name in ("dit", "dit_high"):
                continue
            val = flat.get(m.key)
            if val is None:
                if m.required and "train" in m.used_by[0]:
                    report.add("error", "models", f"{m.name}: not set in {cname}")
                continue
            given[m.name] = str(val)
            if (m.name, str(val)) not in checked:
                checked.add((m.name, str(val)))
                check_model(spec, m.name, str(val), report, mixed_precision=flat.get("mixed_precision"))
        missing = missing_text_encoders(spec, given)
        if missing:
            flags = " ".join(f"--{r.replace('_', '-')}" for r in missing)
            report.add("error", "models", f"{cname}: the checkpoint has no {', '.join(missing)} text encoder(s) and no file is given; pass {flags}")
    for c in run.cache_commands:
        for flag, name in (("--vae", "vae"), ("--t5", "t5"), ("--clip", "clip")):
            val = c.arg_value(flag)
            if val is not None and (name, val) not in checked:
                checked.add((name, val))
                check_model(spec, name, val, report)
        if spec.i2v and c.name == "cache_latents" and "--i2v" not in c.args and c.arg_value("--clip") is None:
            report.add("error", "config", "cache_latents for an I2V model needs --i2v (or --clip for Wan 2.1); training fails with KeyError 'latents_image'")


def check_dataset_dirs(spec: ArchSpec, doc: dict[str, Any], report: CheckReport) -> list[str]:
    """Folders the dataset TOML names that do not exist (an error each); returns the ones that do."""
    ok = []
    for d in trainer_for(spec).media_dirs(doc):
        if Path(d.path).is_dir():
            ok.append(d.path)
        else:
            report.add("error", "dataset", f"{d.path}: folder does not exist")
    return ok


# -- images and captions ---------------------------------------------------------------------------


def check_media(spec: ArchSpec, doc: dict[str, Any], trigger: str | None, report: CheckReport) -> None:
    trainer = trainer_for(spec)
    exts = trainer.image_extensions
    rx = re.compile(rf"(?<![\w]){re.escape(trigger)}(?![\w])") if trigger else None
    dirs = trainer.media_dirs(doc)
    existing = set(check_dataset_dirs(spec, doc, report))
    total = 0
    for md in dirs:
        d, is_reg, ext = md.path, md.is_reg, md.caption_extension
        if d not in existing:
            continue
        p = Path(d)
        video_exts: tuple[str, ...] = trainer.video_extensions  # musubi: its exact-case glob
        if md.kind == "video":
            media = glob_exact(d, video_exts)
        else:
            media = glob_exact(d, exts) + ([] if video_exts else [str(v) for v in p.iterdir() if v.suffix.lower() in VIDEO_SUFFIXES])
        if not media and md.kind == "video":
            report.add("error", "dataset", f"{d}: no videos the trainer reads ({' '.join(e for e in video_exts if e == e.lower())}, exact case)")
            continue
        if not media:
            shown = " ".join(e for e in exts if e == e.lower())
            report.add("error", "dataset", f"{d}: no images the trainer reads ({shown}, exact case)")
            continue
        total += 0 if is_reg else len(media)
        skipped = [x for x in p.iterdir() if x.is_file() and x.suffix.lower() in (".gif", ".tif", ".tiff") or (x.suffix.lower() in (".jpg", ".png", ".jpeg", ".webp") and x.suffix not in exts)]
        if skipped:
            report.add("warning", "dataset", f"{d}: {len(skipped)} file(s) the trainer skips ({skipped[0].name}, ...); run `prep layout` to convert them")
        cap_ext = ext or ".caption"
        missing, no_trigger = [], []
        for m in media:
            cap = Path(os.path.splitext(m)[0] + cap_ext)
            try:
                text = read_caption(cap)
            except ValueError as exc:
                report.add("error", "captions", str(exc))
                continue
            if text is None or not text:
                missing.append(Path(m).name)
            elif rx is not None and not is_reg and not rx.search(text):
                no_trigger.append(Path(m).name)
        if missing and md.kind == "video":
            report.add("error", "captions", f"{d}: {len(missing)} video(s) without a {cap_ext} caption ({', '.join(missing[:3])}); {trainer.name} stops with FileNotFoundError when caching them: caption them or move them out")
        elif missing:
            report.add("error", "captions", f"{d}: {len(missing)} image(s) without a {cap_ext} caption ({', '.join(missing[:3])}); they are {trainer.missing_caption_effect}")
        if no_trigger:
            report.add("error", "captions", f"{d}: trigger {trigger!r} missing from {len(no_trigger)} caption(s) ({', '.join(no_trigger[:3])}); run `prep trigger`")
        if not missing and not no_trigger:
            report.add("ok", "captions", f"{d}: {len(media)} captioned" + (", trigger in all" if rx is not None and not is_reg else ""))
        stale = [x.name for x in p.glob("*.npz")]
        if stale:
            report.add("warning", "dataset", f"{d}: {len(stale)} trainer cache file(s) (*.npz) from an earlier run; delete them if images, captions, precision or caption_dropout_rate changed")
    if dirs and total == 0:
        report.add("error", "dataset", "the dataset has no training images")


def check_buckets(spec: ArchSpec, doc: dict[str, Any], report: CheckReport) -> None:
    """The trainer's bucket for every image (header sizes, as the trainer reads them); every image
    it would resize or crop goes into `report.rebucketed`, with one warning per dataset."""
    trainer = trainer_for(spec)
    for bucket_spec, dirs in trainer.bucket_plan(spec, doc):
        hits: list[dict[str, Any]] = []
        n = 0
        for md in dirs:
            if not Path(md.path).is_dir():
                continue
            for path in glob_exact(md.path, trainer.image_extensions):
                try:
                    w, h = stored_size(path)
                except ImageLoadError:
                    continue  # reported by estimate as unreadable
                n += 1
                c = bucket_spec.select(w, h)
                actions = [a for a, hit in (("resize", c.resized != (w, h)), ("crop", c.resized != c.bucket)) if hit]
                if actions:
                    hits.append({"image": path, "size": [w, h], "bucket": list(c.bucket), "resized": list(c.resized), "action": "+".join(actions)})
        res = f"{bucket_spec.resolution[0]}x{bucket_spec.resolution[1]}"
        if hits:
            names = ", ".join(Path(x["image"]).name for x in hits[:REBUCKET_NAMES_SHOWN])
            more = f", +{len(hits) - REBUCKET_NAMES_SHOWN} more" if len(hits) > REBUCKET_NAMES_SHOWN else ""
            report.add(
                "warning", "dataset",
                f"{len(hits)} of {n} image(s) are resized or cropped by the trainer to fit its {res} buckets ({names}{more}; `check --json` lists them all); "
                "crop them for this resolution (`prep crop --trainer ... --resolution ...`) or train at the one they were cropped for",
            )
            report.rebucketed += hits
        elif n:
            report.add("ok", "dataset", f"all {n} image(s) fit their {res} bucket exactly (no resize, no crop)")


# -- training TOML ---------------------------------------------------------------------------------


def _homogeneous(v: Any) -> bool:
    """toml 0.10.2 (what the trainers use) rejects arrays that mix types, even int and float."""
    if not isinstance(v, list) or not v:
        return True
    return len({type(x) for x in v}) == 1


def check_train_doc(spec: ArchSpec, doc: dict[str, Any], report: CheckReport, where: str = "train.toml") -> dict[str, Any]:
    flat, issues = flatten_like_trainer(doc)
    return check_train_flat(spec, flat, issues, report, where)


def check_train_flat(spec: ArchSpec, flat: dict[str, Any], issues: list[Any], report: CheckReport, where: str) -> dict[str, Any]:
    options = load_option_list(spec.options_key)
    for i in issues:
        report.add(i.level, "config", f"{where}: {i}")
    for k, v in flat.items():
        if isinstance(v, list) and not _homogeneous(v):
            report.add("error", "config", f"{where}: {k} mixes types in one array; the trainer's toml 0.10.2 cannot read it")
    for i in validate_flat(flat, options, ignored=spec.ignored_keys):
        report.add(i.level, "config", f"{where}: {i}")
    get = flat.get
    trainer_for(spec).check_train(spec, flat, report, where)
    if spec.bf16_only and get("mixed_precision") == "fp16":
        report.add("error", "config", f"{where}: {spec.name} in fp16 trains to NaN; use bf16")
    if get("attn_mode") in spec.training_attn_modes_refused:
        report.add("error", "config", f"{where}: attn_mode = {get('attn_mode')!r} has no backward pass in {spec.trainer} ({spec.name} inference only); use sdpa")
    if get("mixed_precision") in (None, "no"):
        report.add("warning", "config", f"{where}: mixed_precision is not set: everything runs in fp32")
    if get("log_with") in ("tensorboard", "all") and not get("logging_dir"):
        report.add("error", "config", f"{where}: log_with = tensorboard needs logging_dir")
    if get("blocks_to_swap") and (get("cpu_offload_checkpointing") or get("unsloth_offload_checkpointing") or get("offload_inactive_dit")):
        report.add("error", "config", f"{where}: blocks_to_swap cannot be combined with offloaded checkpointing")
    if not get("output_dir"):
        report.add("error", "config", f"{where}: output_dir is not set")
    if not get("max_train_epochs"):
        report.add("warning", "config", f"{where}: max_train_epochs not set: the trainer runs max_train_steps ({get('max_train_steps', 1600)})")
    if not get("save_state"):
        report.add("warning", "config", f"{where}: save_state is off: an interrupted run cannot resume")
    if not any(i.level == "error" and i.area == "config" for i in report.items):
        report.add("ok", "config", f"{where}: {len(flat)} keys, all known to {options.script} @ {options.commit[:8]}")
    return flat


# -- trainer subprocess ----------------------------------------------------------------------------


def trainer_python(checkout: Path, python: str | None = None) -> str:
    """The trainer's interpreter: explicit, else a venv inside the checkout, else ours."""
    if python:
        return python
    # .venv-loraprep is what `train_bridge setup` creates inside the checkout
    for cand in (".venv-loraprep/bin/python", "venv/bin/python", ".venv/bin/python", ".venv-loraprep/Scripts/python.exe", "venv/Scripts/python.exe", ".venv/Scripts/python.exe"):
        if (checkout / cand).is_file():
            return str(checkout / cand)
    return sys.executable


def run_probes(spec: ArchSpec, checkout: Path, jobs: list[dict[str, Any]], *, python: str | None = None, timeout: int = 900) -> list[dict[str, Any]]:
    """Run `trainer_probe.py` once in the trainer's Python for several configs.

    Each job: {"script": stem, "train": train.toml, "args": CLI args, "cache_args": {...}}.
    """
    with tempfile.TemporaryDirectory() as td:
        out = Path(td) / "probe.json"
        jobs_file = Path(td) / "jobs.json"
        jobs_file.write_text(json.dumps(jobs), encoding="utf-8")
        argv = [trainer_python(checkout, python), str(PROBE), spec.trainer, str(checkout), str(out), "--jobs", str(jobs_file)]
        env = dict(os.environ, PYTHONIOENCODING="utf-8", COLUMNS="200")
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, cwd=td)
        except subprocess.TimeoutExpired:
            return [{"errors": [f"the trainer's parser did not finish within {timeout} s"], "unknown_keys": []} for _ in jobs]
        if not out.is_file():
            tail = (proc.stderr or proc.stdout or "")[-1500:]
            return [{"errors": [f"the trainer probe failed to start (exit {proc.returncode}): {tail}"], "unknown_keys": []} for _ in jobs]
        return json.loads(out.read_text(encoding="utf-8"))


def probe_jobs_for_run(run: RunSpec) -> list[dict[str, Any]]:
    """One probe job per training command of a run (cache argv checked with the first)."""
    spec = run.arch_spec()
    cache_args: dict[str, list[str]] | None = {c.name: list(c.args) for c in run.cache_commands} or None
    jobs = []
    for c in run.train_commands:
        cfg = run.train_toml(c)
        a = c.args
        cli = [x for i, x in enumerate(a) if not (x == "--config_file" or x.startswith("--config_file=") or (i > 0 and a[i - 1] == "--config_file"))]
        jobs.append({"name": c.name, "script": Path(spec.train_script).stem, "train": str(cfg), "args": cli, "cache_args": cache_args})
        cache_args = None
    return jobs


# -- entry points ----------------------------------------------------------------------------------


def check_config_files(arch: str, train_toml: Path | str | None = None, dataset_toml: Path | str | None = None, *, trigger: str | None = None) -> CheckReport:
    """Check loose TOML files (no run.json): keys, types, schema, captions, buckets."""
    spec = get_arch(arch)
    report = CheckReport(str(train_toml or dataset_toml), spec.name)
    flat: dict[str, Any] = {}
    if train_toml is not None:
        try:
            flat, issues = read_train_toml(train_toml)
        except RunSpecError as exc:
            report.add("error", "config", str(exc))
            return report
        flat = check_train_flat(spec, flat, issues, report, Path(train_toml).name)
    ds_path = dataset_toml or flat.get("dataset_config")
    if ds_path is None:
        report.add("error", "dataset", "no dataset config (dataset_config is not set)")
        return report
    try:
        ddoc = read_dataset_toml(ds_path)
    except RunSpecError as exc:
        report.add("error", "dataset", str(exc))
        return report
    check_dataset_doc(spec, ddoc, [flat], trigger, report)
    return report


def check_dataset_doc(spec: ArchSpec, ddoc: dict[str, Any], flats: list[dict[str, Any]], trigger: str | None, report: CheckReport) -> None:
    """The dataset TOML: schema, options that clash with the training TOMLs' caching, media, buckets."""
    trainer = trainer_for(spec)
    trainer.check_dataset_doc(spec, ddoc, report)
    trainer.check_dataset_vs_train(spec, ddoc, flats, report)
    check_media(spec, ddoc, trigger, report)
    check_buckets(spec, ddoc, report)


def _load_run_files(run: RunSpec, report: CheckReport, *, full: bool) -> tuple[dict[str, dict[str, Any]], Path | None]:
    """(flat options per training command, the dataset TOML path); missing files are errors."""
    spec = run.arch_spec()
    flats: dict[str, dict[str, Any]] = {}
    ds_path: Path | None = None
    for c in run.train_commands:
        ds_path = run.dataset_toml(c) or ds_path
        cfg = run.train_toml(c)
        if cfg is None or not cfg.is_file():
            report.add("error", "config", f"{cfg or run.run_dir / 'train.toml'} is missing; rerun `train_bridge config`")
            continue
        try:
            flat, issues = read_train_toml(cfg)
        except RunSpecError as exc:
            report.add("error", "config", str(exc))
            continue
        flats[c.name] = check_train_flat(spec, flat, issues, report, cfg.name) if full else flat
        if ds_path is None and flat.get("dataset_config"):
            ds_path = Path(flat["dataset_config"])
    return flats, ds_path


def preflight(run_dir: Path | str) -> list[CheckItem]:
    """The errors that would make the trainer fail at load: model files missing or not matching
    their role, text encoders missing, dataset TOML or folders missing. Fast (headers only).

    Raises RunSpecError for a missing or malformed run.json. The same functions `check` runs.
    """
    run = RunSpec.load(Path(run_dir))
    spec = run.arch_spec()
    report = CheckReport(str(run.run_dir), spec.name)
    flats, ds_path = _load_run_files(run, report, full=False)
    check_models(spec, run, flats, report)
    if ds_path is None or not ds_path.is_file():
        report.add("error", "dataset", f"dataset config {ds_path} is missing; rerun `train_bridge config`")
    else:
        try:
            check_dataset_dirs(spec, read_dataset_toml(ds_path), report)
        except RunSpecError as exc:
            report.add("error", "dataset", str(exc))
    return report.errors


def check_run(run_dir: Path | str, *, sd_scripts: Path | str | None = None, musubi: Path | str | None = None, python: str | None = None, timeout: int = 900) -> CheckReport:
    """Everything `train_bridge check RUN` reports. Raises RunSpecError for a bad run.json."""
    run = RunSpec.load(Path(run_dir))
    spec = run.arch_spec()
    report = CheckReport(str(run.run_dir), spec.name)
    flats, ds_path = _load_run_files(run, report, full=True)
    if ds_path is None or not ds_path.is_file():
        report.add("error", "dataset", f"dataset config {ds_path} is missing; rerun `train_bridge config`")
        return report
    try:
        ddoc = read_dataset_toml(ds_path)
    except RunSpecError as exc:
        report.add("error", "dataset", str(exc))
        return report
    check_dataset_doc(spec, ddoc, list(flats.values()), run.trigger, report)
    check_models(spec, run, flats, report)

    # Our estimate vs run.json.
    first = next(iter(flats.values()), None)
    ours = None
    if first is not None:
        try:
            ours = estimate_from(spec, ddoc, first, preset=run.preset)
            report.add("ok", "dataset", f"estimate: {ours.steps_per_epoch} steps/epoch, {ours.total_steps} total")
            for row in ours.vram:  # video: the modelled GPU memory of the heaviest frames x resolution bucket
                over = "budget_gib" in row and row["total_gib"] > row["budget_gib"]
                tips = [w for w in ours.warnings if "GiB of GPU memory" in w]
                msg = tips[0] if over and tips else f"video: about {row['total_gib']:g} GiB of GPU memory for {row['frames']} frames at {row['width']}x{row['height']} (loraprep's model)"
                report.add("warning" if over else "ok", "vram", msg)
        except (ValueError, OSError) as exc:
            report.add("error", "dataset", f"cannot estimate steps: {exc}")

    checkouts = {"sd-scripts": sd_scripts, "musubi-tuner": musubi}
    checkout = checkouts.pop(spec.trainer, None)
    if any(v is not None for v in checkouts.values()):
        report.add("warning", "trainer", f"{spec.name} trains with {spec.trainer}; the other checkout is ignored")
    if checkout is not None:
        jobs = probe_jobs_for_run(run)
        results = run_probes(spec, Path(checkout).resolve(), jobs, python=python, timeout=timeout)
        for job, res in zip(jobs, results):
            res["command"] = job["name"]
            report.trainer.append(res)
            for e in res.get("errors", []):
                report.add("error", "trainer", f"{job['name']}: {spec.trainer} rejects: {e}")
            if not res.get("errors"):
                report.add("ok", "trainer", f"{job['name']}: {spec.trainer} parser and dataset validator accept it (0 unknown keys)")
            if ours is not None and "video dataset: steps not counted" in res.get("notes", []):
                # the probe counts image datasets only; video counts are checked against musubi's own
                # caching loop by tests/musubi_video_count.py (docs/train_bridge.md, "Exact steps for video")
                report.add("warning", "trainer", f"{job['name']}: {spec.trainer}'s probe does not count video datasets; loraprep's count is {ours.steps_per_epoch}/epoch")
            elif ours is not None and res.get("total_steps") is not None:
                if res["total_steps"] != ours.total_steps or res.get("steps_per_epoch") != ours.steps_per_epoch:
                    report.add("error", "trainer", f"{job['name']}: step count differs: trainer {res.get('steps_per_epoch')}/epoch, {res['total_steps']} total; loraprep {ours.steps_per_epoch}/epoch, {ours.total_steps} total")
                else:
                    report.add("ok", "trainer", f"{job['name']}: the trainer computes the same {res['total_steps']} steps")
    return report
