"""Drawing labels, boxes and masks on images, and laying images out in a captioned grid (PIL only)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from matplotlib import font_manager
from PIL import Image, ImageDraw, ImageFont

# Matplotlib's tab10, so a class has the same colour in the pictures and in the charts.
PALETTE = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)
BOX_WIDTH = 2
BACKGROUND = (255, 255, 255)
TEXT = (29, 36, 51)
MUTED = (91, 100, 116)


def colour(index: int) -> tuple[int, int, int]:
    return PALETTE[index % len(PALETTE)]


@lru_cache(maxsize=8)
def font(size: int) -> ImageFont.ImageFont:
    """DejaVu Sans (shipped with matplotlib) at ``size`` pixels; readable where PIL's bitmap font is not."""
    return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)


@dataclass
class Annotations:
    """What is drawn on one image, in that image's pixel coordinates.

    ``labels`` are image-level class names when ``boxes`` is None (classification), else one per box.
    ``boxes``: (N, 4) ``x0, y0, x1, y1`` edges (x1, y1 exclusive). ``masks``: (N, H, W) booleans.
    ``scores``: optional, one per box (predictions).
    """

    labels: list[str]
    boxes: np.ndarray | None = None
    masks: np.ndarray | None = None
    scores: list[float] | None = None


@dataclass
class Tile:
    """One picture of a grid: the image, what to draw on it and the caption lines under it."""

    image: Image.Image
    annotations: Annotations
    caption: list[str] = field(default_factory=list)
    caption_colour: tuple[int, int, int] = TEXT


def fit_scale(width: int, height: int, size: int) -> float:
    return size / max(width, height)


def render_tile(tile: Tile, size: int, class_index: dict[str, int]) -> tuple[Image.Image, list[list[int]]]:
    """The tile's image scaled to fit ``size`` x ``size`` with its masks and boxes drawn; returns the
    picture and the boxes as drawn (``[x0, y0, x1, y1]`` outer edges, inclusive pixel coordinates)."""
    image = tile.image.convert("RGB")
    w, h = image.size
    s = fit_scale(w, h, size)
    sw, sh = max(1, round(w * s)), max(1, round(h * s))
    # Upscaled small images keep their pixels square (what the model sees), downscaled ones are smoothed.
    shown = image.resize((sw, sh), Image.NEAREST if s >= 1 else Image.BILINEAR)
    ann = tile.annotations
    if ann.masks is not None and len(ann.masks):
        shown = _overlay_masks(shown, ann.masks, [class_index.get(lab, 0) for lab in ann.labels])
    drawn: list[list[int]] = []
    if ann.boxes is not None and len(ann.boxes):
        draw = ImageDraw.Draw(shown)
        f = font(11)
        for i, (box, label) in enumerate(zip(ann.boxes, ann.labels)):
            x0, y0, x1, y1 = (float(v) * s for v in box)
            rect = [round(x0), round(y0), max(round(x0), round(x1) - 1), max(round(y0), round(y1) - 1)]
            c = colour(class_index.get(label, 0))
            draw.rectangle(rect, outline=c, width=BOX_WIDTH)
            drawn.append(rect)
            text = label if ann.scores is None else f"{label} {ann.scores[i]:.2f}"
            _label(draw, text, rect, c, f, shown.size)
    return shown, drawn


def _overlay_masks(image: Image.Image, masks: np.ndarray, indices: Sequence[int], alpha: float = 0.45) -> Image.Image:
    pixels = np.asarray(image, dtype=np.float32).copy()
    for mask, idx in zip(masks, indices):
        m = Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255).resize(image.size, Image.NEAREST)
        sel = np.asarray(m) > 127
        pixels[sel] = (1 - alpha) * pixels[sel] + alpha * np.array(colour(idx), dtype=np.float32)
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def _label(draw: ImageDraw.ImageDraw, text: str, rect: list[int], c, f, size: tuple[int, int]) -> None:
    """The class name on a filled tag at the box's top-left corner (inside the image)."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=f)
    tw, th = right - left + 4, bottom - top + 2
    x = min(max(rect[0], 0), max(0, size[0] - tw))
    y = rect[1] - th if rect[1] - th >= 0 else rect[1] + BOX_WIDTH
    draw.rectangle([x, y, x + tw - 1, y + th - 1], fill=c)
    draw.text((x + 2 - left, y + 1 - top), text, fill=(255, 255, 255), font=f)


@dataclass
class GridLayout:
    """Where each tile's picture landed in the grid image (pixels), for tests and the page's captions."""

    rows: list[list[dict]]


def compose_grid(rows: Sequence[Sequence[Tile]], class_index: dict[str, int], *, size: int = 192, pad: int = 10,
                 caption_lines: int = 2, row_titles: Sequence[str] | None = None) -> tuple[Image.Image, GridLayout]:
    """Tiles in rows (one row per source image), each scaled to fit ``size`` with its caption under it."""
    f = font(13)
    line_h = 17
    title_h = line_h + 4 if row_titles else 0
    rendered = [[render_tile(t, size, class_index) for t in row] for row in rows]
    # A row is as tall as its tallest picture: wide images leave no gap above their captions.
    heights = [max(p.height for p, _ in row) for row in rendered]
    columns = max(len(r) for r in rows)
    width = pad + columns * (size + pad)
    height = pad + sum(title_h + h + caption_lines * line_h + 4 + pad for h in heights)
    grid = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(grid)
    layout: list[list[dict]] = []
    y = pad
    for r, row in enumerate(rows):
        if row_titles:
            draw.text((pad, y), _fit(draw, row_titles[r], width - 2 * pad, f), fill=MUTED, font=f)
            y += title_h
        placed = []
        for c, (tile, (picture, boxes)) in enumerate(zip(row, rendered[r])):
            x = pad + c * (size + pad)
            # Centred in the column, top-aligned: captions sit at the same height across the row.
            ox = x + (size - picture.width) // 2
            grid.paste(picture, (ox, y))
            draw.rectangle([ox - 1, y - 1, ox + picture.width, y + picture.height], outline=(210, 214, 222))
            for i, text in enumerate(tile.caption[:caption_lines]):
                draw.text((x, y + heights[r] + 3 + i * line_h), _fit(draw, text, size, f),
                          fill=tile.caption_colour if i == 0 else MUTED, font=f)
            placed.append({"x": ox, "y": y, "width": picture.width, "height": picture.height,
                           "boxes": [[b[0] + ox, b[1] + y, b[2] + ox, b[3] + y] for b in boxes]})
        layout.append(placed)
        y += heights[r] + caption_lines * line_h + 4 + pad
    return grid, GridLayout(layout)


def _fit(draw: ImageDraw.ImageDraw, text: str, width: int, f) -> str:
    """``text`` cut with an ellipsis to fit ``width`` pixels."""
    if draw.textlength(text, font=f) <= width:
        return text
    while text and draw.textlength(text + "…", font=f) > width:
        text = text[:-1]
    return text + "…"
