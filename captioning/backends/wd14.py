"""WD tagger (SmilingWolf wd-*-tagger v2/v3 and same-contract models) on onnxruntime.

Contract (read from the session, never assumed): input 0 is NHWC float32 `[N, S, S, 3]`, BGR,
raw 0..255; output 0 is `[N, K]` probabilities for the K rows of `selected_tags.csv`. The batch
dimension is dynamic in v3 and fixed (often 1) in v2.0 exports: a fixed batch is honoured by
padding the last batch, never by feeding a different batch size (that gives wrong results).

Preprocessing follows the reference (SmilingWolf's `wd-tagger` Space): alpha onto white, pad to
a centred white square, bicubic resize to S, RGB to BGR, float32 0..255. JPEGs are first
decoded at a reduced size (DCT scaling, never below twice the model size on the long side),
which is most of the speed-up over sd-scripts' full-resolution decode.

Throughput: the pipeline runs `caption_batch` on prep's executor batch by batch; inside
`prefetch` images are decoded on a thread pool (Pillow and numpy release the GIL) ahead of
those calls, so decoding batch i+1 overlaps inference of batch i; tag selection is vectorised
over the whole batch. The session comes from `prep.onnx.onnx_session`, with spinning off.

Memory (issue 17): the executor's `--batch-size` is how many images one call gets (and how
often progress is saved); how many go through the model at once is `inference_batch`: 1 on
CPU (batch 8 there cost 2.86 GiB of peak RSS against 1.21 GiB at batch 1 with a real-size v3
model, for no speed), `--batch-size` on an accelerator, or what the user gave (`--batch-size`
on the command line, `--set batch=N`). At most `DECODE_AHEAD_BATCHES` batches of decoded
images wait for the model.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from PIL import Image

from captioning.backends.base import CaptionOptions, CaptionResult, Estimate, Tag
from captioning.tags import CATEGORY_NAMES, Thresholds
from prep.dataset import ImageItem
from prep.images import ImageLoadError, load_image, probe_image
from prep.models import ModelNotAvailable, ModelRef, onnx_providers, resolve_model_file
from prep.onnx import onnx_session

DEFAULT_REPO = "SmilingWolf/wd-swinv2-tagger-v3"
ENV_VAR = "LORAPREP_WD14_MODEL"
MODEL_FILE = "model.onnx"
TAGS_FILE = "selected_tags.csv"
WHITE = (255, 255, 255)


@dataclass
class Labels:
    """`selected_tags.csv`: names and Danbooru categories (9 rating, 0 general, 4 character)."""

    names: list[str]
    categories: np.ndarray

    @classmethod
    def read(cls, path: Path) -> Labels:
        # csv module, never split(','): v3 has `612924,"don't_say_""lazy""",0,1062`.
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
        if not rows or [c.strip().lower() for c in rows[0][:3]] != ["tag_id", "name", "category"]:
            raise ModelNotAvailable(f"{path}: not a WD selected_tags.csv (header must start tag_id,name,category)")
        names = [r[1] for r in rows[1:] if r]
        cats = np.array([int(r[2]) for r in rows[1:] if r], dtype=np.int16)
        return cls(names, cats)


def _looks_like_path(spec: str) -> bool:
    return Path(spec).expanduser().exists() or spec.startswith((".", "/", "~")) or "\\" in spec or spec.count("/") > 1


def model_files(model: str | None, revision: str | None = None) -> tuple[Path, Path, str]:
    """(model.onnx, selected_tags.csv, label) for `--model`: a Hub repo id or a folder holding both files.

    Without `--model`, `$LORAPREP_WD14_MODEL` (a folder) is used if set, else the default repo
    through the Hugging Face cache (HF_HOME, HF_HUB_OFFLINE, HF_TOKEN honoured).
    """
    spec = model or os.environ.get(ENV_VAR) or DEFAULT_REPO
    if _looks_like_path(spec):
        folder = Path(spec).expanduser()
        if not folder.is_dir():
            raise ModelNotAvailable(f"--model {spec}: no such folder; pass a folder holding {MODEL_FILE} and {TAGS_FILE}")
        ref = ModelRef(repo_id=DEFAULT_REPO, filename=MODEL_FILE)
        return resolve_model_file(ref, folder), resolve_model_file(ref, folder, filename=TAGS_FILE), str(folder)
    ref = ModelRef(repo_id=spec, filename=MODEL_FILE, revision=revision or "main")
    return resolve_model_file(ref), resolve_model_file(ref, filename=TAGS_FILE), spec


CPU_BATCH = 1
"""Images per session.run on CPU unless the user asks: larger batches only raise peak memory there
(issue 17 measured 2.86 against 1.21 GiB at batch 8 vs 1 with a real-size v3 model; ours in
docs/benchmarks.md); an accelerator gets `--batch-size`."""

DECODE_AHEAD_BATCHES = 2
"""Batches decoded ahead of the one being tagged (our choice: enough to hide decoding behind
inference, while the decoded images held stay a few batches)."""


def is_cpu_only(providers: list[str]) -> bool:
    return all(p == "CPUExecutionProvider" for p in providers)


def inference_batch(options: CaptionOptions, providers: list[str]) -> int:
    """Images per session.run. `batch=auto` (what the caption stage passes unless the user gave
    --batch-size): 1 on CPU, `batch_size` on an accelerator. A number (`--set batch=N`, an
    explicit --batch-size): that. No `batch` (a library caller): `batch_size`, as asked."""
    given = options.extra.get("batch")
    if given in (None, ""):
        return max(1, options.batch_size)
    if str(given).lower() == "auto":
        return CPU_BATCH if is_cpu_only(providers) else max(1, options.batch_size)
    try:
        n = int(given)
    except (TypeError, ValueError):
        n = 0
    if n < 1:
        raise ValueError(f"batch={given!r}: use auto or a whole number >= 1")
    return n


class WD14Model:
    """An onnxruntime session plus its labels, with the input contract read from the session."""

    def __init__(self, onnx_path: Path, tags_path: Path, *, device: str = "auto", threads: int | None = None, label: str = "",
                 cpu_arena: bool = True):
        self.label = label or str(onnx_path)
        self.labels = Labels.read(tags_path)
        # No busy-waiting between runs: the decode threads need those cores.
        self.session = onnx_session(onnx_path, device, threads or max(1, os.cpu_count() or 1), allow_spinning=False,
                                    cpu_arena=cpu_arena)
        self.providers = list(self.session.get_providers())
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        shape = list(inp.shape)
        if len(shape) != 4:
            raise ModelNotAvailable(f"{onnx_path}: input {inp.name} has shape {shape}; a WD tagger takes [N, H, W, 3]")
        n, h, w, c = shape
        if not (isinstance(h, int) and isinstance(w, int)) or c not in (3, "3"):
            raise ModelNotAvailable(f"{onnx_path}: input shape {shape} is not NHWC with a fixed size; not a WD tagger export")
        self.size = int(h)
        self.fixed_batch = int(n) if isinstance(n, int) and n > 0 else None
        self.output_name = self.session.get_outputs()[0].name
        k = self.session.get_outputs()[0].shape[-1]
        if isinstance(k, int) and k != len(self.labels.names):
            raise ModelNotAvailable(
                f"{onnx_path}: the model has {k} outputs but {tags_path.name} lists {len(self.labels.names)} tags; "
                "use the selected_tags.csv from the same repo"
            )
        cats = self.labels.categories
        self.label_arrays: tuple[np.ndarray, np.ndarray, np.ndarray] = (
            np.array(self.labels.names, dtype=object), cats,
            np.array([CATEGORY_NAMES.get(int(c), "general") for c in cats], dtype=object))
        """Tag names, categories and category names, built once (rebuilding them per batch cost
        about 1 ms per image on small images: bench/scale_bench.py)."""

    def run(self, batch: np.ndarray, per_run: int | None = None) -> np.ndarray:
        """Probabilities `[n, K]` for an `[n, S, S, 3]` batch, `per_run` images per session.run
        (all at once when None); a fixed-batch model always gets its own batch size, padded."""
        n = batch.shape[0]
        fb = self.fixed_batch
        if fb is None:
            step = per_run or n
            outs = [self.session.run([self.output_name], {self.input_name: batch[i : i + step]})[0] for i in range(0, n, step)]
            return (outs[0] if len(outs) == 1 else np.concatenate(outs))[:n]
        out = []
        for i in range(0, n, fb):
            chunk = batch[i : i + fb]
            if chunk.shape[0] < fb:
                pad = np.zeros((fb - chunk.shape[0], *chunk.shape[1:]), dtype=chunk.dtype)
                chunk = np.concatenate([chunk, pad])
            out.append(self.session.run([self.output_name], {self.input_name: chunk})[0][: min(fb, n - i)])
        return np.concatenate(out)


def pad_resize(image: Image.Image, size: int) -> np.ndarray:
    """Reference preprocessing of an RGB image: centred white square, bicubic to `size`, BGR float32."""
    w, h = image.size
    m = max(w, h)
    if w != h:
        square = Image.new("RGB", (m, m), WHITE)
        square.paste(image, ((m - w) // 2, (m - h) // 2))
        image = square
    if m != size:
        image = image.resize((size, size), Image.BICUBIC)
    arr = np.asarray(image, dtype=np.uint8)[:, :, ::-1]
    return arr.astype(np.float32)


def draft_request(width: int, height: int, size: int) -> tuple[int, int]:
    """Draft size for `load_image` so the decoded long side stays >= 2 x the model size.

    `load_image` asks JPEG DCT scaling for a square request on both sides, so ask for the short
    side that keeps the long side above 2 x `size`.
    """
    long, short = max(width, height), min(width, height)
    need = math.ceil(2 * size * short / max(1, long))
    return (need, need)


def prepare(path: Path, size: int, *, draft: bool = True) -> np.ndarray:
    """Load one image (the project's loader: EXIF, alpha onto white, modes) and preprocess it."""
    draft_size = None
    if draft:
        w, h, fmt = probe_image(path)
        if fmt == "JPEG" and max(w, h) > 4 * size:
            draft_size = draft_request(w, h, size)
    loaded = load_image(path, background=WHITE, draft_size=draft_size)
    return pad_resize(loaded.image, size)


def prepare_sd_scripts(path: Path, size: int) -> np.ndarray:
    """sd-scripts' preprocessing, for tag-for-tag parity with its tagger (`preprocess=sd-scripts`).

    Full-resolution decode, BGR, pad to a white square (left/top get the smaller half), then
    cv2 INTER_AREA when shrinking, PIL LANCZOS when enlarging. Slower than the reference path
    (no draft decode) and not the model authors' procedure; use it to reproduce sd-scripts'
    tags exactly. Unlike sd-scripts, EXIF orientation is still applied (it tags sideways photos).
    """
    import cv2

    rgb = np.asarray(load_image(path, background=WHITE).image)
    h, w = rgb.shape[:2]
    m = max(h, w)
    # Padding and resizing act per channel, so they run on RGB and only the small result is
    # flipped to BGR (flipping the 12 MP array costs more than the resize).
    py, px = m - h, m - w
    if py or px:
        rgb = cv2.copyMakeBorder(rgb, py // 2, py - py // 2, px // 2, px - px // 2, cv2.BORDER_CONSTANT, value=(255, 255, 255))
    if m >= size:
        out = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA)
    else:
        out = np.asarray(Image.fromarray(rgb).resize((size, size), Image.LANCZOS))
    return out[:, :, ::-1].astype(np.float32)


PREPROCESS = {"reference": "reference", "sd-scripts": "sd-scripts", "sd_scripts": "sd-scripts"}


def _workers(options: CaptionOptions) -> int:
    return options.workers or min(4, max(1, os.cpu_count() or 1))


def _decoder(options: CaptionOptions, size: int) -> Callable[[Path], np.ndarray]:
    """The preprocessing `options` ask for (`preprocess=`, `draft=`), as a function of the image path."""
    mode = PREPROCESS.get(str(options.extra.get("preprocess", "reference")))
    if mode is None:
        raise ValueError(f"preprocess={options.extra.get('preprocess')!r}: use reference or sd-scripts")
    if mode == "sd-scripts":
        return partial(prepare_sd_scripts, size=size)
    draft = options.extra.get("draft", True) not in (False, "false", "0", "no", 0)
    return partial(prepare, size=size, draft=draft)


class _Prefetch:
    """Decode futures for items in the order they will be asked for, at most `ahead` waiting."""

    def __init__(self, pool: ThreadPoolExecutor, decode: Callable[[Path], np.ndarray], items: list[ImageItem], ahead: int):
        self.pool = pool
        self.decode = decode
        self.pending = iter(items)
        self.ready: dict[str, Future[np.ndarray]] = {}
        self.ahead = ahead

    def fill(self) -> None:
        while len(self.ready) < self.ahead:
            nxt = next(self.pending, None)
            if nxt is None:
                return
            self.ready[nxt.id] = self.pool.submit(self.decode, nxt.path)

    def take(self, item: ImageItem) -> Future[np.ndarray]:
        """The decode of `item`: prefetched, or submitted now (a retry, or an out-of-order call)."""
        fut = self.ready.pop(item.id, None)
        return fut if fut is not None else self.pool.submit(self.decode, item.path)

    def cancel(self) -> None:
        for fut in self.ready.values():
            fut.cancel()
        self.ready.clear()
        self.pending = iter(())


def rating_record(probs: np.ndarray, names: np.ndarray, cats: np.ndarray) -> dict[str, object]:
    """The image's most likely rating and every rating's score, for the caption record (the
    manifest), whether or not the caption carries a rating tag: `caption lint`, the studio
    (`rating:explicit`) and the user filter on it."""
    idx = np.flatnonzero(cats == 9)
    if idx.size == 0:
        return {}
    best = idx[int(np.argmax(probs[idx]))]
    return {"rating": str(names[best]), "ratings": {str(names[i]): round(float(probs[i]), 4) for i in idx}}


class WD14Backend:
    """`--backend wd14`: local WD tagger; returns thresholded tags, the pipeline writes them."""

    name: ClassVar[str] = "wd14"
    needs_key: ClassVar[str | None] = None
    kind: ClassVar[Literal["tags", "text"]] = "tags"

    def __init__(self) -> None:
        self._model: WD14Model | None = None
        self._model_key: tuple[Any, ...] | None = None
        self._prefetch: _Prefetch | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"_model": None, "_model_key": None, "_prefetch": None}

    def model(self, options: CaptionOptions) -> WD14Model:
        """The loaded model for these options (loaded once, reloaded if model/device change)."""
        providers = onnx_providers(options.device)
        # CPU arena off only for batches > 1 there: it would keep their high-water mark for the
        # whole run (batch 8: 363 against 407 MiB), while at batch 1 it saves nothing and turning
        # it off cost 6 % of model throughput (docs/benchmarks.md).
        arena = not (is_cpu_only(providers) and inference_batch(options, providers) > 1)
        key = (options.model, options.revision, options.device, options.extra.get("threads"), arena)
        if self._model is None or self._model_key != key:
            onnx_path, tags_path, label = model_files(options.model, options.revision)
            threads = options.extra.get("threads")
            self._model = WD14Model(onnx_path, tags_path, device=options.device, threads=int(threads) if threads else None,
                                    label=label, cpu_arena=arena)
            self._model_key = key
        return self._model

    def caption_batch(self, items: list[ImageItem], options: CaptionOptions) -> list[CaptionResult]:
        """Tags for one batch: decoded ahead by `prefetch` when the pipeline opened one, else decoded now."""
        if not items:
            return []
        model = self.model(options)
        thresholds = Thresholds.from_extra(options.extra)
        pre = self._prefetch
        if pre is not None:
            batch = [(it, pre.take(it)) for it in items]
            pre.fill()  # the next batches decode while this one runs
            return self._infer(model, batch, thresholds, inference_batch(options, model.providers), *self._label_arrays(model))
        decode = _decoder(options, model.size)
        workers = min(len(items), _workers(options))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="wd14-decode") as pool:
            batch = [(it, pool.submit(decode, it.path)) for it in items]
            return self._infer(model, batch, thresholds, inference_batch(options, model.providers), *self._label_arrays(model))

    @contextmanager
    def prefetch(self, items: list[ImageItem], options: CaptionOptions) -> Iterator[None]:
        """Decode `items`, in this order, on a thread pool ahead of the `caption_batch` calls.

        The executor calls `caption_batch` batch by batch in item order; while batch i runs
        inference the pool decodes the next batches (Pillow and numpy release the GIL). Loads
        the model first, so a missing model is reported before any image is decoded.
        """
        model = self.model(options)  # also checks batch=, so a bad value is reported before any image
        decode = _decoder(options, model.size)
        workers = _workers(options)
        # Decoded images held: the batch being tagged plus at most this many waiting.
        ahead = max(DECODE_AHEAD_BATCHES * max(1, options.batch_size), workers)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="wd14-decode") as pool:
            self._prefetch = _Prefetch(pool, decode, items, ahead)
            try:
                self._prefetch.fill()
                yield
            finally:
                self._prefetch.cancel()
                self._prefetch = None

    def caption_stream(self, items: list[ImageItem], options: CaptionOptions) -> Iterator[list[CaptionResult]]:
        """Yield results batch by batch while the next batches are being decoded (outside the pipeline)."""
        if not items:
            return
        bs = max(1, options.batch_size)
        with self.prefetch(items, options):
            for i in range(0, len(items), bs):
                yield self.caption_batch(items[i : i + bs], options)

    @staticmethod
    def _label_arrays(model: WD14Model) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return model.label_arrays

    def _infer(self, model: WD14Model, batch: list[tuple[ImageItem, Future[np.ndarray]]], thresholds: Thresholds, per_run: int,
               names: np.ndarray, cats: np.ndarray, cat_names: np.ndarray) -> list[CaptionResult]:
        results: dict[str, CaptionResult] = {}
        good: list[ImageItem] = []
        arrays: list[np.ndarray] = []
        for item, fut in batch:
            try:
                arrays.append(fut.result())
                good.append(item)
            except ImageLoadError as exc:
                results[item.id] = CaptionResult(item.id, "failed", reason=str(exc))
            except Exception as exc:  # one bad image never aborts the batch
                results[item.id] = CaptionResult(item.id, "failed", reason=f"{item.path}: {type(exc).__name__}: {exc}")
        if good:
            probs = model.run(np.stack(arrays), per_run)
            mask = thresholds.select(probs, cats)
            char_mask = mask & (cats == 4)
            for row, item in enumerate(good):
                idx = np.flatnonzero(mask[row])
                scores = probs[row, idx]
                tags = [Tag(n, float(s), c) for n, s, c in zip(names[idx], scores, cat_names[idx])]
                data = {"model": model.label, "thresholded": True, **rating_record(probs[row], names, cats)}
                chars = np.flatnonzero(char_mask[row])
                data["characters"] = {str(names[i]): round(float(probs[row, i]), 4) for i in chars[np.argsort(-probs[row, chars])]}
                results[item.id] = CaptionResult(item.id, "ok", tags=tags, data=data)
        return [results[item.id] for item, _ in batch]

    def estimate(self, n_images: int, options: CaptionOptions) -> Estimate:
        cpu = os.cpu_count() or 1
        per_image = 0.6 / cpu if options.device in ("auto", "cpu") else 0.02
        return Estimate(
            images=n_images,
            seconds=round(n_images * per_image + 3.0, 1),
            cost_usd=0.0,
            notes="local model, no cost; time is a rough CPU guess for a 448 px v3 model (GPU is much faster)",
        )
