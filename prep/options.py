"""Stage options, declared once: one pydantic model per stage is the CLI, the project file and the check.

A stage's options class (a `StageOptions`) is the only place an option, its type, its default
and its help are written. `cli_options` turns it into typer options of the per-command CLI;
`loraprep.toml` sections are validated by the same class (`load_options`), so a wrong type or
an unknown key is refused naming the key and the file on every path. Models are strict: TOML
`upscale = 'no'` is an error, not a truthy string; path options are plain strings.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin

import typer
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

from prep.archs import get_arch

O = TypeVar("O", bound="StageOptions")


class StageOptions(BaseModel):
    """Base of every stage's options: unknown keys and wrong types are refused."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True, frozen=False)

    def changed(self, **updates: Any) -> StageOptions:
        """A validated copy with `updates` applied (model_copy does not validate)."""
        return type(self).model_validate({**self.model_dump(), **updates})


def _known_arch(name: str) -> str:
    try:
        get_arch(name)
    except KeyError as exc:
        raise ValueError(str(exc).strip('"')) from None
    return name


ArchName = Annotated[str, AfterValidator(_known_arch)]
"""An architecture of `prep.archs` (or an alias), as the user wrote it; an unknown one names the closest."""


class OptionsError(ValueError):
    """Options that do not validate; the message names each key, what is wrong, and where."""

    def __init__(self, where: str, problems: list[tuple[str, str]]):
        self.where = where
        self.problems = problems
        lines = [f"{where}: {key}: {msg}" for key, msg in problems]
        super().__init__("\n".join(lines))


def describe_error(err: dict[str, Any]) -> tuple[str, str]:
    """(key, what is wrong) for one pydantic error, worded for a person editing a file or a flag."""
    key = ".".join(str(p) for p in err.get("loc", ())) or "(options)"
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        return key, "unknown key"
    got = err.get("input")
    return key, f"{err.get('msg', 'invalid')} (got {got!r})"


def load_options(cls: type[O], data: dict[str, Any] | None, *, where: str) -> O:
    """Validate `data` (a TOML table or CLI values) as `cls`; raise OptionsError naming `where` and the keys."""
    try:
        return cls.model_validate(dict(data or {}))
    except ValidationError as exc:
        problems = [describe_error(e) for e in exc.errors()]
        known = ", ".join(cls.model_fields)
        if any(m == "unknown key" for _, m in problems):
            problems.append(("known keys", known))
        raise OptionsError(where, problems) from None


# -- typer view ---------------------------------------------------------------------------------


def _cli_type(annotation: Any) -> tuple[Any, tuple[str, ...] | None]:
    """The type typer should parse, and the choices of a Literal (validated by pydantic)."""
    origin = get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _cli_type(args[0])
        return str, None
    if origin is Literal:
        choices = tuple(str(a) for a in get_args(annotation))
        return type(get_args(annotation)[0]), choices
    if origin in (list, tuple):
        inner = get_args(annotation)[0] if get_args(annotation) else str
        return list[inner], None  # type: ignore[valid-type]
    return annotation, None


def cli_params(cls: type[StageOptions], *, exclude: tuple[str, ...] = (), defaults: dict[str, Any] | None = None) -> list[inspect.Parameter]:
    """typer parameters for the fields of `cls`: `--field-name` (or the field's `cli` flags), help from its docs.

    A field's `json_schema_extra={"cli": ("--out", "-o")}` sets its flags; `{"cli": None}` keeps it
    off the command line (project-file only).
    """
    params = []
    for name, f in cls.model_fields.items():
        extra = f.json_schema_extra if isinstance(f.json_schema_extra, dict) else {}
        if name in exclude or ("cli" in extra and extra["cli"] is None):
            continue
        flags = tuple(extra.get("cli") or (f"--{name.replace('_', '-')}",))  # type: ignore[arg-type]
        typ, choices = _cli_type(f.annotation)
        default = (defaults or {}).get(name, f.get_default(call_default_factory=True))
        help_ = (f.description or "").strip()
        if choices:
            help_ = f"{help_} ({' | '.join(choices)})" if help_ else " | ".join(choices)
        if typ is bool and len(flags) == 1 and "/" not in flags[0]:
            flags = (f"{flags[0]}/--no-{flags[0][2:]}",)
        opt = typer.Option(default, *flags, help=help_, show_default=default not in (None, [], ()))
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=typ))
    return params


def options_command(cls: type[O], *, exclude: tuple[str, ...] = (), defaults: dict[str, Any] | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a typer command `fn(..., options: cls)`: the fields of `cls` become its options.

    The command receives a validated `cls` instance built only from the values the user gave
    (so `options.model_fields_set` tells what was given, e.g. to let a project's settings fill
    the rest). A value that does not validate is a usage error (exit 2) naming the flag.
    """

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        sig = inspect.signature(fn)
        hints = typing.get_type_hints(fn)  # real types, also under `from __future__ import annotations`
        own = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in sig.parameters.values() if p.name != "options"]
        fields = cli_params(cls, exclude=exclude, defaults=defaults)
        names = {p.name for p in fields}
        # typer gives the Context to one parameter only: reuse the command's own when it has one
        ctx_name = next((p.name for p in own if isinstance(p.annotation, type) and issubclass(p.annotation, typer.Context)), None)

        def wrapper(**kw: Any) -> Any:
            ctx = kw[ctx_name] if ctx_name else kw.pop("_options_ctx")
            given = {}
            for n in names:
                v = kw.pop(n)
                src = ctx.get_parameter_source(n)
                if src is not None and src.name != "DEFAULT":
                    given[n] = v
                elif defaults and n in defaults:
                    given[n] = v
            try:
                opts = load_options(cls, given, where="command line")
            except OptionsError as exc:
                flag = {p.name: p.default.param_decls[0].split("/")[0] for p in fields}  # type: ignore[union-attr]
                msg = "; ".join(f"{flag.get(k.split('.')[0], k)}: {m}" for k, m in exc.problems if k != "known keys")
                raise typer.BadParameter(msg, ctx=ctx) from None
            return fn(**kw, options=opts)

        ctx_param = inspect.Parameter("_options_ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)
        wrapper.__signature__ = sig.replace(parameters=[*own, *fields, *([] if ctx_name else [ctx_param])])  # type: ignore[attr-defined]
        wrapper.__name__ = fn.__name__
        wrapper.__doc__ = fn.__doc__
        wrapper.__wrapped_options__ = cls  # type: ignore[attr-defined]
        return wrapper

    return deco
