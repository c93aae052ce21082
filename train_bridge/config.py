"""Write a training run: `train.toml`, `dataset.toml`, `sample_prompts.txt`, `run.json`.

The files are right the first time because every choice that sd-scripts / musubi-tuner
would silently get wrong is made explicit (reference §8): `num_repeats` and
`caption_extension = ".txt"` in the dataset TOML, numbers typed as the parser expects,
`resolution` only in the dataset TOML (as an int or [W, H]), text-encoder caching only with
`network_train_unet_only`, FLUX/SD3 in bf16, Wan's mixed precision equal to the DiT dtype,
`save_state` on for resume, and every training key checked against the real option list.

The handoff from `prep` is checked too: the dataset's `buckets.json` (what `prep crop` made the
images for) sets the resolution and buckets, and a run that would re-bucket the crops is refused
unless asked for explicitly. What differs per trainer is behind `trainers.trainer_for(spec)`;
what differs per architecture is data in `prep.archs`.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from prep.buckets import BucketRecord, read_bucket_record
from prep.fsutil import atomic_write_text
from prep.trigger import trigger_problem
from train_bridge import presets as _presets
from train_bridge.estimate import estimate_from
from train_bridge.model_paths import missing_text_encoders, resolve_model
from train_bridge.options import OptionList, load_option_list
from train_bridge.runspec import RUN_FILE, RunSpec, RunSpecError
from train_bridge.subsets import read_dataset
from train_bridge.trainers import ArchSpec, CommandContext, Trainer, get_arch, trainer_for
from train_bridge.trainers.base import dataset_value, safe_name
from train_bridge.validate import Issue, OptionError, coerce, names_a_path, parse_set, path_value_issues, validate_flat

TRAIN_TOML = "train.toml"
DATASET_TOML = "dataset.toml"
SAMPLE_PROMPTS = "sample_prompts.txt"
IGNORE_CROP_RECORD_FLAG = "--ignore-crop-record"


class ConfigError(ValueError):
    """The asked-for run cannot be configured; `issues` say why and what to change."""

    def __init__(self, issues: list[Issue] | list[str]):
        self.issues = [i if isinstance(i, Issue) else Issue("error", "", i) for i in issues]
        super().__init__("; ".join(str(i) for i in self.issues))


FORBIDDEN_TRAIN_KEYS = {
    "caption_extension": "loraprep always uses .txt captions (set in the dataset TOML)",
    "dataset_config": "written by loraprep",
    "config_file": "written by loraprep",
    "output_config": "would make the trainer write a config and exit",
    "train_data_dir": "ignored once --dataset_config is used",
    "reg_data_dir": "ignored once --dataset_config is used",
    "in_json": "ignored once --dataset_config is used",
    "dataset_repeats": "repeats are written per subset as num_repeats",
}

# Train-TOML section per key (sections are cosmetic: the trainer flattens one level).
_SECTIONS = [
    ("model", r"^(pretrained_model_name_or_path|qwen3|vae|llm_adapter_path|t5_tokenizer_path|clip_l|clip_g|t5xxl|ae|dit|dit_high_noise|t5|clip|task|model_type)$"),
    ("dataset", r"^dataset_config$"),
    ("network", r"^network_|^dim_from_weights$|^base_weights"),
    ("optimizer", r"^(optimizer_|learning_rate|lr_|max_grad_norm|unet_lr|text_encoder_lr)"),
    ("output", r"^(output_|save_|logging_dir|log_|training_comment|metadata_)"),
    ("sample", r"^sample_"),
]


def _section(key: str) -> str:
    for name, rx in _SECTIONS:
        if re.search(rx, key):
            return name
    return "training"




def _typed(flat: dict[str, Any], options: OptionList) -> dict[str, Any]:
    """Re-type values the parser types as float/int (1 -> 1.0 for float options); drop None."""
    out = {}
    for k, v in flat.items():
        if v is None:
            continue
        opt = options.get(k)
        if opt is not None and opt.type == "float" and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        out[k] = v
    return out


def _sectioned(flat: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for k, v in flat.items():
        out.setdefault(_section(k), {})[k] = v
    order = ["model", "dataset", "network", "optimizer", "training", "output", "sample"]
    return {s: out[s] for s in order if s in out}


def _toml_text(doc: dict[str, Any], header: str) -> str:
    def drop_none(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: drop_none(v) for k, v in x.items() if v is not None}
        if isinstance(x, list):
            return [drop_none(v) for v in x if v is not None]
        return x

    return header + tomli_w.dumps(drop_none(doc))


@dataclass
class RunConfig:
    """What `write_run_config` wrote (or would write with `dry_run`)."""

    arch: str
    run_dir: Path
    files: dict[str, Path]
    run: dict[str, Any]
    train: dict[str, dict[str, Any]]
    """Flat training options per command config (`train`, or `train_high`/`train_low`)."""
    dataset: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


# -- overrides ----------------------------------------------------------------------------------


def split_overrides(spec: ArchSpec, items: list[str] | dict[str, Any] | None, options: OptionList) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """`--set` items -> (train options, dataset-wide keys, per-subset keys), all typed.

    `dataset.KEY=V` addresses the dataset TOML; the trainer may route a few training options
    that are really dataset settings there too (sd-scripts: `resolution`, `train_batch_size`,
    `flip_aug`, ...), because the dataset TOML is where it reads them reliably.
    """
    if not items:
        return {}, {}, {}
    pairs: list[tuple[str, Any]]
    if isinstance(items, dict):
        pairs = list(items.items())
    else:
        pairs = []
        for it in items:
            k, sep, v = it.partition("=")
            if not sep:
                raise ConfigError([Issue("error", it, "expected key=value")])
            pairs.append((k.strip(), v))
    trainer = trainer_for(spec)
    general_schema, item_schema = trainer.dataset_general_keys, trainer.dataset_item_keys
    train_items: list[str] = []
    train_typed: dict[str, Any] = {}
    general: dict[str, Any] = {}
    subset: dict[str, Any] = {}
    issues: list[Issue] = []
    for key, raw in pairs:
        if key.startswith("--"):
            key = key[2:].replace("-", "_")
        target = key[len("dataset.") :] if key.startswith("dataset.") else trainer.routed_train_keys.get(key)
        if target is not None:
            try:
                if target in general_schema:
                    general[target] = dataset_value(general_schema[target], raw)
                elif target in item_schema:
                    allowed = trainer.dataset_key_choices.get(target)
                    if allowed and str(raw) not in allowed:
                        raise ValueError(f"must be one of {', '.join(allowed)}")
                    subset[target] = dataset_value(item_schema[target], raw)
                else:
                    close = difflib.get_close_matches(target, [*general_schema, *item_schema], n=2)
                    hint = f" (did you mean {', '.join('dataset.' + c for c in close)}?)" if close else ""
                    raise ValueError(f"not a dataset TOML key loraprep can set{hint}")
            except ValueError as exc:
                issues.append(Issue("error", key, str(exc)))
            continue
        if key in FORBIDDEN_TRAIN_KEYS:
            issues.append(Issue("error", key, FORBIDDEN_TRAIN_KEYS[key]))
            continue
        if isinstance(items, dict) and not isinstance(raw, str):
            opt = options.get(key)
            if opt is None:
                train_items.append(f"{key}={raw}")  # reported as unknown below
            else:
                try:
                    train_typed[key] = coerce(opt, raw)
                except ValueError as exc:
                    issues.append(Issue("error", key, str(exc)))
        else:
            train_items.append(f"{key}={raw}")
    try:
        train_typed.update(parse_set(train_items, options))
    except OptionError as exc:
        issues.extend(exc.issues)
    for key, value in train_typed.items():  # no file outside the run folder unless named absolutely
        if key == "output_name" or names_a_path(key, options.get(key)):
            issues.extend(path_value_issues(key, value))
    for key in {i.partition("=")[0].strip() for i in train_items} | set(train_typed):
        if key in spec.ignored_keys:
            issues.append(Issue("error", key, f"{spec.name} accepts {key} but never uses it (reference §1.2); leave it out"))
    if issues:
        raise ConfigError(issues)
    return train_typed, general, subset


# -- the crops' bucket record -------------------------------------------------------------------


def _res_text(res: tuple[int, int]) -> str:
    return f"{res[0]}x{res[1]}"


def apply_crop_record(spec: ArchSpec, trainer: Trainer, dataset_root: Path, general_o: dict[str, Any], *, ignore: bool) -> tuple[BucketRecord | None, dict[str, str]]:
    """The dataset's `buckets.json`, checked against the arch and the user's explicit settings.

    Returns (the record to train at, derived notes); sets the record's resolution into
    `general_o`. Raises ConfigError when the record does not fit the arch or the user asked for
    different bucket settings, naming the file and the flags that resolve it.
    """
    try:
        rec = read_bucket_record(dataset_root)
    except ValueError as exc:
        raise ConfigError([Issue("error", "buckets.json", str(exc))]) from None
    if rec is None:
        return None, {}
    rs = rec.spec
    made = f"{_res_text(rs.resolution)} {rs.family} buckets (step {rs.steps})"
    if ignore:
        return None, {"crop_record": f"{rec.path} ignored ({IGNORE_CROP_RECORD_FLAG}): the images were made for {made}; the trainer re-buckets them"}
    fix = (
        f"re-crop for {spec.name} (`prep crop --trainer {spec.name}`), or pass {IGNORE_CROP_RECORD_FLAG} "
        f"(with --set dataset.resolution=W,H) to train anyway and let the trainer resize and crop every image"
    )
    if rs.family != spec.bucket_family or rs.steps not in spec.bucket_steps:
        why = f"{spec.name} uses {spec.bucket_family} buckets with step {' or '.join(map(str, spec.bucket_steps))}"
        raise ConfigError([Issue("error", "buckets.json", f"{rec.path}: the images were made for {made}, which {spec.name} cannot train at ({why}); {fix}")])
    wanted = {"resolution": ("resolution", rs.resolution), **{k: (k, getattr(rs, attr)) for k, attr in trainer.crop_record_keys.items()}}
    clashes = []
    for key, (_, rec_value) in wanted.items():
        if key in general_o and general_o[key] != rec_value:
            mine = general_o[key]
            clashes.append(f"dataset.{key}={_res_text(mine) if key == 'resolution' else mine} (the crops need {_res_text(rec_value) if key == 'resolution' else rec_value})")
    if clashes:
        raise ConfigError(
            [Issue("error", "buckets.json", f"{rec.path}: the images were cropped for {made}, but you asked for {', '.join(clashes)}; drop that --set to train at the crops' buckets, or {fix}")]
        )
    general_o["resolution"] = rs.resolution
    return rec, {"crop_record": f"trains at {made} from {rec.path} ({rec.written_by or 'prep crop'}): every crop is a fixed point of these buckets"}


# -- constraints ----------------------------------------------------------------------------------


def _constraints(spec: ArchSpec, train: dict[str, Any], general: dict[str, Any], subset: dict[str, Any], explicit: set[str]) -> tuple[list[Issue], dict[str, str]]:
    """Resolve or reject combinations the trainer asserts on (reference §1.4, §1.6, §8)."""
    issues, notes = trainer_for(spec).constraints(spec, train, general, subset, explicit)
    if spec.bf16_only and (train.get("mixed_precision") == "fp16" or train.get("save_precision") == "fp16" or train.get("full_fp16")):
        issues.append(Issue("error", "mixed_precision", f"{spec.name} trains to NaN / an empty LoRA in fp16 (sd-scripts#1707, #1407); use bf16"))
    mode = train.get("attn_mode")
    if mode in spec.training_attn_modes_refused:
        issues.append(Issue("error", "attn_mode", f"{mode!r} works for {spec.name} inference only (no backward pass in training); use attn_mode=torch (or leave it unset)"))
    swap = train.get("blocks_to_swap")
    if swap:
        limit = spec.swap_limit()
        if limit is not None and swap > limit:
            issues.append(Issue("error", "blocks_to_swap", f"at most {limit} for {spec.name} (the trainer keeps {spec.blocks_kept_on_device} block(s) on the GPU)"))
        for k in ("cpu_offload_checkpointing", "unsloth_offload_checkpointing", "offload_inactive_dit"):
            if train.get(k):
                if k in explicit and "blocks_to_swap" in explicit:
                    issues.append(Issue("error", k, "cannot be combined with blocks_to_swap"))
                else:
                    train.pop("blocks_to_swap")
                    notes["blocks_to_swap"] = f"off: {k} replaces it"
                    break
    lo, hi = train.get("min_timestep"), train.get("max_timestep")
    if lo is not None and hi is not None and lo >= hi:
        issues.append(Issue("error", "min_timestep", "must be below max_timestep"))
    return issues, notes


def _keep_alpha_ratio(cfg: dict[str, Any], ref: tuple[Any, Any], explicit: set[str], notes: dict[str, Any], label: str) -> None:
    """`--set network_dim=N` alone keeps the preset's alpha/dim ratio (the effective learning rate)."""
    ref_dim, ref_alpha = ref
    if "network_dim" not in explicit or "network_alpha" in explicit:
        return
    if not isinstance(ref_dim, int) or not ref_dim or not isinstance(ref_alpha, (int, float)):
        return
    dim = cfg["network_dim"]
    alpha = round(float(ref_alpha) * dim / ref_dim, 4)
    cfg["network_alpha"] = alpha
    notes.setdefault("network_alpha", {})[label] = f"{alpha:g}: keeps the preset's alpha/dim ratio {ref_alpha:g}/{ref_dim} at dim {dim} (set network_alpha to choose)"


