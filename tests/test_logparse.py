"""The log parser against sd-scripts-shaped output, fed in awkward pieces as a pipe delivers it."""

from __future__ import annotations

import math

import pytest

from train_bridge.logparse import LogParser, parse_clock, parse_rate, parse_text

LOG = (
    "override steps. steps for 10 epochs is / 指定エポックまでのステップ数: 350\n"
    "  num batches per epoch / 1epochのバッチ数: 35\n"
    "  total optimization steps / 学習ステップ数: 350\n"
    "\rsteps:   0%|          | 0/350 [00:00<?, ?it/s]"
    "\nepoch 1/10\n\n"
    "\rsteps:   0%|          | 1/350 [00:02<13:03, 2.24s/it]"
    "\rsteps:   0%|          | 1/350 [00:02<13:03, 2.24s/it, avr_loss=0.121]"
    "\rsteps:  31%|███       | 110/350 [1:02:03<2:15:10, 33.45s/it, avr_loss=0.0935]"
    "\nsaving checkpoint: /runs/r1/output/my_lora-000001.safetensors\n"
    "2026-11-22 01:02:03 INFO     saving state at epoch 1                train_util.py:5931\n"
    "\nepoch 2/10\n"
    "\rsteps:  34%|███▍      | 120/350 [01:23<10:10, 1.44it/s, avr_loss=0.0812]"
)


def test_whole_log_gives_final_progress() -> None:
    p = parse_text(LOG)
    assert (p.step, p.total) == (120, 350)
    assert (p.epoch, p.epochs) == (2, 10)
    assert p.avr_loss == pytest.approx(0.0812)
    assert p.rate == pytest.approx(1.44)
    assert p.elapsed_s == 83 and p.eta_s == 610
    assert p.batches_per_epoch == 35
    assert p.checkpoints == ["/runs/r1/output/my_lora-000001.safetensors"]
    assert p.states_saved == 1
    assert p.first_step == 0 and p.first_epoch == 1
    assert not p.oom


@pytest.mark.parametrize("size", [1, 3, 7, 64])
def test_same_result_whatever_the_chunking(size: int) -> None:
    parser = LogParser()
    kinds: list[str] = []
    for i in range(0, len(LOG), size):
        kinds += [e.kind for e in parser.feed(LOG[i : i + size])]
    kinds += [e.kind for e in parser.close()]
    p = parser.progress
    assert (p.step, p.total, p.epoch) == (120, 350, 2)
    assert p.avr_loss == pytest.approx(0.0812)
    assert kinds.count("checkpoint") == 1
    assert kinds.count("epoch") == 2


def test_unterminated_bar_is_seen_at_once_and_not_twice() -> None:
    parser = LogParser()
    ev = parser.feed("\rsteps:  10%|█         | 35/350 [00:10<01:30, 3.50it/s, avr_loss=0.2]")
    assert [e.kind for e in ev] == ["step"] and parser.progress.step == 35
    ev = parser.feed("\rsteps:  10%|█         | 36/350 [00:10<01:29, 3.50it/s, avr_loss=0.19]")
    assert [e.data["step"] for e in ev if e.kind == "step"] == [36]  # 35 not re-emitted
    assert [e.kind for e in parser.feed("\n")] == []
    assert parser.progress.avr_loss == pytest.approx(0.19)


def test_slow_rate_and_unknown_times() -> None:
    assert parse_rate("33.45", "s/it") == pytest.approx(1 / 33.45)
    assert parse_rate("?", "it/s") is None
    assert parse_clock("1:02:03") == 3723 and parse_clock("?") is None


def test_cuda_oom_traceback_detected_with_numbers() -> None:
    text = (
        "Traceback (most recent call last):\n"
        '  File "train_network.py", line 1480, in train\n'
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of "
        "15.69 GiB of which 1.03 GiB is free. Including non-PyTorch memory\n"
    )
    parser = LogParser()
    kinds = [e.kind for e in parser.feed(text)]
    assert kinds.count("oom") == 1
    d = parser.progress.oom_detail
    assert d["tried"] == "2.00 GiB" and d["free"] == "1.03 GiB" and d["total"] == "15.69 GiB"


def test_old_style_oom_message() -> None:
    p = parse_text("RuntimeError: CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; 7.79 GiB total capacity)\n")
    assert p.oom and p.oom_detail["tried"] == "20.00 MiB"


def test_nan_loss_flagged() -> None:
    parser = LogParser()
    ev = parser.feed("\rsteps:  10%|█ | 5/50 [00:05<00:45, 1.00it/s, avr_loss=nan]\n")
    assert "nan" in [e.kind for e in ev]
    assert parser.progress.nan and math.isnan(parser.progress.avr_loss)


def test_resume_evidence_parsed() -> None:
    p = parse_text(
        "INFO     resume training from local state: /o/lora-000002-state\n"
        "INFO     load train state from /o/lora-000002-state/train_state.json: {'current_epoch': 2, 'current_step': 70}   train_network.py:969\n"
        "\rsteps:   0%|          | 0/350 [00:00<?, ?it/s]\nepoch 3/10\n"
    )
    assert p.resume_path == "/o/lora-000002-state"
    assert (p.state_loaded_step, p.state_loaded_epoch) == (70, 2)
    assert p.first_epoch == 3


def test_other_bars_and_errors() -> None:
    p = parse_text(
        "\rvalidation steps:  50%|█████     | 1/2 [00:01<00:01, 1.0it/s]\n"
        "\rSampling: 100%|██████████| 30/30 [00:03<00:00, 9.1it/s]\n"
        "AssertionError: network for Text Encoder cannot be trained with caching Text Encoder outputs\n"
    )
    assert p.step == 0 and p.first_step is None
    assert p.last_error is not None and p.last_error.startswith("AssertionError: network for Text Encoder")


def test_sigkill_reported_by_accelerate_is_a_kill() -> None:
    p = parse_text("subprocess.CalledProcessError: Command '['/v/bin/python', 'anima_train_network.py']' died with <Signals.SIGKILL: 9>.\n")
    assert p.killed and not p.oom


def test_message_glued_to_an_unterminated_bar_is_still_seen() -> None:
    p = parse_text("\rsteps:  17%|#7  | 2/12 [00:01<00:05, 2.0it/s, avr_loss=0.1]torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1.00 GiB\n")
    assert p.step == 2 and p.oom and p.oom_detail["tried"] == "1.00 GiB"


def test_refused_cpu_allocation_is_a_host_oom_with_the_size() -> None:
    """What torch prints when a memory limit (ulimit -v / RLIMIT_AS) refuses a CPU allocation."""
    text = (
        "steps:  25%|##5       | 1/4 [00:37<01:52, 37.45s/it, avr_loss=2.21]\n"
        "Traceback (most recent call last):\n"
        '  File "/x/sd-scripts/library/anima_utils.py", line 107, in load_anima_model\n'
        "    sd = load_safetensors_with_lora_and_fp8(\n"
        "RuntimeError: [enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: can't allocate memory: you tried to allocate 268435456 bytes. "
        "Error code 12 (Cannot allocate memory)\n"
    )
    p = parse_text(text)
    assert p.host_oom and not p.oom and not p.killed
    assert p.oom_detail["tried"] == "256 MiB"
    assert p.last_error is not None and p.last_error.startswith("RuntimeError: [enforce fail")
    assert any("anima_utils.py" in line for line in p.error_lines)
    assert parse_text("MemoryError\n").host_oom and parse_text("OSError: [Errno 12] Cannot allocate memory\n").host_oom
    assert not parse_text("INFO     memory efficient attention enabled\n").host_oom
