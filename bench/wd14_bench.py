"""Benchmark: `caption --backend wd14` vs sd-scripts' `finetune/tag_images_by_wd14_tagger.py`.

Both run as whole processes (startup, model load, decode, inference, writing) on the same
model folder and the same 12 MP JPEGs; we report the wall-time ratio and whether the written
tags are identical.

The model is, by default, a small random-weight convolutional net with the real WD contract
(NHWC 448x448 BGR 0..255 in, 10,861 sigmoid outputs, a v3-sized selected_tags.csv with a quoted
name and kaomoji), calibrated so that ~40 general tags pass 0.35 per image; it costs about
1 GMAC per image, so it measures the pipeline around the model. `--model-dir` takes a real-size
one instead: `bench/wd_swinv2_export.py` makes a random-weight SwinV2 v3 (98 M parameters), and
`--imgutils-python` then adds imgutils (`get_wd14_tags` per image, from an offline HF cache
this script lays out). Every tool's peak RSS is measured too (docs/benchmarks.md, WD tagger):

    python bench/wd14_bench.py --model-dir /tmp/wdreal/models/SmilingWolf_wd-swinv2-tagger-v3 \
        --imgutils-python /tmp/imgutils-venv/bin/python --sd-scripts DIR --sd-python VENV/bin/python --images 32 --reps 3

sd-scripts is not part of this repository: fetch a checkout yourself and give it its own venv
(it imports torch, torchvision, transformers, diffusers, accelerate, ... at start-up):

    python bench/wd14_bench.py --sd-scripts /path/to/sd-scripts --sd-python /path/to/venv/bin/python \
        --images 24 --reps 2 --work /tmp/wd14bench/run

The thresholds are general 0.35 and character 1.01 (character disabled) because current
sd-scripts crashes with UnboundLocalError as soon as a character tag passes; `--crash-demo`
shows that crash on 2 images with sd-scripts' default thresholds.

`--memory` skips sd-scripts and measures our peak RSS (the caption process alone) and
throughput, per setting given with `--variant` (e.g. `--variant "" --variant "--batch-size 8"`),
against the model-only throughput (session.run on preprocessed arrays, batch 1, no decode):

    python bench/wd14_bench.py --memory --images 32 --reps 2 --variant "" --variant "--batch-size 8"
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

K_RATING, K_GENERAL, K_CHARACTER = 4, 8106, 2751  # the v3 CSV's blocks
SIZE = 448


def write_tags_csv(path: Path) -> list[str]:
    names = ["general", "sensitive", "questionable", "explicit"]
    specials = ['don\'t_say_"lazy"', "^_^", ">_<", "o_o", "long_hair", "1girl", "solo"]
    general = specials + [f"general_tag_{i:04d}" for i in range(K_GENERAL - len(specials))]
    chars = [f"character_{i:04d}_(series)" for i in range(K_CHARACTER)]
    rows = [(9999999 - i, n, 9, 100) for i, n in enumerate(names)]
    rows += [(i + 1, n, 0, 100) for i, n in enumerate(general)]
    rows += [(20000 + i, n, 4, 100) for i, n in enumerate(chars)]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["tag_id", "name", "category", "count"])
        w.writerows(rows)
    return [r[1] for r in rows]


def build_model(folder: Path, seed: int = 0) -> Path:
    """Random conv net with the WD contract (NHWC BGR 0..255 in, sigmoid probabilities out)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder.mkdir(parents=True, exist_ok=True)
    k = K_RATING + K_GENERAL + K_CHARACTER
    write_tags_csv(folder / "selected_tags.csv")
    rng = np.random.default_rng(seed)
    chans = [3, 64, 128, 256, 512, 1024]
    inits, nodes = [], []
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", SIZE, SIZE, 3])
    inits.append(numpy_helper.from_array(np.array(1 / 255.0, np.float32), "scale"))
    nodes.append(helper.make_node("Transpose", ["input"], ["nchw"], perm=[0, 3, 1, 2]))
    nodes.append(helper.make_node("Mul", ["nchw", "scale"], ["x0"]))
    x = "x0"
    for i in range(5):
        cin, cout = chans[i], chans[i + 1]
        ks, stride, pad = (4, 4, 0) if i == 0 else (3, 2, 1)
        w = rng.normal(0, np.sqrt(2.0 / (cin * ks * ks)), size=(cout, cin, ks, ks)).astype(np.float32)
        b = rng.normal(0, 0.05, size=(cout,)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes.append(helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], kernel_shape=[ks, ks],
                                      strides=[stride, stride], pads=[pad] * 4))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        x = f"r{i}"
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["feat"], axis=1))

    # Head: random projection, then standardised per image over all tags, so every image gets
    # a similar number of tags (~0.4% of 10,861 above 0.35: about 40), like a real tagger.
    head = rng.normal(0, 1.0, size=(chans[-1], k)).astype(np.float32)
    a = np.full((k,), 2.2, np.float32)
    bias = np.full((k,), -6.0, np.float32)
    a[:K_RATING] = 0.0
    bias[:K_RATING] = np.array([2.0, -1.0, -3.0, -4.0], np.float32)
    inits += [numpy_helper.from_array(head, "head"), numpy_helper.from_array(a, "ha"), numpy_helper.from_array(bias, "hb"),
              numpy_helper.from_array(np.array(1e-6, np.float32), "eps")]
    nodes += [
        helper.make_node("MatMul", ["feat", "head"], ["z"]),
        helper.make_node("ReduceMean", ["z"], ["mu"], axes=[1], keepdims=1),
        helper.make_node("Sub", ["z", "mu"], ["zc"]),
        helper.make_node("Mul", ["zc", "zc"], ["zsq"]),
        helper.make_node("ReduceMean", ["zsq"], ["var"], axes=[1], keepdims=1),
        helper.make_node("Add", ["var", "eps"], ["var_e"]),
        helper.make_node("Sqrt", ["var_e"], ["sd"]),
        helper.make_node("Div", ["zc", "sd"], ["zn"]),
        helper.make_node("Mul", ["zn", "ha"], ["lg0"]),
        helper.make_node("Add", ["lg0", "hb"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["output"]),
    ]
    out = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", k])
    graph = helper.make_graph(nodes, "bench_wd", [inp], [out], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="loraprep-bench")
    model.ir_version = 9
    onnx.save(model, str(folder / "model.onnx"))
    return folder


def _make_range(args: tuple[Path, int, int, int]) -> None:
    from PIL import Image
    from skimage import data

    folder, start, stop, seed = args
    sources = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.immunohistochemistry(), data.hubble_deep_field()]
    grain = np.random.default_rng(seed).integers(-12, 13, (3024, 4032, 3), dtype=np.int16)  # sensor-like grain, shifted per image
    for i in range(start, stop):
        p = folder / f"img_{i:03d}.jpg"
        if p.exists():
            continue
        rng = np.random.default_rng((seed, i))
        src = Image.fromarray(sources[i % len(sources)])
        w, h = src.size
        x0, y0 = int(rng.integers(0, w // 4)), int(rng.integers(0, h // 4))
        crop = src.crop((x0, y0, x0 + w * 3 // 4, y0 + h * 3 // 4))
        if i % 2:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        portrait = i % 5 == 0
        big = crop.resize((3024, 4032) if portrait else (4032, 3024), Image.BICUBIC)
        noise = np.roll(grain, int(rng.integers(0, 3024)), axis=0)
        noise = noise.transpose(1, 0, 2) if portrait else noise
        arr = np.asarray(big, dtype=np.int16) + noise
        tmp = p.with_suffix(".tmp")
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(tmp, format="JPEG", quality=92)
        os.replace(tmp, p)


def make_images(folder: Path, n: int, seed: int = 1, procs: int = 2) -> list[Path]:
    """n distinct 12 MP JPEGs (4032x3024, every fifth portrait; quality 92) from scikit-image's
    sample photos, a random crop per index, mirrored every other one, with grain; made only
    where missing, on `procs` processes."""
    import multiprocessing

    folder.mkdir(parents=True, exist_ok=True)
    chunks = [(folder, a, min(n, a + 16), seed) for a in range(0, n, 16)]
    with multiprocessing.get_context("fork").Pool(procs) as pool:
        pool.map(_make_range, chunks)
    return [folder / f"img_{i:03d}.jpg" for i in range(n)]


def link_tree(src: Path, dst: Path, n: int | None = None) -> None:
    """Hard links to the first `n` images of `src` (all when None) in a fresh `dst`."""
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for p in sorted(src.glob("*.jpg"))[:n]:
        os.link(p, dst / p.name)


CPU_SECONDS: list[float] = []
"""CPU time (user + sys) of each `run`, children included: less sensitive to a busy machine than wall time."""


def run(cmd: list[str], env: dict[str, str], cwd: Path | None = None) -> tuple[float, subprocess.CompletedProcess]:
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU_SECONDS.append((r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime))
    return wall, proc


def read_tags(folder: Path) -> dict[str, list[str]]:
    return {p.stem: [t.strip() for t in p.read_text(encoding="utf-8").split(",") if t.strip()] for p in sorted(folder.glob("*.txt"))}


_PEAK_RSS = (
    "import resource, subprocess, sys; p = subprocess.run(sys.argv[1:]); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(p.returncode)"
)
"""Runs the command as the only child of a fresh interpreter, so RUSAGE_CHILDREN's peak is its own."""


def model_only_rate(model_dir: Path, images: list[Path], threads: int = 0) -> float:
    """Images/s of session.run alone (batch 1, arrays preprocessed beforehand): the inference limit."""
    from captioning.backends.wd14 import prepare
    from prep.onnx import onnx_session

    sess = onnx_session(model_dir / "model.onnx", "cpu", threads or (os.cpu_count() or 1), allow_spinning=False)
    name = sess.get_inputs()[0].name
    arrays = [prepare(p, SIZE)[None] for p in images]
    sess.run(None, {name: arrays[0]})
    t = time.perf_counter()
    for a in arrays:
        sess.run(None, {name: a})
    return len(arrays) / (time.perf_counter() - t)


def memory_main(args: argparse.Namespace, images: Path, model_dir: Path) -> int:
    """Peak RSS (MiB) and images/s of `caption --backend wd14` per variant, and the model-only rate."""
    import shlex

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LORAPREP_NO_PROGRESS": "1"}
    caption = shutil.which("caption") or str(Path(sys.executable).with_name("caption"))
    paths = sorted(images.glob("*.jpg"))[: args.images]
    link_tree(images, args.work / "mem_imgs", args.images)
    images = args.work / "mem_imgs"
    summary: dict[str, object] = {"images": len(paths), "cpu_count": os.cpu_count(),
                                  "model_only_images_per_s": round(model_only_rate(model_dir, paths), 2), "variants": {}}
    tags: dict[str, dict[str, list[str]]] = {}
    for i, variant in enumerate(args.variant or [""]):
        rss, rate = [], []
        out = args.work / f"mem_out_{i}"
        for _ in range(args.reps):
            shutil.rmtree(out, ignore_errors=True)
            cmd = [sys.executable, "-c", _PEAK_RSS, caption, str(images), "--backend", "wd14", "--model", str(model_dir),
                   "-o", str(out), "--mode", "overwrite", "--no-resume", "--keep-underscores", *shlex.split(variant)]
            t = time.perf_counter()
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            wall = time.perf_counter() - t
            if proc.returncode != 0:
                print(proc.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"caption failed: {variant!r}")
            rss.append(int(proc.stdout.strip().splitlines()[-1]) / 1024)
            rate.append(len(paths) / wall)
        tags[variant] = read_tags(out)
        summary["variants"][variant or "(default)"] = {  # type: ignore[index]
            "peak_rss_mib": round(statistics.median(rss)), "images_per_s_whole_process": round(statistics.median(rate), 2),
            "tags_identical_to_first_variant": tags[variant] == next(iter(tags.values())),
        }
        print(variant or "(default)", summary["variants"][variant or "(default)"], flush=True)  # type: ignore[index]
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


IMGUTILS_SCRIPT = r"""
import sys
from pathlib import Path
from imgutils.tagging import get_wd14_tags
gen, char = float(sys.argv[2]), float(sys.argv[3])
for p in sorted(Path(sys.argv[1]).glob("*.jpg")):
    rating, general, chars = get_wd14_tags(str(p), model_name="SwinV2_v3", general_threshold=gen, character_threshold=char)
    p.with_suffix(".txt").write_text(", ".join([*general, *chars]), encoding="utf-8")
"""
"""What an imgutils user writes to tag a folder: `get_wd14_tags` per image (batch 1), tags to .txt."""


def imgutils_cache(model_dir: Path, hf_home: Path) -> None:
    """An offline Hugging Face cache holding our model where imgutils looks for SwinV2_v3: the
    model with its embedding output in `deepghs/wd14_tagger_with_embeddings` and the tag list in
    `SmilingWolf/wd-swinv2-tagger-v3` (imgutils 0.19 `tagging/wd14.py`)."""
    rev = "0" * 40
    files = {
        "deepghs/wd14_tagger_with_embeddings": {"SmilingWolf/wd-swinv2-tagger-v3/model.onnx": model_dir / "with_embeddings" / "model.onnx"},
        "SmilingWolf/wd-swinv2-tagger-v3": {"selected_tags.csv": model_dir / "selected_tags.csv"},
    }
    for repo, entries in files.items():
        base = hf_home / "hub" / ("models--" + repo.replace("/", "--"))
        (base / "refs").mkdir(parents=True, exist_ok=True)
        (base / "refs" / "main").write_text(rev)
        for name, src in entries.items():
            if not src.exists():
                raise SystemExit(f"{src} missing: build the model with bench/wd_swinv2_export.py")
            dst = base / "snapshots" / rev / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            if not dst.exists():
                dst.symlink_to(src.resolve())


def peak_rss_run(cmd: list[str], env: dict[str, str], cwd: Path | None = None) -> tuple[float, float, subprocess.CompletedProcess]:
    """(wall s, peak RSS MiB of the largest process of the command, the process), through `_PEAK_RSS`."""
    wall, proc = run([sys.executable, "-c", _PEAK_RSS, *cmd], env, cwd=cwd)
    lines = proc.stdout.strip().splitlines()
    rss = int(lines[-1]) / 1024 if lines and lines[-1].isdigit() else float("nan")
    return wall, rss, proc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sd-scripts", type=Path, help="sd-scripts checkout (not vendored here)")
    ap.add_argument("--sd-python", type=Path, help="python of a venv with sd-scripts' requirements")
    ap.add_argument("--imgutils-python", type=Path, help="python of a venv with dghs-imgutils (needs --model-dir of a swinv2 export)")
    ap.add_argument("--model-dir", type=Path, help="a WD model folder named <ns>_<repo> (bench/wd_swinv2_export.py); default: the small bench net")
    ap.add_argument("--memory", action="store_true", help="our peak RSS and throughput only (no sd-scripts)")
    ap.add_argument("--variant", action="append", default=None, help="with --memory: extra caption args, one setting")
    ap.add_argument("--work", type=Path, default=Path("/tmp/wd14bench/run"))
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--ours-extra", nargs="*", default=[], help="extra args for caption")
    ap.add_argument("--ours-batch", default=None, help="--batch-size for caption (default: its own, batch 1 on CPU)")
    ap.add_argument("--no-parity-variant", action="store_true", help="skip `caption --preprocess sd-scripts`")
    ap.add_argument("--crash-demo", action="store_true")
    ap.add_argument("--json", type=Path, help="write results here")
    args = ap.parse_args()

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    if args.model_dir:
        model_dir = args.model_dir
        model_root = model_dir.parent
    else:
        model_root = work / "models"
        model_dir = model_root / "SmilingWolf_wd-bench-tagger"  # sd-scripts looks for <model_dir>/<ns>_<repo>
        if not (model_dir / "model.onnx").exists():
            build_model(model_dir)
    repo_id = model_dir.name.replace("_", "/", 1)
    images = work / "images"
    make_images(images, args.images)  # makes only the missing ones
    for p in sorted(images.glob("*.jpg"))[: args.images]:
        p.read_bytes()  # warm the page cache for every tool alike
    if args.memory:
        return memory_main(args, images, model_dir)
    if (args.sd_scripts is None) != (args.sd_python is None):
        ap.error("--sd-scripts and --sd-python go together")

    base_env = {**os.environ, "HF_HUB_OFFLINE": "1", "LORAPREP_NO_PROGRESS": "1"}
    caption = shutil.which("caption") or str(Path(sys.executable).with_name("caption"))
    tools: dict[str, tuple[list[str], dict[str, str], Path | None, bool]] = {}
    """name -> (argv with None where the image folder goes, env, cwd, writes next to the images)"""
    if args.sd_scripts:
        tools["sd-scripts"] = ([str(args.sd_python), "finetune/tag_images_by_wd14_tagger.py", None, "--onnx", "--batch_size", "8",
                                "--max_data_loader_n_workers", "2", "--repo_id", repo_id, "--model_dir", str(model_root),
                                "--general_threshold", "0.35", "--character_threshold", "1.01"],
                               {**base_env, "PYTHONPATH": str(args.sd_scripts)}, args.sd_scripts, True)
    if args.imgutils_python:
        hf_home = work / "hf_home"
        imgutils_cache(model_dir, hf_home)
        tools["imgutils"] = ([str(args.imgutils_python), "-c", IMGUTILS_SCRIPT, None, "0.35", "1.01"],
                             {**base_env, "HF_HOME": str(hf_home)}, None, True)
    batch = ["--batch-size", args.ours_batch] if args.ours_batch else []
    ours = [caption, None, "--backend", "wd14", "--model", str(model_dir), "-o", "OUT", "--mode", "overwrite", "--no-resume",
            "--order", "category", "--keep-underscores", "--general-threshold", "0.35", "--character-threshold", "1.01",
            *batch, *args.ours_extra]
    tools["loraprep"] = (ours, base_env, None, False)
    if not args.no_parity_variant:
        tools["loraprep --preprocess sd-scripts"] = ([*ours, "--preprocess", "sd-scripts"], base_env, None, False)

    wall: dict[str, list[float]] = {k: [] for k in tools}
    cpu: dict[str, list[float]] = {k: [] for k in tools}
    rss: dict[str, list[float]] = {k: [] for k in tools}
    outs: dict[str, Path] = {}
    for rep in range(args.reps):
        line = f"rep {rep}:"
        for i, (name, (argv, env, cwd, beside)) in enumerate(tools.items()):
            folder = work / f"imgs_{i}"
            link_tree(images, folder, args.images)
            out = folder if beside else work / f"out_{i}"
            if not beside:
                shutil.rmtree(out, ignore_errors=True)
            cmd = [str(folder) if a is None else (str(out) if a == "OUT" else a) for a in argv]
            t, r, proc = peak_rss_run(cmd, env, cwd)
            if proc.returncode != 0:
                print(proc.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"{name} failed")
            outs[name] = out
            wall[name].append(t)
            cpu[name].append(CPU_SECONDS[-1])
            rss[name].append(r)
            line += f" | {name} {t:.2f} s (cpu {CPU_SECONDS[-1]:.1f}, {r:.0f} MiB)"
        print(line, flush=True)

    ref_name = next(iter(tools))
    ref_tags = read_tags(outs[ref_name])
    total_tags = sum(len(v) for v in ref_tags.values())
    n = len(ref_tags)
    summary: dict[str, object] = {
        "images": n, "model": str(model_dir), "cpu_count": os.cpu_count(), "reference_tool": ref_name,
        "tags_per_image": round(total_tags / max(1, n), 1), "load_average_at_end": os.getloadavg(),
        "model_only_images_per_s": round(model_only_rate(model_dir, sorted(images.glob("*.jpg"))[: min(n, 24)]), 3),
        "seconds": wall, "cpu_seconds": cpu, "peak_rss_mib": rss, "tools": {},
    }
    med = {k: statistics.median(v) for k, v in wall.items()}
    for name in tools:
        tags = read_tags(outs[name])
        summary["tools"][name] = {  # type: ignore[index]
            "wall_s_median": round(med[name], 2),
            "images_per_s": round(n / med[name], 3),
            "speedup_vs_reference": round(med[ref_name] / med[name], 2),
            "cpu_s_median": round(statistics.median(cpu[name]), 1),
            "peak_rss_mib_median": round(statistics.median(rss[name])),
            "identical_files": sum(ref_tags[k] == tags.get(k) for k in ref_tags),
            "identical_tag_sets": sum(set(ref_tags[k]) == set(tags.get(k, [])) for k in ref_tags),
            "tags_differing": sum(len(set(ref_tags[k]) ^ set(tags.get(k, []))) for k in ref_tags),
            "tags_total_reference": total_tags,
        }
    if args.crash_demo and args.sd_scripts:
        crash_dir = work / "crash_imgs"
        link_tree(images, crash_dir)
        for p in sorted(crash_dir.glob("*.jpg"))[2:]:
            p.unlink()
        env = tools["sd-scripts"][1]
        cmd = [str(args.sd_python), "finetune/tag_images_by_wd14_tagger.py", str(crash_dir), "--onnx", "--batch_size", "8",
               "--repo_id", repo_id, "--model_dir", str(model_root)]
        _, p = run(cmd, env, cwd=args.sd_scripts)
        tail = [ln for ln in p.stderr.splitlines() if "Error" in ln][-1:] or ["(no error)"]
        demo: dict[str, object] = {"returncode": p.returncode, "error": tail[0]}
        summary["crash_demo"] = demo
        shutil.rmtree(work / "our_crash", ignore_errors=True)
        mine = [caption, str(crash_dir), "--model", str(model_dir), "-o", str(work / "our_crash"), "--character-threshold", "0.35", "--json"]
        _, p2 = run(mine, base_env)
        rep = json.loads(p2.stdout) if p2.returncode == 0 else {}
        demo["loraprep_returncode"] = p2.returncode
        demo["loraprep_character_tags"] = len([t for t in rep.get("tag_frequency", {}) if t.startswith("character ")])
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
