"""What every converter shares: JSONL line building, image paths, masks to polygons, writing."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from automl_vision.data.images import FORMAT_OF_EXTENSION, IMAGE_EXTENSIONS, displayed_size
from automl_vision.errors import DataError


@dataclass
class Conversion:
    """The JSONL lines a converter produced, and what it noticed."""

    lines: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # things done on purpose the user should know

    @property
    def objects(self) -> int:
        return sum(len(x["label"]) for x in self.lines if isinstance(x.get("label"), list)
                   and all(isinstance(o, dict) for o in x["label"]))

    @property
    def classes(self) -> list[str]:
        names: set[str] = set()
        for x in self.lines:
            label = x.get("label")
            if isinstance(label, str):
                names.add(label)
            elif isinstance(label, list):
                names.update(o["label"] if isinstance(o, dict) else o for o in label)
        return sorted(names)

    def raise_if_problems(self, source: str) -> None:
        if self.problems:
            raise DataError(self.problems, source)


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def image_url(image: Path, out_dir: Path) -> str:
    """The image's path relative to the JSONL's folder when inside it, else absolute (posix slashes)."""
    image = Path(os.path.abspath(image))
    out_dir = Path(os.path.abspath(out_dir))
    try:
        return image.relative_to(out_dir).as_posix()
    except ValueError:
        return image.as_posix()


def details(path: Path | str, width: int | None, height: int | None) -> dict[str, Any]:
    """A fresh ``image_details`` dict for one image (never shared between lines)."""
    out: dict[str, Any] = {}
    fmt = FORMAT_OF_EXTENSION.get(Path(path).suffix.lower().lstrip("."))
    if fmt:
        out["format"] = fmt
    if width and height:
        out["width"], out["height"] = int(width), int(height)
    return out


def image_size(path: Path) -> tuple[int, int] | None:
    """Width and height from the image header, or None if it cannot be read."""
    try:
        with Image.open(path) as im:
            return displayed_size(im)  # the image as displayed: what image_details and the boxes describe
    except (OSError, ValueError):
        return None


def box_line(label: str, x1: float, y1: float, x2: float, y2: float, crowd: bool = False,
             polygons: list[list[float]] | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {"label": label, "topX": x1, "topY": y1, "bottomX": x2, "bottomY": y2,
                           "isCrowd": int(bool(crowd))}
    if polygons is not None:
        obj["polygon"] = polygons
    return obj


def mask_to_polygons(mask: np.ndarray) -> list[list[float]]:
    """Pixel-coordinate rings of a binary mask: outer boundaries and holes (rings combine with XOR).

    Points sit at pixel centres (+0.5), as detectron2 does; regions too small to give 3 points are
    dropped.
    """
    import cv2  # only to convert masks (about 0.2 s to import; loading a dataset imports this package)

    m = np.ascontiguousarray(mask.astype(np.uint8))
    if not m.any():
        return []
    contours, _ = cv2.findContours(m, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    rings = []
    for c in contours:
        flat = (c.reshape(-1, 2).astype(np.float64) + 0.5).ravel().tolist()
        if len(flat) >= 6:
            rings.append(flat)
    return rings


def normalize_ring(ring: list[float], width: int, height: int) -> list[float]:
    return [v / (width if i % 2 == 0 else height) for i, v in enumerate(ring)]


def write_jsonl(lines: list[dict[str, Any]], out: str | os.PathLike) -> Path:
    """Write one JSON object per line, atomically."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for line in lines:
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
    os.replace(tmp, out)
    return out
