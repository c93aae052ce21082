"""Scale benchmark: `prep check`, `prep crop` and `caption` on 1k / 10k / 100k images, both engines.

    python bench/scale_bench.py --sizes 1000 10000 100000 --engines local ray --work /tmp/scale

Makes N small distinct JPEGs fast (320x320: a smooth random colour field, scikit-image's
astronaut pasted at a random place and size so every image has one real face, quality 90;
two processes), once per folder size, then runs each command as a whole process, per size
and engine:

- `prep check IN --json --no-faces` (the face pass is the same YuNet run `prep crop` pays; on
  two cores it would double this table's time: see docs/check.md for its cost);
- `prep crop IN -o CROPS --detector photo --resolution 256 --upscale` (PNG, contact sheets);
- `caption CROPS --backend wd14 --model TINY -o CAPS` with a tiny WD-contract model (448 px
  input, the v3 tag list of 10,861 rows; the inference is cheap on purpose: this measures the
  pipeline around the model, bench/wd14_bench.py measures a real-size one);
- the crop and caption reruns with nothing to do (check writes no state: its rerun is a run).

Each run's peak RSS is sampled from /proc every 0.2 s: the command's own process (the
driver), the largest Ray worker (`ray::` processes), and the whole process tree (the Ray
cluster the command starts included). At the end the two engines' crops and captions are
compared byte for byte, and their manifests row by row (less stat and time fields).
Writes a JSON summary (`--json`) and prints a Markdown table. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from wd14_bench import K_CHARACTER, K_GENERAL, K_RATING, SIZE, write_tags_csv

SIDE = 320
_FACE: Image.Image | None = None


def _face() -> Image.Image:
    global _FACE
    if _FACE is None:
        from skimage import data

        _FACE = Image.fromarray(data.astronaut())
    return _FACE


def _make(args: tuple[Path, int, int]) -> None:
    folder, start, stop = args
    face = _face()
    for i in range(start, stop):
        p = folder / f"img_{i:06d}.jpg"
        if p.exists():
            continue
        rng = np.random.default_rng((7, i))
        field = Image.fromarray(rng.integers(30, 226, (4, 4, 3), dtype=np.uint8)).resize((SIDE, SIDE), Image.Resampling.BICUBIC)
        side = int(rng.integers(220, 320))  # the astronaut's face is ~1/5 of the photo: 45-70 px here
        x, y = int(rng.integers(-side // 4, SIDE - side * 3 // 4)), int(rng.integers(-side // 8, SIDE - side * 3 // 4))
        field.paste(face.resize((side, side), Image.Resampling.BILINEAR), (x, y))
        tmp = p.with_suffix(".tmp")
        field.save(tmp, format="JPEG", quality=90)
        os.replace(tmp, p)


def make_images(folder: Path, n: int, procs: int = 2) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    step = 500
    chunks = [(folder, a, min(n, a + step)) for a in range(0, n, step)]
    with multiprocessing.get_context("fork").Pool(procs) as pool:
        pool.map(_make, chunks)


def build_tiny_tagger(folder: Path) -> Path:
    """A WD-contract model (NHWC BGR 0..255 at 448, 10,861 sigmoid outputs) that costs ~1 ms."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder.mkdir(parents=True, exist_ok=True)
    write_tags_csv(folder / "selected_tags.csv")
    k = K_RATING + K_GENERAL + K_CHARACTER
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.05, (16, 3, 16, 16)).astype(np.float32)
    head = rng.normal(0, 1.0, (16, k)).astype(np.float32)
    a = np.full((k,), 2.2, np.float32)
    b = np.full((k,), -6.0, np.float32)
    a[:K_RATING] = 0.0
    b[:K_RATING] = [2.0, -1.0, -3.0, -4.0]
    inits = [numpy_helper.from_array(x, n) for x, n in [(np.array(1 / 255, np.float32), "s"), (w, "w"), (head, "head"), (a, "a"), (b, "b"),
                                                        (np.array(1e-6, np.float32), "eps")]]
    nodes = [
        helper.make_node("Transpose", ["input"], ["t"], perm=[0, 3, 1, 2]),
        helper.make_node("Mul", ["t", "s"], ["x"]),
        helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[16, 16], strides=[16, 16]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"], axis=1),
        helper.make_node("MatMul", ["f", "head"], ["z"]),
        helper.make_node("ReduceMean", ["z"], ["mu"], axes=[1], keepdims=1),
        helper.make_node("Sub", ["z", "mu"], ["zc"]),
        helper.make_node("Mul", ["zc", "zc"], ["zq"]),
        helper.make_node("ReduceMean", ["zq"], ["var"], axes=[1], keepdims=1),
        helper.make_node("Add", ["var", "eps"], ["ve"]),
        helper.make_node("Sqrt", ["ve"], ["sd"]),
        helper.make_node("Div", ["zc", "sd"], ["zn"]),
        helper.make_node("Mul", ["zn", "a"], ["l0"]),
        helper.make_node("Add", ["l0", "b"], ["l"]),
        helper.make_node("Sigmoid", ["l"], ["output"]),
    ]
    graph = helper.make_graph(nodes, "tiny_wd", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", SIZE, SIZE, 3])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", k])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(folder / "model.onnx"))
    return folder


