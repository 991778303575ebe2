"""Tasks, their primary metrics and the models offered for each (spec sections 1 and 3).

This is the one place that says which metric a task optimizes and in which direction.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


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


CLASSIFICATION_MODELS = (
    "mobilenetv2",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnest50",
    "resnest101",
    "seresnext",
    "vits16r224",
    "vitb16r224",
    "vitl16r224",
)
DETECTION_MODELS = (
    "yolov5",
    "fasterrcnn_resnet18_fpn",
    "fasterrcnn_resnet34_fpn",
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet101_fpn",
    "fasterrcnn_resnet152_fpn",
    "retinanet_resnet50_fpn",
)
SEGMENTATION_MODELS = (
    "maskrcnn_resnet18_fpn",
    "maskrcnn_resnet34_fpn",
    "maskrcnn_resnet50_fpn",
    "maskrcnn_resnet101_fpn",
    "maskrcnn_resnet152_fpn",
)

VIT_MODELS = ("vits16r224", "vitb16r224", "vitl16r224")
YOLO_MODELS = ("yolov5",)
TORCHVISION_DETECTORS = tuple(m for m in DETECTION_MODELS if m not in YOLO_MODELS) + SEGMENTATION_MODELS


@dataclass(frozen=True)
class TaskInfo:
    primary_metric: str
    maximize: bool
    default_model: str
    models: tuple[str, ...]


TASK_INFO: dict[ImageTask, TaskInfo] = {
    ImageTask.IMAGE_CLASSIFICATION: TaskInfo("accuracy", True, "vitb16r224", CLASSIFICATION_MODELS),
    ImageTask.IMAGE_CLASSIFICATION_MULTILABEL: TaskInfo("iou", True, "vitb16r224", CLASSIFICATION_MODELS),
    ImageTask.IMAGE_OBJECT_DETECTION: TaskInfo("mean_average_precision", True, "yolov5", DETECTION_MODELS),
    ImageTask.IMAGE_INSTANCE_SEGMENTATION: TaskInfo(
        "mean_average_precision", True, "maskrcnn_resnet50_fpn", SEGMENTATION_MODELS
    ),
}

CLASSIFICATION_TASKS = frozenset({ImageTask.IMAGE_CLASSIFICATION, ImageTask.IMAGE_CLASSIFICATION_MULTILABEL})
DETECTION_TASKS = frozenset({ImageTask.IMAGE_OBJECT_DETECTION, ImageTask.IMAGE_INSTANCE_SEGMENTATION})
ALL_TASKS = frozenset(ImageTask)

# Number of layer groups `layers_to_freeze` counts over (spec section 4). resnest follows the
# resnet stem/stage layout; the ViT groups are patch_embed plus the first 12 blocks.
LAYER_GROUPS: dict[str, int] = {
    **{m: 5 for m in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnest50", "resnest101")},
    "mobilenetv2": 19,
    "seresnext": 5,
    **{m: 13 for m in VIT_MODELS},
    "yolov5": 10,
    **{m: 5 for m in TORCHVISION_DETECTORS},
}


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
    return CLASSIFICATION_MODELS + DETECTION_MODELS + SEGMENTATION_MODELS
