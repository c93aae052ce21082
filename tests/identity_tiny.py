"""Tiny ONNX models with the real SFace and CCIP input/output contracts, built by the tests.

The real files (38 MB SFace, 150 MB CCIP) cannot be downloaded in CI. These run the same code
path: onnxruntime, the same tensor names, shapes, layout and dtypes.

- SFace: `data` 1x3x112x112 float32 (RGB 0..255) -> `fc1` 1x128. Our tiny net average-pools
  the face to 3x8x8, centres it and projects it to 128 dims with a fixed random matrix, so the
  cosine of two embeddings is (roughly) the correlation of two low-resolution aligned faces:
  the same face aligned twice scores high, two different people lower. Code reads the names
  from the session, so they need not match the real file's.
- CCIP feature model: `input` Nx3x384x384 float32 -> `output` Nx768 (the same pool/centre/project
  idea); metric model: `input` Nx768 -> `output` NxN differences, (1 - cosine) / 2 here, so 0 is
  "same" and the threshold sits on the difference as imgutils' does.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def _pool_project(onnx, helper, TensorProto, numpy_helper, in_name: str, out_name: str, size: int, pool: int, dim: int,
                  batch: int | str, seed: int):
    cells = size // pool
    flat = 3 * cells * cells
    rng = np.random.default_rng(seed)
    proj = (rng.standard_normal((flat, dim)) / np.sqrt(dim)).astype(np.float32)
    nodes = [
        helper.make_node("AveragePool", [in_name], ["pooled"], kernel_shape=[pool, pool], strides=[pool, pool]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("ReduceMean", ["flat"], ["mean"], axes=[1], keepdims=1),
        helper.make_node("Sub", ["flat", "mean"], ["centred"]),
        helper.make_node("MatMul", ["centred", "proj"], [out_name]),
    ]
    inits = [numpy_helper.from_array(proj, "proj")]
    inp = helper.make_tensor_value_info(in_name, TensorProto.FLOAT, [batch, 3, size, size])
    out = helper.make_tensor_value_info(out_name, TensorProto.FLOAT, [batch, dim])
    return nodes, inits, inp, out


def build_sface(path: Path, seed: int = 0) -> Path:
    """A 1x3x112x112 -> 1x128 ONNX model at `path`."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, inp, out = _pool_project(onnx, helper, TensorProto, numpy_helper, "data", "fc1", 112, 14, 128, 1, seed)
    graph = helper.make_graph(nodes, "tiny_sface", [inp], [out], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def build_ccip(folder: Path, model: str = "ccip-caformer-24-randaug-pruned", *, threshold: float | None = 0.2, seed: int = 0) -> Path:
    """`folder/<model>/{model_feat.onnx, model_metrics.onnx, metrics.json}`; returns the model's folder."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    out_dir = folder / model
    out_dir.mkdir(parents=True, exist_ok=True)
    nodes, inits, inp, out = _pool_project(onnx, helper, TensorProto, numpy_helper, "input", "output", 384, 48, 768, "N", seed)
    feat = helper.make_model(helper.make_graph(nodes, "tiny_ccip_feat", [inp], [out], inits), opset_imports=[helper.make_opsetid("", 17)])
    feat.ir_version = 8
    onnx.checker.check_model(feat)
    onnx.save(feat, str(out_dir / "model_feat.onnx"))

    # difference = (1 - cos) / 2 between every pair of rows
    mnodes = [
        helper.make_node("ReduceL2", ["input"], ["norm"], axes=[1], keepdims=1),
        helper.make_node("Div", ["input", "norm"], ["unit"]),
        helper.make_node("Transpose", ["unit"], ["unit_t"], perm=[1, 0]),
        helper.make_node("MatMul", ["unit", "unit_t"], ["cos"]),
        helper.make_node("Sub", ["one", "cos"], ["one_minus"]),
        helper.make_node("Mul", ["one_minus", "half"], ["output"]),
    ]
    minits = [
        numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one"),
        numpy_helper.from_array(np.array(0.5, dtype=np.float32), "half"),
    ]
    minp = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 768])
    mout = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", "N"])
    metric = helper.make_model(helper.make_graph(mnodes, "tiny_ccip_metrics", [minp], [mout], minits), opset_imports=[helper.make_opsetid("", 17)])
    metric.ir_version = 8
    onnx.checker.check_model(metric)
    onnx.save(metric, str(out_dir / "model_metrics.onnx"))
    if threshold is not None:
        (out_dir / "metrics.json").write_text(json.dumps({"threshold": threshold}), encoding="utf-8")
    return out_dir


# --- real faces -----------------------------------------------------------------------------


def astronaut():
    """Eileen Collins, scikit-image's `data.astronaut()` (512x512 RGB, public domain NASA photo)."""
    from PIL import Image
    from skimage import data

    return Image.fromarray(data.astronaut())


def grace_hopper():
    """Grace Hopper, matplotlib's sample `grace_hopper.jpg` (512x600)."""
    import matplotlib.cbook as cbook
    from PIL import Image

    with cbook.get_sample_data("grace_hopper.jpg") as fh:
        return Image.open(fh).convert("RGB")


def group_scene(small, large, *, small_width: int = 200, large_width: int = 420, size: tuple[int, int] = (900, 640)):
    """A two-person scene: `large` on the left at `large_width`, `small` on the right at `small_width`."""
    from PIL import Image

    canvas = Image.new("RGB", size, (90, 110, 120))
    lg = large.resize((large_width, round(large.height * large_width / large.width)), Image.Resampling.LANCZOS)
    sm = small.resize((small_width, round(small.height * small_width / small.width)), Image.Resampling.LANCZOS)
    canvas.paste(lg, (20, (size[1] - lg.height) // 2))
    canvas.paste(sm, (size[0] - small_width - 40, (size[1] - sm.height) // 2))
    return canvas
