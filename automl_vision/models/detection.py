"""torchvision detectors (spec section 3): Faster R-CNN, RetinaNet and Mask R-CNN on ResNet-FPN
backbones of every depth, plus the functions a predictor needs to run them.

Pretrained weights come as for classification (``models/weights.py``: fetched once from
download.pytorch.org into ``$TORCH_HOME/hub/checkpoints/`` and verified, or read from a mirror):
the COCO checkpoints torchvision ships for the ResNet-50 models, the ImageNet ResNet checkpoints
for the other depths. When they cannot be had, building fails naming the file; random weights are
never substituted. Class-specific head layers are always new.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from torch import nn
from torchvision.models.detection import FasterRCNN, MaskRCNN, RetinaNet
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops import misc as misc_nn_ops
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from automl_vision.errors import ConfigError
from automl_vision.models.catalogue import weights_file
from automl_vision.models.detections import ImagePredictions
from automl_vision.models.masks import decode_rle, encode_mask, mask_to_polygon
from automl_vision.models.package import read_package
from automl_vision.models.tiling import merge_tile_predictions, pixel_window, tile_boxes
from automl_vision.models.weights import WeightsSource, locate
from automl_vision.spec import hyperparameters as hps
from automl_vision.spec.catalogue import MODELS, ModelRow
from automl_vision.spec.tasks import TORCHVISION_DETECTORS, ImageTask

# Parameters of the COCO checkpoints' heads that depend on the number of classes (never loaded).
_CLASS_HEADS = {
    "fasterrcnn": ("roi_heads.box_predictor.",),
    "retinanet": ("head.classification_head.cls_logits.",),
    "maskrcnn": ("roi_heads.box_predictor.", "roi_heads.mask_predictor.mask_fcn_logits."),
}


def _default(name: str) -> Any:
    """The hyperparameter table's default of an inference setting of the torchvision detectors."""
    hp = hps.get(name)
    task = min(hp.tasks, key=lambda t: t.value)  # the defaults are the same for detection and segmentation
    return hp.default_for(task, TORCHVISION_DETECTORS[0])


@dataclass(frozen=True)
class DetectorSettings:
    """What a torchvision detector's predictions depend on; changeable at load time without retraining.
    The defaults are the hyperparameter table's."""

    min_size: int = _default("min_size")
    max_size: int = _default("max_size")
    box_score_thresh: float = _default("box_score_thresh")
    box_nms_thresh: float = _default("box_nms_thresh")
    box_detections_per_img: int = _default("box_detections_per_img")
    tile_grid_size: tuple[int, int] | None = _default("tile_grid_size")
    tile_overlap_ratio: float = _default("tile_overlap_ratio")
    tile_predictions_nms_thresh: float = _default("tile_predictions_nms_thresh")
    mask_pixel_score_threshold: float = _default("mask_pixel_score_threshold")
    max_number_of_polygon_points: int = _default("max_number_of_polygon_points")

    @classmethod
    def from_hyperparameters(cls, hp: Mapping[str, Any]) -> "DetectorSettings":
        values = {k: hp[k] for k in cls.__dataclass_fields__ if hp.get(k) is not None}
        grid = values.get("tile_grid_size")
        if isinstance(grid, str):
            values["tile_grid_size"] = hps.parse_tile_grid_size(grid)
        elif grid is not None:
            values["tile_grid_size"] = tuple(grid)
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        if self.tile_grid_size is not None:
            d["tile_grid_size"] = f"{self.tile_grid_size[0]}x{self.tile_grid_size[1]}"
        return d


def _load(model_name: str, source: WeightsSource | None) -> dict[str, torch.Tensor]:
    return torch.load(locate(weights_file(model_name), source), map_location="cpu", weights_only=True)


def _coco(row: ModelRow) -> bool:
    """Whether the row's weights are a whole detector's COCO checkpoint (else an ImageNet backbone)."""
    return row.weights.startswith("torchvision.models.detection.")


def _model_kwargs(family: str, settings: DetectorSettings) -> dict[str, Any]:
    common = {"min_size": settings.min_size, "max_size": settings.max_size}
    if family == "retinanet":
        return {**common, "score_thresh": settings.box_score_thresh, "nms_thresh": settings.box_nms_thresh,
                "detections_per_img": settings.box_detections_per_img}
    return {**common, "box_score_thresh": settings.box_score_thresh, "box_nms_thresh": settings.box_nms_thresh,
            "box_detections_per_img": settings.box_detections_per_img}


