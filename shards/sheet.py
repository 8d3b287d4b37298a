"""Contact sheets: rows of frames in one PNG, so a person sees what a shard set looks like.

``inspect --sheet`` draws one row per sample (a few frames of its clip); the MAE
visualisation reuses :func:`save_sheet` for input / masked / reconstruction rows.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .schema import atomic_write

PAD = 4  # pixels between tiles and around the sheet
TITLE_H = 14  # height of a row's title strip


def _tile(frame: np.ndarray, height: int) -> Image.Image:
    """One ``(H, W, 3)`` uint8 frame as an image ``height`` pixels tall (aspect kept)."""
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"frames must be (H, W, 3) uint8 arrays, got {frame.shape} {frame.dtype}")
    img = Image.fromarray(np.ascontiguousarray(frame))  # (H, W, 3) uint8 -> RGB
    if img.height != height:
        width = max(1, round(img.width * height / img.height))
        img = img.resize((width, height), Image.Resampling.BILINEAR)
    return img


def render_sheet(rows: list[list[np.ndarray]], row_titles: list[str] | None = None,
                 tile_height: int | None = None) -> Image.Image:
    """Lay ``rows`` of ``(H, W, 3)`` uint8 frames out on one image, each row under its title.

    Every tile is scaled to ``tile_height`` (default: the first frame's height, at least 64).
    """
    if not rows or not any(rows):
        raise ValueError("a contact sheet needs at least one frame")
    if row_titles is not None and len(row_titles) != len(rows):
        raise ValueError(f"{len(row_titles)} titles for {len(rows)} rows")
    first = next(r[0] for r in rows if r)
    height = tile_height or max(64, int(first.shape[0]))
    tiles = [[_tile(f, height) for f in row] for row in rows]
    title_h = TITLE_H * max(t.count("\n") + 1 for t in row_titles) if row_titles else 0  # multi-line titles
    width = PAD + max(sum(t.width + PAD for t in row) for row in tiles)
    sheet = Image.new("RGB", (width, PAD + len(rows) * (title_h + height + PAD)), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    y = PAD
    for r, row in enumerate(tiles):
        if row_titles:
            draw.text((PAD, y), row_titles[r], fill=(230, 230, 230), font=font)
            y += title_h
        x = PAD
        for t in row:
            sheet.paste(t, (x, y))
            x += t.width + PAD
        y += height + PAD
    return sheet


def save_sheet(rows: list[list[np.ndarray]], path: str | Path, row_titles: list[str] | None = None,
               tile_height: int | None = None) -> Path:
    """Write the contact sheet of ``rows`` (each a list of ``(H, W, 3)`` uint8 frames) to ``path``.

    The format follows the extension (``.png``, ``.jpg``, ...); the file is written atomically.
    """
    path = Path(path)
    img = render_sheet(rows, row_titles, tile_height)
    buf = io.BytesIO()
    try:
        img.save(buf, format=Image.registered_extensions().get(path.suffix.lower(), "PNG"))
    except (KeyError, OSError) as e:
        raise ValueError(f"{path}: cannot write a {path.suffix!r} image ({e}); use .png or .jpg") from e
    return atomic_write(path, buf.getvalue())
