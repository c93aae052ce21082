"""`run/run.json`, the contract between `config` and everything after it: one `RunSpec`.

`config` builds the document and writes it through `RunSpec.write` (after `RunSpec.from_raw`
has validated it, so config never writes what the readers reject); `launch`, `estimate`,
`check`, `status` and OOM advice load it with `RunSpec.load`. A malformed run.json (not JSON,
wrong version, missing fields) is one `RunSpecError` naming the file, everywhere. Launch only
amends it to append what it changed on an OOM retry (`oom_retries`). The training TOML a
command uses is found by `train_toml(cmd)` and read by `read_train_toml` (the one reader).
"""

from __future__ import annotations

import sys

import json
if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prep.archs import ArchSpec, get_arch
from prep.fsutil import atomic_write_text
from train_bridge.validate import Issue, flatten_like_trainer

RUN_FILE = "run.json"
VERSION = 1

KNOWN_TRAINERS = ("sd-scripts", "musubi-tuner")
COMMAND_ORDER = ("cache_latents", "cache_text_encoder", "train", "train_high", "train_low")


class RunSpecError(ValueError):
    """run.json is missing or does not follow the contract; the message says what to do."""


@dataclass
class Command:
    name: str
    script: str
    args: list[str]
    accelerate: bool = True
    accelerate_args: list[str] = field(default_factory=lambda: ["--num_cpu_threads_per_process", "1"])

    @property
    def is_cache(self) -> bool:
        return self.name.startswith("cache")

    def arg_value(self, option: str) -> str | None:
        """Value of `--option VALUE` or `--option=VALUE` in args (last one wins, like argparse)."""
        found = None
        for i, a in enumerate(self.args):
            if a == option and i + 1 < len(self.args):
                found = self.args[i + 1]
            elif a.startswith(option + "="):
                found = a.split("=", 1)[1]
        return found

    def replace_arg_value(self, option: str, value: str) -> bool:
        changed = False
        for i, a in enumerate(self.args):
            if a == option and i + 1 < len(self.args):
                self.args[i + 1] = value
                changed = True
            elif a.startswith(option + "="):
                self.args[i] = f"{option}={value}"
                changed = True
        return changed


