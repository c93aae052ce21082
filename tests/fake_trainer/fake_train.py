"""A stand-in for sd-scripts' *_train_network.py / musubi's cache scripts, for launch tests.

It prints what the real trainers print (a tqdm bar redrawn with \\r on stderr, `epoch N/M`,
`saving checkpoint: ...`, `load train state from ...`), writes checkpoints, state folders
and sample images, and can run out of GPU memory, be killed with signal 9 or wait for Ctrl-C.
Behaviour comes from its own options, so a run.json fixture chooses it.

Resume works as sd-scripts' train_network.py does at the pinned commit (48d368fa): the state's
train_state.json gives `current_step`, training restarts at epoch `current_step // steps per
epoch` (or `--initial_step // ...`, which wins over the state's), and the session's own step
counter starts again at 0, so the step in `<name>-step<N:08d>-state` and in the new
train_state.json is session-relative while `current_epoch` stays global.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from tqdm import tqdm

OOM = """Traceback (most recent call last):
  File "/content/sd-scripts/anima_train_network.py", line 512, in <module>
    trainer.train(args)
  File "/content/sd-scripts/train_network.py", line 1480, in train
    accelerator.backward(loss)
torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 15.69 GiB of which 1.03 GiB is free. Including non-PyTorch memory, this process has 14.66 GiB memory in use.
"""

# What sd-scripts printed here (48d368fa, torch 2.14.1) when a memory limit (prlimit --as) refused
# an allocation while the Anima DiT loaded on CPU: host RAM, not GPU memory.
HOST_ALLOC = """Traceback (most recent call last):
  File "/tmp/trainers/sd-scripts/anima_train_network.py", line 440, in <module>
    trainer.train(args)
  File "/tmp/trainers/sd-scripts/library/anima_utils.py", line 107, in load_anima_model
    sd = load_safetensors_with_lora_and_fp8(
RuntimeError: [enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to allocate 8388608 bytes. Error code 12 (Cannot allocate memory)
"""

TRAINER_ERROR = """Traceback (most recent call last):
  File "/content/sd-scripts/anima_train_network.py", line 512, in <module>
    trainer.train(args)
  File "/content/sd-scripts/library/anima_utils.py", line 88, in load_anima_dit
    raise ValueError(f"unexpected key in DiT state dict: {key}")
ValueError: unexpected key in DiT state dict: net.blocks.0.adaln_modulation_cross_attn.1.weight
"""
# What `accelerate launch` (commands/launch.py, simple_launcher) prints after its child failed.
ACCEL_WRAPPER = """Traceback (most recent call last):
  File "/content/venv/bin/accelerate", line 8, in <module>
    sys.exit(main())
  File "/content/venv/lib/python3.11/site-packages/accelerate/commands/accelerate_cli.py", line 50, in main
    args.func(args)
  File "/content/venv/lib/python3.11/site-packages/accelerate/commands/launch.py", line 1199, in launch_command
    simple_launcher(args)
  File "/content/venv/lib/python3.11/site-packages/accelerate/commands/launch.py", line 785, in simple_launcher
    raise subprocess.CalledProcessError(returncode=process.returncode, cmd=cmd)
subprocess.CalledProcessError: Command '['/content/venv/bin/python', 'anima_train_network.py', '--config_file', 'train.toml']' returned non-zero exit status 1.
"""


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config_file")
    ap.add_argument("--dataset_config")
    ap.add_argument("--output_dir")
    ap.add_argument("--output_name")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--steps_per_epoch", type=int, default=4)
    ap.add_argument("--sleep", type=float, default=0.0)
    ap.add_argument("--mode", default="normal", choices=["normal", "oom", "host_alloc", "kill9", "accel_kill9", "wait", "cache", "fail", "accel_fail"])
    ap.add_argument("--fail_at", type=int, default=2)
    ap.add_argument("--resume")
    ap.add_argument("--initial_step", type=int)
    ap.add_argument("--save_every_n_steps", type=int)
    ap.add_argument("--ignore_state", action="store_true", help="restart at step 0 even with --resume (musubi-like)")
    ap.add_argument("--save_state", action="store_true")
    ap.add_argument("--samples", action="store_true")
    ap.add_argument("--oom_unless", help="OOM unless the config file contains this text")
    ap.add_argument("--oom_kind", default="oom", choices=["oom", "host_alloc"], help="which OOM --oom_unless gives")
    ap.add_argument("--record_argv")
    args = ap.parse_args()
    # Like sd-scripts: the training TOML fills in what the command line does not say.
    cfg: dict = {}
    if args.config_file and Path(args.config_file).is_file():
        for k, v in tomllib.loads(Path(args.config_file).read_text(encoding="utf-8")).items():
            cfg.update(v) if isinstance(v, dict) else cfg.__setitem__(k, v)
    args.output_dir = args.output_dir or cfg.get("output_dir")
    args.output_name = args.output_name or cfg.get("output_name") or "last"
    max_steps = cfg.get("max_train_steps") if not args.epochs and not cfg.get("max_train_epochs") else None
    args.epochs = args.epochs or cfg.get("max_train_epochs") or (-(-max_steps // args.steps_per_epoch) if max_steps else 3)
    args.save_every_n_steps = args.save_every_n_steps or cfg.get("save_every_n_steps")
    args.save_state = args.save_state or bool(cfg.get("save_state"))
    if not args.output_dir:
        print("error: no output_dir", file=sys.stderr)
        return 2
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if args.record_argv:
        with open(args.record_argv, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(sys.argv[1:]) + "\n")
    if args.mode == "cache":
        print("caching latents... done", flush=True)
        (out / "cache.marker").write_text("x")
        return 0
    if args.mode == "accel_fail":
        sys.stderr.write(TRAINER_ERROR + ACCEL_WRAPPER)
        return 1
    if args.mode == "fail":
        print("Traceback (most recent call last):\nAssertionError: network for Text Encoder cannot be trained with caching Text Encoder outputs", file=sys.stderr, flush=True)
        return 1
    mode = args.mode
    if args.oom_unless:
        cfg = Path(args.config_file).read_text(encoding="utf-8") if args.config_file else ""
        mode = "normal" if args.oom_unless in cfg else args.oom_kind
    spe, epochs = args.steps_per_epoch, args.epochs
    total = spe * epochs
    print(f"  num batches per epoch / 1epochのバッチ数: {spe}", flush=True)
    print(f"  total optimization steps / 学習ステップ数: {total}", flush=True)
    start_epoch = 0
    initial_step = args.initial_step
    if args.resume:
        print(f"INFO     resume training from local state: {args.resume}", file=sys.stderr, flush=True)
        st = Path(args.resume) / "train_state.json"
        if st.exists() and not args.ignore_state:
            data = json.loads(st.read_text())
            print(f"INFO     load train state from {st}: {data}", file=sys.stderr, flush=True)
            if initial_step is None:  # sd-scripts: --initial_step wins over the state's step
                initial_step = data["current_step"]
    if initial_step:
        if total <= initial_step:
            sys.stderr.write(f"AssertionError: max_train_steps should be greater than initial step: {total} vs {initial_step}\n")
            return 1
        start_epoch = initial_step // spe
    if mode == "wait":
        def on_int(signum, frame):
            print("\nstopping on SIGINT", flush=True)
            sys.exit(130)
        signal.signal(signal.SIGINT, on_int)
    bar = tqdm(range(total), smoothing=0, desc="steps", mininterval=0, file=sys.stderr)
    global_step = 0  # sd-scripts: the session's counter restarts at 0 after a resume
    losses = []
    for epoch in range(start_epoch, epochs):
        print(f"\nepoch {epoch + 1}/{epochs}\n", flush=True)
        for _ in range(spe):
            global_step += 1
            if mode == "oom" and global_step >= args.fail_at:
                bar.close()
                sys.stderr.write(OOM)
                sys.stderr.flush()
                return 1
            if mode == "host_alloc" and global_step >= args.fail_at:
                bar.close()
                sys.stderr.write(HOST_ALLOC)
                sys.stderr.flush()
                return 1
            if mode == "accel_kill9" and global_step >= args.fail_at:
                # what `accelerate launch` prints (and exits 1) when its child was SIGKILLed
                sys.stderr.write("subprocess.CalledProcessError: Command '['python', 'train.py']' died with <Signals.SIGKILL: 9>.\n")
                return 1
            if mode == "kill9" and global_step >= args.fail_at:
                sys.stderr.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            losses.append(0.1 / (start_epoch * spe + global_step))
            bar.update(1)
            bar.set_postfix(avr_loss=sum(losses) / len(losses))
            time.sleep(args.sleep)
            if args.save_state and args.save_every_n_steps and global_step % args.save_every_n_steps == 0:
                _save_state(out / f"{args.output_name}-step{global_step:08d}-state", epoch + 1, global_step)
                print(f"INFO     saving state at step {global_step}", file=sys.stderr, flush=True)
        last = epoch + 1 == epochs
        name = f"{args.output_name}.safetensors" if last else f"{args.output_name}-{epoch + 1:06d}.safetensors"
        (out / name).write_bytes(b"weights")
        print(f"\nsaving checkpoint: {out / name}", flush=True)
        if args.save_state:
            sd = out / (f"{args.output_name}-state" if last else f"{args.output_name}-{epoch + 1:06d}-state")
            _save_state(sd, epoch + 1, global_step)
            print(f"INFO     saving state at epoch {epoch + 1}", file=sys.stderr, flush=True)
        if args.samples:
            (out / "sample").mkdir(exist_ok=True)
            (out / "sample" / f"{args.output_name}_e{epoch + 1:06d}_00_20260101000000_42.png").write_bytes(b"\x89PNG\r\n")
    bar.close()
    return 0


def _save_state(folder: Path, epoch: int, step: int) -> None:
    """accelerate.save_state into an existing folder overwrites it; train_state.json as sd-scripts writes it."""
    folder.mkdir(exist_ok=True)
    (folder / "train_state.json").write_text(json.dumps({"current_epoch": epoch, "current_step": step}))


if __name__ == "__main__":
    sys.exit(main())
