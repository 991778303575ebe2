"""Classification data for the classification trainer (spec section 2): ``{"image_url": ..., "label": "cat"}``
(multi-class) or ``"label": ["can", "milk_bottle"]`` (multi-label; an empty list means no label).

Both functions read through the common validator, so every problem is collected with ``file:line``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from automl_vision.data.images import IMAGE_EXTENSIONS  # noqa: F401  (kept importable from here)
from automl_vision.data.records import Dataset
from automl_vision.data.load import load_dataset
from automl_vision.data.validate import ValidationOptions, validate_dataset
from automl_vision.spec.tasks import ImageTask


@dataclass(frozen=True)
class ClassificationSample:
    image_path: str
    labels: tuple[str, ...]  # one label for multi-class
    line: int
    source: str = ""  # the JSONL file (or manifest) the line is in, for messages


@dataclass(frozen=True)
class ClassificationData:
    samples: tuple[ClassificationSample, ...]
    source: str

    @property
    def classes(self) -> list[str]:
        return sorted({label for s in self.samples for label in s.labels})


def _samples(dataset: Dataset) -> tuple[ClassificationSample, ...]:
    return tuple(ClassificationSample(r.path, r.labels, r.line, r.source) for r in dataset.records)


def read_classification_jsonl(path: str | os.PathLike, task: ImageTask, *,
                              check_files: bool = True) -> ClassificationData:
    """Read and check a classification JSONL file, a path or ``s3://bucket/key`` (images must exist;
    they are not opened; remote ones are fetched, but s3:// image URLs written in the file are refused);
    raises DataError listing every problem."""
    options = ValidationOptions(check_files=check_files, check_images=False, allow_remote=False)
    dataset = validate_dataset(path, task, options=options).raise_if_invalid()
    return ClassificationData(_samples(dataset), str(path))


def load_classification_splits(training: str | os.PathLike, validation: str | os.PathLike | None,
                               task: ImageTask, *, split_ratio: float, seed: int,
                               options: ValidationOptions | None = None,
                               ) -> tuple[list[ClassificationSample], list[ClassificationSample]]:
    """Training and validation samples from JSONL files or ingested datasets (``load_dataset``).

    Without validation data: an ingested dataset's own split, or ``split_ratio`` of a JSONL file
    held out (seeded, stratified by class for multi-class).
    """
    dataset = load_dataset(training, task, validation=validation, split_ratio=split_ratio, seed=seed,
                           options=options)
    train = [ClassificationSample(r.path, r.labels, r.line, r.source) for r in dataset.train]
    val = [ClassificationSample(r.path, r.labels, r.line, r.source) for r in dataset.validation]
    return train, val
