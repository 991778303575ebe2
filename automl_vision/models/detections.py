"""Ground truth and predictions of one image, in pixels, as every detection metric reads them."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def _boxes(x) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    return a.reshape(-1, 4) if a.size else np.zeros((0, 4))


@dataclass
class ImageGroundTruth:
    """The labelled objects of one image. ``boxes`` are pixel ``x1, y1, x2, y2``; ``labels`` are
    class indices into the class list; ``masks`` (segmentation) are COCO RLEs, one per object."""

    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    crowd: np.ndarray | None = None
    masks: list[dict] | None = None

    def __post_init__(self):
        self.boxes = _boxes(self.boxes)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        self.crowd = (np.zeros(len(self.labels), dtype=bool) if self.crowd is None
                      else np.asarray(self.crowd, dtype=bool).reshape(-1))
        if not (len(self.boxes) == len(self.labels) == len(self.crowd)):
            raise ValueError("boxes, labels and crowd flags must have the same length")
        if self.masks is not None and len(self.masks) != len(self.labels):
            raise ValueError("one mask per object is needed")


@dataclass
class ImagePredictions:
    """A model's detections on one image (same conventions as :class:`ImageGroundTruth`)."""

    boxes: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    masks: list[dict] | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self.boxes = _boxes(self.boxes)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        if not (len(self.boxes) == len(self.labels) == len(self.scores)):
            raise ValueError("boxes, labels and scores must have the same length")
        if self.masks is not None and len(self.masks) != len(self.labels):
            raise ValueError("one mask per detection is needed")

    @classmethod
    def empty(cls) -> "ImagePredictions":
        return cls(np.zeros((0, 4)), np.zeros(0), np.zeros(0))


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) IoU of ``x1, y1, x2, y2`` boxes (continuous coordinates, no +1)."""
    a, b = _boxes(a), _boxes(b)
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)
