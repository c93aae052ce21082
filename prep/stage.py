"""The one shape every stage has, so the per-command CLIs and `loraprep run` drive the same code.

A stage (import, check, dedupe, crop, caption, trigger, lint, layout, config, estimate, ...) is a
module-level object with a `name`, its `Options` class (a `prep.options.StageOptions`) and
`run(src, out, options, progress=...) -> report`. A report has `to_json()` and `n_failed`; a
stage whose report has failed items is never recorded as up to date by `loraprep run`.
The CLI command of a stage builds `Options` from its flags and calls `run`; `loraprep run`
builds the same `Options` from `loraprep.toml` and calls the same `run`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

from prep.executor import Progress
from prep.options import StageOptions

O = TypeVar("O", bound=StageOptions)


@runtime_checkable
class StageReport(Protocol):
    @property
    def n_failed(self) -> int: ...

    def to_json(self) -> dict[str, Any]: ...


class Stage(Protocol[O]):
    name: ClassVar[str]
    Options: ClassVar[type[StageOptions]]

    def run(self, src: Path, out: Path, options: O, *, progress: Progress | None = None) -> StageReport: ...