# -- writers ----------------------------------------------------------------------------------------


SAMPLE_TAGS = 6
"""How many of the dataset's most common tags go into the first sample prompt (loraprep's choice:
enough to reproduce a typical training image, well inside every text encoder's budget)."""


def dataset_top_tags(ds: Any, trigger: str | None, class_token: str | None, n: int = SAMPLE_TAGS) -> list[str]:
    """The dataset's most common caption tags (comma-separated captions beside the training
    images), without the trigger and class token: a prompt that should reproduce the set."""
    from collections import Counter

    skip = {t.strip().lower() for t in (trigger, class_token) if t}
    counts: Counter[str] = Counter()
    for sub in ds.train_subsets:
        folder = Path(sub.image_dir)
        if not folder.is_dir():
            continue
        for cap in sorted(folder.glob("*.txt")):
            try:
                text = cap.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue  # `check` and `caption lint` report unreadable captions
            seen = set()
            for raw in text.replace("\n", ",").split(","):
                tag = " ".join(raw.split())
                key = tag.lower()
                # a sentence is not a tag; ' --' would start a sample option, '#' a comment
                if not tag or key in skip or key in seen or len(tag.split()) > 4 or "--" in tag or "#" in tag:
                    continue
                seen.add(key)
                counts[tag] += 1
    return [t for t, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]]


