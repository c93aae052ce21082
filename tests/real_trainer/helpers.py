"""The real-trainer tier's plumbing: weights, a tiny dataset, run folders and the CLI, for real.

Used by tests/test_real_train.py and bench/real_train.py. Everything goes through the real
`train_bridge` console commands (subprocesses, as a user types them) and the real sd-scripts
checkout named by LORAPREP_SD_SCRIPTS, run by LORAPREP_SD_SCRIPTS_PYTHON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
OPT_IN = "LORAPREP_REAL_TRAIN"

# CPU-sized settings loraprep chose for these runs (docs/train_bridge-launch.md): 256 px, one
# epoch of 4 steps (2 images + their regularisation copies), a checkpoint, a state and samples
# each epoch, two sampling steps per sample image (sampling is the slow part on a CPU).
RESOLUTION = 256
SAMPLE_PROMPTS = "ohwx, 1girl, smile --w 256 --h 256 --s 2 --d 42\n"


def real_env() -> tuple[Path, str] | str:
    """(checkout, python) or the reason the tier is skipped."""
    if os.environ.get(OPT_IN) != "1":
        return f"real sd-scripts training is opt-in: set {OPT_IN}=1, LORAPREP_SD_SCRIPTS=<checkout> and LORAPREP_SD_SCRIPTS_PYTHON=<its python>"
    checkout, python = os.environ.get("LORAPREP_SD_SCRIPTS"), os.environ.get("LORAPREP_SD_SCRIPTS_PYTHON")
    if not checkout or not Path(checkout, "train_network.py").is_file():
        return f"LORAPREP_SD_SCRIPTS={checkout!r} is not an sd-scripts checkout (no train_network.py)"
    if not python or not Path(python).exists():
        return f"LORAPREP_SD_SCRIPTS_PYTHON={python!r} does not exist (make it with `train_bridge setup sd-scripts --path {checkout}`)"
    return Path(checkout), python


def weights_cache() -> Path:
    return Path(os.environ.get("LORAPREP_REAL_WEIGHTS") or Path.home() / ".cache" / "loraprep" / "real-train-weights")


def build_weights(checkout: Path, python: str, arch: str, cache: Path | None = None) -> dict[str, str]:
    """Random full-size weights made with the trainer's own classes, once per cache folder."""
    cache = cache or weights_cache()
    done = cache / arch / "done.json"
    if not done.is_file():
        subprocess.run([python, str(HERE / "build_weights.py"), str(checkout), str(cache), arch], check=True, timeout=3600)
    return json.loads(done.read_text(encoding="utf-8"))["files"]


def tokenizer_problem(checkout: Path) -> str | None:
    """An export without its large blobs leaves configs/qwen3_06b/tokenizer.json empty; transformers
    then fails to parse it instead of building the tokenizer from vocab.json + merges.txt."""
    tj = checkout / "configs" / "qwen3_06b" / "tokenizer.json"
    if tj.is_file() and tj.stat().st_size == 0:
        return f"{tj} is empty (a blob missing from the checkout): delete it so transformers builds the Qwen3 tokenizer from vocab.json + merges.txt"
    return None