def _tree(root: int) -> dict[int, tuple[int, str]]:
    """pid -> (RSS KiB, cmdline) for `root` and all its descendants."""
    parent: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat", "rb") as fh:
                    st = fh.read().rsplit(b")", 1)[1].split()
                parent[int(d)] = int(st[1])
            except (OSError, IndexError, ValueError):
                pass
    keep, frontier = {root}, [root]
    while frontier:
        p = frontier.pop()
        for c, pp in parent.items():
            if pp == p and c not in keep:
                keep.add(c)
                frontier.append(c)
    out = {}
    for p in keep:
        try:
            status = Path(f"/proc/{p}/status").read_text()
            rss = int(status.split("VmRSS:")[1].split()[0])
            cmd = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            out[p] = (rss, cmd)
            if p == root:  # the driver's own memory, without the shared pages it maps (Ray's object store)
                out[-1] = (int(status.split("RssAnon:")[1].split()[0]), "")
        except (OSError, IndexError, ValueError):
            pass
    return out


def measured(cmd: list[str], env: dict[str, str]) -> dict[str, object]:
    """Run `cmd`; wall s, CPU s of the tree, peak RSS MiB of the driver, the largest worker and the tree."""
    peaks = {"driver": 0, "anon": 0, "worker": 0, "tree": 0}
    r0 = os.times()
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            tree = _tree(proc.pid)
            if tree:
                peaks["driver"] = max(peaks["driver"], tree.get(proc.pid, (0, ""))[0])
                peaks["anon"] = max(peaks["anon"], tree.pop(-1, (0, ""))[0])
                workers = [r for p, (r, c) in tree.items() if p != proc.pid and c.startswith("ray::")]
                peaks["worker"] = max([peaks["worker"], *workers])
                peaks["tree"] = max(peaks["tree"], sum(r for r, _ in tree.values()))
            done.wait(0.2)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - t
    done.set()
    th.join()
    r1 = os.times()
    if proc.returncode != 0:
        print(err[-4000:], file=sys.stderr)
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}")
    return {"wall_s": round(wall, 2), "cpu_s": round((r1.children_user - r0.children_user) + (r1.children_system - r0.children_system), 1),
            "driver_rss_mib": round(peaks["driver"] / 1024), "driver_anon_mib": round(peaks["anon"] / 1024), "worker_rss_mib": round(peaks["worker"] / 1024),
            "tree_rss_mib": round(peaks["tree"] / 1024), "stdout": out}


