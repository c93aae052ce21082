"""pyproject promises Python >= 3.10: no source file may need a newer Python.

CI runs one interpreter (python3), so this checks every .py file of the packages and tests
statically: it must parse with the 3.10 grammar (`ast.parse(feature_version=(3, 10))`), and a
3.11-only standard-library import (tomllib, typing.Self, datetime.UTC, ...) must sit under a
`try: ... except ImportError` or an `if sys.version_info ...` guard (e.g. `tomli` as tomllib,
which pyproject installs on 3.10). Measured: under python3.10.13 with those imports guarded the
suite passes (docs/models.md names the run).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("prep", "captioning", "train_bridge", "loraprep", "tests", "bench")

NEW_MODULES = {"tomllib", "wsgiref.types"}
NEW_NAMES = {
    "typing": {"Self", "LiteralString", "Never", "assert_never", "assert_type", "reveal_type", "dataclass_transform", "TypeVarTuple", "Unpack", "Required", "NotRequired"},
    "datetime": {"UTC"},
    "enum": {"StrEnum", "verify", "member", "nonmember", "ReprEnum", "EnumCheck"},
    "asyncio": {"TaskGroup", "timeout", "Runner"},
    "hashlib": {"file_digest"},
}


def _min_python() -> tuple[int, int]:
    text = (ROOT / "pyproject.toml").read_text()
    m = re.search(r'requires-python\s*=\s*">=\s*(\d+)\.(\d+)"', text)
    assert m, "pyproject.toml: requires-python = \">=X.Y\" expected"
    return int(m.group(1)), int(m.group(2))


def _guarded(chain: list[ast.AST]) -> bool:
    for node in chain:
        if isinstance(node, ast.Try):
            for h in node.handlers:
                names = {getattr(h.type, "id", None)} | {getattr(e, "id", None) for e in getattr(h.type, "elts", [])}
                if h.type is None or names & {"ImportError", "ModuleNotFoundError", "Exception", "AttributeError"}:
                    return True
        if isinstance(node, ast.If) and "version_info" in ast.unparse(node.test):
            return True
    return False


def _problems(path: Path, version: tuple[int, int]) -> list[str]:
    src = path.read_text(encoding="utf-8")
    rel = path.relative_to(ROOT).as_posix()
    try:
        tree = ast.parse(src, filename=rel, feature_version=version)
    except SyntaxError as exc:
        return [f"{rel}:{exc.lineno}: not Python {version[0]}.{version[1]} syntax ({exc.msg})"]
    out: list[str] = []

    def walk(node: ast.AST, chain: list[ast.AST]) -> None:
        for child in ast.iter_child_nodes(node):
            walk(child, [*chain, node])
        bad = None
        if isinstance(node, ast.Import):
            bad = next((a.name for a in node.names if a.name in NEW_MODULES), None)
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module in NEW_MODULES:
                bad = node.module
            else:
                new = NEW_NAMES.get(node.module, set()) & {a.name for a in node.names}
                bad = f"{node.module}.{sorted(new)[0]}" if new else None
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.attr in NEW_NAMES.get(node.value.id, set()) and node.value.id in ("datetime", "typing", "enum", "hashlib"):
                bad = f"{node.value.id}.{node.attr}"
        if bad and not _guarded(chain):
            out.append(f"{rel}:{node.lineno}: {bad} needs Python 3.11; guard it (try/except ImportError, e.g. `import tomli as tomllib`)")

    walk(tree, [])
    return out


def test_every_file_runs_on_the_oldest_promised_python() -> None:
    version = _min_python()
    if version >= (3, 11):
        pytest.skip("pyproject requires 3.11 or newer: nothing to check for 3.10")
    files = [p for d in FOLDERS if (ROOT / d).is_dir() for p in sorted((ROOT / d).rglob("*.py")) if "__pycache__" not in p.parts]
    assert len(files) > 50
    problems = [msg for p in files for msg in _problems(p, version)]
    assert problems == [], "\n".join(problems)


def test_the_checker_sees_what_it_should(tmp_path: Path) -> None:
    """The rule itself: an unguarded tomllib import is caught, a guarded one is not."""
    bad = tmp_path / "bad.py"
    bad.write_text("import tomllib\nfrom typing import Self\n")
    good = tmp_path / "good.py"
    good.write_text("try:\n    import tomllib\nexcept ModuleNotFoundError:\n    import tomli as tomllib\nimport sys\nif sys.version_info >= (3, 11):\n    from typing import Self\n")
    syntax = tmp_path / "syntax.py"
    syntax.write_text("try:\n    pass\nexcept* ValueError:\n    pass\n")
    global ROOT
    old, ROOT = ROOT, tmp_path
    try:
        assert len(_problems(bad, (3, 10))) == 2
        assert _problems(good, (3, 10)) == []
        assert "syntax" in _problems(syntax, (3, 10))[0]
    finally:
        ROOT = old
