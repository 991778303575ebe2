"""Engines for object detection and instance segmentation, over the detectors' own prediction functions
(``models/detection.py`` for the torchvision detectors, with tiling; ``models/yolo.py`` for yolov5).

Answers: ``{"boxes": [{"box": {"topX", "topY", "bottomX", "bottomY"}, "label", "score"}]}`` with
coordinates normalized to the image; instance segmentation adds each object's ``"polygon"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from automl_vision.models.detection import image_to_tensor, load_detector, predict_tensors, scoring_output
from automl_vision.models.device import pick_device
from automl_vision.models.yolo import load_yolo, predict_arrays
from automl_vision.serving.package import ModelPackage
from automl_vision.serving.settings import InferenceSettings
from automl_vision.spec.tasks import YOLO_MODELS, ImageTask


def to_float_tensor(image: Image.Image) -> torch.Tensor:
    """CHW float RGB in [0, 1], what the torchvision detectors take."""
    return image_to_tensor(image)


def to_uint8_array(image: Image.Image) -> np.ndarray:
    """HWC uint8 RGB, what yolov5's letterbox takes."""
    return np.asarray(image.convert("RGB"))


class DetectionEngine:
    def __init__(self, package: ModelPackage, settings: InferenceSettings):
        self.task, self.labels, self.settings = package.task, list(package.labels), settings
        self.segmentation = package.task is ImageTask.IMAGE_INSTANCE_SEGMENTATION
        device = pick_device(settings.device)
        self.device, self._device = str(device), device
        self.runtime = "pytorch"
        overrides = dict(settings.model)
        self.yolo = package.model_name in YOLO_MODELS
        if self.yolo:
            loaded = load_yolo(package.path, device, overrides=overrides)
            self._preparer = to_uint8_array
        else:
            loaded = load_detector(package.path, device, overrides=overrides)
            self._preparer = to_float_tensor
        self._model, self._settings = loaded.model, loaded.settings

    @property
    def preparer(self):
        return self._preparer

    def predictions(self, prepared: Sequence[Any]) -> list:
        """The raw detections (``ImagePredictions``, pixel coordinates, label indices) of a batch."""
        if self.yolo:
            return predict_arrays(self._model, list(prepared), self._settings)
        # torchvision pads a batch to its largest image, which changes what the others' borders look
        # like to the network: only images of one size go through together, so an image gets the
        # same answer whatever else shares its batch (server, batch scoring and evaluation agree).
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, t in enumerate(prepared):
            groups.setdefault(tuple(t.shape), []).append(i)
        out: list = [None] * len(prepared)
        for indices in groups.values():
            preds = predict_tensors(self._model, [prepared[i].to(self._device) for i in indices], self._settings,
                                    with_masks=self.segmentation)
            for i, p in zip(indices, preds):
                out[i] = p
        return out

    def infer(self, prepared: Sequence[Any]) -> list[dict[str, Any]]:
        if not prepared:
            return []
        out = []
        for x, pred in zip(prepared, self.predictions(prepared)):
            h, w = (x.shape[0], x.shape[1]) if self.yolo else (x.shape[-2], x.shape[-1])
            out.append(scoring_output(pred, self.labels, w, h, self._settings, polygons=self.segmentation))
        return out