def digest_tree(folder: Path, skip_suffixes: tuple[str, ...] = (".jsonl", ".json", ".lock")) -> dict[str, str]:
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.suffix not in skip_suffixes:
            out[str(p.relative_to(folder))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


VOLATILE = ("stat", "time", "mtime", "elapsed", "seconds", "started", "finished")


def manifest_rows(folder: Path, *inputs: Path) -> list[str]:
    """Every JSONL row under `folder`, stat/time fields dropped, `folder` and `inputs` paths
    replaced by placeholders, canonical, sorted."""
    def clean(x: object) -> object:
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items() if not any(w in k for w in VOLATILE)}
        if isinstance(x, list):
            return [clean(v) for v in x]
        return x

    rows = []
    for p in sorted(folder.rglob("*.jsonl")):
        for line in p.read_text(encoding="utf-8").splitlines():
            if line.strip():
                for i, d in enumerate(inputs):
                    line = line.replace(str(d), f"<IN{i}>")
                row = clean(json.loads(line.replace(str(folder), "<OUT>")))
                if isinstance(row, dict) and row.get("step") == "crop.contact_sheet":
                    row.pop("sheet", None)  # the page file's own size and mtime,
                    row.pop("rows", None)   # and a key over its rows' output stats
                rows.append(f"{p.name}:{json.dumps(row, sort_keys=True)}")
    return sorted(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    ap.add_argument("--engines", nargs="+", default=["local", "ray"])
    ap.add_argument("--work", type=Path, default=Path("/tmp/loraprep-scale"))
    ap.add_argument("--stages", nargs="+", default=["check", "crop", "caption"])
    ap.add_argument("--rerun-only", action="store_true",
                    help="crop and caption: only the reruns, on the output folders an earlier run of this script left in --work")
    ap.add_argument("--caption-input", choices=["crops", "sources"], default="crops",
                    help="caption the crops (the pipeline) or the source images (when crop is not run)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    bindir = Path(sys.executable).parent
    prep, caption = str(bindir / "prep"), str(bindir / "caption")
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    model = work / "tiny_tagger"
    if not (model / "model.onnx").exists():
        build_tiny_tagger(model)
    yunet = Path(__file__).resolve().parents[2] / "shared" / "models" / "face_detection_yunet_2023mar.onnx"
    env = {**os.environ, "LORAPREP_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0",
           "LORAPREP_HOME": str(work / "home")}
    pool = work / "pool"
    t = time.perf_counter()
    make_images(pool, max(args.sizes))
    print(f"images ready ({max(args.sizes)}) in {time.perf_counter() - t:.0f} s", flush=True)

    results: dict[str, dict[str, dict[str, object]]] = {}
    for n in args.sizes:
        src = work / f"in_{n}"
        if not src.exists() or len(os.listdir(src)) != n:
            shutil.rmtree(src, ignore_errors=True)
            src.mkdir()
            for p in sorted(pool.glob("img_*.jpg"))[:n]:
                os.link(p, src / p.name)
        for engine in args.engines:
            key = f"{n}/{engine}"
            row: dict[str, object] = {}
            eng = ["--engine", engine] if engine != "local" else []
            crops, caps = work / f"crops_{n}_{engine}", work / f"caps_{n}_{engine}"
            if "crop" in args.stages and not args.rerun_only:  # only what this run writes again (a crop at 100k is 20 minutes)
                shutil.rmtree(crops, ignore_errors=True)
            if "caption" in args.stages and not args.rerun_only:
                shutil.rmtree(caps, ignore_errors=True)
            cmds = {
                "check": [prep, "check", str(src), "--json", "--no-faces", *eng],
                "crop": [prep, "crop", str(src), "-o", str(crops), "--detector", "photo", "--detector-model", str(yunet),
                         "--resolution", "256", "--upscale", "--json", *eng],
                "caption": [caption, str(crops if args.caption_input == "crops" else src), "--backend", "wd14", "--model", str(model),
                            "-o", str(caps), "--json", *eng],
            }
            for stage in args.stages:
                if args.rerun_only and stage in ("crop", "caption"):
                    for k in ("", "_again"):  # the first after other work reads this disk; the second the page cache
                        row[f"{stage}_rerun{k}"] = again = measured(cmds[stage], env)
                        again.pop("stdout")
                        print(key, stage, "rerun", again, flush=True)
                    continue
                r = measured(cmds[stage], env)
                out = r.pop("stdout")
                if stage == "check":  # kept for the engines' parity below
                    (work / f"check_{n}_{engine}.json").write_text(out, encoding="utf-8")
                if stage == "crop":
                    try:
                        rep = json.loads(out)
                        r["report"] = {k: rep[k] for k in rep if isinstance(rep[k], (int, float))}
                    except (json.JSONDecodeError, TypeError):
                        pass
                r["images_per_s"] = round(n / float(r["wall_s"]), 1)  # type: ignore[arg-type]
                row[stage] = r
                print(key, stage, r, flush=True)
                if stage in ("crop", "caption"):
                    again = measured(cmds[stage], env)
                    again.pop("stdout")
                    row[f"{stage}_rerun"] = again
                    print(key, stage, "rerun", again, flush=True)
            results[key] = row
        kinds = [k for k, stage in (("crops", "crop"), ("caps", "caption")) if stage in args.stages]
        if len(args.engines) == 2 and kinds:
            a, b = args.engines
            same = {}
            for kind in kinds:
                da, db = work / f"{kind}_{n}_{a}", work / f"{kind}_{n}_{b}"
                ia, ib = ([work / f"crops_{n}_{a}"], [work / f"crops_{n}_{b}"]) if kind == "caps" and args.caption_input == "crops" else ([], [])
                ha, hb = digest_tree(da), digest_tree(db)
                ma, mb = manifest_rows(da, *ia), manifest_rows(db, *ib)
                same[kind] = {"files": len(ha), "identical": ha == hb, "differing": sorted(k for k in ha.keys() | hb.keys() if ha.get(k) != hb.get(k))[:10],
                              "manifest_rows": len(ma), "manifests_equivalent": ma == mb}
            results[f"{n}/parity"] = same  # type: ignore[assignment]
        if len(args.engines) == 2 and "check" in args.stages:
            a, b = (json.loads((work / f"check_{n}_{e}.json").read_text(encoding="utf-8")) for e in args.engines)
            results.setdefault(f"{n}/parity", {})["check_json_identical"] = a == b  # type: ignore[union-attr, index]
        if f"{n}/parity" in results:
            print(n, "parity", results[f"{n}/parity"], flush=True)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))

    print("\n| images | engine | stage | wall s | images/s | CPU s | driver MiB | largest worker MiB | tree MiB | rerun s |")
    print("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for key, row in results.items():
        if key.endswith("/parity"):
            continue
        n, engine = key.split("/")
        for stage in args.stages:
            if stage not in row:  # type: ignore[operator]
                continue
            r = row[stage]  # type: ignore[index]
            rr = row.get(f"{stage}_rerun", {})  # type: ignore[union-attr]
            print(f"| {int(n):,} | {engine} | {stage} | {r['wall_s']} | {r['images_per_s']} | {r['cpu_s']} | {r['driver_rss_mib']} | "  # type: ignore[index]
                  f"{r['worker_rss_mib'] or '-'} | {r['tree_rss_mib']} | {rr.get('wall_s', '-')} |")  # type: ignore[index, union-attr]
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