def _sample_prompts(spec: ArchSpec, trigger: str, class_token: str | None, res: tuple[int, int], *,
                    top_tags: list[str] | None = None, extra: tuple[str, ...] = _presets.DEFAULT_PROMPTS) -> str:
    """The first prompt is the trigger plus the dataset's most common tags (what training shows
    it); the others put the subject where the dataset may not (the over-training check). Every
    line has the same seed (--d), so a prompt's samples differ only by the training step."""
    subject = f"{trigger}, {class_token}" if class_token else trigger
    step = spec.sample_size_step
    opts = spec.sample_prompt_options.format(w=res[0] - res[0] % step, h=res[1] - res[1] % step)
    lines = ["# loraprep sample prompts: one per line, options after ' --' (see sd-scripts docs/train_network)"]
    if top_tags:
        lines.append(f"{subject}, {', '.join(top_tags)} {opts}")
    lines += [f"{p.format(subject=subject)} {opts}" for p in extra]
    return "\n".join(lines) + "\n"


def _sampling(configs: dict[str, dict[str, Any]], explicit: set[str], preset: str, total_steps: int | None) -> dict[str, Any]:
    """Samples every N steps, and a checkpoint at each sample so that every checkpoint can be
    judged by its samples (`train_bridge samples RUN --checkpoints`). sd-scripts ignores
    sample_every_n_steps when sample_every_n_epochs is set (train_util.sample_images_common),
    so the epoch keys go; whatever --set asked for is kept as asked."""
    if not any("sample_prompts" in c for c in configs.values()):
        return {}  # the trainer samples nothing by default (musubi-tuner's Wan)
    asked_sampling = explicit & {"sample_every_n_steps", "sample_every_n_epochs"}
    asked_saving = explicit & {"save_every_n_steps", "save_every_n_epochs", "save_last_n_epochs", "save_last_n_steps",
                               "save_last_n_epochs_state", "save_last_n_steps_state"}
    if "sample_every_n_epochs" in explicit:
        return {}  # epoch sampling asked for: the epoch checkpoints stay with it
    n = _presets.sample_every(preset, total_steps)
    for cfg in configs.values():
        if "sample_every_n_steps" in explicit:
            n = cfg["sample_every_n_steps"]
        cfg.pop("sample_every_n_epochs", None)
        cfg["sample_every_n_steps"] = n
        if not asked_saving:
            for k in ("save_every_n_epochs", "save_last_n_epochs", "save_last_n_epochs_state"):
                cfg.pop(k, None)
            cfg["save_every_n_steps"] = n
            cfg["save_last_n_steps_state"] = n  # the newest step states, not one per sample
    return {"sample_every_n_steps": n, "save_every_n_steps": None if asked_saving else n, "asked": sorted(asked_sampling | asked_saving)}


