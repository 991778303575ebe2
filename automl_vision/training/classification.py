"""The classification trial: multi-class (softmax, cross-entropy) and multi-label (sigmoid, BCE, 0.5 threshold).

The trial is assembled by small build functions, each returning the object it builds from the
resolved hyperparameters (``build_loaders`` in ``classification_data.py``, ``build_classifier``,
``build_criterion``, ``build_training``), so tests can check every hyperparameter on the object it
belongs to; ``train_one_epoch`` and ``evaluate`` run on what they return, and
``train_classification`` runs a whole trial through the epoch loop (``training/loop.py``).

Speed: loaders hand uint8 images (decoded, cropped, flipped) to the device, where colour jitter
and normalization run per batch (``models/preprocessing.py``); on CUDA the step runs in mixed
precision (bfloat16 where the GPU has it, else float16 with loss scaling) and channels_last,
and the loop reads the loss back from the GPU only every few steps (non-finite losses are kept
on the device and found at the next read, with the exact step).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from automl_vision.errors import ConfigError, TrainingDiverged
from automl_vision.evaluation.classification import (confusion, multiclass_metrics, multilabel_metrics,
                                                     per_class_report)
from automl_vision.models.classification import classifier_head
from automl_vision.models.device import pick_device
from automl_vision.models.package import PackageContents, read_package, require_files
from automl_vision.models.preprocessing import BatchPreparer, normalization, train_jitter
from automl_vision.models.registry import build_model, freeze_layers
from automl_vision.models.weights import WeightsSource
from automl_vision.spec.tasks import ImageTask
from automl_vision.training.classification_data import build_loaders, class_weights, load_splits
from automl_vision.training.loop import EpochResult, Progress, TrialLoop, run_trial
from automl_vision.training.optim import EarlyStopping, build_optimizer, build_scheduler
from automl_vision.training.reporter import MetricsReporter
from automl_vision.training.trial import TrialResult, TrialSettings, seed_everything

log = logging.getLogger(__name__)

__all__ = [
    "Training", "build_classifier", "build_criterion", "build_training", "evaluate", "train_classification",
    "train_one_epoch",
]

EVALUATIONS_FILE = "evaluations.jsonl"  # confusion matrix of every evaluation
#: On CUDA the loss is read back (a GPU->CPU sync) every this many steps, not at each step.
CUDA_SYNC_EVERY = 25


# --- model ---------------------------------------------------------------------------------------

def _model_options(hp: dict[str, Any], weights: WeightsSource | None) -> dict[str, Any]:
    return {"weights": weights, "image_size": hp["train_crop_size"]}


def build_classifier(hp: dict[str, Any], task: ImageTask, classes: Sequence[str], *,
                     weights: WeightsSource | None = None, from_model: str | Path | None = None) -> nn.Module:
    """The model of ``model_name`` with a head for ``classes``, on the CPU.

    ``from_model``: incremental training from an earlier model package of the same model_name;
    every weight is taken from it, and the head's rows of the classes both know (matched by name);
    new classes start from random rows. ``layers_to_freeze`` is applied last.
    """
    name = hp["model_name"]
    if from_model is None:
        model = build_model(name, task, len(classes), pretrained=hp["pretrained"], **_model_options(hp, weights))
    else:
        package = read_package(require_files(from_model))
        model = build_model(name, task, len(classes), pretrained=False, **_model_options(hp, None))
        _init_from_package(model, package, name, classes)
        log.info("starting from the model package %s (%d of %d classes known)", from_model,
                 len(set(package.labels) & set(classes)), len(classes))
    if hp.get("layers_to_freeze"):
        frozen = freeze_layers(model, name, task, hp["layers_to_freeze"])
        log.info("froze %d parameter tensors (%d layer groups)", len(frozen), hp["layers_to_freeze"])
    return model


def _init_from_package(model: nn.Module, package: PackageContents, name: str, classes: Sequence[str]) -> None:
    old_name = package.model_name
    if old_name != name:
        raise ConfigError(f"from_model {package.path}: the package holds a {old_name} model, not {name}; "
                          f"incremental training needs the same model_name")
    head = classifier_head(model)
    head_keys = {f"{n}.{p}" for n, m in model.named_modules() if m is head for p in ("weight", "bias")}
    own = model.state_dict()
    saved = package.state_dict()
    problems = []
    for key, value in saved.items():
        if key in head_keys:
            continue
        if key not in own:
            problems.append(f"unexpected tensor {key}")
        elif own[key].shape != value.shape:
            problems.append(f"{key} has shape {tuple(value.shape)}, the model needs {tuple(own[key].shape)}")
    absent = [k for k in own if k not in saved and k not in head_keys]
    problems += [f"missing tensor {k}" for k in absent[:5]]
    if problems:
        hint = ""
        if any("pos_embed" in p for p in problems):
            old_size = package.hyperparameters.get("train_crop_size")
            hint = f" (the package was trained at train_crop_size {old_size}: use the same crop size)"
        raise ConfigError([f"from_model {package.path}: the weights do not fit {name}{hint}:", *problems[:8]])
    body = {k: v for k, v in saved.items() if k not in head_keys}
    model.load_state_dict(body, strict=False)
    old_index = {c: i for i, c in enumerate(package.labels)}
    head_prefix = next(iter(head_keys)).rsplit(".", 1)[0]
    old_w, old_b = saved[f"{head_prefix}.weight"], saved.get(f"{head_prefix}.bias")
    with torch.no_grad():
        for new_i, c in enumerate(classes):
            if c in old_index:
                head.weight[new_i] = old_w[old_index[c]]
                if old_b is not None and head.bias is not None:
                    head.bias[new_i] = old_b[old_index[c]]


def build_criterion(task: ImageTask, weights: torch.Tensor | None) -> nn.Module:
    """Cross-entropy (multi-class) or BCE on logits (multi-label), weighted per class for weighted_loss 1/2."""
    if task is ImageTask.IMAGE_CLASSIFICATION_MULTILABEL:
        return nn.BCEWithLogitsLoss(pos_weight=weights)
    return nn.CrossEntropyLoss(weight=weights)


def amp_dtype_for(device: torch.device) -> torch.dtype | None:
    """Mixed precision on CUDA: bfloat16 where the GPU supports it (no loss scaling needed), else float16."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


