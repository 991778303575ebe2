"""The detection and instance-segmentation trial for torchvision's detectors (Faster R-CNN,
RetinaNet, Mask R-CNN); yolov5 trials go to ``training/yolo.py`` (:func:`train_detection` picks).

Data come from the data layer (``data.load.load_dataset``: JSONL or an ingested dataset, split by
``split_ratio`` when no validation data is given); the augmentation of spec section 6, at the
``augmentation`` level, is in ``detection_common.py``, the model's own transform normalizes and
resizes (``min_size``, ``max_size``). With ``tile_grid_size`` each image and each of its tiles is a training sample
(boxes clipped to the tile), and validation runs on the whole image plus its tiles, merged.
Each evaluation reports ``mean_average_precision``, ``precision``, ``recall`` and ``train_loss``
through the epoch loop (``training/loop.py``: reporting, best model, checkpoints, ``--resume``,
early stopping); per-label figures go to ``per_label_metrics.jsonl`` and, for the best
evaluation, to ``outputs/metrics.json``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from automl_vision.errors import ConfigError, TrainingDiverged
from automl_vision.evaluation.detection_metrics import ground_truth_of
from automl_vision.models.detection import DetectorSettings, predict_tensors
from automl_vision.models.detections import ImageGroundTruth, ImagePredictions
from automl_vision.models.device import pick_device
from automl_vision.models.registry import freeze_layers, get_entry
from automl_vision.models.weights import WeightsSource
from automl_vision.spec.hyperparameters import augmentation_level
from automl_vision.spec.tasks import YOLO_MODELS, ImageTask
from automl_vision.training.detection_common import (PER_LABEL_FILE, DetectionDataset, ImageOnlyDataset,
                                                     collate, collate_images, init_from_package,
                                                     load_detection_splits, score_epoch)
from automl_vision.training.loop import EpochResult, Progress, TrialLoop, run_trial
from automl_vision.training.optim import EarlyStopping, build_optimizer, build_scheduler
from automl_vision.training.reporter import MetricsReporter
from automl_vision.training.trial import TrialResult, TrialSettings, default_num_workers, seed_everything
from automl_vision.training.yolo import train_yolo

log = logging.getLogger(__name__)


# --- the model -----------------------------------------------------------------------------------

def build_detection_model(settings: TrialSettings, classes: Sequence[str]) -> nn.Module:
    """The trial's torchvision detector with its inference settings (from an earlier package when
    ``from_model`` is set) and frozen layer groups."""
    hp = settings.hyperparameters
    weights = None
    if getattr(settings, "weights", None):
        weights = WeightsSource(settings.weights, settings.s3_endpoint, settings.weights_cache)
    entry = get_entry(hp["model_name"], settings.task)
    model = entry.builder(len(classes), pretrained=hp["pretrained"] and not settings.from_model, weights=weights,
                          settings=DetectorSettings.from_hyperparameters(hp))
    if settings.from_model:
        init_from_package(model, settings.from_model, hp["model_name"], classes)
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
def predict_loader(model: nn.Module, loader: DataLoader, settings: DetectorSettings, device: torch.device,
                   with_masks: bool) -> list[ImagePredictions]:
    model.eval()
    out: list[ImagePredictions] = []
    for images in loader:
        images = [im.to(device) for im in images]
        with torch.autocast(device.type, enabled=device.type == "cuda"):
            out += predict_tensors(model, images, settings, with_masks=with_masks)
    return out


# --- the trial -----------------------------------------------------------------------------------

class DetectorTrial:
    """A torchvision detector's side of the epoch loop (``training.loop.TaskTrial``)."""

    evaluation_files = (PER_LABEL_FILE,)

    def __init__(self, settings: TrialSettings):
        hp = self.hp = settings.hyperparameters
        self.settings, self.task = settings, settings.task
        self.segmentation = self.task is ImageTask.IMAGE_INSTANCE_SEGMENTATION
        self.generator = seed_everything(hp["seed"])
        self.device = device = pick_device(settings.device)
        splits = load_detection_splits(settings)
        self.classes = classes = splits.classes
        self.infer = infer = DetectorSettings.from_hyperparameters(hp)
        log.info("%s: %d training and %d validation images, %d classes, device %s", hp["model_name"],
                 len(splits.train), len(splits.validation), len(classes), device)

        workers = settings.num_workers if settings.num_workers is not None else default_num_workers()
        pin = device.type == "cuda"
        train_ds = DetectionDataset(splits.train, classes, masks=self.segmentation, train=True,
                                    tile_grid=infer.tile_grid_size, tile_overlap=infer.tile_overlap_ratio,
                                    augmentation=augmentation_level(hp))
        batch = hp["training_batch_size"]
        self.train_loader = DataLoader(train_ds, batch_size=batch, shuffle=True, num_workers=workers, pin_memory=pin,
                                       collate_fn=collate, generator=self.generator, drop_last=len(train_ds) > batch,
                                       persistent_workers=workers > 0)
        self.val_loader = DataLoader(ImageOnlyDataset(splits.validation), batch_size=hp["validation_batch_size"],
                                     shuffle=False, num_workers=workers, pin_memory=pin, collate_fn=collate_images,
                                     persistent_workers=workers > 0)
        index = {c: i for i, c in enumerate(classes)}
        self.ground_truth: list[ImageGroundTruth] = [ground_truth_of(r, index, masks=self.segmentation)
                                                     for r in splits.validation]

        self.model = build_detection_model(settings, classes).to(device)
        self.accumulate = hp["grad_accumulation_step"]
        self.steps_per_epoch = len(self.train_loader)
        self.optimizer = build_optimizer(self.model.parameters(), hp)
        optimizer_steps = max(1, math.ceil(len(self.train_loader) / self.accumulate))
        self.scheduler = build_scheduler(self.optimizer, hp, optimizer_steps)
        self.scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
        self.stopper = EarlyStopping.for_trial(hp, self.task)

    def train_epoch(self, epoch: int, global_step: int, progress: Progress | None) -> tuple[int, float]:
        model, optimizer, n = self.model, self.optimizer, len(self.train_loader)
        model.train()
        optimizer.zero_grad(set_to_none=True)
        running, seen = 0.0, 0
        if progress is not None:
            progress.start_epoch(epoch)
        for i, (images, targets) in enumerate(self.train_loader, start=1):
            images, targets = to_device(images, targets, self.device)
            value = float(train_step(model, images, targets, self.scaler, self.device, self.accumulate))
            global_step += 1
            if not math.isfinite(value):
                raise TrainingDiverged(epoch, global_step, value)
            if i % self.accumulate == 0 or i == n:
                self.scaler.step(optimizer)
                self.scaler.update()
                optimizer.zero_grad(set_to_none=True)
                self.scheduler.step()
            running += value * len(images)
            seen += len(images)
            if progress is not None:
                progress.advance(len(images))
                if progress.due() or i == n:
                    progress.show(value, optimizer.param_groups[0]["lr"])
        return global_step, running / max(seen, 1)

    def evaluate(self, epoch: int, global_step: int, train_loss: float, out: Path) -> EpochResult:
        predictions = predict_loader(self.model, self.val_loader, self.infer, self.device, self.segmentation)
        return score_epoch(epoch, global_step, train_loss, self.ground_truth, predictions, self.classes, self.task,
                           self.hp["validation_metric_type"], self.hp["validation_iou_threshold"], out)

    def model_state(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def checkpoint_state(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict()}

    def restore(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])


def train_detection(settings: TrialSettings, reporter: MetricsReporter | None = None) -> TrialResult:
    """Run one detection or instance-segmentation trial (any model of the task); returns its result."""
    if settings.task not in (ImageTask.IMAGE_OBJECT_DETECTION, ImageTask.IMAGE_INSTANCE_SEGMENTATION):
        raise ConfigError(f"train_detection runs detection and segmentation trials, not {settings.task.value}")
    if settings.world_size > 1:
        raise ConfigError(["data-parallel training is not available for detection models yet"], "train")
    if settings.hyperparameters["model_name"] in YOLO_MODELS:
        return train_yolo(settings, reporter)
    return train_torchvision_detector(settings, reporter)


def train_torchvision_detector(settings: TrialSettings, reporter: MetricsReporter | None = None) -> TrialResult:
    loop = TrialLoop(settings, reporter)
    trial = DetectorTrial(settings)
    loop.attach(trial, generator=trial.generator, device=trial.device)
    return run_trial(loop, progress_bar=settings.progress_bar)
