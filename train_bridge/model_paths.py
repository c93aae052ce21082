"""What a model argument is: a local path (resolved against the working folder) or a Hub id.

One rule, used by `config` (which records the answer in run.json's derived notes) and `check`:
a value is a Hugging Face id only when it is not an existing path, has no model-file suffix and
looks like `owner/name`, and only for roles that accept a folder or id (`ModelArg.allow_dir`).
Everything else is a path: `models/anima.safetensors` that does not exist yet is a missing
file, never a repo id.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from prep.archs import ArchSpec, ModelArg
from train_bridge.safetensors_header import HeaderError, read_header

MODEL_SUFFIXES = (".safetensors", ".sft", ".pth", ".pt", ".bin", ".ckpt", ".gguf", ".onnx")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


@dataclass(frozen=True)
class ModelRef:
    role: str
    value: str
    """The resolved absolute path, or the Hub id as given."""
    hub_id: bool

    @property
    def note(self) -> str:
        return "Hugging Face id (downloaded by the trainer)" if self.hub_id else "local path"


def is_hub_id(value: str, m: ModelArg) -> bool:
    p = Path(value).expanduser()
    if not m.allow_dir or p.exists():
        return False
    if p.suffix.lower() in MODEL_SUFFIXES:
        return False
    return _HUB_ID.fullmatch(value) is not None


def resolve_model(m: ModelArg, value: str | Path) -> ModelRef:
    """`value` for role `m`: a Hub id kept as given, or a path made absolute (cwd-relative)."""
    text = str(value)
    if is_hub_id(text, m):
        return ModelRef(m.name, text, True)
    return ModelRef(m.name, str(Path(text).expanduser().resolve()), False)


def missing_text_encoders(spec: ArchSpec, models: dict[str, str]) -> list[str]:
    """Text-encoder roles of `spec.bundled_text_encoders` that neither a file nor the checkpoint gives.

    SD3: sd3_utils loads clip_l/clip_g/t5xxl from `text_encoders.<role>.` tensors of the
    checkpoint when no file is passed; without either, training fails at load. An unreadable
    or absent checkpoint counts as holding none (check reports the file itself).
    """
    if not spec.bundled_text_encoders:
        return []
    need = [(role, rx) for role, rx in spec.bundled_text_encoders if not models.get(role)]
    if not need:
        return []
    ckpt_role = spec.models[0]
    ckpt = models.get(ckpt_role.name)
    names: list[str] = []
    if ckpt and Path(ckpt).is_file() and Path(ckpt).suffix == ".safetensors":
        try:
            names = list(read_header(ckpt).tensors)
        except (HeaderError, OSError):
            names = []
    return [role for role, rx in need if not any(re.search(rx, n) for n in names)]