# --- the assembled trial ---------------------------------------------------------------------------

@dataclass
class Training:
    """Everything a trial trains with, built from the settings by ``build_training``."""

    settings: TrialSettings
    task: ImageTask
    device: torch.device
    classes: list[str]
    model: nn.Module  # what the step calls: the DDP wrapper under torchrun
    module: nn.Module  # the model itself
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    criterion: nn.Module
    eval_criterion: nn.Module
    train_loader: DataLoader
    val_loader: DataLoader
    train_prepare: BatchPreparer
    val_prepare: BatchPreparer
    amp_dtype: torch.dtype | None
    accumulate: int
    steps_per_epoch: int  # optimizer steps
    stopper: EarlyStopping
    generator: torch.Generator
    train_samples: list = field(default_factory=list)
    val_samples: list = field(default_factory=list)

    @property
    def hp(self) -> dict[str, Any]:
        return self.settings.hyperparameters

    @property
    def multilabel(self) -> bool:
        return self.task is ImageTask.IMAGE_CLASSIFICATION_MULTILABEL

    @property
    def distributed(self) -> bool:
        return self.settings.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.settings.rank == 0


def _device_for(settings: TrialSettings) -> torch.device:
    """The training device, with its index on CUDA (torchrun: the process's GPU)."""
    device = pick_device(settings.device)
    if device.type == "cuda":
        if settings.world_size > 1:
            return torch.device("cuda", settings.local_rank)
        return torch.device("cuda", device.index if device.index is not None else torch.cuda.current_device())
    return device


