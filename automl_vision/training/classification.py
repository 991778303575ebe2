"""The classification trial: multi-class (softmax, cross-entropy) and multi-label (sigmoid, BCE, 0.5 threshold).

The trial is assembled by small build functions, each returning the object it builds from the
resolved hyperparameters (``build_loaders``, ``build_classifier``, ``build_criterion``,
``build_training``), so tests can check every hyperparameter on the object it belongs to;
``train_one_epoch`` and ``evaluate`` run on what they return, and ``train_classification``
runs a whole trial.

Speed: loaders hand uint8 images (decoded, cropped, flipped) to the device, where colour jitter
and normalization run per batch (``training/augment.py``); on CUDA the step runs in mixed
precision (bfloat16 where the GPU has it, else float16 with loss scaling) and channels_last,
and the loop reads the loss back from the GPU only every few steps (non-finite losses are kept
on the device and found at the next read, with the exact step).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from automl_vision.data.classification import ClassificationData, ClassificationSample, load_classification_splits
from automl_vision.data.images import read_rgb
from automl_vision.errors import ConfigError, DataError, TrainingDiverged
from automl_vision.evaluation.classification import (confusion, multiclass_metrics, multilabel_metrics,
                                                     per_class_report)
from automl_vision.models.registry import build_model, freeze_layers
from automl_vision.models.weights import WeightsSource
from automl_vision.spec.tasks import ImageTask
from automl_vision.training.augment import DEFAULT_JITTER, IMAGENET_MEAN, IMAGENET_STD, BatchPreparer
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

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "ImageClassificationDataset", "Training", "build_classifier", "build_criterion",
    "build_loaders", "build_training", "class_weights", "evaluate", "load_model_package", "load_splits",
    "save_model", "train_classification", "train_one_epoch", "train_transform", "valid_transform",
]

CHECKPOINTS_DIR = "checkpoints"
EVALUATIONS_FILE = "evaluations.jsonl"  # confusion matrix of every evaluation
#: On CUDA the loss is read back (a GPU->CPU sync) every this many steps, not at each step.
CUDA_SYNC_EVERY = 25


# --- images ------------------------------------------------------------------------------------

def normalization(hp: Mapping[str, Any]) -> dict[str, Any]:
    """mean, std and interpolation of the model's input: the pretrained weights' own (timm's pretrained cfg,
    torchvision's weights transforms), ImageNet's and bilinear for models trained from scratch. Given
    explicitly (``mean``/``std``/``interpolation`` keys, as a model package's settings carry them), they are
    used as they are."""
    if "mean" in hp and "std" in hp:
        return {"mean": list(hp["mean"]), "std": list(hp["std"]), "interpolation": hp.get("interpolation", "bilinear")}
    from automl_vision.models.classification import preprocessing

    return preprocessing(str(hp.get("model_name", "")), bool(hp.get("pretrained")))


def _interpolation(hp: Mapping[str, Any]) -> v2.InterpolationMode:
    return v2.InterpolationMode(normalization(hp)["interpolation"])


def train_image_transform(hp: dict[str, Any]) -> v2.Transform:
    """Spec section 6, the part run per image in the loader: random resized crop and horizontal flip (uint8)."""
    return v2.Compose([
        v2.PILToTensor(),
        v2.RandomResizedCrop(hp["train_crop_size"], interpolation=_interpolation(hp), antialias=True),
        v2.RandomHorizontalFlip(),
    ])


def valid_image_transform(hp: dict[str, Any]) -> v2.Transform:
    """Resize and centre crop (uint8); normalization happens on the device."""
    return v2.Compose([
        v2.PILToTensor(),
        v2.Resize(hp["valid_resize_size"], interpolation=_interpolation(hp), antialias=True),
        v2.CenterCrop(hp["valid_crop_size"]),
    ])


class _PrepareOnCpu:
    """Colour jitter and normalization of one image on the CPU (loaders feeding a CPU model)."""

    def __init__(self, jitter, norm: Mapping[str, Any] | None = None):
        norm = norm or normalization({})
        self.prepare = BatchPreparer(torch.device("cpu"), jitter=jitter, mean=norm["mean"], std=norm["std"])
        self.norm = norm

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return self.prepare(image.unsqueeze(0)).squeeze(0)

    def __repr__(self) -> str:
        b, c, s, h = self.prepare.jitter or (0, 0, 0, 0)
        jitter = f"ColorJitter(brightness {b}, contrast {c}, saturation {s}, hue {h}), " if self.prepare.jitter else ""
        return f"{jitter}Normalize(mean {self.norm['mean']}, std {self.norm['std']})"


class OneThread:
    """Runs a per-image transform with one intra-op thread.

    Ops on a single image are too small to gain from threads, and when the cores are busy (the
    training itself, other pods, a CPU quota) every parallel op waits for a second thread to be
    scheduled: measured here, 1 ms per image with one thread against 170 ms with two on a loaded
    2-core machine. DataLoader workers already run single-threaded; this covers the main process
    (``num_workers`` 0) and inference.
    """

    def __init__(self, transform: Callable):
        self.transform = transform

    def __call__(self, image):
        threads = torch.get_num_threads()
        if threads == 1:
            return self.transform(image)
        torch.set_num_threads(1)
        try:
            return self.transform(image)
        finally:
            torch.set_num_threads(threads)

    def __repr__(self) -> str:
        return repr(self.transform)


def train_transform(hp: dict[str, Any]) -> Callable[[Image.Image], torch.Tensor]:
    """The whole training augmentation of one image, ending in a normalized float tensor:
    random resized crop, horizontal flip, colour jitter (brightness, contrast, saturation, hue), ImageNet normalization."""
    return OneThread(v2.Compose([train_image_transform(hp), _PrepareOnCpu(DEFAULT_JITTER, normalization(hp))]))


def valid_transform(hp: dict[str, Any]) -> Callable[[Image.Image], torch.Tensor]:
    """Validation and inference: resize, centre crop, normalize (a float tensor)."""
    return OneThread(v2.Compose([valid_image_transform(hp), _PrepareOnCpu(None, normalization(hp))]))


def _sample_path(s) -> str:
    return getattr(s, "image_path", None) or s.path


class ImageClassificationDataset(Dataset):
    """Images and targets: a class index (multi-class) or a 0/1 float vector (multi-label).

    ``draft``: JPEGs are decoded at a reduced scale when they are at least this size on both
    sides (validation: the resize size), which is several times faster for large photos.
    ``input_size``: the shorter side the transform resizes to; an image that resize would blow up
    (too thin, see ``data.images.shape_problem``) is refused before it is decoded. Images are read as
    displayed (EXIF orientation applied), like the sizes the data layer reports.
    """

    def __init__(self, samples: Sequence, classes: Sequence[str], transform, multilabel: bool,
                 draft: int | None = None, input_size: int | None = None):
        self.samples, self.transform, self.multilabel = list(samples), transform, multilabel
        self.index = {c: i for i, c in enumerate(classes)}
        self.num_classes = len(classes)
        self.draft = draft
        self.input_size = input_size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        s = self.samples[i]
        path = _sample_path(s)
        source = getattr(s, "source", "")
        where = f"{source}:{s.line}" if source else f"line {s.line}"
        image = read_rgb(path, where=where, input_size=self.input_size, draft=self.draft)
        if self.multilabel:
            target = torch.zeros(self.num_classes)
            for label in s.labels:
                target[self.index[label]] = 1.0
        else:
            target = self.index[s.labels[0]]
        return self.transform(image), target


# --- data ----------------------------------------------------------------------------------------

def load_splits(settings: TrialSettings) -> tuple[list[ClassificationSample], list[ClassificationSample], list[str]]:
    """Training and validation samples, and the class list (sorted names of every class seen)."""
    hp = settings.hyperparameters
    # JSONL files or an ingested dataset (automl-vision data validate --output-dir); remote images are
    # fetched into the cache; without validation data split_ratio is held out (an ingested one keeps its split).
    train_s, val_s = load_classification_splits(settings.training_data, settings.validation_data, settings.task,
                                                split_ratio=hp["split_ratio"], seed=hp["seed"])
    classes = ClassificationData(tuple(train_s) + tuple(val_s), "").classes
    unseen = sorted({lab for s in val_s for lab in s.labels} - {lab for s in train_s for lab in s.labels})
    if unseen:
        raise DataError(f"validation data has classes never seen in training: {', '.join(unseen)}")
    if settings.task is ImageTask.IMAGE_CLASSIFICATION and len(classes) < 2:
        raise DataError(f"{settings.training_data}: multi-class classification needs at least 2 classes, "
                        f"found {len(classes)}")
    return train_s, val_s, classes


def class_weights(samples: Iterable, classes: list[str], mode: int) -> torch.Tensor | None:
    """weighted_loss 1: inverse class frequency square-rooted; 2: inverse class frequency (mean 1 over classes)."""
    if mode == 0:
        return None
    counts = Counter(label for s in samples for label in s.labels)
    freq = torch.tensor([max(1, counts.get(c, 0)) for c in classes], dtype=torch.float32)
    w = freq.sum() / (len(classes) * freq)
    return w.sqrt() if mode == 1 else w


def build_loaders(hp: dict[str, Any], train_samples: Sequence, val_samples: Sequence, classes: Sequence[str], *,
                  multilabel: bool, device: torch.device, num_workers: int | None = None,
                  generator: torch.Generator | None = None, rank: int = 0,
                  world_size: int = 1) -> tuple[DataLoader, DataLoader]:
    """The training and validation loaders.

    Batch sizes are per process (under torchrun each GPU takes ``training_batch_size`` images).
    Workers: ``num_workers`` or the machine's cores (``default_num_workers``); pinned memory on CUDA.
    On CUDA the loaders give uint8 images and the colour jitter runs on the GPU; on the CPU the
    loaders do it, per image.
    """
    jitter_on_device = device.type == "cuda"
    train_tf = OneThread(train_image_transform(hp)) if jitter_on_device else train_transform(hp)
    val_tf = OneThread(valid_image_transform(hp)) if jitter_on_device else valid_transform(hp)
    size = max(hp["valid_resize_size"], hp["train_crop_size"])
    train_ds = ImageClassificationDataset(train_samples, classes, train_tf, multilabel, input_size=size)
    val_ds = ImageClassificationDataset(val_samples, classes, val_tf, multilabel, draft=hp["valid_resize_size"],
                                        input_size=size)
    workers = default_num_workers(world_size) if num_workers is None else num_workers
    pin = device.type == "cuda"
    common: dict[str, Any] = {"num_workers": workers, "pin_memory": pin, "persistent_workers": workers > 0}
    if workers:
        common["prefetch_factor"] = 4
    batch = hp["training_batch_size"]
    sampler = None
    per_rank = len(train_ds)
    if world_size > 1:
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(train_ds, num_replicas=world_size, rank=rank, shuffle=True, seed=hp["seed"],
                                     drop_last=True)
        per_rank = len(sampler)
    # Dropping the last partial batch keeps a 1-image batch away from batch norm.
    train_loader = DataLoader(train_ds, batch_size=batch, shuffle=sampler is None, sampler=sampler,
                              drop_last=per_rank > batch, generator=generator, **common)
    val_loader = DataLoader(val_ds, batch_size=hp["validation_batch_size"], shuffle=False, **common)
    return train_loader, val_loader


# --- model ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelPackage:
    """A trained model as a trial writes it to ``outputs/``."""

    folder: Path
    config: dict[str, Any]
    labels: list[str]
    state: dict[str, torch.Tensor]


def load_model_package(folder: str | Path) -> ModelPackage:
    """Read ``model.safetensors``, ``config.json`` and ``labels.json`` of a model package."""
    from safetensors.torch import load_file

    folder = Path(folder)
    missing = [n for n in ("model.safetensors", "config.json", "labels.json") if not (folder / n).is_file()]
    if missing:
        raise ConfigError(f"{folder} is not a model package: missing {', '.join(missing)} "
                          f"(a trial's outputs/ folder or a run's best_model/ holds all three)")
    config = json.loads((folder / "config.json").read_text())
    labels = json.loads((folder / "labels.json").read_text())
    return ModelPackage(folder, config, labels, load_file(str(folder / "model.safetensors")))


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
        package = load_model_package(from_model)
        model = build_model(name, task, len(classes), pretrained=False, **_model_options(hp, None))
        _init_from_package(model, package, name, classes)
        log.info("starting from the model package %s (%d of %d classes known)", from_model,
                 len(set(package.labels) & set(classes)), len(classes))
    if hp.get("layers_to_freeze"):
        frozen = freeze_layers(model, name, task, hp["layers_to_freeze"])
        log.info("froze %d parameter tensors (%d layer groups)", len(frozen), hp["layers_to_freeze"])
    return model


def _init_from_package(model: nn.Module, package: ModelPackage, name: str, classes: Sequence[str]) -> None:
    from automl_vision.models.classification import classifier_head

    old_name = package.config.get("model_name")
    if old_name != name:
        raise ConfigError(f"from_model {package.folder}: the package holds a {old_name} model, not {name}; "
                          f"incremental training needs the same model_name")
    head = classifier_head(model)
    head_keys = {f"{n}.{p}" for n, m in model.named_modules() if m is head for p in ("weight", "bias")}
    own = model.state_dict()
    problems = []
    for key, value in package.state.items():
        if key in head_keys:
            continue
        if key not in own:
            problems.append(f"unexpected tensor {key}")
        elif own[key].shape != value.shape:
            problems.append(f"{key} has shape {tuple(value.shape)}, the model needs {tuple(own[key].shape)}")
    absent = [k for k in own if k not in package.state and k not in head_keys]
    problems += [f"missing tensor {k}" for k in absent[:5]]
    if problems:
        hint = ""
        if any("pos_embed" in p for p in problems):
            old_size = package.config.get("hyperparameters", {}).get("train_crop_size")
            hint = f" (the package was trained at train_crop_size {old_size}: use the same crop size)"
        raise ConfigError([f"from_model {package.folder}: the weights do not fit {name}{hint}:", *problems[:8]])
    body = {k: v for k, v in package.state.items() if k not in head_keys}
    model.load_state_dict(body, strict=False)
    old_index = {c: i for i, c in enumerate(package.labels)}
    head_prefix = next(iter(head_keys)).rsplit(".", 1)[0]
    old_w, old_b = package.state[f"{head_prefix}.weight"], package.state.get(f"{head_prefix}.bias")
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
        from torch.nn.parallel import DistributedDataParallel

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
    stopper = EarlyStopping(hp["early_stopping"], hp["early_stopping_patience"], hp["early_stopping_delay"],
                            maximize=task.maximize)
    jitter = DEFAULT_JITTER if device.type == "cuda" else None  # on the CPU the loader did it
    norm = {k: v for k, v in normalization(hp).items() if k in ("mean", "std")}  # the weights' own statistics
    return Training(settings=settings, task=task, device=device, classes=list(classes), model=model, module=module,
                    optimizer=optimizer, scheduler=scheduler, scaler=scaler, criterion=criterion,
                    eval_criterion=eval_criterion, train_loader=train_loader, val_loader=val_loader,
                    train_prepare=BatchPreparer(device, jitter=jitter, channels_last=channels_last, **norm),
                    val_prepare=BatchPreparer(device, channels_last=channels_last, **norm), amp_dtype=amp_dtype,
                    accumulate=accumulate, steps_per_epoch=steps_per_epoch, stopper=stopper, generator=generator,
                    train_samples=list(train_s), val_samples=list(val_s))


# --- progress ------------------------------------------------------------------------------------

def _hms(seconds: float) -> str:
    s = int(max(0, seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Progress:
    """A bar per epoch on a terminal, or a log line every ``every`` steps (and at least every
    ``min_interval_s`` seconds) in a pod log: step/total, ETA, loss, lr, images/s.

    No text it writes looks like ``name=value``: Katib would read it as a metric.
    """

    def __init__(self, epochs: int, steps_per_epoch: int, *, bar: bool = False, every: int = 50,
                 min_interval_s: float = 30.0, first_epoch: int = 1):
        self.epochs, self.steps_per_epoch = epochs, steps_per_epoch
        self.total = (epochs - first_epoch + 1) * steps_per_epoch
        self.bar, self.every, self.min_interval_s = bar, every, min_interval_s
        self.done = 0  # steps run by this process (for the ETA)
        self.train_time = 0.0
        self._bar = None
        self.epoch = 0

    def start_epoch(self, epoch: int) -> None:
        self.epoch, self.step, self.images = epoch, 0, 0
        self.t0 = self.last = time.monotonic()
        self.last_step = 0
        if self.bar:
            from tqdm import tqdm

            self._bar = tqdm(total=self.steps_per_epoch, desc=f"epoch {epoch}/{self.epochs}", unit="step",
                             dynamic_ncols=True, leave=True)

    def advance(self, images: int) -> None:
        self.step += 1
        self.images += images
        if self._bar is not None:
            self._bar.update(1)

    def due(self) -> bool:
        return self.step - self.last_step >= self.every or time.monotonic() - self.last >= self.min_interval_s

    def show(self, loss: float, lr: float) -> None:
        now = time.monotonic()
        self.last, self.last_step = now, self.step
        elapsed = now - self.t0
        rate = self.images / max(elapsed, 1e-9)
        per_step = (self.train_time + elapsed) / max(1, self.done + self.step)
        eta = per_step * (self.total - self.done - self.step)
        if self._bar is not None:
            self._bar.set_postfix_str(f"loss {loss:.4f}  lr {lr:.3g}  {rate:.1f} img/s", refresh=False)
            return
        log.info("epoch %d/%d step %d/%d  loss %.4f  lr %.3g  %.1f img/s  ETA %s", self.epoch, self.epochs,
                 self.step, self.steps_per_epoch, loss, lr, rate, _hms(eta))

    def end_epoch(self) -> float:
        """Closes the epoch; returns its images/s."""
        elapsed = time.monotonic() - self.t0
        self.train_time += elapsed
        self.done += self.step
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        return self.images / max(elapsed, 1e-9)


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
                torch.distributed.all_reduce(flag)
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
class Evaluation:
    metrics: dict[str, float]  # scalars, reported per evaluation
    confusion_matrix: list  # multi-class: rows true class, columns predicted; multi-label: per class [[tn, fp], [fn, tp]]
    probs: np.ndarray
    targets: np.ndarray


def evaluate(model: nn.Module, loader: Iterable, device: torch.device, multilabel: bool, num_classes: int,
             criterion: nn.Module, *, prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
             amp_dtype: torch.dtype | None = None) -> Evaluation:
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
    return Evaluation(metrics, confusion(p, t, num_classes, multilabel), p, t)


# --- outputs ---------------------------------------------------------------------------------------

def save_model(model: nn.Module, out_dir: Path, settings: TrialSettings, classes: list[str],
               metrics: dict[str, float], epoch: int, evaluation: Evaluation | None = None) -> None:
    """The trial's model package: weights (safetensors, no code unpickled to load them), config and labels.

    With ``evaluation``, also ``evaluation.json``: the confusion matrix and a per-class report of that epoch.
    """
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = out_dir / "model.safetensors.tmp"
    save_file(state, str(tmp))
    tmp.replace(out_dir / "model.safetensors")
    (out_dir / "labels.json").write_text(json.dumps(classes, indent=2))
    config = {"task": settings.task.value, "model_name": settings.hyperparameters["model_name"],
              "hyperparameters": settings.hyperparameters, "num_classes": len(classes), "epoch": epoch,
              "preprocessing": normalization(settings.hyperparameters)}
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    (out_dir / "metrics.json").write_text(json.dumps({"epoch": epoch, **metrics}, indent=2))
    if evaluation is not None:
        multilabel = settings.task is ImageTask.IMAGE_CLASSIFICATION_MULTILABEL
        report = {"epoch": epoch, "labels": classes, "confusion_matrix": evaluation.confusion_matrix,
                  "per_class": per_class_report(evaluation.probs, evaluation.targets, classes, multilabel)}
        (out_dir / "evaluation.json").write_text(json.dumps(report, indent=2))


def _checkpoint_path(out: Path, epoch: int) -> Path:
    return out / CHECKPOINTS_DIR / f"epoch_{epoch:04d}.pt"


def latest_checkpoint(out: str | Path) -> Path | None:
    found = sorted((Path(out) / CHECKPOINTS_DIR).glob("epoch_*.pt"))
    return found[-1] if found else None


def save_checkpoint(path: Path, t: Training, epoch: int, global_step: int, result: TrialResult) -> None:
    """A resumable checkpoint: model, optimizer, scheduler, loss scaler, early stopping, random number
    generators and the best model so far (tensors and plain values only, loadable with ``weights_only=True``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    best = None
    package = path.parents[1] / OUTPUTS_DIR / "model.safetensors"
    if result.best_epoch is not None and result.best_epoch != epoch and package.is_file():
        from safetensors.torch import load_file

        best = load_file(str(package))
    np_state = np.random.get_state()
    state = {
        "epoch": epoch, "global_step": global_step, "classes": t.classes,
        "hyperparameters": json.dumps(t.hp, sort_keys=True),
        "model": t.module.state_dict(), "optimizer": t.optimizer.state_dict(),
        "scheduler": t.scheduler.state_dict(), "scaler": t.scaler.state_dict(),
        "stopper": {"best": t.stopper.best, "evaluations": t.stopper.evaluations, "stale": t.stopper.stale},
        "result": {"best_value": result.best_value, "best_epoch": result.best_epoch,
                   "history": json.dumps(result.history)},
        "best_model": best,
        "rng": {"torch": torch.get_rng_state(), "python": json.dumps(random.getstate()),
                "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
                "loader": t.generator.get_state(),
                "cuda": torch.cuda.get_rng_state(t.device) if t.device.type == "cuda" else None},
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def _restore(t: Training, path: Path, result: TrialResult, out: Path) -> tuple[int, int]:
    """Load a checkpoint into ``t`` and ``result``; returns (epoch, global_step) it was taken at."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    saved = json.loads(ckpt["hyperparameters"])
    now = json.loads(json.dumps(t.hp, sort_keys=True))
    differ = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    if differ:
        raise ConfigError([f"cannot resume from {path}: it was trained with other hyperparameters "
                           f"(use another --output-dir, or the same values):",
                           *(f"{k}: checkpoint {saved.get(k)!r}, now {now.get(k)!r}" for k in differ)])
    if ckpt["classes"] != t.classes:
        raise ConfigError(f"cannot resume from {path}: it was trained on the classes {ckpt['classes']}, "
                          f"the data now has {t.classes}")
    t.module.load_state_dict(ckpt["model"])
    t.optimizer.load_state_dict(ckpt["optimizer"])
    t.scheduler.load_state_dict(ckpt["scheduler"])
    t.scaler.load_state_dict(ckpt["scaler"])
    t.stopper.best, t.stopper.evaluations, t.stopper.stale = (ckpt["stopper"][k] for k in ("best", "evaluations", "stale"))
    r = ckpt["result"]
    result.best_value, result.best_epoch = r["best_value"], r["best_epoch"]
    result.history = json.loads(r["history"])
    result.epochs_completed = ckpt["epoch"]
    rng = ckpt["rng"]
    torch.set_rng_state(rng["torch"])
    py = json.loads(rng["python"])
    random.setstate((py[0], tuple(py[1]), py[2]))
    np.random.set_state((rng["numpy"][0], rng["numpy"][1].numpy().astype(np.uint32), *rng["numpy"][2:]))
    t.generator.set_state(rng["loader"])
    if rng["cuda"] is not None and t.device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"], t.device)
    epoch = ckpt["epoch"]
    if t.is_main:
        _truncate_jsonl(out / METRICS_FILE, epoch)
        _truncate_jsonl(out / EVALUATIONS_FILE, epoch)
        # The best model package must be the best up to the checkpoint, not one of the abandoned epochs.
        meta = out / OUTPUTS_DIR / "metrics.json"
        packaged = json.loads(meta.read_text())["epoch"] if meta.is_file() else None
        if result.best_epoch is not None and packaged != result.best_epoch:
            state = ckpt["best_model"] if ckpt["best_model"] is not None else ckpt["model"]
            metrics = next((h for h in result.history if h["epoch"] == result.best_epoch), {})
            metrics = {k: v for k, v in metrics.items() if k != "epoch"}
            holder = _StateHolder(state)
            save_model(holder, out / OUTPUTS_DIR, t.settings, t.classes, metrics, result.best_epoch)
    return epoch, ckpt["global_step"]


class _StateHolder:
    def __init__(self, state):
        self._state = state

    def state_dict(self):
        return self._state


def _truncate_jsonl(path: Path, epoch: int) -> None:
    if not path.is_file():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and float(json.loads(ln)["epoch"]) <= epoch]
    path.write_text("".join(ln + "\n" for ln in keep))


# --- the trial ---------------------------------------------------------------------------------------

def _init_distributed(settings: TrialSettings) -> bool:
    """Join the torchrun process group (its address comes from torchrun's environment); True if this call made it."""
    if settings.world_size <= 1:
        return False
    import torch.distributed as dist

    if dist.is_initialized():
        return False
    use_cuda = pick_device(settings.device).type == "cuda"
    dist.init_process_group("nccl" if use_cuda else "gloo", rank=settings.rank, world_size=settings.world_size)
    return True


def _broadcast(value: Any, t: Training) -> Any:
    if not t.distributed:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def train_classification(settings: TrialSettings, reporter: MetricsReporter | None = None) -> TrialResult:
    """Run one classification trial to the end; returns its result (also written to ``result.json``)."""
    made_group = _init_distributed(settings)
    try:
        return _train(settings, reporter)
    finally:
        if made_group:
            torch.distributed.destroy_process_group()


def _train(settings: TrialSettings, reporter: MetricsReporter | None) -> TrialResult:
    t0 = time.monotonic()
    hp = settings.hyperparameters
    task = settings.task
    main = settings.rank == 0
    out = Path(settings.output_dir)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / CONFIG_FILE).write_text(json.dumps(settings.to_json(), indent=2))
        reporter = reporter or MetricsReporter(out / METRICS_FILE)
    primary = task.primary_metric

    t = build_training(settings)
    log.info("%s: %d training and %d validation images, %d classes, device %s%s%s", hp["model_name"],
             len(t.train_samples), len(t.val_samples), len(t.classes), t.device,
             f", mixed precision {str(t.amp_dtype).removeprefix('torch.')}" if t.amp_dtype else "",
             f", {settings.world_size} processes" if t.distributed else "")

    result = TrialResult(status="running", primary_metric=primary)
    epochs = hp["number_of_epochs"]
    start_epoch, global_step = 1, 0
    if settings.resume:
        ckpt = latest_checkpoint(out)
        if ckpt is None:
            log.info("no checkpoint in %s: starting from the beginning", out / CHECKPOINTS_DIR)
        else:
            done, global_step = _restore(t, ckpt, result, out)
            start_epoch = done + 1
            log.info("resuming from %s after epoch %d of %d", ckpt, done, epochs)
    progress = Progress(epochs, len(t.train_loader), bar=settings.progress_bar and main, first_epoch=start_epoch)

    for epoch in range(start_epoch, epochs + 1):
        sampler = t.train_loader.sampler
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        global_step, train_loss = train_one_epoch(t, t.train_loader, epoch, global_step, progress)
        rate = progress.end_epoch()
        result.epochs_completed = epoch
        log.info("epoch %d/%d trained: loss %.4f, %.1f img/s%s", epoch, epochs, train_loss, rate,
                 " per process" if t.distributed else "")

        last = epoch == epochs
        decision: dict[str, Any] = {"diverged": None, "stop": False, "best": None}
        if epoch % hp["evaluation_frequency"] == 0 or last:
            if main:
                decision = _evaluate_and_report(t, epoch, global_step, train_loss, result, reporter, out, last)
            decision = _broadcast(decision, t)
            if decision["diverged"] is not None:
                raise TrainingDiverged(epoch, global_step, decision["diverged"], during="validation")
        if main and hp.get("checkpoint_frequency") and epoch % hp["checkpoint_frequency"] == 0:
            save_checkpoint(_checkpoint_path(out, epoch), t, epoch, global_step, result)
        if decision["stop"]:
            log.info("early stopping at epoch %d: %s has not improved for %d evaluations (best %.4f)",
                     epoch, primary, t.stopper.patience, decision["best"])
            result.status = "early_stopped"
            break
    if result.status == "running":
        result.status = "completed"
    result.duration_s = round(time.monotonic() - t0, 2)
    if main:
        result.write(out)
    return result


def _evaluate_and_report(t: Training, epoch: int, global_step: int, train_loss: float, result: TrialResult,
                         reporter: MetricsReporter, out: Path, last: bool) -> dict[str, Any]:
    primary = t.task.primary_metric
    try:
        ev = evaluate(t.module, t.val_loader, t.device, t.multilabel, len(t.classes), t.eval_criterion,
                      prepare=t.val_prepare, amp_dtype=t.amp_dtype)
    except NonFiniteOutputs as e:
        return {"diverged": e.loss, "stop": True, "best": None}
    metrics = ev.metrics
    metrics["train_loss"] = train_loss
    value = metrics[primary]
    reporter.report({"epoch": epoch, primary: value, "loss": metrics["loss"],
                     **{k: v for k, v in metrics.items() if k not in (primary, "loss")}})
    with (out / EVALUATIONS_FILE).open("a") as f:
        f.write(json.dumps({"epoch": epoch, "labels": t.classes, "confusion_matrix": ev.confusion_matrix}) + "\n")
    result.history.append({"epoch": epoch, **metrics})
    if t.stopper.improved(value):
        result.best_value, result.best_epoch = value, epoch
        save_model(t.module, out / OUTPUTS_DIR, t.settings, t.classes, metrics, epoch, ev)
    stop = t.stopper.update(value) and not last
    return {"diverged": None, "stop": stop, "best": t.stopper.best}
