"""Contact sheets: a whole dataset step on one JPEG, so it can be checked at a glance.

Used by `prep crop` (source thumbnail with face box beside each crop) and
`prep render-variations` (each render beside its variations).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw

from prep.dataset import record_report_files
from prep.images import save_image

Box = tuple[float, float, float, float]


@dataclass
class Tile:
    """One picture on the sheet. `boxes` are in the image's own pixel coordinates."""

    image: Image.Image
    label: str = ""
    boxes: list[Box] = field(default_factory=list)
    box_colors: list[tuple[int, int, int]] = field(default_factory=list)


def _thumb(tile: Tile, cell: int) -> Image.Image:
    im = tile.image.convert("RGB")
    scale = min(cell / im.width, cell / im.height)
    tw, th = max(1, round(im.width * scale)), max(1, round(im.height * scale))
    t = im.resize((tw, th), Image.Resampling.BILINEAR if scale < 1 else Image.Resampling.NEAREST)
    if tile.boxes:
        d = ImageDraw.Draw(t)
        for i, (x0, y0, x1, y1) in enumerate(tile.boxes):
            color = tile.box_colors[i] if i < len(tile.box_colors) else (255, 40, 40)
            d.rectangle([x0 * scale, y0 * scale, x1 * scale, y1 * scale], outline=color, width=max(1, cell // 100))
    return t


def make_contact_sheet(rows: Sequence[Sequence[Tile]], *, cell: int = 192, pad: int = 6, label_h: int = 14, max_cols: int = 8) -> Image.Image:
    """Lay out rows of tiles (each row: a source then its outputs) on a grey canvas.

    Rows longer than `max_cols` wrap. Labels are drawn under each tile with the default font.
    """
    lines: list[Sequence[Tile]] = []
    for r in rows:
        for i in range(0, max(1, len(r)), max_cols):
            lines.append(r[i : i + max_cols])
    cols = max((len(r) for r in lines), default=1)
    w = pad + cols * (cell + pad)
    h = pad + max(1, len(lines)) * (cell + label_h + pad)
    sheet = Image.new("RGB", (w, h), (40, 40, 40))
    draw = ImageDraw.Draw(sheet)
    for y, line in enumerate(lines):
        for x, tile in enumerate(line):
            t = _thumb(tile, cell)
            ox = pad + x * (cell + pad) + (cell - t.width) // 2
            oy = pad + y * (cell + label_h + pad) + (cell - t.height) // 2
            sheet.paste(t, (ox, oy))
            if tile.label:
                draw.text((pad + x * (cell + pad), pad + y * (cell + label_h + pad) + cell + 1), tile.label[: cell // 6], fill=(230, 230, 230))
    return sheet


def write_contact_sheet(rows: Sequence[Sequence[Tile]], path: Path | str, *, written_by: str = "loraprep", **kw: int) -> Path:
    """Render and write the sheet atomically as JPEG (quality 90), recorded as a report of its folder.

    The record is what keeps the sheet out of that folder's images (`prep.dataset.discover`);
    a user's own image of the same name anywhere else is a training image.
    """
    path = Path(path)
    save_image(make_contact_sheet(rows, **kw), path, fmt="jpg", quality=90)
    record_report_files(path.parent, [path.name], written_by=written_by)
    return path
