"""Engines for object detection and instance segmentation, over the detectors' own prediction functions
(``models/detection.py`` for the torchvision detectors, with tiling; ``models/yolo.py`` for yolov5).

Answers: ``{"boxes": [{"box": {"topX", "topY", "bottomX", "bottomY"}, "label", "score"}]}`` with
coordinates normalized to the image; instance segmentation adds each object's ``"polygon"``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from automl_vision.errors import ConfigError
from automl_vision.models.detection import (DetectorSettings, image_to_tensor, load_detector, predict_tensors,
                                            scoring_output)
from automl_vision.models.device import pick_device
from automl_vision.models.onnx_detectors import OnnxTorchvisionDetector, OnnxYolo, graph_settings_problem
from automl_vision.models.yolo import YoloSettings, load_yolo, predict_arrays
from automl_vision.serving.package import ModelPackage, have_runtime
from automl_vision.serving.settings import InferenceSettings
from automl_vision.spec.tasks import YOLO_MODELS, ImageTask

log = logging.getLogger(__name__)


def to_float_tensor(image: Image.Image) -> torch.Tensor:
    """CHW float RGB in [0, 1], what the torchvision detectors take."""
    return image_to_tensor(image)


def to_uint8_array(image: Image.Image) -> np.ndarray:
    """HWC uint8 RGB, what yolov5's letterbox takes."""
    return np.asarray(image.convert("RGB"))


class DetectionEngine:
    def __init__(self, package: ModelPackage, settings: InferenceSettings):
        self.task, self.labels, self.settings = package.task, list(package.labels), settings
        self.package = package
        self.segmentation = package.task is ImageTask.IMAGE_INSTANCE_SEGMENTATION
        device = pick_device(settings.device)
        overrides = dict(settings.model)
        self.yolo = package.model_name in YOLO_MODELS
        self._preparer = to_uint8_array if self.yolo else to_float_tensor
        self.runtime = onnx_runtime_choice(package, settings, device.type)
        if self.runtime in ("onnx", "openvino"):
            device = pick_device("cpu")
            model_settings = {**package.config.get("model_settings", {}), **overrides}
            if self.yolo:
                self._settings = YoloSettings.from_hyperparameters(model_settings)
                self._model = OnnxYolo(package.onnx, int(package.onnx_info.get("stride", 32)), self.runtime)
            else:
                self._settings = DetectorSettings.from_hyperparameters(model_settings)
                self._model = OnnxTorchvisionDetector(package.onnx, self._settings.to_json(),
                                                      with_masks=self.segmentation, runtime=self.runtime)
        else:
            loaded = (load_yolo if self.yolo else load_detector)(package.path, device, overrides=overrides)
            self._model, self._settings = loaded.model, loaded.settings
        self.device, self._device = str(device), device

    @property
    def preparer(self):
        return self._preparer

    def predictions(self, prepared: Sequence[Any], *, masks: bool = True) -> list:
        """The raw detections (``ImagePredictions``, pixel coordinates, label indices) of a batch; ``masks``
        False leaves a segmentation model's masks out (boxes only: what D-RISE compares)."""
        if self.yolo:
            return predict_arrays(self._model, list(prepared), self._settings)
        # images of one size go through together (models/detection.py), tiles included
        return predict_tensors(self._model, [t.to(self._device) for t in prepared], self._settings,
                               with_masks=self.segmentation and masks)

    def infer(self, prepared: Sequence[Any]) -> list[dict[str, Any]]:
        if not prepared:
            return []
        out = []
        for x, pred in zip(prepared, self.predictions(prepared)):
            h, w = (x.shape[0], x.shape[1]) if self.yolo else (x.shape[-2], x.shape[-1])
            out.append(scoring_output(pred, self.labels, w, h, self._settings, polygons=self.segmentation))
        return out


def onnx_runtime_choice(package: ModelPackage, settings: InferenceSettings, device_type: str) -> str:
    """``onnx``, ``openvino`` or ``pytorch`` for a detector: ``auto`` takes ONNX Runtime on the CPU when the
    package has an export (``model.onnx`` is only kept when it passed its checks) whose graph allows the
    settings; ``onnx`` or ``openvino`` asked for and not possible is an error that says why."""
    wanted = settings.runtime
    if wanted == "pytorch" or (wanted == "auto" and device_type != "cpu"):
        return "pytorch"
    if package.onnx is None:
        why = f"{package.path} has no model.onnx (see its package.json for why)"
    elif not have_runtime("openvino" if wanted == "openvino" else "onnx"):
        why = ("openvino is not installed (pip install 'automl-vision[openvino]')" if wanted == "openvino"
               else "onnxruntime is not installed")
    else:
        model_settings = {**package.config.get("model_settings", {}), **settings.model}
        why = graph_settings_problem(package.onnx_info.get("graph_settings") or {}, model_settings)
    if why is None:
        return "openvino" if wanted == "openvino" else "onnx"
    if wanted != "auto":
        raise ConfigError(f"runtime={wanted!r}: {why}; serve with runtime='pytorch' or 'auto'")
    if package.onnx is not None:
        log.info("serving %s with PyTorch: %s", package.model_name, why)
    return "pytorch"
