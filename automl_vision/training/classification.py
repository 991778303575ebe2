"""The classification trial: multi-class (softmax, cross-entropy) and multi-label (sigmoid, BCE, 0.5 threshold)."""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from automl_vision.data.classification import ClassificationData, ClassificationSample, read_classification_jsonl
from automl_vision.data.split import split_indices
from automl_vision.errors import DataError, TrainingDiverged
from automl_vision.evaluation.classification import multiclass_metrics, multilabel_metrics
from automl_vision.models.registry import build_model, freeze_layers
from automl_vision.spec.tasks import ImageTask
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

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def train_transform(hp: dict[str, Any]) -> v2.Transform:
    """Spec section 6: random resized crop, horizontal flip, colour jitter, ImageNet normalization."""
    return v2.Compose([
        v2.ToImage(),
        v2.RandomResizedCrop(hp["train_crop_size"], antialias=True),
        v2.RandomHorizontalFlip(),
        v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.05),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def valid_transform(hp: dict[str, Any]) -> v2.Transform:
    """Resize, centre crop, normalize."""
    return v2.Compose([
        v2.ToImage(),
        v2.Resize(hp["valid_resize_size"], antialias=True),
        v2.CenterCrop(hp["valid_crop_size"]),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


class ImageClassificationDataset(Dataset):
    def __init__(self, samples: list[ClassificationSample], classes: list[str], transform, multilabel: bool):
        self.samples, self.transform, self.multilabel = samples, transform, multilabel
        self.index = {c: i for i, c in enumerate(classes)}
        self.num_classes = len(classes)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        s = self.samples[i]
        try:
            with Image.open(s.image_path) as im:
                image = im.convert("RGB")
        except OSError as e:
            raise DataError(f"line {s.line}: cannot read image {s.image_path}: {e}") from None
        if self.multilabel:
            target = torch.zeros(self.num_classes)
            for label in s.labels:
                target[self.index[label]] = 1.0
        else:
            target = self.index[s.labels[0]]
        return self.transform(image), target


def load_splits(settings: TrialSettings) -> tuple[list[ClassificationSample], list[ClassificationSample], list[str]]:
    """Training and validation samples, and the class list (sorted names of every class seen)."""
    hp = settings.hyperparameters
    train = read_classification_jsonl(settings.training_data, settings.task)
    if settings.validation_data:
        val = read_classification_jsonl(settings.validation_data, settings.task)
        train_s, val_s = list(train.samples), list(val.samples)
    else:
        keys = [s.labels[0] if settings.task is ImageTask.IMAGE_CLASSIFICATION else 0 for s in train.samples]
        try:
            ti, vi = split_indices(keys, hp["split_ratio"], hp["seed"],
                                   stratify=settings.task is ImageTask.IMAGE_CLASSIFICATION)
        except ValueError as e:
            raise DataError(f"{settings.training_data}: {e}") from None
        train_s, val_s = [train.samples[i] for i in ti], [train.samples[i] for i in vi]
    classes = ClassificationData(tuple(train_s) + tuple(val_s), "").classes
    unseen = sorted({lab for s in val_s for lab in s.labels} - {lab for s in train_s for lab in s.labels})
    if unseen:
        raise DataError(f"validation data has classes never seen in training: {', '.join(unseen)}")
    if settings.task is ImageTask.IMAGE_CLASSIFICATION and len(classes) < 2:
        raise DataError(f"{settings.training_data}: multi-class classification needs at least 2 classes, "
                        f"found {len(classes)}")
    return train_s, val_s, classes


def class_weights(samples: list[ClassificationSample], classes: list[str], mode: int) -> torch.Tensor | None:
    """weighted_loss 1: inverse class frequency square-rooted; 2: inverse class frequency."""
    if mode == 0:
        return None
    counts = Counter(label for s in samples for label in s.labels)
    freq = torch.tensor([max(1, counts.get(c, 0)) for c in classes], dtype=torch.float32)
    w = freq.sum() / (len(classes) * freq)
    return w.sqrt() if mode == 1 else w


class _Progress:
    """A line every N steps (or every few seconds) with step/total, ETA, loss, lr and images/s.

    Written so that no text looks like ``name=value``: Katib would read it as a metric.
    """

    def __init__(self, epochs: int, steps_per_epoch: int, every: int = 20, min_interval_s: float = 10.0):
        self.total = epochs * steps_per_epoch
        self.steps_per_epoch = steps_per_epoch
        self.every, self.min_interval_s = every, min_interval_s
        self.start = time.monotonic()
        self.last = self.start
        self.images = 0

    def step(self, global_step: int, epoch: int, loss: float, lr: float, batch: int) -> None:
        self.images += batch
        now = time.monotonic()
        if global_step % self.every and now - self.last < self.min_interval_s and global_step != self.total:
            return
        self.last = now
        elapsed = now - self.start
        rate = self.images / max(elapsed, 1e-9)
        eta = elapsed / max(global_step, 1) * (self.total - global_step)
        log.info("epoch %d step %d/%d  loss %.4f  lr %.3g  %.1f img/s  ETA %s",
                 epoch, global_step, self.total, loss, lr, rate, _hms(eta))


def _hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class NonFiniteOutputs(Exception):
    """The model's outputs on validation data are NaN or infinite (its weights diverged)."""

    def __init__(self, loss: float):
        self.loss = loss


def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, multilabel: bool, num_classes: int,
             criterion: nn.Module) -> dict[str, float]:
    model.eval()
    probs, targets, losses, count = [], [], 0.0, 0
    with torch.inference_mode():
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, enabled=device.type == "cuda"):
                logits = model(x)
            logits = logits.float()
            losses += float(criterion(logits, y)) * len(x)
            count += len(x)
            probs.append((torch.sigmoid(logits) if multilabel else torch.softmax(logits, 1)).cpu().numpy())
            targets.append(y.cpu().numpy())
    p, t = np.concatenate(probs), np.concatenate(targets)
    if not np.isfinite(p).all() or not math.isfinite(losses):
        raise NonFiniteOutputs(losses / max(count, 1))
    metrics = multilabel_metrics(p, t) if multilabel else multiclass_metrics(p, t, num_classes)
    metrics["loss"] = losses / max(count, 1)
    return metrics


def save_model(model: nn.Module, out_dir: Path, settings: TrialSettings, classes: list[str],
               metrics: dict[str, float], epoch: int) -> None:
    """The trial's model package: weights (safetensors, no code unpickled to load them), config and labels."""
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = out_dir / "model.safetensors.tmp"
    save_file(state, str(tmp))
    tmp.replace(out_dir / "model.safetensors")
    (out_dir / "labels.json").write_text(json.dumps(classes, indent=2))
    config = {"task": settings.task.value, "model_name": settings.hyperparameters["model_name"],
              "hyperparameters": settings.hyperparameters, "num_classes": len(classes), "epoch": epoch}
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    (out_dir / "metrics.json").write_text(json.dumps({"epoch": epoch, **metrics}, indent=2))


def train_classification(settings: TrialSettings, reporter: MetricsReporter | None = None) -> TrialResult:
    """Run one classification trial to the end; returns its result (also written to ``result.json``)."""
    t0 = time.monotonic()
    hp = settings.hyperparameters
    task = settings.task
    multilabel = task is ImageTask.IMAGE_CLASSIFICATION_MULTILABEL
    out = Path(settings.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_FILE).write_text(json.dumps(settings.to_json(), indent=2))
    reporter = reporter or MetricsReporter(out / METRICS_FILE)
    primary = task.primary_metric

    generator = seed_everything(hp["seed"])
    device = pick_device(settings.device)
    train_s, val_s, classes = load_splits(settings)
    log.info("%s: %d training and %d validation images, %d classes, device %s",
             hp["model_name"], len(train_s), len(val_s), len(classes), device)

    workers = settings.num_workers if settings.num_workers is not None else default_num_workers()
    pin = device.type == "cuda"
    train_ds = ImageClassificationDataset(train_s, classes, train_transform(hp), multilabel)
    val_ds = ImageClassificationDataset(val_s, classes, valid_transform(hp), multilabel)
    batch = hp["training_batch_size"]
    train_loader = DataLoader(train_ds, batch_size=batch, shuffle=True, num_workers=workers, pin_memory=pin,
                              drop_last=len(train_ds) > batch, generator=generator,
                              persistent_workers=workers > 0)
    val_loader = DataLoader(val_ds, batch_size=hp["validation_batch_size"], shuffle=False, num_workers=workers,
                            pin_memory=pin, persistent_workers=workers > 0)

    model = build_model(hp["model_name"], task, len(classes), pretrained=hp["pretrained"])
    if hp.get("layers_to_freeze"):
        frozen = freeze_layers(model, hp["model_name"], task, hp["layers_to_freeze"])
        log.info("froze %d parameter tensors (%d layer groups)", len(frozen), hp["layers_to_freeze"])
    model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)

    weights = class_weights(train_s, classes, hp["weighted_loss"])
    if multilabel:
        criterion: nn.Module = nn.BCEWithLogitsLoss(pos_weight=weights.to(device) if weights is not None else None)
    else:
        criterion = nn.CrossEntropyLoss(weight=weights.to(device) if weights is not None else None)
    eval_criterion = nn.BCEWithLogitsLoss() if multilabel else nn.CrossEntropyLoss()

    accumulate = hp["grad_accumulation_step"]
    steps_per_epoch = max(1, math.ceil(len(train_loader) / accumulate))
    optimizer = build_optimizer(model.parameters(), hp)
    scheduler = build_scheduler(optimizer, hp, steps_per_epoch)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    stopper = EarlyStopping(hp["early_stopping"], hp["early_stopping_patience"], hp["early_stopping_delay"],
                            maximize=task.maximize)
    progress = _Progress(hp["number_of_epochs"], len(train_loader))

    result = TrialResult(status="running", primary_metric=primary)
    epochs = hp["number_of_epochs"]
    global_step = 0
    for epoch in range(1, epochs + 1):
        model.train()
        optimizer.zero_grad(set_to_none=True)
        running, seen = 0.0, 0
        for i, (x, y) in enumerate(train_loader, start=1):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, enabled=device.type == "cuda"):
                loss = criterion(model(x).float(), y)
            value = float(loss.detach())
            global_step += 1
            if not math.isfinite(value):
                raise TrainingDiverged(epoch, global_step, value)
            scaler.scale(loss / accumulate).backward()
            if i % accumulate == 0 or i == len(train_loader):
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
            running += value * len(x)
            seen += len(x)
            progress.step(global_step, epoch, value, optimizer.param_groups[0]["lr"], len(x))
        result.epochs_completed = epoch

        last = epoch == epochs
        if epoch % hp["evaluation_frequency"] and not last:
            continue
        try:
            metrics = evaluate(model, val_loader, device, multilabel, len(classes), eval_criterion)
        except NonFiniteOutputs as e:
            raise TrainingDiverged(epoch, global_step, e.loss, during="validation") from None
        metrics["train_loss"] = running / max(seen, 1)
        value = metrics[primary]
        reporter.report({"epoch": epoch, primary: value, "loss": metrics["loss"],
                         **{k: v for k, v in metrics.items() if k not in (primary, "loss")}})
        result.history.append({"epoch": epoch, **metrics})
        if stopper.improved(value):
            result.best_value, result.best_epoch = value, epoch
            save_model(model, out / OUTPUTS_DIR, settings, classes, metrics, epoch)
        if hp.get("checkpoint_frequency") and epoch % hp["checkpoint_frequency"] == 0:
            save_checkpoint(out / "checkpoints" / f"epoch_{epoch:04d}.pt", model, optimizer, scheduler, epoch)
        if stopper.update(value) and not last:
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
    """A resumable checkpoint (tensors and plain values only, loadable with ``weights_only=True``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict()}, tmp)
    tmp.replace(path)

