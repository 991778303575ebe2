"""YOLO txt labels -> JSONL. Each image ``.../images/<sub>/x.jpg`` has ``.../labels/<sub>/x.txt`` (or
``x.txt`` beside it) with one object per line: ``class cx cy w h`` (detection) or
``class x1 y1 x2 y2 ...`` (segmentation), all normalized. Class names come from a names file
(``classes.txt``, ``obj.names``: one per line) or a data YAML (``names:``)."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from automl_vision.data.convert.common import Conversion, box_line, image_url, is_image
from automl_vision.errors import DataError
from automl_vision.spec.tasks import ImageTask

NAMES_FILES = ("classes.txt", "obj.names", "data.yaml", "dataset.yaml", "data.yml")


def read_names(path: Path) -> list[str]:
    """Class names from a txt (one per line) or YAML (``names:`` as a list or {id: name}) file."""
    if path.suffix in (".yaml", ".yml"):
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise DataError(f"{path}: not valid YAML ({e})") from None
        names = data.get("names") if isinstance(data, dict) else None
        if isinstance(names, dict):
            try:
                keys = sorted(int(k) for k in names)
            except (TypeError, ValueError):
                raise DataError(f"{path}: names must map class ids 0, 1, ... to names") from None
            if keys != list(range(len(keys))):
                raise DataError(f"{path}: names must number classes 0..{len(keys) - 1} without gaps")
            return [str(names[k] if k in names else names[str(k)]) for k in keys]
        if isinstance(names, list):
            return [str(n) for n in names]
        raise DataError(f"{path}: no names list")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _label_file(image: Path, root: Path) -> Path:
    parts = list(image.relative_to(root).parts)
    if "images" in parts:
        i = len(parts) - 1 - parts[::-1].index("images")  # the last "images" folder, as ultralytics does
        parts[i] = "labels"
        return (root / Path(*parts)).with_suffix(".txt")
    return image.with_suffix(".txt")


def yolo_to_jsonl(source: str | os.PathLike, out_dir: str | os.PathLike, *,
                  task: ImageTask = ImageTask.IMAGE_OBJECT_DETECTION,
                  names: str | os.PathLike | None = None) -> Conversion:
    """JSONL lines for a YOLO dataset folder (or its data YAML). Images without a label file have no objects."""
    if task.is_classification:
        raise DataError(f"YOLO txt labels hold detection or segmentation labels, not {task.value}")
    src = Path(source)
    if src.is_file() and src.suffix in (".yaml", ".yml"):
        data = yaml.safe_load(src.read_text()) or {}
        root = Path(data.get("path") or src.parent)
        if not root.is_absolute():
            root = src.parent / root
        names_file = Path(names) if names else src
    else:
        root = src
        names_file = Path(names) if names else next((root / n for n in NAMES_FILES if (root / n).is_file()), None)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    if names_file is None:
        raise DataError(f"{root}: no class-name file ({', '.join(NAMES_FILES)}); pass one with --names")
    class_names = read_names(names_file)
    if not class_names:
        raise DataError(f"{names_file}: no class names")
    segmentation = task is ImageTask.IMAGE_INSTANCE_SEGMENTATION
    out_dir = Path(out_dir)
    conv = Conversion()
    images = sorted(p for p in root.rglob("*") if p.is_file() and is_image(p))
    if not images:
        raise DataError(f"{root}: no images")
    without = 0
    for image in images:
        label_file = _label_file(image, root)
        objects = []
        if not label_file.is_file():
            without += 1
        else:
            for number, text in enumerate(label_file.read_text().splitlines(), start=1):
                where = f"{label_file}:{number}"
                tokens = text.split()
                if not tokens:
                    continue
                try:
                    cls = int(tokens[0])
                    values = [float(t) for t in tokens[1:]]
                except ValueError:
                    conv.problems.append(f"{where}: {text.strip()!r} must be 'class x y ...' with numbers")
                    continue
                if not 0 <= cls < len(class_names):
                    conv.problems.append(f"{where}: class id {cls} is not a known class (the names file "
                                         f"{names_file} has ids 0..{len(class_names) - 1})")
                    continue
                name = class_names[cls]
                if len(values) == 4:
                    if segmentation:
                        conv.problems.append(f"{where}: a box (class cx cy w h) where instance segmentation "
                                             "needs a polygon (class x1 y1 x2 y2 x3 y3 ...)")
                        continue
                    cx, cy, w, h = values
                    objects.append(box_line(name, cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2))
                elif len(values) >= 6 and len(values) % 2 == 0:
                    xs, ys = values[0::2], values[1::2]
                    objects.append(box_line(name, min(xs), min(ys), max(xs), max(ys), False,
                                            [values] if segmentation else None))
                else:
                    conv.problems.append(f"{where}: {len(values)} numbers after the class id; expected 4 (a box) "
                                         "or an even count of at least 6 (a polygon)")
        conv.lines.append({"image_url": image_url(image, out_dir), "label": objects})
    if without:
        conv.notes.append(f"{without} images have no label file: converted as images without objects")
    return conv
