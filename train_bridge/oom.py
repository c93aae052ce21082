"""Out-of-memory advice for THIS run's config, and the config copy an automatic retry uses.

Reads train.toml (flattened one level, as sd-scripts does) and dataset.toml, and lists concrete
changes, cheapest in quality first: gradient checkpointing, batch size (keeping the effective
batch with gradient accumulation), caching to disk, block swapping, then resolution and
network dim, which change what is learned. Host-RAM kills (exit 137 / signal 9) get their own list.
"""

from __future__ import annotations

import sys

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from train_bridge.presets import PRESETS, get_preset, normalize_preset
from train_bridge.runspec import RunSpecError, read_train_toml
from train_bridge.trainers import Trainer, get_arch, trainer_named
from train_bridge.validate import flatten_like_trainer


@dataclass
class Suggestion:
    key: str
    current: Any
    proposed: Any
    why: str
    file: str = "train.toml"  # or "dataset.toml"
    also: dict[str, Any] = field(default_factory=dict)  # keys that must change with it

    def changes(self) -> dict[str, Any]:
        return {self.key: self.proposed, **self.also}

    def train_changes(self) -> dict[str, Any]:
        """What goes into train.toml (`also` always does)."""
        return {**({self.key: self.proposed} if self.file == "train.toml" else {}), **self.also}

    def dataset_changes(self) -> dict[str, Any]:
        return {self.key: self.proposed} if self.file == "dataset.toml" else {}

    def set_args(self) -> list[str]:
        """As `train_bridge config --set` takes them (`dataset.KEY` addresses dataset.toml)."""
        main = [f"--set dataset.{k}={_cli_value(v)}" for k, v in self.dataset_changes().items()]
        return main + [f"--set {k}={_cli_value(v)}" for k, v in self.train_changes().items()]

    def toml_lines(self) -> list[str]:
        return [f"{k} = {_toml_value(v)}" for k, v in self.changes().items()]

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "current": self.current,
            "proposed": self.proposed,
            "also": self.also,
            "file": self.file,
            "why": self.why,
            "set": self.set_args(),
        }


def _cli_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return ",".join(str(x) for x in v)
    return str(v)


def _toml_value(v: Any) -> str:
    return tomli_w.dumps({"v": v}).split("=", 1)[1].strip()


@dataclass
class OomAdvice:
    kind: str  # "cuda" or "host"
    headline: str
    suggestions: list[Suggestion]

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "headline": self.headline, "suggestions": [s.as_dict() for s in self.suggestions]}


def load_toml(path: Path | None) -> dict[str, Any]:
    if path is None or not Path(path).is_file():
        return {}
    with open(path, "rb") as fh:
        return tomllib.load(fh)


def flatten(cfg: dict[str, Any]) -> dict[str, Any]:
    """One level, later sections win: what sd-scripts' read_config_from_file does (validate's
    flattening, without its issues)."""
    return flatten_like_trainer(cfg)[0]


def load_train(path: Path | None) -> dict[str, Any]:
    """A train TOML's flat options through the one reader (`runspec.read_train_toml`); {} when absent."""
    if path is None or not Path(path).is_file():
        return {}
    try:
        return read_train_toml(path)[0]
    except RunSpecError:
        return {}


def _trainer(trainer: str) -> Trainer | None:
    try:
        return trainer_named(trainer)
    except KeyError:
        return None


def dataset_resolution(ds: dict[str, Any]) -> int | list[int] | None:
    for entry in ds.get("datasets") or []:
        if isinstance(entry, dict) and "resolution" in entry:
            return entry["resolution"]
    return (ds.get("general") or {}).get("resolution")


def batch_setting(train: dict[str, Any], ds: dict[str, Any]) -> tuple[str, str, int]:
    """(key, file, value) of the batch size the trainer will use: the dataset TOML's
    batch_size beats train_batch_size (sd-scripts' lookup order)."""
    for entry in ds.get("datasets") or []:
        if isinstance(entry, dict) and isinstance(entry.get("batch_size"), int):
            return "batch_size", "dataset.toml", entry["batch_size"]
    general = ds.get("general") or {}
    if isinstance(general.get("batch_size"), int):
        return "batch_size", "dataset.toml", general["batch_size"]
    return "train_batch_size", "train.toml", int(train.get("train_batch_size") or 1)


