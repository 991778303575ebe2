"""The detection and instance-segmentation trial for torchvision's detectors (Faster R-CNN,
RetinaNet, Mask R-CNN); yolov5 trials go to ``training/yolo.py`` (:func:`train_detection` picks).

Data come from the data layer (``data.validate.load_dataset``: JSONL or an ingested dataset,
split by ``split_ratio`` when no validation data is given). Training images get the augmentation
of spec section 6 (random crop keeping every box whole, zoom out, horizontal flip; boxes and
masks move with the image); the model's own transform normalizes and resizes (``min_size``,
``max_size``). With ``tile_grid_size`` each image and each of its tiles is a training sample
(boxes clipped to the tile), and validation runs on the whole image plus its tiles, merged.
Each evaluation reports ``mean_average_precision``, ``precision``, ``recall`` and ``train_loss``
through the metrics reporter; per-label figures go to ``per_label_metrics.jsonl`` and, for the
best evaluation, to ``outputs/metrics.json``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode, decode_image

from automl_vision.errors import ConfigError, DataError, TrainingDiverged
from automl_vision.evaluation.detection_metrics import DetectionMetrics, detection_metrics, ground_truth_of
from automl_vision.evaluation.detections import ImageGroundTruth, ImagePredictions
from automl_vision.evaluation.masks import polygon_to_mask
from automl_vision.evaluation.tiling import clip_to_window, pixel_window, tile_boxes
from automl_vision.models.detection import InferenceSettings, predict_tensors
from automl_vision.models.registry import freeze_layers, get_entry
from automl_vision.spec.tasks import YOLO_MODELS, ImageTask
from automl_vision.training.optim import EarlyStopping, build_optimizer, build_scheduler
from automl_vision.training.reporter import MetricsReporter
from automl_vision.training.trial import (
    CONFIG_FILE,
    METRICS_FILE,
    OUTPUTS_DIR,
    TrialResult,
    TrialSettings,
    default_num_workers,
    pick_device,
    seed_everything,
)

log = logging.getLogger(__name__)

PER_LABEL_FILE = "per_label_metrics.jsonl"
#: Fill colour of zoom-out canvases: the ImageNet mean, so padding normalizes to about zero.
FILL = (124, 116, 104)


# --- data ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DetectionSplits:
    train: tuple  # data-layer ImageRecords
    validation: tuple
    classes: list[str]


def load_detection_splits(settings: TrialSettings) -> DetectionSplits:
    """Training and validation records and the class list (sorted names of every class seen)."""
    from automl_vision.data.validate import load_dataset

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
    from automl_vision.data.images import shape_problem

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


def augment(image, boxes, masks, generator: torch.Generator | None = None):
    """Crop around boxes, zoom out (up to 2x) and flip, each with probability 0.5."""
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
    """

    def __init__(self, records: Sequence, classes: Sequence[str], *, masks: bool, train: bool,
                 tile_grid: tuple[int, int] | None = None, tile_overlap: float = 0.25):
        self.records, self.masks, self.train = list(records), masks, train
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
            image, boxes, masks = augment(image, boxes, masks)
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


def _collate_images(batch):
    return list(batch)


# --- the model -----------------------------------------------------------------------------------

def build_detection_model(settings: TrialSettings, num_classes: int) -> nn.Module:
    """The trial's torchvision detector with its inference settings and frozen layer groups."""
    hp = settings.hyperparameters
    weights = None
    if getattr(settings, "weights", None):
        from automl_vision.models.weights import WeightsSource

        weights = WeightsSource(settings.weights, settings.s3_endpoint, settings.weights_cache)
    entry = get_entry(hp["model_name"], settings.task)
    model = entry.builder(num_classes, pretrained=hp["pretrained"], weights=weights,
                          settings=InferenceSettings.from_hyperparameters(hp))
    if hp.get("layers_to_freeze"):
        frozen = freeze_layers(model, hp["model_name"], settings.task, hp["layers_to_freeze"])
        log.info("froze %d parameter tensors (%d layer groups)", len(frozen), hp["layers_to_freeze"])
    return model


def train_step(model: nn.Module, images: Sequence[torch.Tensor], targets: Sequence[dict], scaler,
               device: torch.device, accumulate: int = 1) -> torch.Tensor:
    """Forward and backward of one batch (already on ``device``); returns the detached total loss."""
    with torch.autocast(device.type, enabled=device.type == "cuda"):
        losses = model(list(images), list(targets))
        loss = sum(losses.values())
    scaler.scale(loss / accumulate).backward()
    return loss.detach()


def to_device(images, targets, device: torch.device):
    nb = device.type == "cuda"
    return ([im.to(device, non_blocking=nb) for im in images],
            [{k: v.to(device, non_blocking=nb) for k, v in t.items()} for t in targets])


