"""Classification layouts -> JSONL: one folder per class (``root/<class>/**/<image>``), or a CSV
``filename,labels`` file (labels separated by spaces; several for multi-label)."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from automl_vision.data.convert.common import Conversion, image_url, is_image
from automl_vision.errors import DataError
from automl_vision.spec.tasks import ImageTask


def folders_to_jsonl(source: str | os.PathLike, out_dir: str | os.PathLike, *,
                     task: ImageTask = ImageTask.IMAGE_CLASSIFICATION) -> Conversion:
    """Each top-level folder is a class; images in its sub-folders belong to it too (paths are kept)."""
    if task is not ImageTask.IMAGE_CLASSIFICATION:
        raise DataError(f"a folder-per-class layout gives one class per image (image_classification), not "
                        f"{task.value}; use a CSV file for multi-label")
    root = Path(source)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    out_dir = Path(out_dir)
    conv = Conversion()
    stray = sorted(p.name for p in root.iterdir() if p.is_file() and is_image(p))
    if stray:
        conv.problems.append(f"{root}: {len(stray)} images are not inside a class folder "
                             f"(first: {stray[0]}); move them into root/<class>/")
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images = sorted(p for p in folder.rglob("*") if p.is_file() and is_image(p))
        if not images:
            conv.notes.append(f"folder {folder.name}/ has no images; not a class")
            continue
        for image in images:
            conv.lines.append({"image_url": image_url(image, out_dir), "label": folder.name})
    if not conv.lines and not conv.problems:
        raise DataError(f"{root}: no images in class folders (expected root/<class>/<image>)")
    return conv


def csv_to_jsonl(source: str | os.PathLike, out_dir: str | os.PathLike, *,
                 task: ImageTask = ImageTask.IMAGE_CLASSIFICATION, images_dir: str | os.PathLike | None = None,
                 separator: str | None = None) -> Conversion:
    """Rows ``filename,labels`` (a header row with those names is optional). File names are relative to
    ``images_dir`` (default: the CSV's folder); labels are split on ``separator`` (default: spaces)."""
    if not task.is_classification:
        raise DataError(f"a filename,labels CSV holds classification labels, not {task.value}")
    path = Path(source)
    if not path.is_file():
        raise DataError(f"file not found: {path}")
    images_dir = Path(images_dir) if images_dir is not None else path.parent
    out_dir = Path(out_dir)
    multilabel = task is ImageTask.IMAGE_CLASSIFICATION_MULTILABEL
    conv = Conversion()
    with path.open(newline="", encoding="utf-8-sig") as f:
        for number, row in enumerate(csv.reader(f), start=1):
            where = f"{path}:{number}"
            if not row or all(not c.strip() for c in row):
                continue
            if number == 1 and [c.strip().lower() for c in row[:2]] == ["filename", "labels"]:
                continue
            if len(row) != 2:
                conv.problems.append(f"{where}: {len(row)} columns; expected 2 (filename,labels); quote a "
                                     "labels field that contains commas")
                continue
            filename, text = row[0].strip(), row[1]
            if not filename:
                conv.problems.append(f"{where}: empty filename")
                continue
            labels = [x for x in (text.split(separator) if separator else text.split()) if x.strip()]
            labels = [x.strip() for x in labels]
            if multilabel:
                conv.lines.append({"image_url": image_url(images_dir / filename, out_dir), "label": labels})
            elif len(labels) != 1:
                conv.problems.append(f"{where}: labels={text!r} must be exactly one class name for "
                                     "image_classification (several are multi-label)")
            else:
                conv.lines.append({"image_url": image_url(images_dir / filename, out_dir), "label": labels[0]})
    return conv