def _smaller_resolution(res: int | list[int], step: int = 64) -> int | list[int] | None:
    def down(v: int) -> int:
        return max(step * 4, int(round(v * 0.75 / step)) * step)

    if isinstance(res, int):
        return down(res) if down(res) < res else None
    if isinstance(res, list) and len(res) == 2 and all(isinstance(x, int) for x in res):
        new = [down(res[0]), down(res[1])]
        return new if new != res else None
    return None


def max_blocks_to_swap(arch: str) -> int | None:
    """The architecture's block-swap limit (`prep.archs`: the trainer's own assert); None when unknown."""
    try:
        return get_arch(arch).swap_limit()
    except KeyError:
        return None


def cuda_suggestions(arch: str, trainer: str, train: dict[str, Any], ds: dict[str, Any]) -> list[Suggestion]:
    out: list[Suggestion] = []
    impl = _trainer(trainer)
    caches_in_training = impl is not None and impl.caches_in_training
    if not train.get("gradient_checkpointing"):
        out.append(Suggestion("gradient_checkpointing", False, True, "recomputes activations instead of storing them: large saving, ~20-30 % slower, same result"))
    batch_key, batch_file, batch = batch_setting(train, ds)
    if batch > 1:
        accum = int(train.get("gradient_accumulation_steps") or 1)
        out.append(
            Suggestion(
                batch_key, batch, 1,
                f"one image per step; gradient_accumulation_steps={accum * batch} keeps the effective batch of {batch * accum}",
                file=batch_file, also={"gradient_accumulation_steps": accum * batch},
            )
        )
    if caches_in_training:
        if not train.get("cache_latents_to_disk") and not train.get("color_aug") and not train.get("random_crop"):
            out.append(Suggestion("cache_latents_to_disk", bool(train.get("cache_latents_to_disk")), True, "encodes every image once up front, so the VAE leaves the GPU during training"))
        if not train.get("cache_text_encoder_outputs_to_disk") and not train.get("shuffle_caption"):
            also = {} if train.get("network_train_unet_only") else {"network_train_unet_only": True}
            out.append(
                Suggestion(
                    "cache_text_encoder_outputs_to_disk", bool(train.get("cache_text_encoder_outputs_to_disk")), True,
                    "caches the text encoder's outputs and frees the text encoder (needs network_train_unet_only)", also=also,
                )
            )
    max_swap = max_blocks_to_swap(arch)
    if max_swap is not None:
        cur = int(train.get("blocks_to_swap") or 0)
        if train.get("cpu_offload_checkpointing") or train.get("unsloth_offload_checkpointing"):
            which = "cpu_offload_checkpointing" if train.get("cpu_offload_checkpointing") else "unsloth_offload_checkpointing"
            out.append(
                Suggestion(
                    "blocks_to_swap", cur, 8, f"swaps DiT blocks to CPU RAM; cannot be combined with {which}, so turn that off",
                    also={which: False},
                )
            )
        elif cur < max_swap:
            new = min(max_swap, cur + 8 if cur else 8)
            out.append(Suggestion("blocks_to_swap", cur, new, f"keeps {new} DiT blocks in CPU RAM (max {max_swap} for {arch}); slower steps, same result"))
    res = dataset_resolution(ds)
    if res is not None:
        smaller = _smaller_resolution(res, 64)
        if smaller is not None:
            out.append(Suggestion("resolution", res, smaller, "fewer pixels per image: memory falls with the square of the side; less detail learned", file="dataset.toml"))
    dim = train.get("network_dim")
    if isinstance(dim, int) and dim > 4:
        new_dim = max(4, dim // 2)
        alpha = train.get("network_alpha")
        also: dict[str, Any] = {}
        if isinstance(alpha, (int, float)) and alpha > 0:
            ratio = alpha / dim
            new_alpha = new_dim * ratio
            also["network_alpha"] = int(new_alpha) if float(new_alpha).is_integer() else round(new_alpha, 4)
        out.append(Suggestion("network_dim", dim, new_dim, "a smaller LoRA; network_alpha scaled with it so the learning rate stays right", also=also))
    return out


def host_suggestions(arch: str, trainer: str, train: dict[str, Any]) -> list[Suggestion]:
    out: list[Suggestion] = []
    workers = train.get("max_data_loader_n_workers")
    workers = 8 if workers is None else int(workers)
    if workers > 2:
        out.append(Suggestion("max_data_loader_n_workers", workers, 2, "each data-loader worker is a process with its own copy of the dataset"))
    if train.get("persistent_data_loader_workers"):
        out.append(Suggestion("persistent_data_loader_workers", True, False, "workers no longer stay alive between epochs"))
    impl = _trainer(trainer)
    if impl is not None and impl.caches_in_training:
        if train.get("cache_latents") and not train.get("cache_latents_to_disk"):
            out.append(Suggestion("cache_latents_to_disk", False, True, "latents go to .npz files instead of living in RAM"))
        if train.get("cache_text_encoder_outputs") and not train.get("cache_text_encoder_outputs_to_disk"):
            out.append(Suggestion("cache_text_encoder_outputs_to_disk", False, True, "text-encoder outputs go to disk instead of RAM"))
    swap = int(train.get("blocks_to_swap") or 0)
    if swap > 0:
        out.append(Suggestion("blocks_to_swap", swap, max(0, swap - 8), "swapped blocks live in host RAM; swap fewer if the GPU has room"))
    return out


def advise(
    arch: str, trainer: str, train_toml: Path | None, dataset_toml: Path | None, kind: str = "cuda", detail: dict[str, str] | None = None
) -> OomAdvice:
    train = load_train(train_toml)
    ds = load_toml(dataset_toml)
    if kind == "host":
        if detail and detail.get("host_line"):
            tried = f" (tried to allocate {detail['tried']})" if detail.get("tried") else ""
            headline = (
                f"the trainer could not get host RAM{tried}: {detail['host_line'][:200]}. The machine (or a memory limit on the "
                "process: ulimit -v, a container's limit) ran out of RAM, not GPU memory."
            )
        else:
            headline = (
                "the trainer was killed by the operating system (exit 137 / signal 9): the machine ran out of RAM, "
                "not GPU memory. Check `dmesg | grep -i oom` to confirm."
            )
        return OomAdvice("host", headline, host_suggestions(arch, trainer, train))
    tail = ""
    if detail and detail.get("tried"):
        tail = f" (tried to allocate {detail['tried']}"
        tail += f"; {detail['free']} free of {detail['total']})" if detail.get("free") else ")"
    headline = f"CUDA out of memory{tail}. Change the first of these that you can, then launch again:"
    return OomAdvice("cuda", headline, cuda_suggestions(arch, trainer, train, ds))


def retry_suggestions(advice: OomAdvice, n: int = 2) -> list[Suggestion]:
    """Fallback step down when the preset is unknown: the first `n` changes the advice lists."""
    return advice.suggestions[:n]


def preset_step_down(arch: str, preset: str | None, train_toml: Path | None, dataset_toml: Path | None) -> tuple[str, list[Suggestion]] | None:
    """The next smaller preset's memory settings, where they are leaner than this config's.

    Only memory levers move (gradient checkpointing, block swap, fp8 base, resolution, batch,
    network dim); everything else the user chose stays. None when the preset or architecture is
    unknown to loraprep, or this is already the smallest preset.
    """
    try:
        spec = get_arch(arch)
        cur = normalize_preset(preset or "")
    except (KeyError, ValueError):
        return None
    i = PRESETS.index(cur)
    if i == 0:
        return None
    name = PRESETS[i - 1]
    p = get_preset(spec, name)
    train = load_train(train_toml)
    ds = load_toml(dataset_toml)
    why = f"as in preset {name}"
    out: list[Suggestion] = []
    if p.train.get("gradient_checkpointing") and not train.get("gradient_checkpointing"):
        out.append(Suggestion("gradient_checkpointing", False, True, why))
    swap_new, swap_cur = p.train.get("blocks_to_swap") or 0, int(train.get("blocks_to_swap") or 0)
    offload = train.get("cpu_offload_checkpointing") or train.get("unsloth_offload_checkpointing")
    if swap_new > swap_cur and not offload:
        out.append(Suggestion("blocks_to_swap", swap_cur, swap_new, why))
    if p.train.get("fp8_base") and not train.get("fp8_base"):
        out.append(Suggestion("fp8_base", False, True, why))
    res = dataset_resolution(ds)
    side = res if isinstance(res, int) else (max(res) if isinstance(res, list) and res else None)
    if side is not None and max(p.resolution) < side:
        new_res: int | list[int] = p.resolution[0] if isinstance(res, int) else list(p.resolution)
        out.append(Suggestion("resolution", res, new_res, why, file="dataset.toml"))
    key, file, batch = batch_setting(train, ds)
    if p.batch_size < batch:
        accum = int(train.get("gradient_accumulation_steps") or 1)
        out.append(Suggestion(key, batch, p.batch_size, why, file=file, also={"gradient_accumulation_steps": accum * batch // p.batch_size}))
    dim, new_dim = train.get("network_dim"), p.train.get("network_dim")
    if isinstance(dim, int) and isinstance(new_dim, int) and new_dim < dim:
        alpha = train.get("network_alpha")
        also: dict[str, Any] = {}
        if isinstance(alpha, (int, float)) and alpha > 0:
            a = alpha * new_dim / dim
            also["network_alpha"] = int(a) if float(a).is_integer() and isinstance(alpha, int) else round(float(a), 4)
        out.append(Suggestion("network_dim", dim, new_dim, why + "; network_alpha scaled with it", also=also))
    return name, out


def _set_in_sections(cfg: dict[str, Any], key: str, value: Any) -> None:
    """Change `key` where sd-scripts would read it (the last section holding it), else top level."""
    holders = [sec for sec in cfg.values() if isinstance(sec, dict) and key in sec]
    if holders:
        for sec in holders:
            sec[key] = value
    else:
        cfg[key] = value


def _set_dataset_key(ds: dict[str, Any], key: str, value: Any) -> None:
    """Set `key` in every [[datasets]] entry that has it, and in [general] if it has it or no entry did."""
    entries = [e for e in ds.get("datasets") or [] if isinstance(e, dict)]
    touched = False
    for entry in entries:
        if key in entry:
            entry[key] = value
            touched = True
    general = ds.setdefault("general", {})
    if key in general or not touched:
        general[key] = value
    if key == "resolution":  # keep min_bucket_reso <= resolution (sd-scripts asserts it)
        low = min(value) if isinstance(value, list) else value
        for sec in [general, *entries]:
            if isinstance(sec.get("min_bucket_reso"), int) and sec["min_bucket_reso"] > low:
                sec["min_bucket_reso"] = low


def write_retry_configs(
    train_toml: Path | None, dataset_toml: Path | None, suggestions: list[Suggestion], dest_dir: Path, tag: str
) -> tuple[Path | None, Path | None, dict[str, Any]]:
    """Copies of train.toml / dataset.toml with the changes applied; originals are left alone."""
    from prep.fsutil import atomic_write_text

    train_changes = {k: v for s in suggestions for k, v in s.train_changes().items()}
    ds_changes = {k: v for s in suggestions for k, v in s.dataset_changes().items()}
    res = ds_changes.get("resolution")
    new_train = new_ds = None
    if train_toml is not None:
        cfg = load_toml(train_toml)
        # The training TOML may carry resolution too, as the "W,H" string sd-scripts expects there.
        res_in_train = res is not None and "resolution" in flatten(cfg)
        if train_changes or res_in_train:
            for k, v in train_changes.items():
                _set_in_sections(cfg, k, v)
            if res_in_train:
                r = res if isinstance(res, list) else [res, res]
                _set_in_sections(cfg, "resolution", f"{r[0]},{r[1]}")
            new_train = dest_dir / f"train.{tag}.toml"
            atomic_write_text(new_train, tomli_w.dumps(cfg))
    if ds_changes and dataset_toml is not None:
        ds = load_toml(dataset_toml)
        for k, v in ds_changes.items():
            _set_dataset_key(ds, k, v)
        new_ds = dest_dir / f"dataset.{tag}.toml"
        atomic_write_text(new_ds, tomli_w.dumps(ds))
    return new_train, new_ds, {**train_changes, **{f"dataset.{k}": v for k, v in ds_changes.items()}}
