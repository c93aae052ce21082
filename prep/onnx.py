"""The one place that builds onnxruntime sessions (detectors, identity models, the WD tagger), so
device choice, thread caps, spinning and logging are the same for every ONNX model in the project."""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path
from typing import Any

SPIN_KEYS = ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning")
"""onnxruntime's session config keys for busy-waiting thread pools (defined in onnxruntime's
include/onnxruntime/core/session/onnxruntime_session_options_config_keys.h; "1", the default,
spins; see its docs/performance/tune-performance/threading.md)."""


def onnx_session(path: str | Path | bytes, device: str = "cpu", threads: int = 0, *, allow_spinning: bool = False,
                 cpu_arena: bool = True) -> Any:
    """An onnxruntime session for `path` (or a serialized model) on `device`; `threads` caps
    intra-op threads (0: ort default).

    Spinning is off by default (`allow_spinning=False` sets both SPIN_KEYS to "0"): our callers
    run one small model call between image decodes and encodes on other threads, and a spinning
    pool burns those cores waiting for the next call (measured in docs/benchmarks.md, crop).
    `cpu_arena=False` returns activation buffers to the allocator after each run instead of
    keeping onnxruntime's CPU arena at its high-water mark.
    After loading, the heap pages onnxruntime freed (the parsed model file, as large as the
    weights) go back to the OS (`release_freed_heap`): 916 -> 520 MiB resident for a 411 MB
    SwinV2 tagger, measured in docs/benchmarks.md.
    Raises `prep.models.ModelNotAvailable` when `device` has no provider here.
    """
    import onnxruntime as ort

    from prep.models import onnx_providers

    providers = onnx_providers(device)
    so = ort.SessionOptions()
    if threads > 0:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    for key in SPIN_KEYS:
        so.add_session_config_entry(key, "1" if allow_spinning else "0")
    if not cpu_arena:
        so.enable_cpu_mem_arena = False
    so.log_severity_level = 3
    model = path if isinstance(path, bytes) else str(path)
    session = ort.InferenceSession(model, sess_options=so, providers=providers)
    release_freed_heap()
    return session


def release_freed_heap() -> bool:
    """Hand freed heap memory back to the OS (glibc's `malloc_trim(0)`); False where there is none.

    onnxruntime parses the whole model file into memory, copies the weights into tensors and frees
    the parsed copy, but glibc keeps those freed pages in the process's heap, so a model costs
    about twice its size in resident memory for the whole run unless they are trimmed.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    trim(0)
    return True


def with_free_dims(path: str | Path, inputs: dict[int, str], outputs: dict[int, str]) -> bytes:
    """The model at `path`, serialized, with the given axes of its graph inputs and outputs made
    symbolic (`{axis: name}`) and its recorded intermediate shapes dropped (onnxruntime infers them).

    For fully convolutional models exported with one fixed image size (YuNet 2023mar: 640x640):
    the network runs at any size its strides divide, but onnxruntime refuses an input that does
    not match a fixed dimension. Raises ValueError naming the file when it is not an ONNX model.
    """
    import onnx

    try:
        model = onnx.load(str(path))
    except Exception as exc:  # DecodeError, truncated files: the caller names the fix
        raise ValueError(f"{path}: not a loadable ONNX model ({type(exc).__name__}: {exc})") from None
    initializers = {t.name for t in model.graph.initializer}
    for values, axes in ((model.graph.input, inputs), (model.graph.output, outputs)):
        for vi in values:
            if vi.name in initializers:  # IR < 4 lists weights as inputs too
                continue
            dims = vi.type.tensor_type.shape.dim
            for axis, name in axes.items():
                if axis < len(dims):
                    dims[axis].dim_param = name  # a oneof: clears dim_value
    del model.graph.value_info[:]
    return model.SerializeToString()