def make_dataset(tmp: Path) -> Path:
    """2 training images + 1 regularisation image, laid out by the real `prep layout`."""
    from PIL import Image

    src, reg = tmp / "captioned", tmp / "reg"
    src.mkdir(parents=True, exist_ok=True)
    reg.mkdir(parents=True, exist_ok=True)
    for i in range(2):
        im = Image.new("RGB", (RESOLUTION, RESOLUTION), (60 + 80 * i, 90, 140))
        for x in range(0, RESOLUTION, 32):  # some structure, so the VAE latents are not flat
            im.paste((200, 40 * i, 90), (x, x // 2, x + 16, x // 2 + 16))
        im.save(src / f"img{i}.png")
        (src / f"img{i}.txt").write_text("1girl, smile, red background", encoding="utf-8")
    Image.new("RGB", (RESOLUTION, RESOLUTION), (128, 128, 128)).save(reg / "reg0.png")
    (reg / "reg0.txt").write_text("1girl", encoding="utf-8")
    out = tmp / "dataset"
    cli(["prep", "layout", str(src), "-o", str(out), "--trigger", "ohwx", "--repeats", "1", "--class-token", "1girl", "--reg", str(reg)], timeout=300)
    return out


def console_script(name: str) -> str:
    p = Path(sys.executable).parent / name
    return str(p) if p.exists() else name


def cli(argv: list[str], *, env: dict[str, str] | None = None, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
    """A loraprep console command as a user runs it."""
    r = subprocess.run([console_script(argv[0]), *argv[1:]], capture_output=True, text=True, env=env, timeout=timeout, check=False)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {r.returncode}\nstdout: {r.stdout[-3000:]}\nstderr: {r.stderr[-6000:]}")
    return r


def run_env(checkout: Path, python: str, home: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        LORAPREP_HOME=str(home), LORAPREP_SD_SCRIPTS=str(checkout), LORAPREP_TRAINER_PYTHON=python, LORAPREP_NO_PROGRESS="1",
        HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", COLUMNS="200", **extra,
    )
    return env


ARCH_SETS: dict[str, list[str]] = {
    # loraprep's CPU choices; every other value is the 16gb preset's
    "anima": [],
    "sdxl": [],
}
COMMON_SETS = [
    f"dataset.resolution={RESOLUTION},{RESOLUTION}", "max_train_epochs=1", "save_every_n_epochs=1", "sample_every_n_epochs=1",
    "save_state=true", "max_data_loader_n_workers=0", "persistent_data_loader_workers=false",
]


def write_run(arch: str, dataset: Path, run_dir: Path, models: dict[str, str], env: dict[str, str], extra_sets: list[str] = ()) -> Path:
    """`train_bridge config ARCH DATASET -o RUN --preset 16gb` with the CPU settings, then the sample prompts."""
    model_args: list[str] = []
    for role, path in models.items():
        if role == "tokenizer_cache_dir":
            continue
        model_args += [f"--{role.replace('_', '-')}", path]
    sets = [*COMMON_SETS, *ARCH_SETS.get(arch, []), *extra_sets]
    if "tokenizer_cache_dir" in models:
        sets.append(f"tokenizer_cache_dir={models['tokenizer_cache_dir']}")
    argv = ["train_bridge", "config", arch, str(dataset), "-o", str(run_dir), "--preset", "16gb", "--trigger", "ohwx", "--name", f"{arch}_real", *model_args]
    for s in sets:
        argv += ["--set", s]
    cli(argv, env=env, timeout=300)
    (run_dir / "sample_prompts.txt").write_text(SAMPLE_PROMPTS, encoding="utf-8")
    threads = os.environ.get("LORAPREP_REAL_THREADS")  # accelerate's --num_cpu_threads_per_process (config writes 1)
    if threads:
        spec = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
        for c in spec["commands"]:
            a = c.get("accelerate_args") or []
            if "--num_cpu_threads_per_process" in a:
                a[a.index("--num_cpu_threads_per_process") + 1] = threads
        (run_dir / "run.json").write_text(json.dumps(spec, indent=2), encoding="utf-8")
    return run_dir


def set_epochs(run_dir: Path, epochs: int) -> None:
    """Raise max_train_epochs in train.toml by hand, as a user does before `--resume` to train on."""
    import tomli_w

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib

    p = run_dir / "train.toml"
    data = tomllib.loads(p.read_text(encoding="utf-8"))
    for table in data.values():
        if isinstance(table, dict) and "max_train_epochs" in table:
            table["max_train_epochs"] = epochs
            break
    else:
        data["max_train_epochs"] = epochs
    p.write_text(tomli_w.dumps(data), encoding="utf-8")


# --- memory ----------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as fh:
                out += [int(x) for x in fh.read().split()]
    except OSError:
        pass
    return out


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants (Linux /proc)."""
    total, todo, seen = 0, [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            with open(f"/proc/{p}/statm", encoding="ascii") as fh:
                total += int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            continue
        todo += _children(p)
    return total


@dataclass
class Sampled:
    """Peak RSS of the launch's process tree, overall and per training step (from status.json)."""

    peak: int = 0
    per_step: dict[int, int] = field(default_factory=dict)
    step_at: dict[int, float] = field(default_factory=dict)  # first time each step was seen (s since start)


def launch_measured(argv: list[str], env: dict[str, str], run_dir: Path, timeout: float) -> tuple[subprocess.CompletedProcess[str], Sampled, float]:
    """Run a launch while sampling its process tree's RSS every 0.5 s."""
    t0 = time.monotonic()
    proc = subprocess.Popen([console_script(argv[0]), *argv[1:]], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    s = Sampled()
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            rss = tree_rss(proc.pid)
            s.peak = max(s.peak, rss)
            try:
                st = json.loads((run_dir / "status.json").read_text(encoding="utf-8"))
                prog = (st.get("progress") or {}) if st.get("state") == "running" else {}
                step = int(prog.get("global_step") or prog.get("step") or 0)  # a resume's steps are 5..8
            except (OSError, ValueError):
                step = 0
            s.per_step[step] = max(s.per_step.get(step, 0), rss)
            s.step_at.setdefault(step, round(time.monotonic() - t0, 1))
            stop.wait(0.5)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    stop.set()
    th.join()
    return subprocess.CompletedProcess(argv, proc.returncode, out, err), s, time.monotonic() - t0


def lora_up_stats(python: str, lora: Path) -> dict[str, Any]:
    """Read the LoRA with the trainer's safetensors: tensor count, all finite, max |lora_up|."""
    code = (
        "import json,sys,torch\nfrom safetensors.torch import load_file\nsd=load_file(sys.argv[1])\n"
        "ups=[v.float() for k,v in sd.items() if 'lora_up' in k]\n"
        "print(json.dumps({'tensors':len(sd),'lora_up':len(ups),'finite':all(bool(torch.isfinite(v.float()).all()) for v in sd.values()),"
        "'max_abs_up':max((float(v.abs().max()) for v in ups),default=0.0)}))\n"
    )
    r = subprocess.run([python, "-c", code, str(lora)], capture_output=True, text=True, check=True, timeout=300)
    return json.loads(r.stdout.strip().splitlines()[-1])


GB = 2**30


def phase_report(label: str, res: subprocess.CompletedProcess[str], mem: Sampled, wall: float) -> dict[str, Any]:
    """Wall time, load/caching time, seconds and peak RSS per step of one launch (bench and tier report)."""
    steps = sorted(k for k in mem.step_at if k > 0)
    if len(steps) > 1 and steps[0] > 1 and steps[1] == steps[0] + 1:
        # a resume: status shows the resumed state's step (4) once the trainer reaches its epoch,
        # before this session's first step; that wait belongs to loading
        mem.per_step[0] = max(mem.per_step.get(0, 0), mem.per_step.pop(steps[0], 0))
        mem.step_at[0] = mem.step_at.get(0, 0.0)
        steps = steps[1:]
    first = steps[0] if steps else None
    at = mem.step_at
    per_step = {}
    for s in steps:
        prev = at.get(s - 1) if s - 1 in at else (at.get(0) if s == first else None)
        per_step[s] = {"peak_rss_gb": round(mem.per_step.get(s, 0) / GB, 2), "s_since_prev": round(at[s] - prev, 1) if prev is not None else None}
    out = json.loads(res.stdout) if res.stdout.strip().startswith("{") else {}
    prog = (out.get("commands") or [{}])[-1].get("progress", {})
    return {
        "phase": label, "exit_code": res.returncode, "wall_s": round(wall, 1), "peak_rss_gb": round(mem.peak / GB, 2),
        "until_step1_s": at.get(steps[0]) if steps else None, "load_peak_rss_gb": round(mem.per_step.get(0, 0) / GB, 2),
        "per_step": per_step, "trainer_rate_s_per_it": round(1 / prog["rate_it_s"], 1) if prog.get("rate_it_s") else None,
        "avr_loss": prog.get("avr_loss"), "global_step": prog.get("global_step"),
    }


def table(results: list[dict]) -> str:
    rows = ["| arch | phase | wall | start to step 1 (load, caching, step 1) | s/step (trainer's bar) | peak RSS | peak RSS while at step N (GB) | exit |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        for p in r["phases"]:
            per = ", ".join(f"{s}: {v['peak_rss_gb']}" for s, v in p["per_step"].items())
            rows.append(
                f"| {r['arch']} | {p['phase']} | {p['wall_s']:.0f} s | {p['until_step1_s'] or '-'} s (peak {p['load_peak_rss_gb']} GB before step 1) | "
                f"{p['trainer_rate_s_per_it'] or '-'} | {p['peak_rss_gb']} GB | {per} | {p['exit_code']} |"
            )
    return "\n".join(rows)
