"""Ask nvidia-smi which GPUs exist, how much memory is free, and which CUDA the driver runs.

Used by `setup` (pick the torch build) and `launch` (refuse to start on a busy or absent GPU
with a message that says why, instead of a CUDA traceback ten minutes later).
`LORAPREP_NVIDIA_SMI` names another executable (tests use a script that prints canned output).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass

QUERY = ["--query-gpu=index,name,memory.total,memory.free", "--format=csv,noheader,nounits"]


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    total_mib: int
    free_mib: int

    @property
    def free_gib(self) -> float:
        return self.free_mib / 1024

    @property
    def total_gib(self) -> float:
        return self.total_mib / 1024


def nvidia_smi() -> str | None:
    override = os.environ.get("LORAPREP_NVIDIA_SMI")
    if override:
        return override if (os.path.exists(override) or shutil.which(override)) else None
    return shutil.which("nvidia-smi")


def _run(args: list[str], timeout: float = 20.0) -> str | None:
    exe = nvidia_smi()
    if not exe:
        return None
    try:
        out = subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def parse_gpu_csv(text: str) -> list[GpuInfo]:
    gpus = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) < 4:
            continue
        try:
            gpus.append(GpuInfo(int(cells[0]), cells[1], int(float(cells[2])), int(float(cells[3]))))
        except ValueError:
            continue
    return gpus


def query_gpus() -> list[GpuInfo] | None:
    """GPUs seen by the driver; None when nvidia-smi is missing or fails (no NVIDIA driver)."""
    out = _run(QUERY)
    if out is None:
        return None
    gpus = parse_gpu_csv(out)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() and all(v.strip().isdigit() for v in visible.split(",")):
        order = [int(v) for v in visible.split(",")]
        by_index = {g.index: g for g in gpus}
        gpus = [by_index[i] for i in order if i in by_index]
    return gpus


_CUDA_RE = re.compile(r"CUDA Version:\s*(\d+)\.(\d+)")


def driver_cuda_version() -> tuple[int, int] | None:
    """The highest CUDA runtime the driver supports (nvidia-smi's header), e.g. (12, 4)."""
    out = _run([])
    if not out:
        return None
    m = _CUDA_RE.search(out)
    return (int(m[1]), int(m[2])) if m else None


def preset_need_gib(preset: str | None) -> float | None:
    """A preset named like '16gb' was made for a card of that size; ask for ~85 % of it free."""
    if not preset:
        return None
    m = re.search(r"(\d+(?:\.\d+)?)\s*g", preset.lower())
    return float(m[1]) * 0.85 if m else None


@dataclass
class GpuCheck:
    ok: bool
    message: str
    gpu: GpuInfo | None = None


def check_gpu(preset: str | None, gpus: list[GpuInfo] | None = None) -> GpuCheck:
    """Is there a GPU, and does it have the free memory this preset needs?"""
    if gpus is None:
        gpus = query_gpus()
    skip = "(--no-gpu-check skips this check)"
    if gpus is None:
        return GpuCheck(False, f"no NVIDIA GPU found: nvidia-smi is missing or failed. Training needs a CUDA GPU {skip}.")
    if not gpus:
        return GpuCheck(False, f"nvidia-smi lists no usable GPU (check CUDA_VISIBLE_DEVICES) {skip}.")
    gpu = gpus[0]
    need = preset_need_gib(preset)
    if need is not None and gpu.free_gib < need:
        return GpuCheck(
            False,
            f"GPU {gpu.index} ({gpu.name}) has {gpu.free_gib:.1f} GiB free of {gpu.total_gib:.1f} GiB; "
            f"preset {preset!r} needs about {need:.0f} GiB. Close other programs on the GPU "
            f"(`nvidia-smi` lists them) or write the config with a smaller preset {skip}.",
            gpu,
        )
    return GpuCheck(True, f"GPU {gpu.index} ({gpu.name}): {gpu.free_gib:.1f} GiB free of {gpu.total_gib:.1f} GiB", gpu)
