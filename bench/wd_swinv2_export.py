"""Export a random-weight WD v3 SwinV2 tagger to ONNX, so benchmarks pay the real inference cost.

Run with a Python that has torch, timm and onnx (not loraprep's venv: torch is not a loraprep
dependency):

    /path/to/torch-venv/bin/python bench/wd_swinv2_export.py OUT_DIR

The architecture is the one the WD v3 SwinV2 tagger declares for timm: `swinv2_base_window8_256`
with `img_size=448`, `window_size=14`, 1024 features, global average pooling (the timm config of
SmilingWolf's swinv2 taggers), and 10,861 classes (`SmilingWolf/wd-swinv2-tagger-v3`:
4 rating + 8,106 general + 2,751 character rows in selected_tags.csv, ../shared/reference/
captioning.md). Only the weights are random (seeded). The ONNX wraps it in the WD contract the
published model.onnx has: NHWC float32 BGR 0..255 in, sigmoid probabilities `[N, 10861]` out; the
RGB flip and timm's normalisation (mean = std = 0.5) are inside the graph, as in the published
export. The random head's logits are standardised per image and scaled so about 40 general
tags pass 0.35, as with a trained tagger (our choice, so tag writing costs what it does for real).

Writes OUT_DIR/model.onnx and selected_tags.csv (the v3 layout, from bench/wd14_bench.py), and
OUT_DIR/with_embeddings/model.onnx: the same weights with a second output, the 1,024-d pooled
features, which is the layout imgutils loads (`deepghs/wd14_tagger_with_embeddings`,
`<repo>/model.onnx`, outputs `[probabilities, embedding]`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from wd14_bench import K_CHARACTER, K_GENERAL, K_RATING, SIZE, write_tags_csv

NUM_CLASSES = K_RATING + K_GENERAL + K_CHARACTER  # 10,861


class WDContract(torch.nn.Module):
    """NHWC BGR 0..255 -> probabilities, around a timm SwinV2."""

    def __init__(self, net: torch.nn.Module, embedding: bool = False):
        super().__init__()
        self.net = net
        self.embedding = embedding
        a = torch.full((NUM_CLASSES,), 2.2)
        b = torch.full((NUM_CLASSES,), -6.0)
        a[:K_RATING] = 0.0
        b[:K_RATING] = torch.tensor([2.0, -1.0, -3.0, -4.0])
        self.register_buffer("a", a)
        self.register_buffer("b", b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2).flip(1) / 255.0  # NHWC BGR -> NCHW RGB 0..1
        x = (x - 0.5) / 0.5
        f = self.net.forward_features(x)
        z = self.net.forward_head(f)
        z = (z - z.mean(dim=1, keepdim=True)) / (z.std(dim=1, keepdim=True) + 1e-6)
        probs = torch.sigmoid(z * self.a + self.b)
        if self.embedding:  # imgutils' export (deepghs/wd14_tagger_with_embeddings) adds the pooled features
            return probs, self.net.forward_head(f, pre_logits=True)
        return probs


def main() -> int:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    net = timm.create_model("swinv2_base_window8_256", pretrained=False, img_size=SIZE, window_size=14,
                            num_classes=NUM_CLASSES, global_pool="avg")
    model = WDContract(net).eval()
    params = sum(p.numel() for p in net.parameters())
    example = torch.from_numpy(np.random.default_rng(0).uniform(0, 255, (1, SIZE, SIZE, 3)).astype(np.float32))
    with torch.no_grad():
        torch.onnx.export(model, (example,), str(out / "model.onnx"), input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, opset_version=17, dynamo=False)
        (out / "with_embeddings").mkdir(exist_ok=True)
        torch.onnx.export(WDContract(net, embedding=True).eval(), (example,), str(out / "with_embeddings" / "model.onnx"),
                          input_names=["input"], output_names=["output", "embedding"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}, "embedding": {0: "batch"}},
                          opset_version=17, dynamo=False)
        ref = model(example).numpy()
    write_tags_csv(out / "selected_tags.csv")
    import onnxruntime as ort

    got = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, {"input": example.numpy()})[0]
    print(f"params {params / 1e6:.1f} M, onnx {sum(p.stat().st_size for p in out.glob('model.onnx*')) / 1e6:.0f} MB, "
          f"max |torch - onnx| {np.abs(ref - got).max():.2e}, tags > 0.35: {(got[0, K_RATING:K_RATING + K_GENERAL] > 0.35).sum()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