@dataclass
class RunSpec:
    run_dir: Path
    raw: dict[str, Any]
    trainer: str
    arch: str
    preset: str | None
    commands: list[Command]
    output_dir: Path
    output_name: str
    logging_dir: Path | None
    save_state: bool

    @property
    def run_json(self) -> Path:
        return self.run_dir / "run.json"

    @property
    def steps_per_epoch(self) -> int | None:
        est = self.raw.get("estimate") or {}
        v = est.get("steps_per_epoch")
        return int(v) if isinstance(v, int) else None

    @property
    def total_steps(self) -> int | None:
        est = self.raw.get("estimate") or {}
        v = est.get("total_steps")
        return int(v) if isinstance(v, int) else None

    @classmethod
    def load(cls, run_dir: Path) -> RunSpec:
        run_dir = Path(run_dir).resolve()
        path = run_dir / RUN_FILE
        if not path.is_file():
            raise RunSpecError(
                f"{path} not found: write the run folder first with `train_bridge config ...` "
                f"(it writes train.toml, dataset.toml and run.json)."
            )
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RunSpecError(f"{path} is not valid JSON ({exc}); rewrite it with `train_bridge config`.") from exc
        return cls.from_raw(raw, run_dir)

    @classmethod
    def from_raw(cls, raw: Any, run_dir: Path) -> RunSpec:
        """Validate a run.json document (as loaded, or as config is about to write it)."""
        run_dir = Path(run_dir).resolve()
        path = run_dir / RUN_FILE
        if not isinstance(raw, dict):
            raise RunSpecError(f"{path}: expected a JSON object, got {type(raw).__name__}; rewrite it with `train_bridge config`.")
        if raw.get("version") != VERSION:
            raise RunSpecError(f"{path}: unsupported version {raw.get('version')!r} (this loraprep reads version {VERSION}); rewrite it with `train_bridge config`.")
        trainer = raw.get("trainer")
        if trainer not in KNOWN_TRAINERS:
            raise RunSpecError(f"{path}: trainer must be one of {', '.join(KNOWN_TRAINERS)}, not {trainer!r}.")
        cmds = []
        for i, c in enumerate(raw.get("commands") or []):
            if not isinstance(c, dict) or not c.get("script") or not isinstance(c.get("args", []), list):
                raise RunSpecError(f"{path}: commands[{i}] needs a 'script' and an 'args' list.")
            cmds.append(
                Command(
                    name=str(c.get("name") or "train"),
                    script=str(c["script"]),
                    args=[str(a) for a in c.get("args", [])],
                    accelerate=bool(c.get("accelerate", True)),
                    accelerate_args=[str(a) for a in c.get("accelerate_args", ["--num_cpu_threads_per_process", "1"])],
                )
            )
        if not isinstance(raw.get("commands"), list) or not cmds:
            raise RunSpecError(f"{path}: no commands to run (a 'commands' list is missing); rewrite it with `train_bridge config`.")
        rank = {n: i for i, n in enumerate(COMMAND_ORDER)}
        cmds.sort(key=lambda c: rank.get(c.name, len(rank)))  # stable: caches first, then training
        if not raw.get("output_dir"):
            raise RunSpecError(f"{path}: output_dir is missing; rewrite it with `train_bridge config`.")
        out = Path(raw["output_dir"])
        if not out.is_absolute():
            out = run_dir / out
        log_dir = raw.get("logging_dir")
        return cls(
            run_dir=run_dir,
            raw=raw,
            trainer=trainer,
            arch=str(raw.get("arch") or ""),
            preset=raw.get("preset"),
            commands=cmds,
            output_dir=out,
            output_name=str(raw.get("output_name") or "last"),
            logging_dir=Path(log_dir) if log_dir else None,
            save_state=bool(raw.get("save_state", False)),
        )

    @property
    def path(self) -> Path:
        return self.run_dir / RUN_FILE

    @property
    def train_commands(self) -> list[Command]:
        return [c for c in self.commands if not c.is_cache]

    @property
    def cache_commands(self) -> list[Command]:
        return [c for c in self.commands if c.is_cache]

    @property
    def trigger(self) -> str | None:
        t = self.raw.get("trigger")
        return str(t) if t else None

    @property
    def derived(self) -> dict[str, Any]:
        d = self.raw.get("derived")
        return d if isinstance(d, dict) else {}

    def arch_spec(self) -> ArchSpec:
        """The architecture of this run; an unknown or missing arch is a RunSpecError."""
        try:
            spec = get_arch(self.arch)
        except KeyError as exc:
            raise RunSpecError(f"{self.path}: {exc.args[0]}; rewrite it with `train_bridge config`.") from None
        if spec.trainer != self.trainer:
            raise RunSpecError(f"{self.path}: arch {spec.name} trains with {spec.trainer}, not {self.trainer}; rewrite it with `train_bridge config`.")
        return spec

    def to_json(self) -> str:
        return json.dumps(self.raw, indent=2, ensure_ascii=False) + "\n"

    def write(self) -> Path:
        """Write run.json atomically (config's one way of writing it)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, self.to_json())
        return self.path

    def read_train(self, cmd: Command) -> dict[str, Any]:
        """The flat training options of `cmd` (its train TOML, read as the trainer reads it)."""
        p = self.train_toml(cmd)
        if p is None:
            raise RunSpecError(f"{self.path}: command {cmd.name} names no --config_file and there is no train.toml; rewrite it with `train_bridge config`.")
        return read_train_toml(p)[0]

    def update_raw(self, **fields: Any) -> None:
        """Merge fields into run.json and rewrite it atomically (keeps everything config wrote)."""
        current = json.loads(self.run_json.read_text(encoding="utf-8"))
        current.update(fields)
        atomic_write_text(self.run_json, json.dumps(current, indent=2, ensure_ascii=False) + "\n")
        self.raw = current

    def train_toml(self, cmd: Command) -> Path | None:
        v = cmd.arg_value("--config_file")
        if v:
            p = Path(v)
            if not p.suffix:
                p = p.with_suffix(".toml")  # sd-scripts appends .toml itself
            return p if p.is_absolute() else self.run_dir / p
        p = self.run_dir / "train.toml"
        return p if p.is_file() else None

    def dataset_toml(self, cmd: Command) -> Path | None:
        v = cmd.arg_value("--dataset_config")
        if v:
            p = Path(v)
            return p if p.is_absolute() else self.run_dir / p
        p = self.run_dir / "dataset.toml"
        return p if p.is_file() else None


def read_train_toml(path: Path | str) -> tuple[dict[str, Any], list[Issue]]:
    """A training TOML flattened one level, as sd-scripts/musubi `read_config_from_file` does.

    Returns (flat options, flattening issues). The one reader of train TOMLs; a missing or
    unparsable file is a RunSpecError naming it.
    """
    p = Path(path)
    try:
        doc = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunSpecError(f"{p} is missing; rewrite the run folder with `train_bridge config`.") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise RunSpecError(f"{p} is not valid TOML ({exc}); fix it or rewrite it with `train_bridge config`.") from None
    return flatten_like_trainer(doc)


def read_dataset_toml(path: Path | str) -> dict[str, Any]:
    """A dataset TOML as a document; a missing or unparsable file is a RunSpecError naming it."""
    p = Path(path)
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunSpecError(f"dataset config {p} is missing; rewrite the run folder with `train_bridge config`.") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise RunSpecError(f"{p} is not valid TOML ({exc}); fix it or rewrite it with `train_bridge config`.") from None
