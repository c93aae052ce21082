"""The trainer's sample images, grouped by prompt across steps, and the checkpoint grid.

sd-scripts (48d368fa, `library/train_util.py` and `anima/flux/sd3_train_utils.py`
`sample_image_inference`) names each sample
`{output_name}_{e%06d epoch | %06d step}_{prompt index:02d}_{%Y%m%d%H%M%S}[_{seed}].png` in
`output_dir/sample/`, the prompt index counting the non-empty, non-`#` lines of the prompt
file. So the step (or epoch), the prompt and the seed are in the name: a run's samples can be
laid out as a table, rows = prompts, columns = steps, and each column matched to the
checkpoint saved at that step (`{name}-step%08d`, `{name}-%06d` for epoch N, `{name}` for the
end). The run page and `train_bridge samples RUN --checkpoints` both use `collect_samples`.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from train_bridge.watch import CHECKPOINT_EXT, SAMPLE_EXT, list_outputs

SAMPLE_RE = re.compile(
    r"^(?P<name>.*?)_?(?P<when>e\d{6}|\d{6})_(?P<idx>\d{2,})_(?P<ts>\d{14})(?:_(?P<seed>\d+))?$"
)
CKPT_STEP_RE = re.compile(r"^(?P<name>.+)-step(?P<step>\d{8})$")
CKPT_EPOCH_RE = re.compile(r"^(?P<name>.+)-(?P<epoch>\d{6})$")
IMAGE_EXT = {".png", ".jpg", ".jpeg", ".webp"}


@dataclass(frozen=True)
class Sample:
    path: Path
    output_name: str
    prompt: int
    step: int | None  # the step it was made at (epoch samples: epoch x steps per epoch, when known)
    epoch: int | None
    seed: int | None
    stamp: str

    @property
    def when(self) -> str:
        if self.epoch is not None:
            return f"epoch {self.epoch}" + (f" (step {self.step})" if self.step is not None else "")
        return f"step {self.step}"

    @property
    def key(self) -> tuple[int, int]:
        """Where it sorts among the columns: by step, epoch samples by their step when known."""
        return (self.step if self.step is not None else (self.epoch or 0) * 10**9, self.epoch or 0)


def parse_sample_name(path: Path, steps_per_epoch: int | None = None) -> Sample | None:
    """A sample file's prompt/step/seed from its name, or None for a file not named by the trainer."""
    if path.suffix.lower() not in SAMPLE_EXT:
        return None
    m = SAMPLE_RE.match(path.stem)
    if m is None:
        return None
    when = m["when"]
    epoch = int(when[1:]) if when.startswith("e") else None
    step = int(when) if epoch is None else (epoch * steps_per_epoch if steps_per_epoch else None)
    return Sample(path, m["name"], int(m["idx"]), step, epoch, int(m["seed"]) if m["seed"] else None, m["ts"])


def read_prompts(prompt_file: Path) -> list[str]:
    """The prompts as the trainer numbers them (sd-scripts `load_prompts` for .txt: non-empty
    lines not starting with '#'), without their ` --` options."""
    try:
        lines = Path(prompt_file).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    out = []
    for line in lines:
        if line.strip() and not line.startswith("#"):
            out.append(line.strip().split(" --", 1)[0].strip())
    return out


@dataclass
class Column:
    """One sampling point: a step (or an epoch end) and the checkpoint saved there, if any."""

    label: str
    step: int | None
    epoch: int | None
    checkpoint: Path | None = None
    samples: dict[int, Sample] = field(default_factory=dict)  # prompt index -> newest sample


@dataclass
class SampleTable:
    prompts: list[str]  # prompt index -> text ("" when the prompt file does not have it)
    columns: list[Column]
    checkpoints: list[Path]
    unnamed: list[Path]  # sample files whose names the trainer did not make (shown, not placed)

    def rows(self) -> list[int]:
        seen = sorted({i for c in self.columns for i in c.samples})
        return seen or list(range(len(self.prompts)))

    def prompt_text(self, i: int) -> str:
        return self.prompts[i] if i < len(self.prompts) else f"prompt {i}"

    def only_checkpoints(self) -> SampleTable:
        """The columns that have a saved checkpoint (for picking one)."""
        cols = [c for c in self.columns if c.checkpoint is not None]
        return SampleTable(self.prompts, cols, self.checkpoints, self.unnamed)

    def as_dict(self) -> dict[str, Any]:
        return {
            "prompts": self.prompts,
            "columns": [
                {"label": c.label, "step": c.step, "epoch": c.epoch, "checkpoint": str(c.checkpoint) if c.checkpoint else None,
                 "samples": {str(i): str(s.path) for i, s in sorted(c.samples.items())}}
                for c in self.columns
            ],
            "checkpoints": [str(p) for p in self.checkpoints],
        }


