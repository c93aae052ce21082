"""Where a loraprep project keeps each stage's folder, and how a command finds the project.

A project is a folder holding `loraprep.toml` (written by `loraprep run`). The per-command
tools (`prep crop`, `caption`, `train_bridge launch`, ...) look for one from the working folder
upwards, so inside a project they read and write the same folders `loraprep run` does; outside
one they say which folder they need. The folder names are declared here once.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PROJECT_FILE = "loraprep.toml"
STATE_DIR = ".loraprep"


@dataclass(frozen=True)
class ProjectDirs:
    """The folders of one project (they need not exist yet)."""

    root: Path

    @property
    def file(self) -> Path:
        return self.root / PROJECT_FILE

    @property
    def raw(self) -> Path:
        return self.root / "01_raw"

    @property
    def cropped(self) -> Path:
        return self.root / "02_cropped"

    @property
    def clips(self) -> Path:
        """Video runs: `prep clips` output (16 fps, 4N+1-frame clips), in place of 02_cropped."""
        return self.root / "02_clips"

    @property
    def captions(self) -> Path:
        return self.root / "03_captions"

    @property
    def captioned(self) -> Path:
        return self.root / "04_captioned"

    @property
    def renders(self) -> Path:
        return self.root / "05_renders"

    @property
    def dataset(self) -> Path:
        return self.root / "dataset"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def dupes(self) -> Path:
        return self.root / "dupes"

    @property
    def off_model(self) -> Path:
        """Crops of images that match none of the references, set aside by `loraprep run` (moved, never deleted)."""
        return self.root / "off_model"

    @property
    def state(self) -> Path:
        return self.root / STATE_DIR

    def table(self) -> dict[str, Any]:
        """The project file as plain TOML tables (the typed view is `loraprep.project.Project`)."""
        try:
            return tomllib.loads(self.file.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{self.file}: not valid TOML ({exc}); fix it or rewrite it with `loraprep run`") from None


def find_project(start: Path | str | None = None) -> ProjectDirs | None:
    """The project holding `start` (default: the working folder), searching upwards; None outside one."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / PROJECT_FILE).is_file():
            return ProjectDirs(folder)
    return None
