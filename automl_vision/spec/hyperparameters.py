"""Every hyperparameter of the product (spec sections 4 and 5), declared once.

This table feeds job validation, the ``automl-vision train`` flags, search-space checks, the
Katib translation and the generated reference page (``docs/hyperparameters.md``). A row says
the value's type, its allowed range or choices, its default (which may depend on the task and
the model) and the tasks and models it applies to.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from automl_vision.spec.catalogue import MODELS
from automl_vision.spec.tasks import (
    ALL_TASKS,
    CLASSIFICATION_TASKS,
    DETECTION_TASKS,
    LAYER_GROUPS,
    FIXED_SIZE_MODELS,
    TORCHVISION_DETECTORS,
    YOLO_MODELS,
    ImageTask,
    all_models,
)

MC = ImageTask.IMAGE_CLASSIFICATION
ML = ImageTask.IMAGE_CLASSIFICATION_MULTILABEL
OD = ImageTask.IMAGE_OBJECT_DETECTION
IS = ImageTask.IMAGE_INSTANCE_SEGMENTATION

Default = Any | Callable[[ImageTask, str], Any]


@dataclass(frozen=True)
class HyperParameter:
    """One row of the table."""

    name: str
    type: type  # int, float, str or bool
    help: str
    default: Default
    tasks: frozenset[ImageTask] = ALL_TASKS
    #: Only these models (None: every model of ``tasks``).
    models: frozenset[str] | None = None
    #: Never these models.
    exclude_models: frozenset[str] = frozenset()
    minimum: float | None = None
    maximum: float | None = None
    min_inclusive: bool = True
    max_inclusive: bool = True
    choices: tuple[Any, ...] | None = None
    #: None is a valid value (meaning "not set", e.g. no tiling).
    optional: bool = False
    #: May appear in a search space (False: a per-job setting, fixed for every trial).
    sweepable: bool = True
    #: "original" for the product's own settings, "extension" for ours.
    origin: str = "original"
    #: A text describing how the default is chosen, for the docs.
    default_doc: str | None = None
    #: Extra check on a coerced value; returns an error text or None.
    check: Callable[[Any, str], str | None] | None = field(default=None, repr=False)

    def applies_to(self, task: ImageTask, model_name: str | None = None) -> bool:
        if task not in self.tasks:
            return False
        if model_name is None:
            return True
        if self.models is not None and model_name not in self.models:
            return False
        return model_name not in self.exclude_models

    def default_for(self, task: ImageTask, model_name: str) -> Any:
        return self.default(task, model_name) if callable(self.default) else self.default

    def allowed(self) -> str:
        """What values are allowed, in words, for error messages and the docs."""
        if self.choices is not None:
            text = "one of " + ", ".join(_show(c) for c in self.choices)
        elif self.type is bool:
            text = "0 or 1 (also true/false)"
        elif self.minimum is not None and self.maximum is not None:
            lo = "(" if not self.min_inclusive else "["
            hi = ")" if not self.max_inclusive else "]"
            text = f"{self.type.__name__} in {lo}{_show(self.minimum)}, {_show(self.maximum)}{hi}"
        elif self.minimum is not None:
            text = f"{self.type.__name__} {'>=' if self.min_inclusive else '>'} {_show(self.minimum)}"
        elif self.maximum is not None:
            text = f"{self.type.__name__} {'<=' if self.max_inclusive else '<'} {_show(self.maximum)}"
        else:
            text = self.type.__name__
        if self.name == "layers_to_freeze":
            text += " and at most the model's number of layer groups"
        return text + (" or null" if self.optional else "")

    def coerce(self, value: Any, model_name: str | None = None) -> Any:
        """``value`` converted to this row's type and checked; raises ValueError naming the rule.

        Strings are accepted for every type because command lines and Katib pass strings.
        """
        # "none" is also a real choice (validation_metric_type), not only a spelling of null.
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null")
                             and value not in (self.choices or ())):
            if self.optional:
                return None
            raise ValueError(f"{self.name}={_show(value)} is not allowed; expected {self.allowed()}")
        try:
            out = _convert(self.type, value)
        except (TypeError, ValueError):
            raise ValueError(
                f"{self.name}={_show(value)} is not a valid {self.type.__name__}; expected {self.allowed()}"
            ) from None
        if self.choices is not None and out not in self.choices:
            hint = _did_you_mean(str(out), [str(c) for c in self.choices])
            raise ValueError(f"{self.name}={_show(value)} is not allowed; expected {self.allowed()}{hint}")
        if self.type in (int, float) and not self._in_range(out):
            raise ValueError(f"{self.name}={_show(out)} out of range; expected {self.allowed()}")
        if self.check is not None:
            problem = self.check(out, model_name or "")
            if problem:
                raise ValueError(f"{self.name}={_show(value)}: {problem}")
        return out

    def _in_range(self, x: float) -> bool:
        if isinstance(x, float) and not math.isfinite(x):
            return False
        if self.minimum is not None and (x < self.minimum or (x == self.minimum and not self.min_inclusive)):
            return False
        if self.maximum is not None and (x > self.maximum or (x == self.maximum and not self.max_inclusive)):
            return False
        return True


def _show(v: Any) -> str:
    if isinstance(v, str):
        return repr(v)
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return str(int(v)) if abs(v) >= 1 or v == 0 else str(v)
    return str(v)


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _convert(kind: type, value: Any) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, float) and value in (0.0, 1.0):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ValueError(value)
    if kind is int:
        if isinstance(value, bool):
            raise TypeError(value)
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            s = value.strip()
            try:
                return int(s)
            except ValueError:
                f = float(s)  # "4.0" from a sampler that rounds to q
                if f.is_integer():
                    return int(f)
                raise
        raise TypeError(value)
    if kind is float:
        if isinstance(value, bool):
            raise TypeError(value)
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            return float(value.strip())
        raise TypeError(value)
    if kind is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise TypeError(value)
    raise TypeError(kind)


def _did_you_mean(word: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest candidate, or an empty string."""
    return _did_you_mean(word, candidates)


