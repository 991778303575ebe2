"""Tasks, their primary metrics and the models offered for each (spec sections 1 and 3).

The models come from the catalogue's rows (``spec/catalogue.py``).

This is the one place that says which metric a task optimizes and in which direction.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from automl_vision.spec.catalogue import MODELS, ROWS


class ImageTask(str, enum.Enum):
    IMAGE_CLASSIFICATION = "image_classification"
    IMAGE_CLASSIFICATION_MULTILABEL = "image_classification_multilabel"
    IMAGE_OBJECT_DETECTION = "image_object_detection"
    IMAGE_INSTANCE_SEGMENTATION = "image_instance_segmentation"

    def __str__(self) -> str:  # YAML/CLI spelling
        return self.value

    @property
    def is_classification(self) -> bool:
        return self in CLASSIFICATION_TASKS

    @property
    def primary_metric(self) -> str:
        return TASK_INFO[self].primary_metric

    @property
    def maximize(self) -> bool:
        return TASK_INFO[self].maximize

    @property
    def default_model(self) -> str:
        return TASK_INFO[self].default_model

    @property
    def models(self) -> tuple[str, ...]:
        return TASK_INFO[self].models


#: The tasks of each model of the catalogue (a task name that is not a task fails here, at import).
MODEL_TASKS: dict[str, frozenset[ImageTask]] = {row.name: frozenset(map(ImageTask, row.tasks)) for row in ROWS}


def models_of(task: ImageTask) -> tuple[str, ...]:
    """The catalogue's models for ``task``, in catalogue order."""
    return tuple(name for name, tasks in MODEL_TASKS.items() if task in tasks)


CLASSIFICATION_MODELS = models_of(ImageTask.IMAGE_CLASSIFICATION)
DETECTION_MODELS = models_of(ImageTask.IMAGE_OBJECT_DETECTION)
SEGMENTATION_MODELS = models_of(ImageTask.IMAGE_INSTANCE_SEGMENTATION)
#: Models whose input size is fixed when built (the ViTs).
FIXED_SIZE_MODELS = tuple(row.name for row in ROWS if row.fixed_size)
YOLO_MODELS = tuple(row.name for row in ROWS if row.family == "ultralytics")
TORCHVISION_DETECTORS = tuple(m for m in DETECTION_MODELS + SEGMENTATION_MODELS if MODELS[m].family == "torchvision")


@dataclass(frozen=True)
class TaskInfo:
    primary_metric: str
    maximize: bool
    default_model: str
    models: tuple[str, ...]


TASK_INFO: dict[ImageTask, TaskInfo] = {
    ImageTask.IMAGE_CLASSIFICATION: TaskInfo("accuracy", True, "vitb16r224", CLASSIFICATION_MODELS),
    ImageTask.IMAGE_CLASSIFICATION_MULTILABEL: TaskInfo(
        "iou", True, "vitb16r224", models_of(ImageTask.IMAGE_CLASSIFICATION_MULTILABEL)
    ),
    ImageTask.IMAGE_OBJECT_DETECTION: TaskInfo("mean_average_precision", True, "yolov5", DETECTION_MODELS),
    ImageTask.IMAGE_INSTANCE_SEGMENTATION: TaskInfo(
        "mean_average_precision", True, "maskrcnn_resnet50_fpn", SEGMENTATION_MODELS
    ),
}

CLASSIFICATION_TASKS = frozenset({ImageTask.IMAGE_CLASSIFICATION, ImageTask.IMAGE_CLASSIFICATION_MULTILABEL})
DETECTION_TASKS = frozenset({ImageTask.IMAGE_OBJECT_DETECTION, ImageTask.IMAGE_INSTANCE_SEGMENTATION})
ALL_TASKS = frozenset(ImageTask)

#: Number of layer groups `layers_to_freeze` counts over (spec section 4), from the catalogue's rows.
LAYER_GROUPS: dict[str, int] = {row.name: len(row.layer_groups) for row in ROWS}


def parse_task(value: str | ImageTask) -> ImageTask:
    """The task named by ``value``; raises ValueError listing the valid names."""
    if isinstance(value, ImageTask):
        return value
    try:
        return ImageTask(value)
    except ValueError:
        valid = ", ".join(t.value for t in ImageTask)
        raise ValueError(f"task={value!r} is not a task; allowed: {valid}") from None


def all_models() -> tuple[str, ...]:
    return tuple(MODELS)
