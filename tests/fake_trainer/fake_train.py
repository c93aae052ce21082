"""A stand-in for sd-scripts' *_train_network.py / musubi's cache scripts, for launch tests.

It prints what the real trainers print (a tqdm bar redrawn with \\r on stderr, `epoch N/M`,
`saving checkpoint: ...`, `load train state from ...`), writes checkpoints, state folders
and sample images, and can run out of GPU memory, be killed with signal 9 or wait for Ctrl-C.
Behaviour comes from its own options, so a run.json fixture chooses it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import tomllib
from pathlib import Path

from tqdm import tqdm

OOM = """Traceback (most recent call last):
  File "/content/sd-scripts/anima_train_network.py", line 512, in <module>
    trainer.train(args)
  File "/content/sd-scripts/train_network.py", line 1480, in train
    accelerator.backward(loss)
torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 15.69 GiB of which 1.03 GiB is free. Including non-PyTorch memory, this process has 14.66 GiB memory in use.
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
    ap.add_argument("--mode", default="normal", choices=["normal", "oom", "kill9", "accel_kill9", "wait", "cache", "fail"])
    ap.add_argument("--fail_at", type=int, default=2)
    ap.add_argument("--resume")
    ap.add_argument("--ignore_state", action="store_true", help="restart at step 0 even with --resume (musubi-like)")
    ap.add_argument("--save_state", action="store_true")
    ap.add_argument("--samples", action="store_true")
    ap.add_argument("--oom_unless", help="OOM unless the config file contains this text")
    ap.add_argument("--record_argv")
    args = ap.parse_args()
    # Like sd-scripts: the training TOML fills in what the command line does not say.
    cfg: dict = {}
    if args.config_file and Path(args.config_file).is_file():
        for k, v in tomllib.loads(Path(args.config_file).read_text(encoding="utf-8")).items():
            cfg.update(v) if isinstance(v, dict) else cfg.__setitem__(k, v)
    args.output_dir = args.output_dir or cfg.get("output_dir")
    args.output_name = args.output_name or cfg.get("output_name") or "last"
    args.epochs = args.epochs or cfg.get("max_train_epochs") or 3
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
    if args.mode == "fail":
        print("Traceback (most recent call last):\nAssertionError: network for Text Encoder cannot be trained with caching Text Encoder outputs", file=sys.stderr, flush=True)
        return 1
    mode = args.mode
    if args.oom_unless:
        cfg = Path(args.config_file).read_text(encoding="utf-8") if args.config_file else ""
        mode = "normal" if args.oom_unless in cfg else "oom"
    spe, epochs = args.steps_per_epoch, args.epochs
    total = spe * epochs
    print(f"  num batches per epoch / 1epochのバッチ数: {spe}", flush=True)
    print(f"  total optimization steps / 学習ステップ数: {total}", flush=True)
    start_epoch = 0
    if args.resume:
        print(f"INFO     resume training from local state: {args.resume}", file=sys.stderr, flush=True)
        st = Path(args.resume) / "train_state.json"
        if st.exists() and not args.ignore_state:
            data = json.loads(st.read_text())
            print(f"INFO     load train state from {st}: {data}", file=sys.stderr, flush=True)
            start_epoch = data["current_step"] // spe
    if mode == "wait":
        def on_int(signum, frame):
            print("\nstopping on SIGINT", flush=True)
            sys.exit(130)
        signal.signal(signal.SIGINT, on_int)
    bar = tqdm(range(total), smoothing=0, desc="steps", mininterval=0, file=sys.stderr)
    global_step = start_epoch * spe
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
            if mode == "accel_kill9" and global_step >= args.fail_at:
                # what `accelerate launch` prints (and exits 1) when its child was SIGKILLed
                sys.stderr.write("subprocess.CalledProcessError: Command '['python', 'train.py']' died with <Signals.SIGKILL: 9>.\n")
                return 1
            if mode == "kill9" and global_step >= args.fail_at:
                sys.stderr.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            losses.append(0.1 / global_step)
            bar.update(1)
            bar.set_postfix(avr_loss=sum(losses) / len(losses))
            time.sleep(args.sleep)
        last = epoch + 1 == epochs
        name = f"{args.output_name}.safetensors" if last else f"{args.output_name}-{epoch + 1:06d}.safetensors"
        (out / name).write_bytes(b"weights")
        print(f"\nsaving checkpoint: {out / name}", flush=True)
        if args.save_state:
            sd = out / (f"{args.output_name}-state" if last else f"{args.output_name}-{epoch + 1:06d}-state")
            sd.mkdir(exist_ok=True)
            (sd / "train_state.json").write_text(json.dumps({"current_epoch": epoch + 1, "current_step": global_step}))
            print(f"INFO     saving state at epoch {epoch + 1}", file=sys.stderr, flush=True)
        if args.samples:
            (out / "sample").mkdir(exist_ok=True)
            (out / "sample" / f"{args.output_name}_e{epoch + 1:06d}_00_20260101000000_42.png").write_bytes(b"\x89PNG\r\n")
    bar.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
