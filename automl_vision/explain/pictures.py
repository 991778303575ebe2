"""The pictures of explanations, as PNG bytes.

A classifier's picture is the original product's 2 x 2 grid: the crop the model saw (top left), the
attribution heat map (top right), the heat map blended over the crop (bottom left), and the crop with only
its 30% most attributed pixels (bottom right). A detector's picture is the image with the explained box
(left) beside the box's D-RISE map blended over it (right). Heat maps run from dark (none) to bright
(most), clipped at the 98th percentile so that a few extreme pixels do not wash out the rest.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

#: An evaluation's explanations (written by the pipeline's evaluate step, shown by the report): the folder
#: beside its predictions, and the index listing each picture.
EXPLANATIONS_DIR = "explanations"
INDEX_FILE = "explanations.json"
#: Each panel at least this many pixels across: small crops are enlarged (nearest neighbour) to be seen.
MIN_PANEL = 224
TOP_FRACTION = 0.3


def normalized(heat: np.ndarray, clip_percentile: float = 98.0) -> np.ndarray:
    """``heat`` scaled to [0, 1] (its minimum to 0, its ``clip_percentile`` to 1)."""
    heat = np.asarray(heat, dtype=np.float64)
    heat = heat - heat.min()
    top = np.percentile(heat, clip_percentile) if heat.size else 0.0
    if top <= 0:
        top = heat.max() if heat.size and heat.max() > 0 else 1.0
    return np.clip(heat / top, 0.0, 1.0)


def _colours(unit: np.ndarray) -> np.ndarray:
    from matplotlib import colormaps  # the colour scale only (no figure)

    return (colormaps["inferno"](unit)[..., :3] * 255).astype(np.uint8)


def _scale(image: Image.Image) -> Image.Image:
    k = max(1, int(np.ceil(MIN_PANEL / max(1, min(image.size)))))
    return image if k == 1 else image.resize((image.width * k, image.height * k), Image.NEAREST)


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=False)
    return out.getvalue()


def _grid(panels: list[list[Image.Image]]) -> Image.Image:
    w, h = panels[0][0].size
    out = Image.new("RGB", (w * len(panels[0]), h * len(panels)), "white")
    for r, row in enumerate(panels):
        for c, panel in enumerate(row):
            out.paste(panel, (c * w, r * h))
    return out


def classification_picture(crop: np.ndarray, heat: np.ndarray) -> bytes:
    """The 2 x 2 grid for the ``[H, W, 3]`` uint8 crop and its ``[H, W]`` heat map."""
    unit = normalized(heat)
    coloured = _colours(unit)
    blend = (0.45 * crop.astype(np.float32) + 0.55 * coloured.astype(np.float32)).astype(np.uint8)
    cut = np.quantile(unit, 1.0 - TOP_FRACTION)
    top = np.where((unit >= cut)[..., None], crop, 0).astype(np.uint8)
    panels = [[_scale(Image.fromarray(a)) for a in row] for row in ((crop, coloured), (blend, top))]
    return _png(_grid(panels))


def detection_picture(image: Image.Image, heat: np.ndarray, box: tuple[float, float, float, float],
                      caption: str) -> bytes:
    """The image with ``box`` and ``caption`` beside the box's D-RISE map blended over the image."""
    pixels = np.asarray(image.convert("RGB"))
    coloured = _colours(normalized(heat))
    blend = Image.fromarray((0.45 * pixels.astype(np.float32) + 0.55 * coloured.astype(np.float32)).astype(np.uint8))
    left = Image.fromarray(pixels)
    k = max(1, int(np.ceil(MIN_PANEL / max(1, min(left.size)))))
    panels = []
    for panel in (left, blend):
        panel = _scale(panel)
        draw = ImageDraw.Draw(panel)
        x0, y0, x1, y1 = (v * k for v in box)
        draw.rectangle([x0, y0, x1, y1], outline=(0, 255, 128), width=max(2, panel.width // 200))
        draw.text((x0 + 3, max(0, y0 - 12)), caption, fill=(0, 255, 128))
        panels.append(panel)
    return _png(_grid([panels]))