# --- defaults that depend on the task and the model -------------------------------------------

def _epochs(task: ImageTask, model: str) -> int:
    return 30 if model in YOLO_MODELS else 15


_CLS_BATCH = {"vits16r224": 128, "vitb16r224": 48, "vitl16r224": 10}


def _train_batch(task: ImageTask, model: str) -> int:
    if task in CLASSIFICATION_TASKS:
        return _CLS_BATCH.get(model, 78)
    return 16 if model in YOLO_MODELS else 2


def _valid_batch(task: ImageTask, model: str) -> int:
    if task in CLASSIFICATION_TASKS:
        return _train_batch(task, model)
    return 16 if model in YOLO_MODELS else 1


def _learning_rate(task: ImageTask, model: str) -> float:
    if task is MC:
        return {"vits16r224": 0.0125, "vitb16r224": 0.0125, "vitl16r224": 0.001}.get(model, 0.01)
    if task is ML:
        return {"vits16r224": 0.025, "vitb16r224": 0.025, "vitl16r224": 0.002}.get(model, 0.035)
    return 0.01 if model in YOLO_MODELS else 0.005


def _box_score_thresh(task: ImageTask, model: str) -> float:
    return 0.1 if model in YOLO_MODELS else 0.3


def _model_name(task: ImageTask, model: str) -> str:
    return task.default_model


# --- extra checks --------------------------------------------------------------------------------

_GRID = re.compile(r"^([1-9]\d*)x([1-9]\d*)$")


def parse_tile_grid_size(value: str) -> tuple[int, int]:
    """``"3x2"`` -> (3, 2): columns by rows."""
    m = _GRID.match(value.strip())
    if not m:
        raise ValueError(f"tile_grid_size={value!r} must look like '3x2' (columns x rows)")
    return int(m.group(1)), int(m.group(2))


def _check_tile_grid(value: str, model: str) -> str | None:
    m = _GRID.match(value)
    if not m:
        return "must look like '3x2' (columns x rows, each >= 1)"
    if int(m.group(1)) * int(m.group(2)) < 2:
        return "a 1x1 grid is no tiling; leave tile_grid_size unset instead"
    return None


def _check_layers_to_freeze(value: int, model: str) -> str | None:
    groups = LAYER_GROUPS.get(model)
    if model and groups is not None and value > groups:
        return f"{model} has {groups} layer groups; allowed 0..{groups}"
    return None


def _check_model_name(value: str, model: str) -> str | None:
    if value not in all_models():
        return "unknown model" + _did_you_mean(value, all_models())
    return None


# --- the table -----------------------------------------------------------------------------------

#: Values of ``augmentation``, from none to the spec's own.
AUGMENTATION_LEVELS = ("none", "light", "default")

_NOT_YOLO = frozenset(YOLO_MODELS)
_YOLO = frozenset(YOLO_MODELS)
_DET_ONLY = frozenset({OD})