@torch.inference_mode()
def predict_loader(model: nn.Module, loader: DataLoader, settings: InferenceSettings, device: torch.device,
                   with_masks: bool) -> list[ImagePredictions]:
    model.eval()
    out: list[ImagePredictions] = []
    for images in loader:
        images = [im.to(device) for im in images]
        with torch.autocast(device.type, enabled=device.type == "cuda"):
            out += predict_tensors(model, images, settings, with_masks=with_masks)
    for p in out:
        if not np.isfinite(p.boxes).all() or not np.isfinite(p.scores).all():
            raise _NonFinite()
    return out


class _NonFinite(Exception):
    pass


# --- outputs -------------------------------------------------------------------------------------

def save_detection_model(model: nn.Module, out_dir: Path, settings: TrialSettings, classes: list[str],
                         result: DetectionMetrics, epoch: int, model_settings: dict[str, Any]) -> None:
    """The model package: weights (safetensors), config (with the inference settings), labels, metrics."""
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = out_dir / "model.safetensors.tmp"
    save_file(state, str(tmp))
    tmp.replace(out_dir / "model.safetensors")
    (out_dir / "labels.json").write_text(json.dumps(classes, indent=2))
    config = {"task": settings.task.value, "model_name": settings.hyperparameters["model_name"],
              "hyperparameters": settings.hyperparameters, "num_classes": len(classes), "epoch": epoch,
              "model_settings": model_settings}
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    (out_dir / "metrics.json").write_text(json.dumps({"epoch": epoch, **result.to_json()}, indent=2))


def write_per_label(path: Path, epoch: int, result: DetectionMetrics) -> None:
    with path.open("a") as f:
        f.write(json.dumps({"epoch": epoch, "per_label": result.per_label,
                            **({"box_per_label": result.box_per_label} if result.box_per_label else {})}) + "\n")


