"""Wall time and peak memory per step of real sd-scripts LoRA training through `train_bridge`, on CPU.

    LORAPREP_SD_SCRIPTS=/path/sd-scripts LORAPREP_SD_SCRIPTS_PYTHON=/path/venv/bin/python \\
        python bench/real_train.py [anima] [sdxl] [--out DIR] [--json results.json]

The same path as tests/test_real_train.py: random full-size weights built once with the trainer's
own classes, `train_bridge config` (16gb preset, 256 px, 2 images + 1 regularisation image,
4 steps), `check` with the trainer's parser, `launch` for 4 steps, then `--resume` to step 8.
The launch's whole process tree (launcher, accelerate, trainer) is sampled every 0.5 s from
/proc for resident memory; each sample is filed under the step status.json showed at the time
(step 0 = loading, caching latents and text-encoder outputs). Seconds per step come from when
each step first appeared. Prints a Markdown table (what docs/train_bridge-launch.md shows).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from real_trainer import helpers as h


def bench(arch: str, out_dir: Path, checkout: Path, python: str, resume: bool = True) -> dict:
    tmp = out_dir / arch
    tmp.mkdir(parents=True, exist_ok=True)
    env = h.run_env(checkout, python, tmp / "home")
    t0 = time.monotonic()
    files = h.build_weights(checkout, python, arch)
    build_s = time.monotonic() - t0
    ds = h.make_dataset(tmp)
    run = h.write_run(arch, ds, tmp / "run", files, env)
    t0 = time.monotonic()
    h.cli(["train_bridge", "check", str(run), "--sd-scripts", str(checkout), "--python", python], env=env, timeout=900)
    check_s = time.monotonic() - t0
    res, mem, wall = h.launch_measured(["train_bridge", "launch", str(run), "--no-gpu-check", "--json"], env, run, timeout=7200)
    first = h.phase_report("launch 4 steps", res, mem, wall)
    phases = [first]
    if res.returncode == 0 and resume:
        h.set_epochs(run, 2)
        res2, mem2, wall2 = h.launch_measured(["train_bridge", "launch", str(run), "--resume", "--no-gpu-check", "--json"], env, run, timeout=7200)
        phases.append(h.phase_report("--resume to step 8", res2, mem2, wall2))
    lora = run / "output" / f"{arch}_real.safetensors"
    stats = h.lora_up_stats(python, lora) if lora.is_file() else None
    return {"arch": arch, "weights_build_s": round(build_s, 1), "check_s": round(check_s, 1), "phases": phases, "lora": stats,
            "cpus": os.cpu_count(), "run_dir": str(run)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("archs", nargs="*", default=["anima"])
    ap.add_argument("--out", type=Path, default=Path("/tmp/loraprep-real-bench"))
    ap.add_argument("--json", type=Path, help="write the results here too")
    ap.add_argument("--no-resume", action="store_true", help="only the 4-step launch")
    a = ap.parse_args()
    os.environ.setdefault(h.OPT_IN, "1")
    env = h.real_env()
    if isinstance(env, str):
        print(env, file=sys.stderr)
        return 2
    checkout, python = env
    results = [bench(arch, a.out, checkout, python, resume=not a.no_resume) for arch in a.archs]
    if a.json:
        a.json.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(results, indent=1))
    print(h.table(results))
    return 0 if all(p["exit_code"] == 0 for r in results for p in r["phases"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
