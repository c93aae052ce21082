"""A tiny ONNX model with the WD tagger contract, for tests (importable helper).

Contract (same as SmilingWolf wd-*-tagger-v3): one float32 input NHWC `[N, S, S, 3]`, BGR,
raw 0..255; one output `[N, K]` of sigmoid probabilities, K == rows of `selected_tags.csv`.

The graph is: spatial mean per channel -> x/255 -> x @ W + b -> sigmoid. So the scores depend
only on the image's mean colour and are exactly predictable: a pure red, green or blue square
lights up known tags (see `EXPECTED`). `score(tag, rgb)` gives the probability for any mean
colour, so tests can place a score just above or below a threshold.

    from wd_tiny import build_tiny_wd14          # tests/ is on sys.path under pytest
    model_dir = build_tiny_wd14(tmp_path / "wd", batch=None)   # dynamic batch
    model_dir = build_tiny_wd14(tmp_path / "wd", batch=4)      # fixed batch 4
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

RATING, GENERAL, CHARACTER = 9, 0, 4

# name, category, (wB, wG, wR), bias  -- x = mean(B, G, R) / 255 in [0, 1]
SPEC: list[tuple[str, int, tuple[float, float, float], float]] = [
    ("general", RATING, (0, 0, 0), 3.0),
    ("sensitive", RATING, (0, 0, 0), -1.0),
    ("questionable", RATING, (0, 0, 0), -3.0),
    ("explicit", RATING, (0, 0, 0), -4.0),
    ("1girl", GENERAL, (0, 0, 0), 2.2),            # 0.900 everywhere
    ("solo", GENERAL, (0, 0, 0), 1.5),             # 0.818 everywhere
    ("long_hair", GENERAL, (0, 0, 0), 1.0),        # 0.731 everywhere (identity, core)
    ("closed_eyes", GENERAL, (0, 0, 0), -0.2),     # 0.450 everywhere
    ("simple_background", GENERAL, (0, 0, 0), -1.0),  # 0.269 everywhere: below 0.35
    ("blue_theme", GENERAL, (8, 0, 0), -5.0),
    ("green_theme", GENERAL, (0, 8, 0), -5.0),
    ("red_theme", GENERAL, (0, 0, 8), -5.0),
    ("red_hair", GENERAL, (-4, -4, 7), -2.0),      # red: 0.731
    ("blue_eyes", GENERAL, (7, -4, -4), -2.5),     # blue: 0.622
    ("cat_ears", GENERAL, (-4, 7, -4), -1.5),      # green: 0.924
    ('don\'t_say_"lazy"', GENERAL, (-4, -4, 7), -3.0),  # red: 0.982... see EXPECTED
    ("^_^", GENERAL, (-4, 7, -4), -2.0),           # green kaomoji
    (">_<", GENERAL, (7, -4, -4), -3.0),           # blue kaomoji
    ("monochrome", GENERAL, (0, 0, 0), -4.0),      # never
    ("hatsune_miku", CHARACTER, (9, -4, -4), -4.0),      # blue: 0.993
    ("kirisame_marisa", CHARACTER, (-4, -4, 9), -6.0),   # red: 0.953
    ("sage_(loraprep)", CHARACTER, (0, 0, 0), -5.0),     # never
]

TAG_IDS = [9999999, 9999998, 9999997, 9999996] + list(range(1, len(SPEC) - 3))
NAMES = [s[0] for s in SPEC]


def score(tag: str, rgb: tuple[int, int, int]) -> float:
    """The model's probability for `tag` on an image whose mean colour is `rgb`."""
    _, _, w, b = SPEC[NAMES.index(tag)]
    x = (rgb[2] / 255.0, rgb[1] / 255.0, rgb[0] / 255.0)
    z = w[0] * x[0] + w[1] * x[1] + w[2] * x[2] + b
    return 1.0 / (1.0 + math.exp(-z))


def expected(rgb: tuple[int, int, int], general: float = 0.35, character: float = 0.85) -> dict[str, list[str]]:
    """Raw tag names above the thresholds, per category, in model (CSV) order."""
    out: dict[str, list[str]] = {"general": [], "character": []}
    for name, cat, _, _ in SPEC:
        s = score(name, rgb)
        if cat == GENERAL and s >= general:
            out["general"].append(name)
        elif cat == CHARACTER and s >= character:
            out["character"].append(name)
    return out


def build_tiny_wd14(
    folder: Path | str,
    *,
    batch: int | None = None,
    size: int = 448,
    input_name: str = "input",
    opset: int = 18,
) -> Path:
    """Write `model.onnx` and `selected_tags.csv` into `folder` and return it.

    `batch=None` makes the batch dimension dynamic (v3 style); an int fixes it (v2.0 style).
    `input_name="input_1:0"` imitates the tf2onnx v2 exports.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    k = len(SPEC)
    w = np.array([s[2] for s in SPEC], np.float32).T  # [3, K], rows B, G, R
    b = np.array([s[3] for s in SPEC], np.float32)
    dim0: int | str = batch if batch else "batch"
    inp = helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [dim0, size, size, 3])
    out = helper.make_tensor_value_info("output", TensorProto.FLOAT, [dim0, k])
    inits = [
        numpy_helper.from_array(np.array([1, 2], np.int64), "axes"),
        numpy_helper.from_array(np.array(1 / 255.0, np.float32), "scale"),
        numpy_helper.from_array(w, "W"),
        numpy_helper.from_array(b, "b"),
    ]
    nodes = [
        helper.make_node("ReduceMean", [input_name, "axes"], ["mean"], keepdims=0),
        helper.make_node("Mul", ["mean", "scale"], ["norm"]),
        helper.make_node("MatMul", ["norm", "W"], ["logits0"]),
        helper.make_node("Add", ["logits0", "b"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["output"]),
    ]
    graph = helper.make_graph(nodes, "tiny_wd14", [inp], [out], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="tiny-wd14")
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(folder / "model.onnx"))
    with open(folder / "selected_tags.csv", "w", newline="", encoding="utf-8") as fh:
        wr = csv.writer(fh)
        wr.writerow(["tag_id", "name", "category", "count"])
        for tid, (name, cat, _, _) in zip(TAG_IDS, SPEC):
            wr.writerow([tid, name, cat, 1000])
    return folder


def solid(rgb: tuple[int, int, int], size: tuple[int, int] = (64, 64)):
    """A PIL image of one colour."""
    from PIL import Image

    return Image.new("RGB", size, rgb)
