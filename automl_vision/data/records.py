"""Typed records of a validated dataset: what trainers, converters and the manifest read and write.

Coordinates are normalized to [0, 1] of the image's width and height: ``box`` is
``(topX, topY, bottomX, bottomY)`` (xyxy) and each polygon ring is ``(x1, y1, x2, y2, ...)``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain
from operator import attrgetter

from automl_vision.spec.tasks import ImageTask

TRAIN, VALIDATION = "train", "validation"
SPLITS = (TRAIN, VALIDATION)


@dataclass(frozen=True, slots=True)
class ObjectAnnotation:
    """One object of a detection or instance-segmentation image."""

    label: str
    box: tuple[float, float, float, float]  # normalized topX, topY, bottomX, bottomY
    is_crowd: bool = False
    polygons: tuple[tuple[float, ...], ...] = ()  # normalized rings; overlapping rings combine with XOR

    def box_pixels(self, width: int, height: int) -> tuple[float, float, float, float]:
        """The box in pixels (xmin, ymin, xmax, ymax) of an image of the given size."""
        x1, y1, x2, y2 = self.box
        return x1 * width, y1 * height, x2 * width, y2 * height

    def polygons_pixels(self, width: int, height: int) -> list[list[float]]:
        """The rings in pixels, ``[[x1, y1, x2, y2, ...], ...]``."""
        return [[v * (width if i % 2 == 0 else height) for i, v in enumerate(ring)] for ring in self.polygons]


@dataclass(frozen=True, slots=True)
class ImageRecord:
    """One image and its labels, with where its bytes are on this machine.

    ``labels`` is used by the classification tasks (one name for multi-class, any number for
    multi-label); ``objects`` by detection and segmentation.
    """

    image_url: str  # as written in the JSONL file
    path: str  # local file: the resolved path, or the cache copy of a remote object
    width: int | None = None
    height: int | None = None
    format: str | None = None  # jpeg, png, bmp, tiff (from the file when checked, else image_details)
    labels: tuple[str, ...] = ()
    objects: tuple[ObjectAnnotation, ...] = ()
    split: str | None = None  # train | validation | None (not split yet)
    uri: str = ""  # canonical location: absolute path or s3://bucket/key
    source: str = ""  # the JSONL file the record came from
    line: int = 0  # its line in that file
    file_size: int | None = None


@dataclass(frozen=True)
class Dataset:
    """A validated dataset of one task: records in file order and the sorted class names."""

    task: ImageTask
    records: tuple[ImageRecord, ...]
    source: str = ""
    classes: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.classes:
            object.__setattr__(self, "classes", tuple(sorted(class_names(self.records))))

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[ImageRecord]:
        return iter(self.records)

    def subset(self, split: str) -> tuple[ImageRecord, ...]:
        """The records of one split (``train`` or ``validation``)."""
        if split not in SPLITS:
            raise ValueError(f"split={split!r} is not a split; allowed: {', '.join(SPLITS)}")
        return tuple(r for r in self.records if r.split == split)

    @property
    def train(self) -> tuple[ImageRecord, ...]:
        return self.subset(TRAIN)

    @property
    def validation(self) -> tuple[ImageRecord, ...]:
        return self.subset(VALIDATION)

    @property
    def num_objects(self) -> int:
        return sum(len(r.objects) for r in self.records)


def class_names(records: Sequence[ImageRecord]) -> set[str]:
    names = set(chain.from_iterable(map(_labels, records)))
    names.update(map(_label, chain.from_iterable(map(_objects, records))))
    return names


_labels, _objects, _label = attrgetter("labels"), attrgetter("objects"), attrgetter("label")