HYPERPARAMETERS: tuple[HyperParameter, ...] = (
    HyperParameter(
        "model_name", str, "Model architecture (spec section 3); the task decides which are valid.",
        _model_name, check=_check_model_name,
        default_doc="multi-class and multi-label: vitb16r224; detection: yolov5; segmentation: maskrcnn_resnet50_fpn",
    ),
    # --- all models (spec section 4)
    HyperParameter(
        "number_of_epochs", int, "Number of training epochs.", _epochs, minimum=1,
        default_doc="15 (yolov5: 30)",
    ),
    HyperParameter(
        "training_batch_size", int, "Training batch size.", _train_batch, minimum=1,
        default_doc="classification 78 (vits16r224 128, vitb16r224 48, vitl16r224 10); detection 2 (yolov5 16); segmentation 2",
    ),
    HyperParameter(
        "validation_batch_size", int, "Validation batch size.", _valid_batch, minimum=1,
        default_doc="classification as training_batch_size; detection 1 (yolov5 16); segmentation 1",
    ),
    HyperParameter(
        "grad_accumulation_step", int,
        "Number of steps whose gradients add up before one optimizer step.", 1, minimum=1,
    ),
    HyperParameter(
        "early_stopping", bool, "Stop a trial when the primary metric stops improving.", True,
    ),
    HyperParameter(
        "early_stopping_patience", int, "Evaluations without improvement before the trial stops.", 5, minimum=1,
    ),
    HyperParameter(
        "early_stopping_delay", int, "Evaluations to wait before improvement is tracked.", 5, minimum=0,
    ),
    HyperParameter(
        "learning_rate", float, "Initial learning rate.", _learning_rate, minimum=0.0, maximum=1.0,
        default_doc=(
            "multi-class 0.01 (vits16r224/vitb16r224 0.0125, vitl16r224 0.001); multi-label 0.035 "
            "(vits16r224/vitb16r224 0.025, vitl16r224 0.002); detection 0.005 (yolov5 0.01); segmentation 0.005"
        ),
    ),
    HyperParameter(
        "lr_scheduler", str, "Learning-rate scheduler.", "warmup_cosine", choices=("warmup_cosine", "step"),
    ),
    HyperParameter("step_lr_gamma", float, "Decay factor of the step scheduler.", 0.5, minimum=0.0, maximum=1.0),
    HyperParameter("step_lr_step_size", int, "Epochs between two decays of the step scheduler.", 5, minimum=1),
    HyperParameter(
        "warmup_cosine_lr_cycles", float, "Cosine cycles of the warmup_cosine scheduler.", 0.45,
        minimum=0.0, maximum=1.0,
    ),
    HyperParameter(
        "warmup_cosine_lr_warmup_epochs", int, "Linear warm-up epochs of the warmup_cosine scheduler.", 2, minimum=0,
    ),
    HyperParameter("optimizer", str, "Optimizer.", "sgd", choices=("sgd", "adam", "adamw")),
    HyperParameter("momentum", float, "Momentum (sgd).", 0.9, minimum=0.0, maximum=1.0),
    HyperParameter("nesterov", bool, "Nesterov momentum (sgd).", True),
    HyperParameter("weight_decay", float, "Weight decay (every optimizer).", 1e-4, minimum=0.0, maximum=1.0),
    HyperParameter("beta1", float, "First-moment decay (adam, adamw).", 0.9, minimum=0.0, maximum=1.0),
    HyperParameter("beta2", float, "Second-moment decay (adam, adamw).", 0.999, minimum=0.0, maximum=1.0),
    HyperParameter("amsgrad", bool, "AMSGrad variant (adam, adamw).", False),
    HyperParameter("evaluation_frequency", int, "Evaluate every N epochs.", 1, minimum=1),
    HyperParameter(
        "split_ratio", float, "Share of the training data held out for validation when no validation data is given.",
        0.2, minimum=0.0, maximum=1.0, min_inclusive=False, max_inclusive=False, sweepable=False,
    ),
    HyperParameter(
        "checkpoint_frequency", int,
        "Save a checkpoint every N epochs (unset: keep only the epoch with the best primary metric).",
        None, minimum=1, optional=True, default_doc="unset (keep the best epoch)",
    ),
    HyperParameter(
        "layers_to_freeze", int, "Freeze the first N layer groups of the backbone (spec section 4).",
        None, minimum=0, optional=True, check=_check_layers_to_freeze, default_doc="unset (nothing frozen)",
    ),
    # --- classification (spec section 5)
    HyperParameter(
        "weighted_loss", int, "0: plain loss; 1: class weights square-rooted; 2: class weights.", 0,
        tasks=CLASSIFICATION_TASKS, choices=(0, 1, 2),
    ),
    HyperParameter(
        "valid_resize_size", int, "Validation images are resized to this size before the centre crop.", 256,
        tasks=CLASSIFICATION_TASKS, minimum=1,
    ),
    HyperParameter(
        "valid_crop_size", int, "Centre-crop size of validation images (ViT: must equal train_crop_size).", 224,
        tasks=CLASSIFICATION_TASKS, minimum=1,
    ),
    HyperParameter(
        "train_crop_size", int, "Random-crop size of training images.", 224,
        tasks=CLASSIFICATION_TASKS, minimum=1,
    ),
    # --- detection and segmentation
    HyperParameter(
        "validation_metric_type", str, "Metric computed at each evaluation.", "voc",
        tasks=DETECTION_TASKS, choices=("none", "coco", "voc", "coco_voc"),
    ),
    HyperParameter(
        "validation_iou_threshold", float, "IoU at which a prediction matches a ground-truth box (voc metric).", 0.5,
        tasks=DETECTION_TASKS, exclude_models=_NOT_YOLO, minimum=0.1, maximum=1.0,
    ),
    HyperParameter(
        "min_size", int, "Images are resized so their shorter side is at least this.", 600,
        tasks=DETECTION_TASKS, exclude_models=_NOT_YOLO, minimum=1,
    ),
    HyperParameter(
        "max_size", int, "... and their longer side at most this.", 1333,
        tasks=DETECTION_TASKS, exclude_models=_NOT_YOLO, minimum=1,
    ),
    HyperParameter(
        "box_score_thresh", float, "Boxes scoring below this are dropped.", _box_score_thresh,
        tasks=DETECTION_TASKS, minimum=0.0, maximum=1.0, default_doc="0.3 (yolov5: 0.1)",
    ),
    HyperParameter(
        "box_nms_thresh", float, "IoU threshold of the non-maximum suppression.", 0.5,
        tasks=DETECTION_TASKS, exclude_models=_NOT_YOLO, minimum=0.0, maximum=1.0,
    ),
    HyperParameter(
        "box_detections_per_img", int, "Most boxes kept per image.", 100,
        tasks=DETECTION_TASKS, exclude_models=_NOT_YOLO, minimum=1,
    ),
    HyperParameter(
        "tile_grid_size", str, "Tile grid for small objects, columns x rows, e.g. '3x2' (unset: no tiling).", None,
        tasks=_DET_ONLY, exclude_models=_NOT_YOLO, optional=True, check=_check_tile_grid,
        default_doc="unset (no tiling)",
    ),
    HyperParameter(
        "tile_overlap_ratio", float, "Overlap of neighbouring tiles.", 0.25,
        tasks=_DET_ONLY, exclude_models=_NOT_YOLO, minimum=0.0, maximum=1.0, max_inclusive=False,
    ),
    HyperParameter(
        "tile_predictions_nms_thresh", float, "NMS threshold merging boxes of the whole image and of tiles.", 0.25,
        tasks=_DET_ONLY, exclude_models=_NOT_YOLO, minimum=0.0, maximum=1.0,
    ),
    # --- yolov5
    HyperParameter("img_size", int, "Training and validation image size.", 640, tasks=_DET_ONLY, models=_YOLO, minimum=32),
    HyperParameter(
        "model_size", str, "yolov5 model size.", "medium", tasks=_DET_ONLY, models=_YOLO,
        choices=tuple(MODELS["yolov5"].sizes),
    ),
    HyperParameter(
        "multi_scale", bool, "Vary the image size by +/-50% during training.", False, tasks=_DET_ONLY, models=_YOLO,
    ),
    HyperParameter(
        "box_iou_thresh", float, "IoU threshold of yolov5's non-maximum suppression.", 0.5,
        tasks=_DET_ONLY, models=_YOLO, minimum=0.0, maximum=1.0,
    ),
    # --- instance segmentation
    HyperParameter(
        "mask_pixel_score_threshold", float, "Mask pixels scoring above this belong to the object.", 0.5,
        tasks=frozenset({IS}), minimum=0.0, maximum=1.0,
    ),
    HyperParameter(
        "max_number_of_polygon_points", int, "Most points of a predicted polygon.", 100,
        tasks=frozenset({IS}), minimum=3,
    ),
    # --- ours
    HyperParameter(
        "pretrained", bool,
        "Start from pretrained weights (1) or random initialization (0). Missing weights are an error, never a silent fallback.",
        True, origin="extension", sweepable=False,
    ),
    HyperParameter(
        "seed", int, "Seed of every random number generator of a trial (data split, augmentation, initialization).",
        0, minimum=0, origin="extension", sweepable=False,
    ),
    HyperParameter(
        "augmentation", str,
        "Strength of the training augmentation. default: the spec's own (classification: random resized crop, "
        "horizontal flip, colour jitter; torchvision detectors: crop around boxes, zoom out, horizontal flip, "
        "each with probability 0.5; yolov5: ultralytics' mosaic, random affine, HSV, flips). light: "
        "classification: random resized crop of scale [0.5, 1], horizontal flip, colour jitter 0.1 (brightness, "
        "contrast, saturation; no hue); torchvision detectors: horizontal flip only; yolov5: no mosaic, "
        "horizontal flip, HSV gains a third of ultralytics', translate 0.05, scale 0.2, no rotation or shear. "
        "none: no random augmentation (classification: resize and centre crop to train_crop_size; torchvision "
        "detectors: the image as it is; yolov5: images only letterboxed to img_size). Small datasets trained "
        "from scratch often converge faster with less.",
        "default", choices=AUGMENTATION_LEVELS, origin="extension",
    ),
)

