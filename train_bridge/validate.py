"""Check training-TOML keys and values against a trainer's real option list.

sd-scripts and musubi-tuner copy `--config_file` values into the argparse namespace without
conversion: unknown keys are kept silently, strings stay strings, choices are not checked
(reference §4.1). So every key and value loraprep writes, and every `--set key=value` a user
passes, is checked here against the parser's own option list, and `--set` values are coerced
to the type the parser expects.
"""

from __future__ import annotations

import sys

import difflib
import math
if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib
from dataclasses import dataclass
from typing import Any

from train_bridge.options import Option, OptionList


@dataclass(frozen=True)
class Issue:
    level: str  # "error" | "warning"
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}" if self.key else self.message


class OptionError(ValueError):
    """A `--set` that the trainer would ignore or misread."""

    def __init__(self, issues: list[Issue]):
        self.issues = issues
        super().__init__("; ".join(str(i) for i in issues))


def did_you_mean(name: str, options: OptionList) -> str:
    close = difflib.get_close_matches(name, options.names, n=3, cutoff=0.6)
    return f" (did you mean {', '.join(close)}?)" if close else ""


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _scalar(opt: Option, raw: Any) -> Any:
    """Coerce one item to the parser's type; raises ValueError with a reason."""
    t = opt.type
    if t == "flag":
        if isinstance(raw, bool):
            return raw
        s = str(raw).strip().lower()
        if s in _TRUE:
            return True
        if s in _FALSE:
            return False
        raise ValueError(f"expects true or false, got {raw!r}")
    if t == "int":
        if isinstance(raw, bool):
            raise ValueError(f"expects an integer, got {raw!r}")
        if isinstance(raw, int):
            return raw
        if isinstance(raw, float):
            if raw.is_integer():
                return int(raw)
            raise ValueError(f"expects an integer, got {raw!r}")
        try:
            return int(str(raw).strip())
        except ValueError:
            raise ValueError(f"expects an integer, got {raw!r}") from None
    if t == "float":
        if isinstance(raw, bool):
            raise ValueError(f"expects a number, got {raw!r}")
        try:
            v = float(raw)
        except (TypeError, ValueError):
            raise ValueError(f"expects a number, got {raw!r}") from None
        if not math.isfinite(v):
            raise ValueError(f"expects a finite number, got {raw!r}")
        return v
    if t == "int_or_float":
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            return raw
        s = str(raw).strip()
        try:
            return int(s)
        except ValueError:
            try:
                return float(s)
            except ValueError:
                raise ValueError(f"expects an integer or a fraction, got {raw!r}") from None
    # str, path, callables: the parser receives a string
    if isinstance(raw, (dict, list)):
        raise ValueError(f"expects a string, got {raw!r}")
    return str(raw) if not isinstance(raw, str) else raw


def _split_list(raw: str) -> list[Any]:
    s = raw.strip()
    if s.startswith("["):
        try:
            return list(tomllib.loads(f"v = {s}")["v"])
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"not a TOML array: {exc}") from None
    return s.split()


def coerce(opt: Option, raw: Any) -> Any:
    """The value typed as the parser expects (lists for nargs options)."""
    if opt.is_list:
        items = _split_list(raw) if isinstance(raw, str) else (list(raw) if isinstance(raw, (list, tuple)) else [raw])
        if opt.nargs == "+" and not items:
            raise ValueError("expects at least one value")
        vals = [_scalar(opt, i) for i in items]
    else:
        vals = _scalar(opt, raw)
    for v in vals if isinstance(vals, list) else [vals]:
        if opt.choices is not None and v not in opt.choices:
            close = difflib.get_close_matches(str(v), [str(c) for c in opt.choices], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"{v!r} is not one of {', '.join(map(str, opt.choices))}{hint}")
    return vals


def parse_set(items: list[str], options: OptionList) -> dict[str, Any]:
    """`["key=value", ...]` -> typed dict; every problem is collected into one OptionError."""
    out: dict[str, Any] = {}
    issues: list[Issue] = []
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip().lstrip("-").replace("-", "_") if key.strip().startswith("--") else key.strip()
        if not sep or not key:
            issues.append(Issue("error", item, "expected key=value"))
            continue
        opt = options.get(key)
        if opt is None:
            issues.append(Issue("error", key, f"unknown option for {options.script}{did_you_mean(key, options)}"))
            continue
        try:
            out[key] = coerce(opt, raw)
        except ValueError as exc:
            issues.append(Issue("error", key, str(exc)))
    if issues:
        raise OptionError(issues)
    return out