def _resolve_models(spec: ArchSpec, models: dict[str, Any]) -> tuple[dict[str, str], dict[str, str], list[Issue]]:
    """(role -> path or Hub id, role -> what it was taken for, issues)."""
    issues: list[Issue] = []
    out: dict[str, str] = {}
    notes: dict[str, str] = {}
    known = {m.name for m in spec.models}
    for name in models:
        if models[name] is not None and name not in known:
            issues.append(Issue("error", name, f"{spec.name} takes no {name!r} model (it takes {', '.join(sorted(known))})"))
    from train_bridge.models import WeightsError, cached_role_files

    try:
        cached = cached_role_files(spec) if any(models.get(m.name) is None for m in spec.models) else {}
    except WeightsError as exc:  # a bad $LORAPREP_WEIGHTS
        cached = {}
        issues.append(Issue("error", "models", str(exc)))
    for m in spec.models:
        val = models.get(m.name)
        if val is None and m.name in cached:  # `train_bridge models get` put it there
            w, path = cached[m.name]
            out[m.name] = str(path)
            notes[m.name] = f"filled from the Hugging Face cache: {w.repo_id}/{w.filename} @ {w.revision} ({path})"
            continue
        if val is None:
            if m.required:
                issues.append(Issue("error", m.name, f"missing: {m.help} (--{m.name.replace('_', '-')}, or `train_bridge models get {spec.name}` to fill it from the Hugging Face cache)"))
            continue
        ref = resolve_model(m, val)
        out[m.name] = ref.value
        notes[m.name] = ref.note if ref.hub_id or Path(str(val)).expanduser().is_absolute() else f"{ref.note}, {val} resolved against {Path.cwd()}"
    return out, notes, issues