BY_NAME: dict[str, HyperParameter] = {}
for _hp in HYPERPARAMETERS:
    if _hp.name in BY_NAME:
        raise RuntimeError(f"hyperparameter {_hp.name!r} declared twice")
    BY_NAME[_hp.name] = _hp


def get(name: str) -> HyperParameter:
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown hyperparameter {name!r}{_did_you_mean(name, BY_NAME)}") from None


def augmentation_level(hp: Mapping[str, Any]) -> str:
    """The ``augmentation`` of a trial's hyperparameters, checked; "default" when they have none
    (settings written before the row existed)."""
    return BY_NAME["augmentation"].coerce(hp.get("augmentation", "default"))


def applicable(task: ImageTask, model_name: str) -> list[HyperParameter]:
    return [hp for hp in HYPERPARAMETERS if hp.applies_to(task, model_name)]


def why_not(hp: HyperParameter, task: ImageTask, model_name: str | None) -> str:
    """Why ``hp`` does not apply, in words."""
    if task not in hp.tasks:
        tasks = ", ".join(sorted(t.value for t in hp.tasks))
        return f"{hp.name} does not apply to task {task.value} (only to {tasks})"
    if hp.models is not None:
        return f"{hp.name} applies only to model(s) {', '.join(sorted(hp.models))}, not {model_name}"
    return f"{hp.name} does not apply to model {model_name}"


