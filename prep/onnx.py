"""The one place that builds onnxruntime sessions (detectors, the WD tagger), so device choice,
thread caps and logging are the same for every ONNX model in the project."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def onnx_session(path: str | Path, device: str = "cpu", threads: int = 0, *, allow_spinning: bool = True,
                 cpu_arena: bool = True) -> Any:
    """An onnxruntime session for `path` on `device`; `threads` caps intra-op threads (0: ort default).

    `allow_spinning=False` stops intra-op threads busy-waiting between runs: a caller that
    decodes images on other threads while the model runs (the WD tagger) needs those cores.
    `cpu_arena=False` returns activation buffers to the allocator after each run instead of
    keeping onnxruntime's CPU arena at its high-water mark.
    Raises `prep.models.ModelNotAvailable` when `device` has no provider here.
    """
    import onnxruntime as ort

    from prep.models import onnx_providers

    providers = onnx_providers(device)
    so = ort.SessionOptions()
    if threads > 0:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    if not allow_spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not cpu_arena:
        so.enable_cpu_mem_arena = False
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=so, providers=providers)