class _Progress:
    """A log line every N steps or every few seconds: step/total, ETA, loss, lr, images/s (no ``name=value``)."""

    def __init__(self, total: int, every: int = 20, min_interval_s: float = 10.0):
        self.total, self.every, self.min_interval_s = total, every, min_interval_s
        self.start = self.last = time.monotonic()
        self.images = 0

    def step(self, step: int, epoch: int, loss: float, lr: float, batch: int) -> None:
        self.images += batch
        now = time.monotonic()
        if step % self.every and now - self.last < self.min_interval_s and step != self.total:
            return
        self.last = now
        elapsed = now - self.start
        eta = int(elapsed / max(step, 1) * (self.total - step))
        log.info("epoch %d step %d/%d  loss %.4f  lr %.3g  %.1f img/s  ETA %d:%02d:%02d", epoch, step, self.total,
                 loss, lr, self.images / max(elapsed, 1e-9), eta // 3600, eta % 3600 // 60, eta % 60)


# --- the trial -----------------------------------------------------------------------------------

def _unsupported(settings: TrialSettings) -> None:
    problems = []
    if getattr(settings, "from_model", None):
        problems.append("incremental training (--from_model) is not available for detection models yet")
    if getattr(settings, "resume", False):
        problems.append("--resume is not available for detection models yet")
    if getattr(settings, "world_size", 1) > 1:
        problems.append("data-parallel training is not available for detection models yet")
    if problems:
        raise ConfigError(problems, "train")


def train_detection(settings: TrialSettings, reporter: MetricsReporter | None = None) -> TrialResult:
    """Run one detection or instance-segmentation trial (any model of the task); returns its result."""
    if settings.task not in (ImageTask.IMAGE_OBJECT_DETECTION, ImageTask.IMAGE_INSTANCE_SEGMENTATION):
        raise ConfigError(f"train_detection runs detection and segmentation trials, not {settings.task.value}")
    _unsupported(settings)
    if settings.hyperparameters["model_name"] in YOLO_MODELS:
        from automl_vision.training.yolo import train_yolo

        return train_yolo(settings, reporter)
    return train_torchvision_detector(settings, reporter)


def train_torchvision_detector(settings: TrialSettings, reporter: MetricsReporter | None = None) -> TrialResult:
    t0 = time.monotonic()
    hp = settings.hyperparameters
    task = settings.task
    segmentation = task is ImageTask.IMAGE_INSTANCE_SEGMENTATION
    out = Path(settings.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_FILE).write_text(json.dumps(settings.to_json(), indent=2))
    reporter = reporter or MetricsReporter(out / METRICS_FILE)
    primary = task.primary_metric

    generator = seed_everything(hp["seed"])
    device = pick_device(settings.device)
    splits = load_detection_splits(settings)
    classes = splits.classes
    infer = InferenceSettings.from_hyperparameters(hp)
    log.info("%s: %d training and %d validation images, %d classes, device %s", hp["model_name"],
             len(splits.train), len(splits.validation), len(classes), device)

    workers = settings.num_workers if settings.num_workers is not None else default_num_workers()
    pin = device.type == "cuda"
    train_ds = DetectionDataset(splits.train, classes, masks=segmentation, train=True,
                                tile_grid=infer.tile_grid_size, tile_overlap=infer.tile_overlap_ratio)
    batch = hp["training_batch_size"]
    train_loader = DataLoader(train_ds, batch_size=batch, shuffle=True, num_workers=workers, pin_memory=pin,
                              collate_fn=collate, generator=generator, drop_last=len(train_ds) > batch,
                              persistent_workers=workers > 0)
    val_loader = DataLoader(ImageOnlyDataset(splits.validation), batch_size=hp["validation_batch_size"],
                            shuffle=False, num_workers=workers, pin_memory=pin, collate_fn=_collate_images,
                            persistent_workers=workers > 0)
    index = {c: i for i, c in enumerate(classes)}
    ground_truth: list[ImageGroundTruth] = [ground_truth_of(r, index, masks=segmentation) for r in splits.validation]

    model = build_detection_model(settings, len(classes)).to(device)
    accumulate = hp["grad_accumulation_step"]
    steps_per_epoch = max(1, math.ceil(len(train_loader) / accumulate))
    optimizer = build_optimizer(model.parameters(), hp)
    scheduler = build_scheduler(optimizer, hp, steps_per_epoch)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    stopper = EarlyStopping(hp["early_stopping"], hp["early_stopping_patience"], hp["early_stopping_delay"],
                            maximize=task.maximize)
    epochs = hp["number_of_epochs"]
    progress = _Progress(epochs * len(train_loader))
    result = TrialResult(status="running", primary_metric=primary)
    global_step = 0
    for epoch in range(1, epochs + 1):
        model.train()
        optimizer.zero_grad(set_to_none=True)
        running, seen = 0.0, 0
        for i, (images, targets) in enumerate(train_loader, start=1):
            images, targets = to_device(images, targets, device)
            loss = train_step(model, images, targets, scaler, device, accumulate)
            value = float(loss)
            global_step += 1
            if not math.isfinite(value):
                raise TrainingDiverged(epoch, global_step, value)
            if i % accumulate == 0 or i == len(train_loader):
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
            running += value * len(images)
            seen += len(images)
            progress.step(global_step, epoch, value, optimizer.param_groups[0]["lr"], len(images))
        result.epochs_completed = epoch
        train_loss = running / max(seen, 1)

        last = epoch == epochs
        if epoch % hp["evaluation_frequency"] and not last:
            continue
        try:
            predictions = predict_loader(model, val_loader, infer, device, segmentation)
        except _NonFinite:
            raise TrainingDiverged(epoch, global_step, math.nan, during="validation") from None
        metrics = detection_metrics(ground_truth, predictions, classes, task, hp["validation_metric_type"],
                                    hp["validation_iou_threshold"])
        value = metrics.metrics.get(primary)
        row = {"epoch": epoch, **({primary: value} if value is not None else {}), "train_loss": train_loss,
               **{k: v for k, v in metrics.metrics.items() if k != primary}}
        reporter.report(row)
        write_per_label(out / PER_LABEL_FILE, epoch, metrics)
        result.history.append({k: (v if v is None or math.isfinite(v) else None) for k, v in row.items()})
        # Without a metric (validation_metric_type none) the latest model is kept.
        if value is None or stopper.improved(value):
            result.best_value = value if value is not None and math.isfinite(value) else None
            result.best_epoch = epoch
            save_detection_model(model, out / OUTPUTS_DIR, settings, classes, metrics, epoch, infer.to_json())
        if hp.get("checkpoint_frequency") and epoch % hp["checkpoint_frequency"] == 0:
            save_checkpoint(out / "checkpoints" / f"epoch_{epoch:04d}.pt", model, optimizer, scheduler, epoch)
        if value is not None and stopper.update(value) and not last:
            log.info("early stopping at epoch %d: %s has not improved for %d evaluations (best %.4f)",
                     epoch, primary, stopper.patience, stopper.best)
            result.status = "early_stopped"
            break
    if result.status == "running":
        result.status = "completed"
    result.duration_s = round(time.monotonic() - t0, 2)
    result.write(out)
    return result


def save_checkpoint(path: Path, model, optimizer, scheduler, epoch: int) -> None:
    """A checkpoint of tensors and plain values (loadable with ``weights_only=True``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict()}, tmp)
    tmp.replace(path)
