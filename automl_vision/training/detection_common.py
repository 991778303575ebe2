"""What the torchvision and yolov5 detection trials share: the data (splits, images, targets), the
augmentation of spec section 6 (at the trial's ``augmentation`` level), incremental training from a
model package, and the scoring of an evaluation into the epoch loop's result (per-label figures to
``per_label_metrics.jsonl``).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_image

from automl_vision.data.images import shape_problem
from automl_vision.data.load import load_dataset
from automl_vision.errors import ConfigError, DataError, TrainingDiverged
from automl_vision.evaluation.detection_metrics import detection_metrics
from automl_vision.models.detections import ImageGroundTruth, ImagePredictions
from automl_vision.models.masks import polygon_to_mask
from automl_vision.models.package import read_package, require_files
from automl_vision.models.tiling import clip_to_window, pixel_window, tile_boxes
from automl_vision.spec.hyperparameters import AUGMENTATION_LEVELS
from automl_vision.spec.tasks import ImageTask
from automl_vision.training.loop import EpochResult
from automl_vision.training.trial import TrialSettings

log = logging.getLogger(__name__)

PER_LABEL_FILE = "per_label_metrics.jsonl"
#: Fill colour of zoom-out canvases: the ImageNet mean, so padding normalizes to about zero.
FILL = (124, 116, 104)


@dataclass(frozen=True)
class DetectionSplits:
    train: tuple  # data-layer ImageRecords
    validation: tuple
    classes: list[str]


def load_detection_splits(settings: TrialSettings) -> DetectionSplits:
    """Training and validation records and the class list (sorted names of every class seen)."""
    hp = settings.hyperparameters
    dataset = load_dataset(settings.training_data, settings.task, validation=settings.validation_data,
                           split_ratio=hp["split_ratio"], seed=hp["seed"])
    train, val = dataset.train, dataset.validation
    if not train or not val:
        raise DataError(f"{settings.training_data}: {len(train)} training and {len(val)} validation images; "
                        "both must be non-empty")
    seen = {o.label for r in train for o in r.objects}
    unseen = sorted({o.label for r in val for o in r.objects} - seen)
    if unseen:
        raise DataError(f"validation data has classes never seen in training: {', '.join(unseen)}")
    if not any(not o.is_crowd for r in train for o in r.objects):
        raise DataError(f"{settings.training_data}: no (non-crowd) object to learn from in the training images")
    if not any(not o.is_crowd for r in val for o in r.objects) and hp["validation_metric_type"] != "none":
        raise DataError("the validation images hold no (non-crowd) object: nothing to measure")
    return DetectionSplits(tuple(train), tuple(val), sorted(seen))


def read_image(path: str, where: str | None = None) -> torch.Tensor:
    """A uint8 CHW RGB tensor of the image as displayed (EXIF orientation applied, like the sizes the
    data layer reports and the normalized boxes refer to). An image too thin to resize safely is
    refused (``data.images.shape_problem``); the error starts with ``where`` (file:line) when given."""
    where = where or path
    try:
        image = decode_image(path, mode=ImageReadMode.RGB, apply_exif_orientation=True)
    except (RuntimeError, OSError) as e:
        raise DataError(f"{where}: cannot read image {path}: {e}") from None
    shape = shape_problem(image.shape[-1], image.shape[-2], input_size=None)
    if shape is not None:
        raise DataError(f"{where}: image {path} {shape[1]}")
    return image


def _where(record) -> str:
    return f"{record.source}:{record.line}" if getattr(record, "source", "") else record.path


def _targets(record, class_index: dict[str, int], width: int, height: int, masks: bool):
    """Pixel boxes, labels 1..C, crowd flags and (segmentation) bool masks of a record."""
    objs = record.objects
    boxes = np.asarray([o.box for o in objs], dtype=np.float64).reshape(-1, 4) * (width, height, width, height)
    labels = np.asarray([class_index[o.label] + 1 for o in objs], dtype=np.int64)
    crowd = np.asarray([o.is_crowd for o in objs], dtype=bool)
    m = np.stack([polygon_to_mask(o.polygons, width, height) for o in objs]) if masks and objs else (
        np.zeros((0, height, width), dtype=bool) if masks else None)
    return boxes, labels, crowd, m


# --- augmentation (spec section 6), on uint8 CHW tensors with pixel xyxy boxes ----------------------

def crop_around_boxes(image: torch.Tensor, boxes: np.ndarray, masks: np.ndarray | None,
                      u: Sequence[float]) -> tuple[torch.Tensor, np.ndarray, np.ndarray | None]:
    """A random crop that keeps every box whole: each border is drawn (``u``: 4 numbers in [0, 1))
    between the image border and the nearest box edge. Without boxes the image is kept."""
    if len(boxes) == 0:
        return image, boxes, masks
    h, w = image.shape[-2:]
    x0 = int(math.floor(u[0] * boxes[:, 0].min()))
    y0 = int(math.floor(u[1] * boxes[:, 1].min()))
    x1 = int(math.ceil(boxes[:, 2].max() + u[2] * (w - boxes[:, 2].max())))
    y1 = int(math.ceil(boxes[:, 3].max() + u[3] * (h - boxes[:, 3].max())))
    x1, y1 = max(min(x1, w), x0 + 1), max(min(y1, h), y0 + 1)
    return (image[:, y0:y1, x0:x1], boxes - (x0, y0, x0, y0),
            masks[:, y0:y1, x0:x1] if masks is not None else None)


def zoom_out(image: torch.Tensor, boxes: np.ndarray, masks: np.ndarray | None, ratio: float,
             u: Sequence[float]) -> tuple[torch.Tensor, np.ndarray, np.ndarray | None]:
    """The image placed at a random spot (``u``: 2 numbers in [0, 1)) of a canvas ``ratio`` times larger."""
    c, h, w = image.shape
    nh, nw = int(round(h * ratio)), int(round(w * ratio))
    top, left = int(u[0] * (nh - h)), int(u[1] * (nw - w))
    canvas = torch.tensor(FILL, dtype=image.dtype).view(3, 1, 1).expand(3, nh, nw).clone()
    canvas[:, top:top + h, left:left + w] = image
    out_masks = None
    if masks is not None:
        out_masks = np.zeros((len(masks), nh, nw), dtype=bool)
        out_masks[:, top:top + h, left:left + w] = masks
    return canvas, boxes + (left, top, left, top), out_masks


def hflip(image: torch.Tensor, boxes: np.ndarray, masks: np.ndarray | None):
    w = image.shape[-1]
    flipped = boxes.copy()
    flipped[:, 0], flipped[:, 2] = w - boxes[:, 2], w - boxes[:, 0]
    return image.flip(-1), flipped, (masks[:, :, ::-1].copy() if masks is not None else None)


def _check_level(level: str) -> None:
    if level not in AUGMENTATION_LEVELS:
        raise ValueError(f"augmentation={level!r} is not allowed; expected one of "
                         + ", ".join(repr(a) for a in AUGMENTATION_LEVELS))


def augment(image, boxes, masks, generator: torch.Generator | None = None, level: str = "default"):
    """The training augmentation of torchvision's detectors, by ``augmentation``: default: crop around
    boxes, zoom out (up to 2x) and horizontal flip, each with probability 0.5; light: horizontal flip with
    probability 0.5 only; none: the image, boxes and masks as they are."""
    if level == "none":
        return image, boxes, masks
    if level == "light":
        if torch.rand(1, generator=generator).item() < 0.5:
            image, boxes, masks = hflip(image, boxes, masks)
        return image, boxes, masks
    _check_level(level)
    r = torch.rand(9, generator=generator).tolist()
    if r[0] < 0.5:
        image, boxes, masks = crop_around_boxes(image, boxes, masks, r[1:5])
    if r[5] < 0.5:
        image, boxes, masks = zoom_out(image, boxes, masks, 1.0 + r[6], r[7:9])
    if torch.rand(1, generator=generator).item() < 0.5:
        image, boxes, masks = hflip(image, boxes, masks)
    return image, boxes, masks


class DetectionDataset(Dataset):
    """Training samples: ``(float CHW image in [0, 1], target dict)`` in torchvision's format.

    With a tile grid every image gives one sample for the whole image and one per tile (boxes
    clipped to the tile; a box keeps at least 1 px of width and height or is dropped). Crowd
    objects are left out of training targets (torchvision's detectors have no notion of them).
    ``train``: augment each sample (:func:`augment`) at ``augmentation`` (none, light or default).
    """

    def __init__(self, records: Sequence, classes: Sequence[str], *, masks: bool, train: bool,
                 tile_grid: tuple[int, int] | None = None, tile_overlap: float = 0.25,
                 augmentation: str = "default"):
        _check_level(augmentation)
        self.records, self.masks, self.train = list(records), masks, train
        self.augmentation = augmentation
        self.index = {c: i for i, c in enumerate(classes)}
        self.items: list[tuple[int, tuple[int, int, int, int] | None]] = []
        for i, r in enumerate(self.records):
            self.items.append((i, None))
            if tile_grid is not None:
                self.items += [(i, pixel_window(t, r.width, r.height))
                               for t in tile_boxes(r.width, r.height, tile_grid, tile_overlap)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int):
        i, window = self.items[k]
        record = self.records[i]
        image = read_image(record.path, _where(record))
        h, w = image.shape[-2:]
        boxes, labels, crowd, masks = _targets(record, self.index, w, h, self.masks)
        keep = ~crowd
        boxes, labels = boxes[keep], labels[keep]
        masks = masks[keep] if masks is not None else None
        if window is not None:
            x1, y1, x2, y2 = window
            image = image[:, y1:y2, x1:x2]
            boxes, kept = clip_to_window(boxes, window)
            labels = labels[kept]
            masks = masks[kept][:, y1:y2, x1:x2] if masks is not None else None
        if self.train:
            image, boxes, masks = augment(image, boxes, masks, level=self.augmentation)
        target = {"boxes": torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                  "labels": torch.as_tensor(labels, dtype=torch.int64)}
        if masks is not None:
            target["masks"] = torch.from_numpy(np.ascontiguousarray(masks)).to(torch.uint8)
        return image.float().div_(255), target


class ImageOnlyDataset(Dataset):
    def __init__(self, records: Sequence):
        self.records = list(records)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, k: int) -> torch.Tensor:
        return read_image(self.records[k].path, _where(self.records[k])).float().div_(255)


def collate(batch):
    return tuple(zip(*batch))


def collate_images(batch):
    return list(batch)


# --- incremental training and scoring ------------------------------------------------------------------

def init_from_package(model: nn.Module, from_model: str | Path, model_name: str, classes: Sequence[str]) -> None:
    """Incremental training: take every weight of an earlier package of the same ``model_name`` whose
    shape fits (with other classes, the class-specific layers of the head start afresh)."""
    package = read_package(require_files(from_model))
    if package.model_name != model_name:
        raise ConfigError(f"from_model {package.path}: the package holds a {package.model_name} model, not "
                          f"{model_name}; incremental training needs the same model_name")
    own = model.state_dict()
    saved = package.state_dict()
    fits = {k: v for k, v in saved.items() if k in own and own[k].shape == v.shape}
    unexpected = sorted(set(saved) - set(own))
    if unexpected or len(fits) < len(own) // 2:
        raise ConfigError([f"from_model {package.path}: the weights do not fit {model_name}:",
                           *(f"unexpected tensor {k}" for k in unexpected[:5]),
                           f"{len(fits)} of {len(own)} tensors fit"])
    model.load_state_dict(fits, strict=False)
    fresh = sorted(set(own) - set(fits))
    log.info("starting from the model package %s (%d of %d classes known; %d tensors start afresh%s)",
             from_model, len(set(package.labels) & set(classes)), len(classes), len(fresh),
             f": {', '.join(fresh[:4])}{' ...' if len(fresh) > 4 else ''}" if fresh else "")


def score_epoch(epoch: int, global_step: int, train_loss: float, ground_truth: Sequence[ImageGroundTruth],
                predictions: Sequence[ImagePredictions], classes: list[str], task: ImageTask, metric_type: str,
                iou_threshold: float, out: Path) -> EpochResult:
    """Detection metrics of one evaluation as the epoch loop takes them; per-label figures appended to
    ``per_label_metrics.jsonl``. Non-finite predictions mean the model diverged."""
    for p in predictions:
        if not (np.isfinite(p.boxes).all() and np.isfinite(p.scores).all()):
            raise TrainingDiverged(epoch, global_step, math.nan, during="validation")
    metrics = detection_metrics(ground_truth, predictions, classes, task, metric_type, iou_threshold)
    primary = task.primary_metric
    value = metrics.metrics.get(primary)
    row = {**({primary: value} if value is not None else {}), "train_loss": train_loss,
           **{k: v for k, v in metrics.metrics.items() if k != primary}}
    with (out / PER_LABEL_FILE).open("a") as f:
        f.write(json.dumps({"epoch": epoch, "per_label": metrics.per_label,
                            **({"box_per_label": metrics.box_per_label} if metrics.box_per_label else {})}) + "\n")
    return EpochResult(row, metrics.to_json())
