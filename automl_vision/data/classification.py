"""Reading classification JSON Lines (spec section 2): ``{"image_url": ..., "label": "cat"}``
(multi-class) or ``"label": ["can", "milk_bottle"]`` (multi-label; an empty list means no label).

Every problem is collected with ``file:line`` before failing.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from automl_vision.errors import DataError
from automl_vision.spec.tasks import ImageTask

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".jpe", ".jfif", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class ClassificationSample:
    image_path: str
    labels: tuple[str, ...]  # one label for multi-class
    line: int


@dataclass(frozen=True)
class ClassificationData:
    samples: tuple[ClassificationSample, ...]
    source: str

    @property
    def classes(self) -> list[str]:
        return sorted({label for s in self.samples for label in s.labels})


def resolve_image_path(url: str, jsonl_path: Path) -> Path:
    if url.startswith(("s3://", "azureml://", "AmlDatastore://")):
        raise ValueError(f"remote image_url {url!r} is not supported by this reader yet; use a local path")
    p = Path(url)
    return p if p.is_absolute() else (jsonl_path.parent / p)


def read_classification_jsonl(path: str | os.PathLike, task: ImageTask, *, check_files: bool = True) -> ClassificationData:
    """Read and check a classification JSONL file; raises DataError listing every problem."""
    path = Path(path)
    multilabel = task is ImageTask.IMAGE_CLASSIFICATION_MULTILABEL
    if not path.is_file():
        raise DataError(f"file not found: {path}")
    problems: list[str] = []
    samples: list[ClassificationSample] = []
    seen: dict[str, int] = {}
    with path.open(encoding="utf-8") as f:
        for number, raw in enumerate(f, start=1):
            where = f"{path}:{number}"
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except json.JSONDecodeError as e:
                problems.append(f"{where}: not valid JSON ({e.msg} at column {e.colno})")
                continue
            if not isinstance(row, dict):
                problems.append(f"{where}: a line must be a JSON object, got {type(row).__name__}")
                continue
            url = row.get("image_url")
            if not isinstance(url, str) or not url:
                problems.append(f"{where}: field image_url is missing or not a string")
                continue
            label = row.get("label")
            if multilabel:
                if not isinstance(label, list) or not all(isinstance(x, str) and x.strip() for x in label):
                    problems.append(f"{where}: label={json.dumps(label)} must be a list of class names for {task.value}")
                    continue
                labels = tuple(label)
            else:
                if not isinstance(label, str) or not label.strip():
                    problems.append(f"{where}: label={json.dumps(label)} must be one non-empty class name for {task.value}")
                    continue
                labels = (label,)
            if not url.lower().endswith(IMAGE_EXTENSIONS):
                problems.append(f"{where}: image_url={url!r} has an unsupported format; allowed: "
                                + ", ".join(e[1:] for e in IMAGE_EXTENSIONS))
                continue
            try:
                image = resolve_image_path(url, path)
            except ValueError as e:
                problems.append(f"{where}: {e}")
                continue
            if check_files and not image.is_file():
                problems.append(f"{where}: image_url={url!r}: image not found at {image}")
                continue
            key = str(image.resolve()) if check_files else str(image)
            if key in seen:
                problems.append(f"{where}: image_url={url!r} duplicates line {seen[key]}")
                continue
            seen[key] = number
            samples.append(ClassificationSample(str(image), labels, number))
    if problems:
        raise DataError(problems)
    if not samples:
        raise DataError(f"{path}: no images")
    return ClassificationData(tuple(samples), str(path))