def build_detector(family: str, depth: int, num_classes: int, *, pretrained: bool,
                   settings: DetectorSettings | None = None, weights: WeightsSource | None = None) -> nn.Module:
    """A ``family`` (fasterrcnn, retinanet, maskrcnn) model on a ResNet-``depth``-FPN backbone for
    ``num_classes`` object classes (the background class is added here)."""
    settings = settings or DetectorSettings()
    name = f"{family}_resnet{depth}_fpn"
    coco = _coco(MODELS[name])
    backbone_state = coco_state = None
    if pretrained:
        state = _load(name, weights)
        if coco:
            coco_state = state
        else:
            backbone_state = state
    model = _assemble(family, depth, num_classes, settings, pretrained=pretrained, coco=coco)
    if backbone_state is not None:
        body = {k: v for k, v in backbone_state.items() if not k.startswith("fc.")}
        model.backbone.body.load_state_dict(body)
    if coco_state is not None:
        heads = _CLASS_HEADS[family]
        state = {k: v for k, v in coco_state.items() if not k.startswith(heads)}
        missing, unexpected = model.load_state_dict(state, strict=False)
        wrong = [k for k in missing if not k.startswith(heads)] + list(unexpected)
        if wrong:
            raise ConfigError(f"pretrained weights for {family}_resnet50_fpn do not fit the model: "
                              f"{', '.join(wrong[:5])}")
    return model


def _assemble(family: str, depth: int, num_classes: int, settings: DetectorSettings, *, pretrained: bool,
              coco: bool) -> nn.Module:
    # As torchvision does: frozen batch norm over pretrained statistics, plain batch norm otherwise.
    norm_layer = misc_nn_ops.FrozenBatchNorm2d if pretrained else nn.BatchNorm2d
    resnet = getattr(torchvision.models, f"resnet{depth}")(weights=None, norm_layer=norm_layer)
    kwargs = _model_kwargs(family, settings)
    if family == "retinanet":
        backbone = _resnet_fpn_extractor(resnet, 5, returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))
        model: nn.Module = RetinaNet(backbone, num_classes + 1, **kwargs)
    else:
        backbone = _resnet_fpn_extractor(resnet, 5)
        model = (MaskRCNN if family == "maskrcnn" else FasterRCNN)(backbone, num_classes=num_classes + 1, **kwargs)
    if pretrained and coco:  # torchvision's COCO checkpoints were trained with batch-norm eps 0
        for m in model.modules():
            if isinstance(m, misc_nn_ops.FrozenBatchNorm2d):
                m.eps = 0.0
    return model


def _depth(row: ModelRow) -> int:
    return int(row.backbone.removeprefix("resnet"))


def build_torchvision_detector(row: ModelRow, num_classes: int, *, pretrained: bool,
                               settings: DetectorSettings | None = None,
                               weights: WeightsSource | None = None) -> nn.Module:
    """The builder of the catalogue's torchvision detector rows."""
    return build_detector(row.arch, _depth(row), num_classes, pretrained=pretrained, settings=settings,
                          weights=weights)


def apply_inference_settings(model: nn.Module, settings: DetectorSettings) -> None:
    """Change a built detector's resizing and post-processing settings in place."""
    model.transform.min_size = (settings.min_size,)
    model.transform.max_size = settings.max_size
    if isinstance(model, RetinaNet):
        model.score_thresh = settings.box_score_thresh
        model.nms_thresh = settings.box_nms_thresh
        model.detections_per_img = settings.box_detections_per_img
    else:
        model.roi_heads.score_thresh = settings.box_score_thresh
        model.roi_heads.nms_thresh = settings.box_nms_thresh
        model.roi_heads.detections_per_img = settings.box_detections_per_img


# --- prediction ----------------------------------------------------------------------------------

def _to_predictions(output: Mapping[str, torch.Tensor], settings: DetectorSettings,
                    with_masks: bool) -> ImagePredictions:
    """torchvision's output dict (labels 1..C) -> ImagePredictions (labels 0..C-1).

    Label 0 is the background class; RetinaNet, which has no background output of its own, can
    still score it (never above the others once trained): such boxes are dropped.
    """
    keep = output["labels"] >= 1
    masks = None
    if with_masks:
        binary = (output["masks"][keep][:, 0] > settings.mask_pixel_score_threshold).cpu().numpy()
        masks = [encode_mask(m) for m in binary]
    return ImagePredictions(output["boxes"][keep].float().cpu().numpy(), output["labels"][keep].cpu().numpy() - 1,
                            output["scores"][keep].float().cpu().numpy(), masks)


@torch.inference_mode()
def predict_tensors(model: nn.Module, images: Sequence[torch.Tensor], settings: DetectorSettings,
                    *, with_masks: bool = False) -> list[ImagePredictions]:
    """Detections (pixel coordinates) on float CHW images in [0, 1], already on the model's device.

    With a tile grid, each image and each of its tiles goes through the model and the boxes are
    merged (spec section 9); the model is assumed to be in eval mode. ``model`` may also be its ONNX
    Runtime stand-in (``models/onnx_detectors.py``).
    """
    if settings.tile_grid_size is None:
        outputs = _same_size_batches(model, list(images))
        return [_to_predictions(o, settings, with_masks) for o in outputs]
    if with_masks:
        raise ConfigError("tiling (tile_grid_size) is available for object detection only")
    results = []
    for image in images:
        h, w = image.shape[-2:]
        windows = [pixel_window(t, w, h) for t in tile_boxes(w, h, settings.tile_grid_size, settings.tile_overlap_ratio)]
        crops = [image] + [image[:, y1:y2, x1:x2] for x1, y1, x2, y2 in windows]
        outputs = _same_size_batches(model, crops)
        sources = [_to_predictions(o, settings, False) for o in outputs]
        offsets = [(0, 0)] + [(x1, y1) for x1, y1, _, _ in windows]
        results.append(merge_tile_predictions(sources, offsets, settings.tile_predictions_nms_thresh,
                                              settings.box_detections_per_img))
    return results


