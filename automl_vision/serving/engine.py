"""A loaded model that turns images into the original product's per-image answers (spec section 9).

An engine has two halves so that work can be spread: ``preparer`` (picklable, per image, runs in
request threads or DataLoader workers) turns a decoded RGB image into the model's input, and
``infer`` runs one batch of prepared inputs through the network and formats one answer per image:

* classification: ``{"probs": [0.1, 0.9], "labels": ["can", "carton"]}``
* detection: ``{"boxes": [{"box": {"topX", "topY", "bottomX", "bottomY"}, "label", "score"}]}``
  (coordinates normalized to the image), segmentation adds ``"polygon": [[x1, y1, ...]]``.

The server, batch scoring and evaluation all go through an engine, so they answer alike.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from automl_vision.errors import ConfigError
from automl_vision.models.device import pick_device
from automl_vision.models.preprocessing import valid_transform
from automl_vision.models.onnx_detectors import onnx_session
from automl_vision.serving.package import ModelPackage, build_torch_model, have_runtime
from automl_vision.serving.settings import InferenceSettings
from automl_vision.spec.tasks import ImageTask

log = logging.getLogger(__name__)


class Engine(Protocol):
    task: ImageTask
    labels: list[str]
    settings: InferenceSettings
    runtime: str  # "pytorch" | "onnx"
    device: str

    @property
    def preparer(self): ...  # Callable[[Image.Image], Any], picklable

    def infer(self, prepared: Sequence[Any]) -> list[dict[str, Any]]: ...


# --- classification --------------------------------------------------------------------------------

@dataclass(frozen=True)
class ClassificationPreparer:
    """Resize, centre crop, normalize: the validation transform of training, with the settings' sizes."""

    transform: Any

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.transform(image)


class ClassificationEngine:
    def __init__(self, package: ModelPackage, settings: InferenceSettings):

        self.task, self.labels, self.settings = package.task, list(package.labels), settings
        self.package = package
        self.multilabel = package.task is ImageTask.IMAGE_CLASSIFICATION_MULTILABEL
        self._preparer = ClassificationPreparer(valid_transform(dict(settings.model)))
        device = pick_device(settings.device)
        self.device = str(device)
        runtime = settings.runtime
        if runtime == "auto":
            runtime = "onnx" if device.type == "cpu" and package.onnx is not None and have_runtime() else "pytorch"
        if runtime in ("onnx", "openvino") and package.onnx is None:
            raise ConfigError(f"runtime={runtime!r} but {package.path} has no model.onnx (see its package.json "
                              "for why)")
        if runtime == "openvino" and not have_runtime("openvino"):
            raise ConfigError("runtime='openvino': openvino is not installed (pip install 'automl-vision[openvino]')")
        self.runtime = runtime
        self._model = None
        self._session = None
        if runtime in ("onnx", "openvino"):
            self._session = onnx_session(package.onnx, runtime, cuda=device.type == "cuda")
        else:
            self._model = build_torch_model(package).to(device)
            self._device = device

    @property
    def preparer(self) -> ClassificationPreparer:
        return self._preparer

    @property
    def explain_device(self) -> torch.device:
        """Where explanations run: the engine's device, the CPU under ONNX Runtime or OpenVINO."""
        return self._device if self._model is not None else torch.device(self.device)

    def torch_model(self) -> torch.nn.Module:
        """The PyTorch network (the served one, or built from the package when another runtime serves)."""
        return self._model if self._model is not None else build_torch_model(self.package)

    def logits(self, batch: torch.Tensor) -> np.ndarray:
        """The raw forward pass: a ``[N, 3, H, W]`` float batch to ``[N, C]`` logits."""
        if self._session is not None:
            return self._session.run(None, {"image": batch.numpy()})[0]
        with torch.inference_mode():
            return self._model(batch.to(self._device)).float().cpu().numpy()

    def infer(self, prepared: Sequence[torch.Tensor]) -> list[dict[str, Any]]:
        if not prepared:
            return []
        logits = self.logits(torch.stack(list(prepared)))
        if self.multilabel:
            probs = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
        else:
            z = logits.astype(np.float64)
            z = np.exp(z - z.max(axis=1, keepdims=True))
            probs = z / z.sum(axis=1, keepdims=True)
        return [{"probs": [float(p) for p in row], "labels": self.labels} for row in probs]


# --- detection and instance segmentation -----------------------------------------------------------

def _detection_engine(package: ModelPackage, settings: InferenceSettings) -> Engine:
    # The detectors (torchvision's detection models, seconds to import) only when serving one.
    from automl_vision.serving.detection import DetectionEngine

    return DetectionEngine(package, settings)


def load_engine(package: ModelPackage, settings: InferenceSettings) -> Engine:
    """The engine for ``package`` with ``settings`` (see :meth:`ModelPackage.settings`)."""
    if package.task.is_classification:
        engine: Engine = ClassificationEngine(package, settings)
    else:
        engine = _detection_engine(package, settings)
    changed = {k: settings.sources[k] for k in settings.sources}
    log.info("loaded %s (%s, %d classes) from %s: %s on %s%s", package.model_name, package.task.value,
             len(package.labels), package.path, engine.runtime, engine.device,
             "; settings changed: " + ", ".join(f"{k} from {v}" for k, v in changed.items()) if changed else "")
    return engine