def _text_encoder_issues(spec: ArchSpec, model_paths: dict[str, str]) -> tuple[list[Issue], list[str]]:
    """SD3: every text encoder comes from its own file or from the checkpoint (errors, warnings)."""
    missing = missing_text_encoders(spec, model_paths)
    if not missing:
        return [], []
    ckpt = model_paths.get(spec.models[0].name, "")
    flags = " ".join(f"--{r.replace('_', '-')} PATH" for r in missing)
    if not Path(ckpt).is_file():
        return [], [f"{spec.models[0].name}: {ckpt} does not exist yet, so loraprep cannot tell whether it holds the {', '.join(missing)} text encoder(s); without them pass {flags}"]
    return [Issue("error", spec.models[0].name, f"{ckpt} holds no {', '.join(missing)} text encoder(s) (no text_encoders.<name>.* tensors): pass {flags}, or use a checkpoint that includes them")], []


def write_run_config(
    arch: str,
    dataset_dir: Path | str,
    run_dir: Path | str,
    *,
    models: dict[str, Any],
    preset: str | int = _presets.DEFAULT_PRESET,
    overrides: list[str] | dict[str, Any] | None = None,
    trigger: str | None = None,
    output_name: str | None = None,
    repeats: int | None = None,
    ignore_crop_record: bool = False,
    budget: int | None = None,
    use_case: str | None = None,
    dry_run: bool = False,
    now: _dt.datetime | None = None,
) -> RunConfig:
    """Build and (unless `dry_run`) write the run files; raises ConfigError on any problem.

    `use_case` (face, full-body, 3d-to-photo, anime, video-ready) sets dim/alpha/lr and the step
    range the run is checked against (`presets.step_target`, per architecture); `budget` adds a
    hard step ceiling (a Colab session's, say)."""
    spec = get_arch(arch)
    trainer = trainer_for(spec)
    preset_name = _presets.normalize_preset(preset)
    pr = _presets.get_preset(spec, preset_name)
    try:
        use_case = _presets.normalize_use_case(use_case)
    except ValueError as exc:
        raise ConfigError([Issue("error", "use_case", str(exc))]) from None
    uc = _presets.get_use_case(spec, use_case) if use_case else None
    options = load_option_list(spec.options_key)
    run_dir = Path(run_dir).resolve()
    ds = read_dataset(dataset_dir, repeats=repeats)
    issues: list[Issue] = []
    if not any(s.n_images or s.n_videos for s in ds.train_subsets):
        issues.append(Issue("error", "dataset", f"{ds.root}: no training images or videos found"))
    trig = trigger or ds.trigger
    if not trig:
        issues.append(Issue("error", "trigger", "unknown: pass --trigger (or lay the dataset out with `prep layout --trigger`)"))
    elif (problem := trigger_problem(trig)) is not None:
        # it is written into sample_prompts.txt: a line break or ' --' would add prompts or options
        where = "--trigger" if trigger else f"{ds.root}/layout.json trigger"
        issues.append(Issue("error", "trigger", f"{trig!r} ({where}) is refused: {problem}"))
    else:
        trig = trig.strip()
    model_paths, model_notes, miss = _resolve_models(spec, models)
    issues += miss
    te_issues, warnings = _text_encoder_issues(spec, model_paths)
    issues += te_issues
    try:
        train_o, general_o, subset_o = split_overrides(spec, overrides, options)
    except ConfigError as exc:
        issues += exc.issues
        train_o, general_o, subset_o = {}, {}, {}
    if output_name is not None:
        issues += path_value_issues("output_name", output_name)
    if issues:
        raise ConfigError(issues)
    record, record_notes = apply_crop_record(spec, trainer, ds.root, general_o, ignore=ignore_crop_record)
    if ds.reg_subsets and not trainer.has_reg_subsets:
        warnings.append(f"{trainer.name} has no regularisation subsets; reg/ is left out of the {spec.name} dataset")
    if record is not None and record.spec.resolution[0] * record.spec.resolution[1] > pr.resolution[0] * pr.resolution[1]:
        warnings.append(
            f"the crops are for {_res_text(record.spec.resolution)}, larger than preset {preset_name}'s {_res_text(pr.resolution)}: "
            "it needs more GPU memory than the preset assumes (pick a bigger preset, or re-crop at the preset's resolution)"
        )

    derived: dict[str, Any] = {"preset_source": pr.source, "models": model_notes, **record_notes}
    name = output_name or safe_name(trig or "lora")
    out_dir = run_dir / "output"
    log_dir = run_dir / "logs"
    ds_path = run_dir / DATASET_TOML
    prompts_path = run_dir / SAMPLE_PROMPTS

    base = dict(pr.train)
    for m in spec.models:  # the high-noise DiT goes only into train_high.toml
        if m.name in model_paths and m.name != "dit_high":
            base[m.key] = model_paths[m.name]
    base.update({"dataset_config": str(ds_path), "output_dir": str(out_dir), "output_name": name, "logging_dir": str(log_dir), "save_state": True})
    base.update(trainer.run_defaults(spec, run_dir, prompts_path, base))
    implied_mp = trainer.derive_from_models(spec, model_paths, base, derived)
    if uc is not None:
        base.update(uc.train)
        derived["use_case"] = {"name": uc.name, **uc.train, "steps": [uc.steps.low, uc.steps.high], "source": uc.source}
    ref_dim_alpha = (base.get("network_dim"), base.get("network_alpha"))
    base.update(train_o)
    explicit = set(train_o)
    if "mixed_precision" in explicit and spec.mixed_precision_from_dit:
        for role, mp in implied_mp.items():
            if train_o["mixed_precision"] != mp:
                raise ConfigError(
                    [Issue("error", "mixed_precision", f"{train_o['mixed_precision']!r} contradicts the {role} {model_paths[role]}, whose weights need {mp!r} ({trainer.name} asserts they match); drop --set mixed_precision or use a {train_o['mixed_precision']} DiT")]
                )
    _keep_alpha_ratio(base, ref_dim_alpha, explicit, derived, "train")
    cissues, cnotes = _constraints(spec, base, general_o, {**pr.subset, **subset_o}, explicit)
    derived.update(cnotes)
    errors = [i for i in cissues if i.level == "error"]
    warnings += [str(i) for i in cissues if i.level == "warning"]
    if errors:
        raise ConfigError(errors)
    if base.get("save_state") is not True:
        warnings.append("save_state is off: an interrupted run cannot resume")

    # Per-command training configs.
    configs: dict[str, dict[str, Any]] = {}
    if spec.dual_expert:
        for expert in ("high", "low"):
            cfg = dict(base)
            ex = pr.experts[expert]
            cfg.update({k: v for k, v in ex.items() if k not in explicit})
            _keep_alpha_ratio(cfg, (ex.get("network_dim"), ex.get("network_alpha")), explicit, derived, f"train_{expert}")
            cfg["output_name"] = f"{name}_{expert}"
            if expert == "high":
                cfg["dit"] = model_paths["dit_high"]
            configs[f"train_{expert}"] = cfg
        derived["experts"] = {
            e: {"dit": configs[f"train_{e}"]["dit"], "timesteps": [configs[f"train_{e}"].get("min_timestep"), configs[f"train_{e}"].get("max_timestep")], "output_name": configs[f"train_{e}"]["output_name"]}
            for e in ("high", "low")
        }
    else:
        configs["train"] = base

    for cname in configs:
        configs[cname] = _typed(configs[cname], options)
        problems = [i for i in validate_flat(configs[cname], options, ignored=spec.ignored_keys) if i.level == "error"]
        if problems:
            raise ConfigError(problems)

    dataset_doc = trainer.dataset_toml(spec, ds, pr, general_o, subset_o, run_dir, record)
    res, batch = trainer.dataset_summary(dataset_doc)
    for bucket_spec, _ in trainer.bucket_plan(spec, dataset_doc):
        try:
            bucket_spec.validate()
        except ValueError as exc:
            raise ConfigError([Issue("error", "dataset.resolution", str(exc))]) from None

    files = {"dataset": ds_path, "sample_prompts": prompts_path, "run": run_dir / RUN_FILE}
    train_files = {c: run_dir / (TRAIN_TOML if c == "train" else f"train_{c.split('_', 1)[1]}.toml") for c in configs}
    files.update({f"train:{c}": p for c, p in train_files.items()})
    first = configs[next(iter(configs))]
    commands = trainer.commands(spec, CommandContext(ds_path, train_files, model_paths, first, preset_name))

    asked = {
        "arch": spec.name,
        "dataset": str(ds.root),
        "preset": preset_name,
        "models": {k: str(v) for k, v in models.items() if v is not None},
        "overrides": overrides if isinstance(overrides, list) else {k: v for k, v in (overrides or {}).items()},
        "trigger": trigger,
        "output_name": output_name,
        "repeats": repeats,
        "ignore_crop_record": ignore_crop_record,
        "use_case": use_case,
    }
    derived.update(
        {
            "resolution": list(res),
            "batch_size": batch,
            "subsets": [{"image_dir": str(s.image_dir), "num_repeats": s.num_repeats, "is_reg": s.is_reg, "images": s.n_images, "videos": s.n_videos, "class_tokens": s.class_tokens} for s in ds.subsets],
            "trainer_commit": options.commit,
            "option_list": spec.options_key,
        }
    )

    # Exact step estimate from the files we are about to write; the budget warning `estimate` gives.
    est = estimate_from(spec, dataset_doc, first, budget=budget, preset=preset_name)
    warnings += est.warnings
    target = _presets.step_target(spec, use_case)
    warnings += target.warnings(est.total_steps, est.steps_per_epoch, spec.name + (f" {use_case}" if use_case else ""))
    derived["step_target"] = {"low": target.low, "high": target.high, "source": target.source}
    sampling = _sampling(configs, explicit, preset_name, est.total_steps)
    if sampling:
        derived["sampling"] = sampling
        for cname in configs:
            problems = [i for i in validate_flat(configs[cname], options, ignored=spec.ignored_keys) if i.level == "error"]
            if problems:  # pragma: no cover - the keys come from the option list
                raise ConfigError(problems)
    raw: dict[str, Any] = {
        "version": 1,
        "trainer": spec.trainer,
        "arch": spec.name,
        "preset": preset_name,
        "created": (now or _dt.datetime.now(_dt.timezone.utc)).isoformat(timespec="seconds"),
        "dataset": str(ds.root),
        "trigger": trig,
        "commands": commands,
        "output_dir": str(out_dir),
        "output_name": name,
        "logging_dir": str(log_dir),
        "save_state": True,
        "max_train_steps": None if first.get("max_train_epochs") else first.get("max_train_steps", 1600),
        "max_train_epochs": first.get("max_train_epochs"),
        "estimate": {"steps_per_epoch": est.steps_per_epoch, "total_steps": est.total_steps},
        "asked": asked,
        "derived": derived,
    }
    try:
        run_spec = RunSpec.from_raw(raw, run_dir)  # never write what the readers reject
    except RunSpecError as exc:  # pragma: no cover - a bug in this function
        raise ConfigError([Issue("error", "run.json", str(exc))]) from None
    rc = RunConfig(spec.name, run_dir, files, raw, configs, dataset_doc, warnings)
    if dry_run:
        return rc
    run_dir.mkdir(parents=True, exist_ok=True)
    head = f"# written by loraprep train_bridge for {spec.name} ({spec.trainer} {options.commit[:8]}); section names are cosmetic\n"
    for c, p in train_files.items():
        atomic_write_text(p, _toml_text(_sectioned(configs[c]), head))
    atomic_write_text(ds_path, _toml_text(dataset_doc, f"# dataset config for {spec.trainer} ({spec.name}), written by loraprep\n"))
    atomic_write_text(prompts_path, _sample_prompts(spec, trig, ds.class_token, res, top_tags=dataset_top_tags(ds, trig, ds.class_token),
                                                    extra=uc.prompts if uc else _presets.DEFAULT_PROMPTS))
    run_spec.write()
    return rc
