"""AutoMode: the search space a job gets when it asks for several trials (or a compute budget) and
writes no ``search_space`` of its own, and the dataset fingerprint that warm starts compare.

Everything AutoMode may choose is in one declared table, :data:`AUTOMODE_ROWS` (documented with
the reason for each range in ``docs/sweeps.md``). :func:`automode_space` turns the rows that fit a
job (its task, whether it trains from pretrained weights, the size of its data) into ordinary
search-space entries, one per (models, image size, optimizer), so the local scheduler, the Katib
translation and ``validate-job`` treat an AutoMode job exactly as a job whose user wrote that space.

Pure: no data is read here. The fingerprint is computed from a loaded dataset by
:func:`automl_vision.data.fingerprint.dataset_fingerprint`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from automl_vision.spec import hyperparameters as hps
from automl_vision.spec.tasks import FIXED_SIZE_MODELS, YOLO_MODELS, ImageTask

#: Fewer training images than this is "small" data: smaller backbones, more epochs, smaller batches.
SMALL_DATA_IMAGES = 2000
#: The early termination AutoMode uses when the job sets none: asynchronous successive halving keeping
#: the top third at each rung, from two reported values for classifiers (rungs 2, 6, 18; replayed on
#: recorded curves, starting at one lost up to 11.7 points in some orders, at two at most 3.3) and from
#: five for detectors, whose mean average precision is near 0 for every trial in the first epochs.
AUTOMODE_POLICY = {"type": "asha", "min_resource": 2, "reduction_factor": 3}
AUTOMODE_MIN_RESOURCE = {"classification": 2, "detection": 5, "segmentation": 5}
#: The share of a budget an AutoMode sweep keeps for its final training: the best trial's settings again,
#: with as many epochs as that share pays for (one model trained long wins on small budgets, where the
#: search alone leaves every trial short).
AUTOMODE_REFIT_SHARE = 0.3
#: A budget that pays for fewer than 7 trials like the starting point gives the search 10% for each
#: (at least this share) and the final training the rest.
AUTOMODE_MIN_SEARCH_SHARE = 0.3
#: The largest number of trials a sweep has when only a budget bounds it.
MAX_TRIALS = 1000

CLASSIFICATION = "classification"
DETECTION = "detection"
SEGMENTATION = "segmentation"


@dataclass(frozen=True)
class LearningRate:
    """A learning-rate range for one optimizer, drawn log-uniformly (natural-log bounds in the space)."""

    optimizer: str
    low: float
    high: float

    def distribution(self) -> dict[str, Any]:
        return {"type": "loguniform", "min_value": round(math.log(self.low), 4),
                "max_value": round(math.log(self.high), 4)}


@dataclass(frozen=True)
class AutoModeRow:
    """One row of the table: for a task kind, data size and kind of start, the models and ranges."""

    kind: str  # classification | detection | segmentation
    data: str  # small | large | any
    pretrained: bool | None  # True: fine-tuning pretrained weights; False: from scratch; None: either
    models: tuple[str, ...]
    learning_rates: tuple[LearningRate, ...]
    epochs: tuple[int, ...]
    batch_sizes: tuple[int, ...] = ()  # empty: the model's default
    augmentation: tuple[str, ...] = ("none", "light", "default")
    #: yolov5 model sizes (yolov5 rows only)
    model_sizes: tuple[str, ...] = ()
    why: str = ""
    #: The starting point's learning rate (with the first optimizer); the starting point takes the
    #: first model, batch size and model size, the most epochs and ``start_augmentation``.
    start_learning_rate: float = 0.01
    start_augmentation: str = "light"
    #: Settings every entry of the row fixes.
    fixed: Mapping[str, Any] = field(default_factory=dict)

    def applies(self, kind: str, small: bool, pretrained: bool) -> bool:
        return (self.kind == kind and self.data in ("any", "small" if small else "large")
                and self.pretrained in (None, pretrained))


_SGD_SCRATCH = LearningRate("sgd", 0.005, 0.2)
_ADAMW_SCRATCH = LearningRate("adamw", 0.0003, 0.005)
_SGD_FINETUNE = LearningRate("sgd", 0.001, 0.05)
_ADAMW_FINETUNE = LearningRate("adamw", 0.00003, 0.001)
_SGD_RCNN = LearningRate("sgd", 0.001, 0.02)
_SGD_YOLO = LearningRate("sgd", 0.002, 0.02)

#: The AutoMode table. Each applicable row gives one search-space entry per (image size, learning
#: rate): the models of the row are a choice inside the entry.
AUTOMODE_ROWS: tuple[AutoModeRow, ...] = (
    AutoModeRow(CLASSIFICATION, "small", False, ("resnet18", "resnet34"), (_SGD_SCRATCH, _ADAMW_SCRATCH),
                epochs=(10, 20), batch_sizes=(32, 64), start_learning_rate=0.02,
                why="From scratch on little data the plain ResNets learn fastest (mobilenetv2's depthwise "
                    "layers learn slowly from scratch and cost more per epoch on a CPU); deeper ones overfit."),
    AutoModeRow(CLASSIFICATION, "large", False, ("resnet18", "resnet50", "mobilenetv2"),
                (_SGD_SCRATCH, _ADAMW_SCRATCH), epochs=(10, 20), batch_sizes=(32, 64), start_learning_rate=0.02,
                why="With more data a deeper backbone can pay for itself; resnet18 and mobilenetv2 stay as "
                    "fast candidates that ASHA can compare early."),
    AutoModeRow(CLASSIFICATION, "small", True, ("resnet50", "resnet18", "vits16r224", "mobilenetv2"),
                (_SGD_FINETUNE, _ADAMW_FINETUNE), epochs=(6, 12), batch_sizes=(16, 32),
                why="Fine-tuning on little data: pretrained features do most of the work, so larger "
                    "backbones (resnet50, a small ViT) are worth trying; lower learning rates keep the "
                    "pretrained weights."),
    AutoModeRow(CLASSIFICATION, "large", True, ("vitb16r224", "resnet50", "seresnext", "resnet18"),
                (_SGD_FINETUNE, _ADAMW_FINETUNE), epochs=(8, 15), start_learning_rate=0.0125,
                why="Fine-tuning on more data: the strongest backbones of the catalogue (vitb16r224 is "
                    "the original's default), resnet18 as the fast reference."),
    AutoModeRow(DETECTION, "any", None, ("yolov5",), (_SGD_YOLO,), epochs=(20, 40),
                model_sizes=("medium", "small"), start_augmentation="default",
                fixed={"early_stopping_delay": 15},
                why="One-stage yolov5, the original's default and the starting point: from scratch on the "
                    "benchmark's shapes its default settings reached 1.0 test mAP in 36 epochs, though it scores "
                    "0 for the first 10 or so (so its own early stopping waits 15 epochs)."),
    AutoModeRow(DETECTION, "any", None, ("fasterrcnn_resnet18_fpn",), (_SGD_RCNN,), epochs=(10, 20),
                start_learning_rate=0.005,
                why="A light two-stage detector: from scratch it finds objects within a few epochs, where "
                    "yolov5 still scores 0."),
    AutoModeRow(DETECTION, "large", None, ("fasterrcnn_resnet50_fpn",), (_SGD_RCNN,), epochs=(10, 20),
                start_learning_rate=0.005,
                why="The original's R-CNN backbone, for data large enough to use it."),
    AutoModeRow(SEGMENTATION, "any", None, ("maskrcnn_resnet18_fpn",), (_SGD_RCNN,), epochs=(10, 20),
                start_learning_rate=0.001,
                why="The light Mask R-CNN, fast enough to compare early; it starts at 0.001, since from scratch "
                    "on small data it diverged at the detectors' 0.005."),
    AutoModeRow(SEGMENTATION, "large", None, ("maskrcnn_resnet50_fpn",), (_SGD_RCNN,), epochs=(10, 20),
                start_learning_rate=0.001,
                why="The original's Mask R-CNN backbone, for larger data."),
)

#: Square training sizes AutoMode picks from for classifiers trained from scratch.
CLASSIFIER_SIZES = (32, 64, 128, 224)
#: Shorter-side sizes for R-CNNs (min_size) and longer-side sizes for yolov5 (img_size).
RCNN_SIZES = (128, 256, 320, 480, 600, 800)
YOLO_SIZES = (128, 256, 320, 480, 640)


def task_kind(task: ImageTask) -> str:
    if task.is_classification:
        return CLASSIFICATION
    return SEGMENTATION if task is ImageTask.IMAGE_INSTANCE_SEGMENTATION else DETECTION


@dataclass(frozen=True)
class DatasetFingerprint:
    """What AutoMode and warm starts know about a dataset (the training images, before the split).

    ``image_side``: the median shorter side in pixels; ``aspect``: the median width / height;
    ``object_size``: the median of sqrt(box area / image area); ``objects_per_image``: the mean.
    """

    task: str
    images: int
    classes: int
    image_side: float | None = None
    aspect: float | None = None
    objects_per_image: float | None = None
    object_size: float | None = None
    labels_per_image: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DatasetFingerprint:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def small(self) -> bool:
        return self.images < SMALL_DATA_IMAGES


def fingerprint_distance(a: DatasetFingerprint, b: DatasetFingerprint) -> float:
    """How far apart two datasets are for warm starting; ``inf`` for different tasks.

    A sum over what both fingerprints know, each term in log units so that twice as many images
    counts the same at any scale: the number of images, classes, the image side, the aspect ratio,
    and for detection the object size and objects per image. 0 is the same dataset; below
    :data:`WARM_START_DISTANCE` the earlier run's best settings are worth trying first.
    """
    if a.task != b.task:
        return math.inf
    terms = [0.5 * abs(math.log(max(a.images, 1) / max(b.images, 1))),
             abs(math.log(max(a.classes, 1) / max(b.classes, 1)))]
    for x, y, weight in ((a.image_side, b.image_side, 1.0), (a.aspect, b.aspect, 1.0),
                         (a.object_size, b.object_size, 1.0), (a.objects_per_image, b.objects_per_image, 0.5),
                         (a.labels_per_image, b.labels_per_image, 0.5)):
        if x and y:
            terms.append(weight * abs(math.log(x / y)))
    return round(math.fsum(terms), 4)


#: Earlier runs farther than this from the new dataset are not used for warm starts.
WARM_START_DISTANCE = 3.0


def _near(candidates: tuple[int, ...], side: float | None, default: tuple[int, ...], *, up: bool) -> list[int]:
    """Two candidate sizes next to ``side``: the largest at or below it (within 15%) and the next one up
    (``up``: detectors, for which enlarging small objects helps) or down (classifiers, for which
    enlarging adds no detail and costs compute)."""
    if not side:
        return list(default)
    below = [c for c in candidates if c <= side * 1.15]
    at = candidates.index(below[-1]) if below else 0
    start = at if up or at == 0 else at - 1
    return list(candidates[start:start + 2])


@dataclass(frozen=True)
class AutoModePlan:
    """The space AutoMode chose and why: the entries (job search-space mappings), the rows used, the
    sizes, and what the user fixed (left out of the space)."""

    entries: list[dict[str, Any]]
    rows: list[AutoModeRow]
    sizes: list[int]
    fixed: list[str] = field(default_factory=list)
    fingerprint: DatasetFingerprint | None = None
    #: The first trial: a point of the first entry with the row's usual settings (the first model, its
    #: starting learning rate, the most epochs), so that a small budget still trains one sound model.
    start: dict[str, Any] | None = None

    def summary(self) -> str:
        models = sorted({m for r in self.rows for m in r.models})
        data = ("unknown data size" if self.fingerprint is None else
                f"{self.fingerprint.images} training image(s), "
                f"{'small' if self.fingerprint.small else 'large'} data")
        sizes = ", ".join(map(str, self.sizes)) or "the models' defaults"
        return (f"AutoMode: {len(self.entries)} search-space entr{'y' if len(self.entries) == 1 else 'ies'} over "
                f"{', '.join(models)}; sizes {sizes} ({data})")


def _values(dist: Any) -> list[str]:
    if isinstance(dist, Mapping):
        return [str(v) for v in dist.get("values", [])]
    return [] if dist is None else [str(dist)]


def _choice(values) -> dict[str, Any] | Any:
    values = list(values)
    return values[0] if len(values) == 1 else {"type": "choice", "values": values}


def automode_space(task: ImageTask, fingerprint: DatasetFingerprint | None = None, *,
                   fixed: Mapping[str, Any] | None = None) -> AutoModePlan:
    """The AutoMode search space for ``task`` and its data (``fingerprint``; None: sizes and tiers as
    for small data of unknown image size), leaving out what ``fixed`` (the job's
    ``training_parameters``) sets. A fixed ``model_name`` keeps only that model (with its row's ranges,
    or the task kind's first row's when no row lists it)."""
    fixed = dict(fixed or {})
    kind = task_kind(task)
    small = fingerprint.small if fingerprint is not None else True
    pretrained = bool(fixed.get("pretrained", True))
    rows = [r for r in AUTOMODE_ROWS if r.applies(kind, small, pretrained)]
    # a setting the job fixes for every trial keeps out the models it does not apply to (min_size or
    # tiling: the torchvision detectors; img_size, model_size: yolov5)
    rows = [dataclasses.replace(r, models=kept) for r in rows
            if (kept := tuple(m for m in r.models if all(hps.BY_NAME[k].applies_to(task, m)
                                                         for k in fixed if k in hps.BY_NAME)))]
    if not rows:
        raise ValueError(f"no model of AutoMode's table for {task.value} takes every setting of the job's "
                         f"training_parameters ({', '.join(sorted(fixed))}); write a search_space")
    model = fixed.get("model_name")
    if model is not None:
        own = [r for r in rows if model in r.models]
        base = own[0] if own else rows[0]  # a model of no applicable row takes the first row's ranges
        models = (str(model),)
        rows = [AutoModeRow(base.kind, base.data, base.pretrained, models, base.learning_rates, base.epochs,
                            base.batch_sizes, base.augmentation,
                            base.model_sizes if model in YOLO_MODELS else (), base.why)]
    side = fingerprint.image_side if fingerprint is not None else None
    entries: list[dict[str, Any]] = []
    sizes_used: list[int] = []
    start: dict[str, Any] | None = None
    for row in rows:
        yolo = row.models[0] in YOLO_MODELS
        if kind == CLASSIFICATION:
            if pretrained or any(m in FIXED_SIZE_MODELS for m in row.models):
                sizes = [224]
            else:
                sizes = _near(CLASSIFIER_SIZES, side, (64, 128), up=False)
        elif yolo:
            longer = side * max(fingerprint.aspect or 1.0, 1 / (fingerprint.aspect or 1.0)) if side else None
            sizes = _near(YOLO_SIZES, longer, (320, 640), up=True)
        else:
            sizes = _near(RCNN_SIZES, side, (320, 600), up=True)
        # the starting point trains at the data's own size: the largest candidate at or below it
        start_size = max([c for c in sizes if side and c <= side * 1.15] or sizes[:1])
        for size in sizes:
            for lr in row.learning_rates:
                entry: dict[str, Any] = {"model_name": _choice(row.models)}
                if kind == CLASSIFICATION:
                    entry.update(train_crop_size=size, valid_resize_size=round(size * 8 / 7), valid_crop_size=size)
                elif yolo:
                    entry["img_size"] = size
                    if row.model_sizes:
                        entry["model_size"] = _choice(row.model_sizes)
                else:
                    entry.update(min_size=size, max_size=max(size, round(size * 1333 / 800)))
                if len(row.learning_rates) > 1 or kind == CLASSIFICATION:
                    entry["optimizer"] = lr.optimizer
                entry["learning_rate"] = lr.distribution()
                entry["number_of_epochs"] = _choice(row.epochs)
                if row.batch_sizes:
                    entry["training_batch_size"] = _choice(row.batch_sizes)
                entry["augmentation"] = _choice(row.augmentation)
                entry.update(row.fixed)
                size_keys = {"train_crop_size", "valid_resize_size", "valid_crop_size", "img_size", "min_size",
                             "max_size"}
                # one fixed size fixes them all: the sizes are set together (crop within resize, max >= min)
                skip = set(fixed) | (size_keys if size_keys & set(fixed) else set())
                entries.append({k: v for k, v in entry.items() if k not in skip or k == "model_name"})
                if size not in sizes_used and not size_keys & set(fixed):
                    sizes_used.append(size)
                if start is None and size == start_size and lr is row.learning_rates[0]:
                    start = _start_point(entries[-1], row)
    if model is not None:
        for e in entries + ([start] if start else []):
            e.pop("model_name", None)
    dropped = sorted(k for k in fixed if k != "model_name" and k in _row_keys(kind))
    # identical entries (a fixed size or optimizer makes them collapse) are kept once
    unique: list[dict[str, Any]] = []
    for e in entries:
        if e not in unique:
            unique.append(e)
    return AutoModePlan(unique, rows, sizes_used, dropped, fingerprint, start)


def _start_point(entry: Mapping[str, Any], row: AutoModeRow) -> dict[str, Any]:
    """One point of ``entry``: the row's first model, batch and model size, its most epochs, its starting
    learning rate and augmentation; fixed values as they are."""
    point: dict[str, Any] = {}
    for k, v in entry.items():
        if k == "learning_rate":
            point[k] = row.start_learning_rate
        elif k == "number_of_epochs" and isinstance(v, Mapping):
            point[k] = max(v["values"])
        elif k == "augmentation" and isinstance(v, Mapping):
            point[k] = row.start_augmentation
        elif isinstance(v, Mapping):
            point[k] = v["values"][0]
        else:
            point[k] = v
    return point


def _row_keys(kind: str) -> set[str]:
    keys = {"model_name", "optimizer", "learning_rate", "number_of_epochs", "training_batch_size", "augmentation"}
    if kind == CLASSIFICATION:
        return keys | {"train_crop_size", "valid_resize_size", "valid_crop_size"}
    return keys | {"img_size", "model_size", "min_size", "max_size"}


def max_epochs(entries: list[Mapping[str, Any]], fixed: Mapping[str, Any]) -> int | None:
    """The most epochs any trial of the space plans (ASHA's largest resource)."""
    if "number_of_epochs" in fixed:
        return int(fixed["number_of_epochs"])
    most = [max(int(v) for v in _values(e["number_of_epochs"])) if isinstance(e.get("number_of_epochs"), Mapping)
            else int(e["number_of_epochs"]) for e in entries if "number_of_epochs" in e]
    return max(most) if most else None
