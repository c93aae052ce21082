"""Each supported trainer script's real option list, shipped as data.

The JSON files under `data/` are written by `generate.py` from the trainer's own argparse
parser at the pinned commit (sd-scripts 48d368fa = v0.10.1, musubi-tuner 30c658c4). Regenerate
them with that script when the pin moves.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).with_name("data")


@dataclass(frozen=True)
class Option:
    name: str
    flags: tuple[str, ...]
    type: str  # flag | str | int | float | int_or_float | path | callable:<name>
    nargs: Any
    default: Any
    choices: tuple[Any, ...] | None
    required: bool = False
    store_false: bool = False

    @property
    def is_flag(self) -> bool:
        return self.type == "flag"

    @property
    def is_list(self) -> bool:
        return self.nargs in ("*", "+") or (isinstance(self.nargs, int) and self.nargs > 1)

    @property
    def cli(self) -> str:
        return self.flags[0]


@dataclass(frozen=True)
class OptionList:
    trainer: str
    commit: str
    script: str
    options: dict[str, Option]

    def __contains__(self, name: object) -> bool:
        return name in self.options

    def get(self, name: str) -> Option | None:
        return self.options.get(name)

    @property
    def names(self) -> list[str]:
        return list(self.options)


@lru_cache(maxsize=None)
def load_option_list(key: str) -> OptionList:
    """Load `data/<key>.json` (e.g. `sd-scripts__anima_train_network`)."""
    path = DATA_DIR / f"{key}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no option list {key!r} in {DATA_DIR}")
    doc = json.loads(path.read_text(encoding="utf-8"))
    opts = {}
    for row in doc["options"]:
        opts[row["name"]] = Option(
            name=row["name"],
            flags=tuple(row["flags"]),
            type=row["type"],
            nargs=row["nargs"],
            default=row["default"],
            choices=tuple(row["choices"]) if row["choices"] is not None else None,
            required=row.get("required", False),
            store_false=row.get("store_false", False),
        )
    return OptionList(doc["trainer"], doc["commit"], doc["script"], opts)


def available() -> list[str]:
    return sorted(p.stem for p in DATA_DIR.glob("*.json"))
