"""The model catalogue: one row per model, the only list of models (spec section 3).

A row says which tasks offer the model, which library it comes from, the builder that makes it
(a dotted name, imported only when a model is built, so that this module never imports torch), its
layer groups for ``layers_to_freeze``, whether its input size is fixed when built, the preprocessing
it takes when no pretrained weights say otherwise, and where its pretrained weights come from with
their licences. The task lists (``spec/tasks.py``), the hyperparameter defaults and checks, the
builders' registry (``models/registry.py``) and the weights catalogue (``models/catalogue.py``) all
read these rows.

Licences as the upstream projects state them:

* torchvision's code is BSD-3-Clause. torchvision states no licence of its own for its pretrained
  weights; its documentation warns that they were trained on datasets with their own terms
  (ImageNet-1k for the classifiers and backbones, COCO for the detectors), so the catalogue says so.
* timm's code is Apache-2.0; each pretrained cfg carries the licence of its weights (``license``).
* ultralytics' code and its released weights are AGPL-3.0 (or an Ultralytics Enterprise licence).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

TORCHVISION_CODE = "BSD-3-Clause"
TORCHVISION_IMAGENET = "not stated by torchvision (trained on ImageNet-1k; the dataset's terms of access apply)"
TORCHVISION_COCO = "not stated by torchvision (trained on COCO; its images carry their own licences)"
TIMM_CODE = "Apache-2.0"
ULTRALYTICS = "AGPL-3.0 (or an Ultralytics Enterprise licence)"
#: ImageNet statistics: the preprocessing of models trained from scratch and of the torchvision weights.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Task names (the values of ``spec.tasks.ImageTask``, which checks them when it reads the rows).
CLASSIFICATION = ("image_classification", "image_classification_multilabel")
DETECTION = ("image_object_detection",)
SEGMENTATION = ("image_instance_segmentation",)

#: Layer groups: the parameter-name prefixes of each group, in order.
Groups = tuple[tuple[str, ...], ...]
RESNET_GROUPS: Groups = (("conv1.", "bn1."), ("layer1.",), ("layer2.",), ("layer3.",), ("layer4.",))
MOBILENET_GROUPS: Groups = tuple((f"features.{i}.",) for i in range(19))
# The position embedding and class token sit beside the patch embedding: they freeze with it.
VIT_GROUPS: Groups = (("patch_embed.", "cls_token", "pos_embed", "reg_token"),
                      *((f"blocks.{i}.",) for i in range(12)))
FPN_GROUPS: Groups = (("backbone.body.conv1.", "backbone.body.bn1."), ("backbone.body.layer1.",),
                      ("backbone.body.layer2.",), ("backbone.body.layer3.",), ("backbone.body.layer4.",))
YOLO_GROUPS: Groups = tuple((f"model.{i}.",) for i in range(10))  # the yolov5 backbone


@dataclass(frozen=True)
class Preprocessing:
    """How images are normalized and resampled for a model."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"

    def to_json(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std), "interpolation": self.interpolation}


