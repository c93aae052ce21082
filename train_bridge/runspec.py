"""Read (and minimally amend) `run/run.json`, the contract between `config` and `launch`.

`config` writes it; launch only reads it, except for appending what it changed on an OOM
retry (`oom_retries`) so the run folder keeps telling the truth about what ran.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prep.fsutil import atomic_write_text

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
        path = run_dir / "run.json"
        if not path.is_file():
            raise RunSpecError(
                f"{path} not found: write the run folder first with `train_bridge config ...` "
                f"(it writes train.toml, dataset.toml and run.json)."
            )
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise RunSpecError(f"{path} is not valid JSON ({exc}); rewrite it with `train_bridge config`.") from exc
        if raw.get("version") != 1:
            raise RunSpecError(f"{path}: unsupported version {raw.get('version')!r} (this loraprep reads version 1).")
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
        if not cmds:
            raise RunSpecError(f"{path}: no commands to run.")
        rank = {n: i for i, n in enumerate(COMMAND_ORDER)}
        cmds.sort(key=lambda c: rank.get(c.name, len(rank)))  # stable: caches first, then training
        if not raw.get("output_dir"):
            raise RunSpecError(f"{path}: output_dir is missing.")
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
