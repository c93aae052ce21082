"""Dump a trainer's real argparse option list to JSON (run in the trainer's own Python).

Why: sd-scripts and musubi-tuner keep unknown `--config_file` keys silently and never
type-check TOML values, so loraprep validates against the parser itself. This script imports
the parser from a checkout at a pinned commit and writes one JSON file per script; the
project ships the results as data (`train_bridge/options/data/`). It imports nothing from
loraprep, so it runs in any venv that can import the trainer:

    SD=/path/sd-scripts  python train_bridge/options/generate.py sd-scripts $SD out/
    python train_bridge/options/generate.py musubi-tuner /path/musubi-tuner out/
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

SD_SCRIPTS = ("anima_train_network", "flux_train_network", "sdxl_train_network", "sd3_train_network")
MUSUBI = ("wan_train_network", "wan_cache_latents", "wan_cache_text_encoder_outputs")


def _type_name(action: argparse.Action) -> str:
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        return "flag"
    if action.nargs == 0:
        return "flag"
    t = action.type
    if t is None or t is str:
        return "str"
    if t in (int, float, bool):
        return t.__name__
    name = getattr(t, "__name__", repr(t))
    if name == "Path":
        return "path"
    return "int_or_float" if name.lstrip("_") == "int_or_float" else f"callable:{name}"


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value)


def dump_parser(parser: argparse.ArgumentParser) -> list[dict[str, Any]]:
    rows = []
    for a in parser._actions:
        if a.dest == "help" or not a.option_strings:
            continue
        rows.append(
            {
                "name": a.dest,
                "flags": list(a.option_strings),
                "type": _type_name(a),
                "nargs": a.nargs if a.nargs is None or isinstance(a.nargs, (int, str)) else str(a.nargs),
                "default": _plain(a.default),
                "choices": _plain(list(a.choices)) if a.choices is not None else None,
                "required": bool(a.required),
                "store_false": isinstance(a, argparse._StoreFalseAction),
            }
        )
    return rows


def _commit(checkout: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def sd_scripts_parser(name: str) -> argparse.ArgumentParser:
    return importlib.import_module(name).setup_parser()


def musubi_parser(name: str) -> argparse.ArgumentParser:
    import torch

    torch.cuda.current_device = lambda: 0  # wan/modules/t5.py calls it at import time
    mod = importlib.import_module(f"musubi_tuner.{name}")
    if name == "wan_train_network":
        common = importlib.import_module("musubi_tuner.training.parser_common").setup_parser_common()
    elif name == "wan_cache_latents":
        common = importlib.import_module("musubi_tuner.cache_latents").setup_parser_common()
    else:
        common = importlib.import_module("musubi_tuner.cache_text_encoder_outputs").setup_parser_common()
    return mod.wan_setup_parser(common)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trainer", choices=["sd-scripts", "musubi-tuner"])
    ap.add_argument("checkout", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--commit", help="commit to record when the checkout has no .git")
    ns = ap.parse_args(argv)
    checkout = ns.checkout.resolve()
    if ns.trainer == "sd-scripts":
        sys.path.insert(0, str(checkout))
        scripts, build, rel = SD_SCRIPTS, sd_scripts_parser, "{}.py"
    else:
        sys.path.insert(0, str(checkout / "src"))
        scripts, build, rel = MUSUBI, musubi_parser, "src/musubi_tuner/{}.py"
    commit = ns.commit or _commit(checkout)
    ns.out.mkdir(parents=True, exist_ok=True)
    for name in scripts:
        rows = dump_parser(build(name))
        doc = {"trainer": ns.trainer, "commit": commit, "script": rel.format(name), "options": rows}
        path = ns.out / f"{ns.trainer}__{name}.json"
        path.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"{path}: {len(rows)} options")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