def check_value(opt: Option, value: Any) -> list[str]:
    """Problems with a value as it stands in a TOML (no coercion: the trainer does none)."""
    key = opt.name
    if opt.is_flag:
        return [] if isinstance(value, bool) else [f"expects true/false, got {value!r}"]
    if opt.is_list:
        if not isinstance(value, list):
            return [f"must be a TOML array (a bare string is split character by character or fails to unpack), got {value!r}"]
        items = value
    else:
        if isinstance(value, (list, dict)):
            return [f"expects a single value, got {value!r}"]
        items = [value]
    errs: list[str] = []
    for item in items:
        t = opt.type
        if t in ("int", "float", "int_or_float") and (isinstance(item, str) or isinstance(item, bool)):
            errs.append(f"numeric option given as {type(item).__name__} {item!r}; the trainer does not convert TOML values")
        elif t == "int" and isinstance(item, float):
            errs.append(f"expects an integer, got {item!r}")
        elif t in ("str", "path") or t.startswith("callable:"):
            if not isinstance(item, str):
                hint = ' (write "W,H" as a string)' if key == "resolution" else ""
                errs.append(f"expects a string, got {type(item).__name__} {item!r}{hint}")
        if opt.choices is not None and item not in opt.choices:
            errs.append(f"{item!r} is not one of {', '.join(map(str, opt.choices))}")
    return errs


def flatten_like_trainer(cfg: dict[str, Any]) -> tuple[dict[str, Any], list[Issue]]:
    """One level of `[section]` merged, as `read_config_from_file` does; deeper tables are lost."""
    flat: dict[str, Any] = {}
    issues: list[Issue] = []
    for k, v in cfg.items():
        if isinstance(v, dict):
            for kk, vv in v.items():
                if isinstance(vv, dict):
                    issues.append(Issue("error", f"{k}.{kk}", "nested two levels deep: the trainer does not flatten it"))
                    continue
                if kk in flat:
                    issues.append(Issue("warning", kk, f"set twice; the value in [{k}] wins"))
                flat[kk] = vv
        else:
            flat[k] = v
    return flat, issues


def validate_flat(flat: dict[str, Any], options: OptionList, *, ignored: frozenset[str] = frozenset()) -> list[Issue]:
    """Unknown keys, wrong types and bad choices in a flattened training TOML."""
    issues: list[Issue] = []
    for key, value in flat.items():
        opt = options.get(key)
        if opt is None:
            issues.append(Issue("error", key, f"unknown key: {options.script} keeps it silently and never uses it{did_you_mean(key, options)}"))
            continue
        for msg in check_value(opt, value):
            issues.append(Issue("error", key, msg))
        if key in ignored:
            issues.append(Issue("warning", key, "accepted by the parser but ignored by this architecture"))
    return issues


# -- options that name files --------------------------------------------------------------------

PATH_KEYS = frozenset({"sample_prompts", "resume", "log_tracker_config", "pretrained_model_name_or_path", "dataset_config"})
"""Options that name a file or folder beside the `*_dir` / `*_path` / `*_file` ones (and `path`-typed ones)."""


def names_a_path(key: str, opt: Option | None = None) -> bool:
    """Whether `key` names a file or folder (what the trainer reads or writes there)."""
    return key in PATH_KEYS or key.endswith(("_dir", "_path", "_file")) or (opt is not None and opt.type == "path")


def _escapes(value: str) -> bool:
    """A relative path whose `..` parts climb out of the folder it is resolved against."""
    depth = 0
    for part in value.replace("\\", "/").split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part not in ("", "."):
            depth += 1
    return False


def path_value_issues(key: str, value: Any) -> list[Issue]:
    """Refuse a value that would put or read a file outside the run folder without the user
    saying so with an absolute path (the trainer runs in the run folder, so a relative path is
    resolved there). `output_name` is a file name, never a path.
    """
    vals = value if isinstance(value, list) else [value]
    issues: list[Issue] = []
    for v in vals:
        if not isinstance(v, str):
            continue
        if key == "output_name":
            if "/" in v or "\\" in v or v in ("", ".", "..") or "\0" in v:
                issues.append(Issue("error", key, f"{v!r} is a name, not a path: it must not contain / or \\ (to save elsewhere, set output_dir=/absolute/folder)"))
            continue
        if v.startswith("~"):
            issues.append(Issue("error", key, f"{v!r}: the trainer does not expand ~; write the absolute path"))
        elif not _is_absolute(v) and _escapes(v):
            issues.append(Issue("error", key, f"{v!r} names a file outside the run folder (relative paths are resolved against it); give an absolute path if you mean that place"))
    return issues


def _is_absolute(v: str) -> bool:
    from pathlib import PurePosixPath, PureWindowsPath

    return PurePosixPath(v).is_absolute() or PureWindowsPath(v).is_absolute()