def defaults(task: ImageTask, model_name: str) -> dict[str, Any]:
    """Every applicable hyperparameter of ``model_name`` with its default."""
    out = {hp.name: hp.default_for(task, model_name) for hp in applicable(task, model_name)}
    out["model_name"] = model_name
    return out


def cross_checks(task: ImageTask, values: Mapping[str, Any]) -> list[str]:
    """Rules that tie several hyperparameters together, on resolved values."""
    problems = []
    model = values.get("model_name")
    if model in FIXED_SIZE_MODELS and values.get("valid_crop_size") != values.get("train_crop_size"):
        problems.append(
            f"{model} needs valid_crop_size == train_crop_size "
            f"(got {values.get('valid_crop_size')} and {values.get('train_crop_size')})"
        )
    if task in CLASSIFICATION_TASKS and values.get("valid_resize_size", 0) < values.get("valid_crop_size", 0):
        problems.append(
            f"valid_resize_size={values['valid_resize_size']} must be >= valid_crop_size={values['valid_crop_size']}"
        )
    if model in TORCHVISION_DETECTORS and values.get("max_size", 0) < values.get("min_size", 0):
        problems.append(f"max_size={values['max_size']} must be >= min_size={values['min_size']}")
    return problems


def resolve(task: ImageTask, given: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults of the chosen model overlaid with ``given``, coerced and checked.

    Raises ``ValueError`` with every problem on its own line (the caller wraps it in a
    ConfigError with its source).
    """
    problems: list[str] = []
    model = given.get("model_name", task.default_model)
    try:
        model = BY_NAME["model_name"].coerce(model)
    except ValueError as e:
        raise ValueError(str(e)) from None
    if model not in task.models:
        raise ValueError(
            f"model_name={model!r} is not a model for {task.value}; allowed: {', '.join(task.models)}"
        )
    values = defaults(task, model)
    for name, raw in given.items():
        if name not in BY_NAME:
            problems.append(f"unknown hyperparameter {name!r}{_did_you_mean(name, BY_NAME)}")
            continue
        hp = BY_NAME[name]
        if not hp.applies_to(task, model):
            problems.append(why_not(hp, task, model))
            continue
        try:
            values[name] = hp.coerce(raw, model)
        except ValueError as e:
            problems.append(str(e))
    if not problems:
        problems += cross_checks(task, values)
    if problems:
        raise ValueError("\n".join(problems))
    return values
