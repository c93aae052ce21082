"""Which folders a prep command reads and writes when they are not given: the project's, or a default.

Inside a project (a folder holding `loraprep.toml`, found from the working folder upwards by
`prep.project.find_project`) a command reads and writes the same folders `loraprep run` does
(`ProjectDirs`), and the options the command line leaves out come from the project file, so
the per-command tools and `loraprep run` make the same thing. Outside one, a command that
needs a folder says which, and a default output folder is never inside the input.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from prep.cli.common import EXIT_USAGE, fail
from prep.options import OptionsError, StageOptions, load_options
from prep.project import PROJECT_FILE, ProjectDirs, find_project

O = TypeVar("O", bound=StageOptions)


@dataclass(frozen=True)
class Folders:
    src: Path
    out: Path
    project: ProjectDirs | None


def _rel(p: Path) -> str:
    try:
        return "./" + p.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(p)


def _inside(child: Path, parent: Path) -> bool:
    c, p = child.resolve(), parent.resolve()
    return c == p or p in c.parents


def resolve_folders(
    command: str,
    src: Path | None,
    out: Path | None,
    *,
    project_src: Callable[[ProjectDirs], Path],
    project_out: Callable[[ProjectDirs], Path],
    src_help: str,
    default_out: str | None = None,
    out_flag: str = "--out/-o",
    project: ProjectDirs | None = None,
) -> Folders:
    """SRC and OUT for `command`: as given, else the project's folders, else `default_out` (never inside SRC).

    Raises a usage exit (2) that names the folder the command needs and the flag to pass.
    """
    project = project if project is not None else find_project()
    if src is None:
        if project is None:
            raise fail(f"`{command}` needs {src_help}: `{command} FOLDER` (inside a loraprep project, one holding {PROJECT_FILE}, it uses the project's)", EXIT_USAGE)
        src = project_src(project)
        if not src.is_dir():
            raise fail(f"{src}: the project's folder for `{command}` does not exist yet; run the stages before it (`loraprep run`) or pass {src_help}", EXIT_USAGE)
    if out is None:
        if project is not None:
            out = project_out(project)
        elif default_out is not None:
            out = Path(default_out)
            if _inside(out, src):
                raise fail(f"the default output {_rel(out)} is inside the input folder {src}: pass {out_flag} FOLDER outside it", EXIT_USAGE)
        else:
            raise fail(f"`{command}` needs an output folder: pass {out_flag} FOLDER (inside a loraprep project it uses the project's)", EXIT_USAGE)
    return Folders(Path(src), Path(out), project)


def with_project_options(options: O, project: ProjectDirs | None, *, section: str | None, top: tuple[str, ...] = (), rename: dict[str, str] | None = None) -> O:
    """`options` with what the command line left out taken from the project file.

    Keys of `[project]` named in `top` and the keys of `[section]` that are fields of the
    options class fill the options not given on the command line (the command line wins). A
    value of the wrong type is refused naming the key and the project file.
    """
    if project is None or not project.file.is_file():
        return options
    cls = type(options)
    try:
        table = project.table()
    except ValueError as exc:
        raise fail(str(exc), EXIT_USAGE) from None
    names = rename or {}
    data: dict[str, Any] = {}
    for k, v in dict(table.get("project", {})).items():
        k = names.get(k, k)
        if k in top and k in cls.model_fields:
            data[k] = v
    if section:
        for k, v in dict(table.get(section, {})).items():
            k = names.get(k, k)
            if k in cls.model_fields:
                data[k] = v
    if not data:
        return options
    data.update(options.model_dump(include=options.model_fields_set))
    try:
        return load_options(cls, data, where=str(project.file))
    except OptionsError as exc:
        raise fail(str(exc), EXIT_USAGE) from None


def project_value(project: ProjectDirs | None, section: str, key: str) -> Any:
    """One value of the project file (None outside a project or when absent)."""
    if project is None or not project.file.is_file():
        return None
    try:
        return dict(project.table().get(section, {})).get(key)
    except ValueError:
        return None