IMAGENET = Preprocessing(IMAGENET_MEAN, IMAGENET_STD)
#: Pixels scaled to [0, 1] and nothing more (ultralytics).
UNIT_RANGE = Preprocessing((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


@dataclass(frozen=True)
class ModelRow:
    """One model of the catalogue."""

    name: str
    #: Task names (``ImageTask`` values) that offer the model.
    tasks: tuple[str, ...]
    #: The library the model comes from: torchvision, timm or ultralytics.
    family: str
    #: ``module.function`` making the model: ``builder(row, num_classes, *, pretrained, **options)``.
    builder: str
    #: The library's name of the architecture (torchvision/timm model name, detector family, yolo name
    #: pattern with ``{}`` for the size letter).
    arch: str
    #: Where the pretrained weights come from: a torchvision weights enum (dotted name), a timm
    #: pretrained cfg name, or an ultralytics file name pattern with ``{}`` for the size letter.
    weights: str
    layer_groups: Groups
    code_licence: str
    #: Licence of the pretrained weights (None: as the library's metadata states it, timm).
    weights_licence: str | None = None
    #: Normalization when training from scratch (and for pretrained weights without metadata of their own).
    preprocessing: Preprocessing = IMAGENET
    #: The input size is fixed when the model is built (train and validation crops must be equal).
    fixed_size: bool = False
    #: Backbone of a detector (``resnet50``), None otherwise.
    backbone: str | None = None
    #: ``model_size`` -> the letter in ``arch`` and ``weights`` (ultralytics); empty: one size only.
    sizes: Mapping[str, str] = field(default_factory=dict)


_CLASSIFIER = "automl_vision.models.classification.build_classifier"
_DETECTOR = "automl_vision.models.detection.build_torchvision_detector"
_YOLO = "automl_vision.models.yolo.build_yolov5"


def _torchvision_classifier(name: str, arch: str, weights: str, groups: Groups) -> ModelRow:
    return ModelRow(name, CLASSIFICATION, "torchvision", _CLASSIFIER, arch, f"torchvision.models.{weights}", groups,
                    TORCHVISION_CODE, TORCHVISION_IMAGENET)


def _timm_classifier(name: str, arch: str, groups: Groups, *, fixed_size: bool = False) -> ModelRow:
    return ModelRow(name, CLASSIFICATION, "timm", _CLASSIFIER, arch, arch, groups, TIMM_CODE, fixed_size=fixed_size)


def _torchvision_detector(family: str, depth: int, tasks: tuple[str, ...]) -> ModelRow:
    """COCO weights for the ResNet-50 models torchvision ships, the ImageNet backbone otherwise."""
    if depth == 50:
        title = {"fasterrcnn": "FasterRCNN", "retinanet": "RetinaNet", "maskrcnn": "MaskRCNN"}[family]
        weights, licence = f"torchvision.models.detection.{title}_ResNet50_FPN_Weights", TORCHVISION_COCO
    else:
        weights, licence = f"torchvision.models.ResNet{depth}_Weights", TORCHVISION_IMAGENET
    return ModelRow(f"{family}_resnet{depth}_fpn", tasks, "torchvision", _DETECTOR, family, weights, FPN_GROUPS,
                    TORCHVISION_CODE, licence, backbone=f"resnet{depth}")


# In the order the spec lists them (each task's models in this order).
ROWS: tuple[ModelRow, ...] = (
    _torchvision_classifier("mobilenetv2", "mobilenet_v2", "MobileNet_V2_Weights", MOBILENET_GROUPS),
    _torchvision_classifier("resnet18", "resnet18", "ResNet18_Weights", RESNET_GROUPS),
    _torchvision_classifier("resnet34", "resnet34", "ResNet34_Weights", RESNET_GROUPS),
    _torchvision_classifier("resnet50", "resnet50", "ResNet50_Weights", RESNET_GROUPS),
    _torchvision_classifier("resnet101", "resnet101", "ResNet101_Weights", RESNET_GROUPS),
    _torchvision_classifier("resnet152", "resnet152", "ResNet152_Weights", RESNET_GROUPS),
    # resnest and seresnext follow the resnet stem/stage layout.
    _timm_classifier("resnest50", "resnest50d", RESNET_GROUPS),
    _timm_classifier("resnest101", "resnest101e", RESNET_GROUPS),
    _timm_classifier("seresnext", "seresnext50_32x4d", RESNET_GROUPS),
    # The ViT groups are the patch embedding plus the first 12 blocks.
    _timm_classifier("vits16r224", "vit_small_patch16_224", VIT_GROUPS, fixed_size=True),
    _timm_classifier("vitb16r224", "vit_base_patch16_224", VIT_GROUPS, fixed_size=True),
    _timm_classifier("vitl16r224", "vit_large_patch16_224", VIT_GROUPS, fixed_size=True),
    # Models built from ultralytics' YAML (the anchor-free YOLOv5u heads), weights its COCO checkpoints.
    ModelRow("yolov5", DETECTION, "ultralytics", _YOLO, "yolov5{}u", "yolov5{}u.pt", YOLO_GROUPS,
             ULTRALYTICS, ULTRALYTICS, preprocessing=UNIT_RANGE,
             sizes={"small": "s", "medium": "m", "large": "l", "xlarge": "x"}),
    *(_torchvision_detector("fasterrcnn", depth, DETECTION) for depth in (18, 34, 50, 101, 152)),
    _torchvision_detector("retinanet", 50, DETECTION),
    *(_torchvision_detector("maskrcnn", depth, SEGMENTATION) for depth in (18, 34, 50, 101, 152)),
)


def index(rows: Iterable[ModelRow]) -> dict[str, ModelRow]:
    """The rows by name; a name given twice raises."""
    out: dict[str, ModelRow] = {}
    for row in rows:
        if row.name in out:
            raise ValueError(f"model {row.name!r} declared twice")
        out[row.name] = row
    return out


MODELS: dict[str, ModelRow] = index(ROWS)