def checkpoint_step(path: Path, output_name: str | None, steps_per_epoch: int | None, total_steps: int | None) -> tuple[int | None, int | None]:
    """(step, epoch) a checkpoint was saved at, from sd-scripts' names; the final one is the run's total."""
    stem = path.stem
    if (m := CKPT_STEP_RE.match(stem)) is not None:
        return int(m["step"]), None
    if (m := CKPT_EPOCH_RE.match(stem)) is not None:
        epoch = int(m["epoch"])
        return (epoch * steps_per_epoch if steps_per_epoch else None), epoch
    if output_name is None or stem == output_name:
        return total_steps, None
    return None, None


def collect_samples(output_dir: Path, prompt_file: Path | None = None, *, output_name: str | None = None,
                    steps_per_epoch: int | None = None, total_steps: int | None = None) -> SampleTable:
    """Every sample in output_dir/sample placed by prompt and step, with the checkpoints beside them."""
    files = list_outputs(output_dir)
    prompts = read_prompts(prompt_file) if prompt_file else []
    cols: dict[tuple[int, int], Column] = {}
    unnamed: list[Path] = []
    for p in files["samples"]:
        s = parse_sample_name(p, steps_per_epoch)
        if s is None or (output_name is not None and s.output_name not in (output_name, "")):
            unnamed.append(p)
            continue
        col = cols.setdefault(s.key, Column(s.when, s.step, s.epoch))
        old = col.samples.get(s.prompt)
        if old is None or (s.stamp, s.path.name) >= (old.stamp, old.path.name):
            col.samples[s.prompt] = s  # a rerun of the same step: the newest
    ckpts = [p for p in files["checkpoints"] if p.suffix.lower() in CHECKPOINT_EXT]
    ordered = sorted(cols.values(), key=lambda c: (c.step if c.step is not None else 10**12, c.epoch or 0))
    by_step = {c.step: c for c in ordered if c.step is not None}
    by_epoch = {c.epoch: c for c in ordered if c.epoch is not None}
    for ck in ckpts:
        step, epoch = checkpoint_step(ck, output_name, steps_per_epoch, total_steps)
        col = by_epoch.get(epoch) if epoch is not None and epoch in by_epoch else by_step.get(step)
        if col is None and step is not None and ck.stem == output_name and ordered and ordered[-1].step is not None and ordered[-1].step >= step:
            col = ordered[-1]  # the final checkpoint and the last sampling point are the same weights
        if col is not None and col.checkpoint is None:
            col.checkpoint = ck
    return SampleTable(prompts, ordered, ckpts, unnamed)


def collect_run_samples(run_dir: Path) -> SampleTable:
    """`collect_samples` for a run folder (run.json's output folder, name and step counts)."""
    from train_bridge.runspec import RunSpec

    spec = RunSpec.load(Path(run_dir))
    return collect_samples(spec.output_dir, spec.run_dir / "sample_prompts.txt", output_name=spec.output_name,
                           steps_per_epoch=spec.steps_per_epoch, total_steps=_final_step(spec.run_dir, spec.total_steps))