def build_training(settings: TrialSettings, *, samples: tuple[list, list, list[str]] | None = None) -> Training:
    """Seed, read the data and build the loaders, model, loss, optimizer, scheduler and early stopping.

    ``samples``: (train, validation, classes) already read (default: ``load_splits(settings)``).
    """
    hp = settings.hyperparameters
    task = settings.task
    multilabel = task is ImageTask.IMAGE_CLASSIFICATION_MULTILABEL
    generator = seed_everything(hp["seed"])
    if settings.rank:  # other augmentation draws per process; the same initial model everywhere (seeded above)
        generator.manual_seed(hp["seed"] + 1000003 * settings.rank)
    device = _device_for(settings)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    train_s, val_s, classes = samples if samples is not None else load_splits(settings)

    train_loader, val_loader = build_loaders(hp, train_s, val_s, classes, multilabel=multilabel, device=device,
                                             num_workers=settings.num_workers, generator=generator,
                                             rank=settings.rank, world_size=settings.world_size)
    weights = WeightsSource(settings.weights, settings.s3_endpoint, settings.weights_cache) \
        if settings.weights else None
    module = build_classifier(hp, task, classes, weights=weights, from_model=settings.from_model)
    channels_last = device.type == "cuda"
    module.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    model: nn.Module = module
    if settings.world_size > 1:
        model = DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)

    cw = class_weights(train_s, classes, hp["weighted_loss"])
    criterion = build_criterion(task, cw.to(device) if cw is not None else None)
    eval_criterion = build_criterion(task, None)
    accumulate = hp["grad_accumulation_step"]
    steps_per_epoch = max(1, math.ceil(len(train_loader) / accumulate))
    optimizer = build_optimizer(module.parameters(), hp)
    scheduler = build_scheduler(optimizer, hp, steps_per_epoch)
    amp_dtype = amp_dtype_for(device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    stopper = EarlyStopping.for_trial(hp, task)
    # The colour jitter of the augmentation level (none: no jitter); on the CPU the loader did it.
    jitter = train_jitter(hp) if device.type == "cuda" else None
    norm = {k: v for k, v in normalization(hp).items() if k in ("mean", "std")}  # the weights' own statistics
    return Training(settings=settings, task=task, device=device, classes=list(classes), model=model, module=module,
                    optimizer=optimizer, scheduler=scheduler, scaler=scaler, criterion=criterion,
                    eval_criterion=eval_criterion, train_loader=train_loader, val_loader=val_loader,
                    train_prepare=BatchPreparer(device, jitter=jitter, channels_last=channels_last, **norm),
                    val_prepare=BatchPreparer(device, channels_last=channels_last, **norm), amp_dtype=amp_dtype,
                    accumulate=accumulate, steps_per_epoch=steps_per_epoch, stopper=stopper, generator=generator,
                    train_samples=list(train_s), val_samples=list(val_s))


# --- the step --------------------------------------------------------------------------------------

def train_one_epoch(t: Training, batches: Iterable, epoch: int, global_step: int,
                    progress: Progress | None = None, *, sync_every: int | None = None) -> tuple[int, float]:
    """One pass over ``batches`` (``(images, targets)`` pairs; uint8 or float images on any device).

    Returns the global step after the epoch and the mean training loss. Raises TrainingDiverged at
    the first non-finite loss, naming its step; on CUDA the loss is read back every ``sync_every``
    steps (default ``CUDA_SYNC_EVERY``), so a diverged run stops at most that many steps later.
    """
    model, optimizer, scheduler, scaler = t.model, t.optimizer, t.scheduler, t.scaler
    model.train()
    n = len(batches)
    if sync_every is None:
        sync_every = CUDA_SYNC_EVERY if t.device.type == "cuda" else 1
    accumulate = t.accumulate
    scaled = scaler.is_enabled()
    amp = t.amp_dtype is not None
    losses = torch.zeros(n, device=t.device)  # each step's loss, read back at sync points
    checked, shown_sum, shown_n, total = 0, 0.0, 0, 0.0
    if progress is not None:
        progress.start_epoch(epoch)
    optimizer.zero_grad(set_to_none=True)
    for i, (x, y) in enumerate(batches):
        x = t.train_prepare(x)
        y = y.to(t.device, non_blocking=True)
        last = i + 1 == n
        boundary = last or (i + 1) % accumulate == 0
        sync_ctx = model.no_sync() if t.distributed and not boundary else contextlib.nullcontext()
        with sync_ctx:
            with torch.autocast(t.device.type, dtype=t.amp_dtype, enabled=amp):
                logits = model(x)
            loss = t.criterion(logits.float(), y)
            losses[i] = loss.detach()
            if accumulate > 1:
                loss = loss / accumulate
            (scaler.scale(loss) if scaled else loss).backward()
        if boundary:
            if scaled:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
        if progress is not None:
            progress.advance(len(y))
        if last or (i + 1) % sync_every == 0:
            chunk = losses[checked:i + 1]
            bad = ~torch.isfinite(chunk)
            flag = bad.any()
            if t.distributed:  # every process stops together (a NaN travels through the gradient all-reduce)
                flag = flag.float()
                dist.all_reduce(flag)
            if bool(flag):
                if bad.any():
                    j = checked + int(bad.nonzero()[0, 0])
                    raise TrainingDiverged(epoch, global_step + j + 1, float(losses[j]))
                raise TrainingDiverged(epoch, global_step + i + 1, float("nan"))
            s = float(chunk.sum())
            total += s
            shown_sum += s
            shown_n += i + 1 - checked
            checked = i + 1
            if progress is not None and (last or progress.due()):
                progress.show(shown_sum / max(shown_n, 1), optimizer.param_groups[0]["lr"])
                shown_sum, shown_n = 0.0, 0
    return global_step + n, total / max(n, 1)


# --- evaluation ------------------------------------------------------------------------------------

class NonFiniteOutputs(Exception):
    """The model's outputs on validation data are NaN or infinite (its weights diverged)."""

    def __init__(self, loss: float):
        self.loss = loss


@dataclass
class ClassificationEvaluation:
    """One evaluation of a classifier: its metrics, confusion matrix, probabilities and targets."""

    metrics: dict[str, float]  # scalars, reported per evaluation
    confusion_matrix: list  # multi-class: rows true class, columns predicted; multi-label: per class [[tn, fp], [fn, tp]]
    probs: np.ndarray
    targets: np.ndarray


def evaluate(model: nn.Module, loader: Iterable, device: torch.device, multilabel: bool, num_classes: int,
             criterion: nn.Module, *, prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
             amp_dtype: torch.dtype | None = None) -> ClassificationEvaluation:
    """Every metric of spec section 8 on ``loader`` (scikit-learn's formulas)."""
    prepare = prepare or BatchPreparer(device, channels_last=device.type == "cuda")
    model.eval()
    probs, targets = [], []
    loss_sum = torch.zeros((), device=device)
    count = 0
    with torch.inference_mode():
        for x, y in loader:
            x = prepare(x)
            y = y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = model(x)
            logits = logits.float()
            loss_sum += criterion(logits, y) * len(y)
            count += len(y)
            probs.append((torch.sigmoid(logits) if multilabel else torch.softmax(logits, 1)).cpu().numpy())
            targets.append(y.cpu().numpy())
    loss = float(loss_sum) / max(count, 1)
    p, t = np.concatenate(probs), np.concatenate(targets)
    if not np.isfinite(p).all() or not math.isfinite(loss):
        raise NonFiniteOutputs(loss)
    metrics = multilabel_metrics(p, t) if multilabel else multiclass_metrics(p, t, num_classes)
    metrics["loss"] = loss
    return ClassificationEvaluation(metrics, confusion(p, t, num_classes, multilabel), p, t)

# --- the trial ---------------------------------------------------------------------------------------

class ClassificationTrial:
    """The classification side of the epoch loop (``training.loop.TaskTrial``)."""

    evaluation_files = (EVALUATIONS_FILE,)

    def __init__(self, t: Training):
        self.t, self.settings, self.classes, self.stopper = t, t.settings, t.classes, t.stopper
        self.steps_per_epoch = len(t.train_loader)

    def train_epoch(self, epoch: int, global_step: int, progress: Progress | None) -> tuple[int, float]:
        sampler = self.t.train_loader.sampler
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        return train_one_epoch(self.t, self.t.train_loader, epoch, global_step, progress)

    def evaluate(self, epoch: int, global_step: int, train_loss: float, out: Path) -> EpochResult:
        t = self.t
        primary = t.task.primary_metric
        try:
            ev = evaluate(t.module, t.val_loader, t.device, t.multilabel, len(t.classes), t.eval_criterion,
                          prepare=t.val_prepare, amp_dtype=t.amp_dtype)
        except NonFiniteOutputs as e:
            raise TrainingDiverged(epoch, global_step, e.loss, during="validation") from None
        metrics = {**ev.metrics, "train_loss": train_loss}
        with (out / EVALUATIONS_FILE).open("a") as f:
            f.write(json.dumps({"epoch": epoch, "labels": t.classes, "confusion_matrix": ev.confusion_matrix}) + "\n")
        row = {primary: metrics[primary], "loss": metrics["loss"],
               **{k: v for k, v in metrics.items() if k not in (primary, "loss")}}
        report = {"epoch": epoch, "labels": t.classes, "confusion_matrix": ev.confusion_matrix,
                  "per_class": per_class_report(ev.probs, ev.targets, t.classes, t.multilabel)}
        return EpochResult(row, metrics, {"evaluation.json": report})

    def model_state(self) -> dict[str, torch.Tensor]:
        return self.t.module.state_dict()

    def checkpoint_state(self) -> dict[str, Any]:
        t = self.t
        return {"model": t.module.state_dict(), "optimizer": t.optimizer.state_dict(),
                "scheduler": t.scheduler.state_dict(), "scaler": t.scaler.state_dict()}

    def restore(self, state: Mapping[str, Any]) -> None:
        t = self.t
        t.module.load_state_dict(state["model"])
        t.optimizer.load_state_dict(state["optimizer"])
        t.scheduler.load_state_dict(state["scheduler"])
        t.scaler.load_state_dict(state["scaler"])


def _init_distributed(settings: TrialSettings) -> bool:
    """Join the torchrun process group (its address comes from torchrun's environment); True if this call made it."""
    if settings.world_size <= 1:
        return False
    if dist.is_initialized():
        return False
    use_cuda = pick_device(settings.device).type == "cuda"
    dist.init_process_group("nccl" if use_cuda else "gloo", rank=settings.rank, world_size=settings.world_size)
    return True


def _broadcast(value: Any, t: Training) -> Any:
    if not t.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def train_classification(settings: TrialSettings, reporter: MetricsReporter | None = None) -> TrialResult:
    """Run one classification trial to the end; returns its result (also written to ``result.json``)."""
    made_group = _init_distributed(settings)
    try:
        loop = TrialLoop(settings, reporter, is_main=settings.rank == 0)
        t = build_training(settings)
        hp = settings.hyperparameters
        log.info("%s: %d training and %d validation images, %d classes, device %s%s%s", hp["model_name"],
                 len(t.train_samples), len(t.val_samples), len(t.classes), t.device,
                 f", mixed precision {str(t.amp_dtype).removeprefix('torch.')}" if t.amp_dtype else "",
                 f", {settings.world_size} processes" if t.distributed else "")
        loop.attach(ClassificationTrial(t), generator=t.generator, device=t.device,
                    broadcast=lambda value: _broadcast(value, t))
        return run_trial(loop, progress_bar=settings.progress_bar, distributed=t.distributed)
    finally:
        if made_group:
            dist.destroy_process_group()