def _same_size_batches(model, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """The model's outputs for ``images``, which go through it in batches of one size each: torchvision pads
    a batch to its largest image, which changes what the others' borders look like to the network, so an
    image (or tile) gets the same answer whatever shares its batch, and the same as from the ONNX export."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, t in enumerate(images):
        groups.setdefault(tuple(t.shape), []).append(i)
    if len(groups) == 1:
        return model(images)
    out: list = [None] * len(images)
    for indices in groups.values():
        for i, o in zip(indices, model([images[i] for i in indices])):
            out[i] = o
    return out


def scoring_output(pred: ImagePredictions, classes: Sequence[str], width: int, height: int,
                   settings: DetectorSettings | None = None, *, polygons: bool = False) -> dict[str, Any]:
    """One image's detections in the scoring format of spec section 9 (normalized coordinates)."""
    boxes = []
    for k in range(len(pred.labels)):
        x1, y1, x2, y2 = (float(v) for v in pred.boxes[k])
        entry: dict[str, Any] = {
            "box": {"topX": _norm(x1, width), "topY": _norm(y1, height),
                    "bottomX": _norm(x2, width), "bottomY": _norm(y2, height)},
            "label": classes[int(pred.labels[k])],
            "score": round(float(pred.scores[k]), 6),
        }
        if polygons and pred.masks is not None:
            limit = (settings or DetectorSettings()).max_number_of_polygon_points
            entry["polygon"] = mask_to_polygon(decode_rle(pred.masks[k]), limit)
        boxes.append(entry)
    return {"boxes": boxes}


def _norm(v: float, size: int) -> float:
    return round(min(max(v / size, 0.0), 1.0), 6)


def image_to_tensor(image: Any) -> torch.Tensor:
    """A PIL image, HWC uint8 array or CHW tensor as a float CHW RGB tensor in [0, 1]."""
    if isinstance(image, torch.Tensor):
        t = image
    else:
        if hasattr(image, "convert"):
            image = image.convert("RGB")
        t = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
    return t.float() / 255 if t.dtype == torch.uint8 else t.float()


def predict_images(model: nn.Module, images: Sequence[Any], settings: DetectorSettings, classes: Sequence[str],
                   *, task: ImageTask = ImageTask.IMAGE_OBJECT_DETECTION, batch_size: int = 4) -> list[dict[str, Any]]:
    """Spec section 9 responses (``{"boxes": [...]}``, with polygons for segmentation), one per image.

    ``images``: PIL images, HWC uint8 arrays or CHW tensors. The model must be in eval mode;
    ``settings`` is applied to it first.
    """
    apply_inference_settings(model, settings)
    device = next(model.parameters()).device
    segmentation = task is ImageTask.IMAGE_INSTANCE_SEGMENTATION
    out = []
    for start in range(0, len(images), batch_size):
        chunk = [image_to_tensor(im).to(device) for im in images[start:start + batch_size]]
        preds = predict_tensors(model, chunk, settings, with_masks=segmentation)
        for t, p in zip(chunk, preds):
            out.append(scoring_output(p, classes, t.shape[-1], t.shape[-2], settings, polygons=segmentation))
    return out


@dataclass
class DetectorPackage:
    """A trained detector loaded from its model package (``outputs/`` of a trial)."""

    model: nn.Module
    task: ImageTask
    model_name: str
    classes: list[str]
    settings: DetectorSettings


def load_detector(model_dir: str | Path, device: str | torch.device = "cpu",
                  overrides: Mapping[str, Any] | None = None) -> DetectorPackage:
    """Rebuild a torchvision detector from its package (``models.package.read_package``: weights, config,
    labels); ``overrides`` changes inference settings (spec section 9 model_settings)."""
    package = read_package(model_dir)
    settings = DetectorSettings.from_hyperparameters({**package.config.get("model_settings", {}),
                                                       **(overrides or {})})
    row = MODELS[package.model_name]
    # Same structure as in training (frozen batch norm after pretrained weights), random init.
    model = _assemble(row.arch, _depth(row), len(package.labels), settings,
                      pretrained=bool(package.hyperparameters.get("pretrained")), coco=_coco(row))
    model.load_state_dict(package.state_dict())
    model.to(device).eval()
    return DetectorPackage(model, package.task, package.model_name, package.labels, settings)