def _final_step(run_dir: Path, planned: int | None) -> int | None:
    """The step the final checkpoint holds: what the finished run reached (status.json; a resume
    with more steps goes past the plan), else the planned total."""
    import json  # noqa: PLC0415

    try:
        st = json.loads((Path(run_dir) / "status.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return planned
    prog = st.get("progress") if isinstance(st, dict) else None
    reached = prog.get("global_step") if isinstance(prog, dict) else None
    if st.get("state") == "done" and isinstance(reached, int) and reached > 0:
        return reached
    return planned


# -- the grid image ---------------------------------------------------------------------------------

CELL = 256
"""Pixels per sample in the grid (loraprep's choice: large enough to judge a face, and a 10 x 4
grid stays under 3000 px wide)."""
LABEL_W = 260
HEADER_H = 44
PAD = 6


def _font(size: int) -> Any:
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _fit(draw: Any, text: str, font: Any, width: int) -> list[str]:
    """Word-wrap text into lines no wider than width (at most 6 lines)."""
    words, lines, cur = text.split(), [], ""
    for w in words:
        trial = f"{cur} {w}".strip()
        if draw.textlength(trial, font=font) <= width or not cur:
            cur = trial
        else:
            lines.append(cur)
            cur = w
    if cur:
        lines.append(cur)
    return lines[:6]


def render_grid(table: SampleTable, cell: int = CELL) -> Any:
    """One PIL image: a header row of column labels (step/epoch, checkpoint name), a label column
    of prompts, and each sample scaled into a `cell` square; a missing sample is a grey cell."""
    from PIL import Image, ImageDraw

    from prep.images import ImageLoadError, load_image

    if not table.columns:
        raise ValueError("no samples named by the trainer were found: nothing to lay out")
    rows = table.rows()
    w = LABEL_W + len(table.columns) * (cell + PAD) + PAD
    h = HEADER_H + len(rows) * (cell + PAD) + PAD
    img = Image.new("RGB", (w, h), (22, 24, 29))
    draw = ImageDraw.Draw(img)
    big, small = _font(15), _font(12)
    for ci, col in enumerate(table.columns):
        x = LABEL_W + PAD + ci * (cell + PAD)
        draw.text((x, 6), col.label, fill=(230, 230, 230), font=big)
        sub = col.checkpoint.name if col.checkpoint else "no checkpoint saved here"
        while draw.textlength(sub, font=small) > cell and len(sub) > 4:
            sub = sub[:-2]
        draw.text((x, 25), sub, fill=(123, 216, 143) if col.checkpoint else (154, 163, 173), font=small)
    for ri, prompt in enumerate(rows):
        y = HEADER_H + PAD + ri * (cell + PAD)
        for li, line in enumerate(_fit(draw, f"{prompt}: {table.prompt_text(prompt)}", small, LABEL_W - 2 * PAD)):
            draw.text((PAD, y + li * 15), line, fill=(230, 230, 230), font=small)
        for ci, col in enumerate(table.columns):
            x = LABEL_W + PAD + ci * (cell + PAD)
            s = col.samples.get(prompt)
            box = (x, y, x + cell, y + cell)
            if s is None or s.path.suffix.lower() not in IMAGE_EXT:
                draw.rectangle(box, fill=(45, 51, 61))
                draw.text((x + 8, y + cell // 2 - 8), "no sample" if s is None else s.path.name[-28:], fill=(154, 163, 173), font=small)
                continue
            try:
                im = load_image(s.path).image
            except (ImageLoadError, OSError) as exc:
                draw.rectangle(box, fill=(58, 31, 31))
                draw.text((x + 8, y + 8), "unreadable", fill=(255, 180, 180), font=small)
                draw.text((x + 8, y + 26), str(exc)[-30:], fill=(255, 180, 180), font=small)
                continue
            im.thumbnail((cell, cell))
            img.paste(im.convert("RGB"), (x + (cell - im.width) // 2, y + (cell - im.height) // 2))
    return img


def grid_png(table: SampleTable, cell: int = CELL) -> bytes:
    buf = io.BytesIO()
    render_grid(table, cell).save(buf, format="PNG")
    return buf.getvalue()


def write_checkpoint_grid(run_dir: Path, out: Path | None = None, *, all_steps: bool = False, cell: int = CELL) -> tuple[Path, SampleTable]:
    """Render the run's samples (every saved checkpoint's, or every step's) into one PNG."""
    from prep.fsutil import atomic_write_bytes

    table = collect_run_samples(run_dir)
    if not all_steps:
        picked = table.only_checkpoints()
        if not picked.columns:
            raise ValueError(
                f"{run_dir}: no sample was made at a step where a checkpoint was saved "
                f"({len(table.columns)} sampling points, {len(table.checkpoints)} checkpoints); use --all-steps to lay out every sample"
            )
        table = picked
    path = Path(out) if out else Path(run_dir) / "samples_grid.png"
    atomic_write_bytes(path, grid_png(table, cell))
    return path, table
