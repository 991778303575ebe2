"""Tiny detection / segmentation datasets for tests: coloured shapes on noise, written as JSONL.

Imported by the detection tests (``tests/`` is on ``sys.path`` through its conftest).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

SHAPE_COLOURS = {"red": (220, 40, 40), "blue": (40, 60, 220)}
BCCD = Path(__file__).resolve().parents[2] / "shared" / "data" / "bccd"


def make_detection_dataset(root: Path, *, n: int = 8, size: tuple[int, int] = (96, 80), seed: int = 0,
                           segmentation: bool = False, name: str = "train.jsonl", crowd_every: int = 0,
                           strings: bool = False) -> Path:
    """``n`` PNG images (width x height ``size``), each with 1-2 filled shapes, one class per colour
    (red rectangles, blue diamonds for segmentation); returns the JSONL path. ``strings`` writes the
    numbers as strings (the seed's own style); ``crowd_every`` marks every k-th object as crowd."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    w, h = size
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines, count = [], 0
    for i in range(n):
        pixels = rng.normal(128, 12, (h, w, 3)).clip(0, 255).astype(np.uint8)
        image = Image.fromarray(pixels)
        draw = ImageDraw.Draw(image)
        objects = []
        for k in range(1 + i % 2):
            cls = ("red", "blue")[(i + k) % 2]
            bw, bh = int(rng.integers(18, 30)), int(rng.integers(18, 30))
            x0 = int(rng.integers(0, w // 2 - bw // 2)) + (w // 2 if k else 0)
            x0 = min(x0, w - bw)
            y0 = int(rng.integers(0, h - bh))
            x1, y1 = x0 + bw, y0 + bh
            if segmentation and cls == "blue":
                cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
                pts = [(cx, y0), (x1, cy), (cx, y1), (x0, cy)]
                draw.polygon(pts, fill=SHAPE_COLOURS[cls])
            else:
                pts = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
                draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=SHAPE_COLOURS[cls])
            count += 1
            obj = {"label": cls, "topX": x0 / w, "topY": y0 / h, "bottomX": x1 / w, "bottomY": y1 / h,
                   "isCrowd": int(bool(crowd_every) and count % crowd_every == 0)}
            if segmentation:
                obj["polygon"] = [[round(v, 6) for p in pts for v in (p[0] / w, p[1] / h)]]
            if strings:
                obj = {k: (str(v) if k not in ("label", "polygon") else v) for k, v in obj.items()}
            objects.append(obj)
        rel = f"images/img_{seed}_{i:03d}.png"
        image.save(root / rel)
        lines.append({"image_url": rel, "label": objects})
    path = root / name
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def bccd_jsonl(root: Path, image_set: str, limit: int | None = None, name: str | None = None) -> Path:
    """BCCD (Pascal VOC) images of one official split as detection JSONL, converted by the data
    layer's VOC converter; the 2 zero-area boxes the set is known to hold are left out here."""
    from automl_vision.data.convert import voc_to_jsonl

    lines = voc_to_jsonl(BCCD, root, image_set=image_set).lines
    if limit is not None:
        lines = lines[:limit]
    for line in lines:
        line["label"] = [o for o in line["label"] if o["bottomX"] > o["topX"] and o["bottomY"] > o["topY"]]
    path = root / (name or f"{image_set}.jsonl")
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def voc_objects(xml_path: Path) -> list[tuple[str, float, float, float, float]]:
    """The objects of a VOC annotation file (for cross-checking conversions)."""
    tree = ET.parse(xml_path)
    out = []
    for o in tree.findall("object"):
        bb = o.find("bndbox")
        out.append((o.findtext("name"), *(float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))))
    return out
