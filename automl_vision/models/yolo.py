"""yolov5 through ultralytics: the only module that imports ultralytics.

ultralytics reads its environment once, at import: :func:`prepare_ultralytics` points it at a
folder we own (``YOLO_CONFIG_DIR``), offline (``YOLO_OFFLINE``), without run-time pip installs
(``YOLO_AUTOINSTALL``), quiet (``YOLO_VERBOSE``), with a settings file that turns off syncing and third-party loggers and a
font so that it never reaches for the network. Its global settings object is never modified.
Models are built from ultralytics' YAML (``yolov5{s,m,l,x}u.yaml``, the anchor-free YOLOv5u
heads ultralytics maintains), never from ``.pt`` names, which would download.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from automl_vision.models.catalogue import default_model_size, sized_name, weights_file
from automl_vision.models.detection import scoring_output
from automl_vision.models.detections import ImagePredictions
from automl_vision.models.package import read_package
from automl_vision.models.weights import WeightsSource, locate
from automl_vision.spec import hyperparameters as hps
from automl_vision.spec.catalogue import MODELS, ModelRow
from automl_vision.spec.tasks import ImageTask

log = logging.getLogger(__name__)

YOLOV5 = MODELS["yolov5"]

_SETTINGS = {  # ultralytics' settings schema v0.0.8, with everything that reaches out turned off
    "settings_version": "0.0.8", "uuid": "0" * 64, "sync": False, "api_key": "", "openai_api_key": "",
    "clearml": False, "comet": False, "dvc": False, "mlflow": False, "raytune": False, "tensorboard": False,
    "wandb": False, "vscode_msg": False, "openvino_msg": False,
}


def prepare_ultralytics(config_dir: str | Path | None = None) -> Path:
    """Set ultralytics up to run offline and write only under ``config_dir``, then import it.

    The first call in a process decides the folder (ultralytics reads it at import); later calls
    return that folder. Without ``config_dir`` a private temporary folder is used.
    """
    if "ultralytics" in sys.modules:
        return Path(os.environ.get("YOLO_CONFIG_DIR", ""))
    if config_dir:
        root = Path(config_dir)
    else:
        root = Path(tempfile.mkdtemp(prefix="automl-vision-ultralytics-"))
        atexit.register(shutil.rmtree, root, ignore_errors=True)
    user_dir = root / "Ultralytics"  # ultralytics appends this to YOLO_CONFIG_DIR
    user_dir.mkdir(parents=True, exist_ok=True)
    settings = user_dir / "settings.json"
    if not settings.exists():
        settings.write_text(json.dumps({**_SETTINGS, "datasets_dir": str(root / "datasets"),
                                        "weights_dir": str(root / "weights"), "runs_dir": str(root / "runs")},
                                       indent=2))
    # Plots and dataset checks look for these fonts and download them when missing.
    import matplotlib

    font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        if not (user_dir / name).exists():
            shutil.copyfile(font, user_dir / name)
    os.environ["YOLO_CONFIG_DIR"] = str(root)
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "False"
    # Quiet: ultralytics logs its arguments as "epochs=30, batch=16, ...", which Katib's StdOut
    # collector would read as metrics; our trial logs its own progress.
    os.environ["YOLO_VERBOSE"] = "False"
    import ultralytics  # noqa: F401

    _undo_pil_patch()
    return root


def _undo_pil_patch() -> None:
    """Give PIL its own ``Image.open`` back.

    Importing ultralytics replaces ``PIL.Image.open`` process-wide with a wrapper that, on any file
    PIL cannot identify, tries to install and import a HEIF plugin; without network that turns a
    clean "not an image" error into ModuleNotFoundError in every other part of the process
    (data validation, the model server). We accept no HEIF images, so the plain opener is right.
    """
    from PIL import Image  # noqa: the module's own PIL, re-read: ultralytics patched it in place

    try:  # ultralytics may not have been imported (then nothing was patched)
        from ultralytics.utils import patches
    except ImportError:
        return
    original = getattr(patches, "_image_open", None)
    if original is not None:
        Image.open = original


def yaml_name(model_size: str, row: ModelRow = YOLOV5) -> str:
    """ultralytics' model YAML of the row for ``model_size`` (``yolov5mu.yaml``)."""
    return f"{sized_name(row, row.arch, model_size)}.yaml"


def build_yolo(num_classes: int, *, pretrained: bool, model_size: str = default_model_size(),
               weights: WeightsSource | None = None, verbose: bool = False, row: ModelRow = YOLOV5) -> nn.Module:
    """A yolov5 DetectionModel for ``num_classes`` classes built from YAML; pretrained weights (COCO,
    ultralytics' checkpoint) are transferred where shapes match, the class-specific head stays random."""
    prepare_ultralytics()
    # ultralytics reads its settings file when first imported: only after prepare_ultralytics()
    from ultralytics.nn.tasks import DetectionModel, load_checkpoint

    model = DetectionModel(yaml_name(model_size, row), nc=num_classes, verbose=verbose)
    if pretrained:
        path = locate(weights_file(f"{row.name}:{model_size}"), weights)
        # ultralytics checkpoints are pickled modules: this unpickles code from the file, as ultralytics does.
        source, _ = load_checkpoint(str(path))
        model.load(source, verbose=verbose)
    return model


def build_yolov5(row: ModelRow, num_classes: int, *, pretrained: bool, model_size: str = default_model_size(),
                 weights: WeightsSource | None = None) -> nn.Module:
    """The builder of the catalogue's ultralytics rows."""
    return build_yolo(num_classes, pretrained=pretrained, model_size=model_size, weights=weights, row=row)


# --- prediction ----------------------------------------------------------------------------------

def _default(name: str) -> Any:
    """The hyperparameter table's default of a yolov5 inference setting."""
    return hps.get(name).default_for(ImageTask.IMAGE_OBJECT_DETECTION, YOLOV5.name)


@dataclass(frozen=True)
class YoloSettings:
    """Inference settings of yolov5 (spec section 9), changeable at load time; the defaults are the
    hyperparameter table's (``max_detections``, not a hyperparameter, is ultralytics' own)."""

    img_size: int = _default("img_size")
    model_size: str = _default("model_size")
    box_score_thresh: float = _default("box_score_thresh")
    box_iou_thresh: float = _default("box_iou_thresh")
    max_detections: int = 300

    @classmethod
    def from_hyperparameters(cls, hp: Mapping[str, Any]) -> "YoloSettings":
        return cls(**{k: hp[k] for k in cls.__dataclass_fields__ if hp.get(k) is not None})

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@torch.inference_mode()
def predict_arrays(model, images: Sequence[np.ndarray], settings: YoloSettings) -> list[ImagePredictions]:
    """Detections (original pixels) on HWC uint8 RGB arrays: letterbox to ``img_size``, NMS, scale back.
    ``model``: the DetectionModel in eval mode, or its ONNX Runtime stand-in (``OnnxYolo``)."""
    prepare_ultralytics()
    # ultralytics reads its settings file when first imported: only after prepare_ultralytics()
    from ultralytics.data.augment import LetterBox
    from ultralytics.utils.nms import non_max_suppression
    from ultralytics.utils.ops import scale_boxes

    if not images:
        return []
    device = next(model.parameters()).device if isinstance(model, nn.Module) else model.device
    letterbox = LetterBox((settings.img_size, settings.img_size), auto=False, stride=int(model.stride.max()))
    batch = np.stack([letterbox(image=im) for im in images])
    x = torch.from_numpy(batch).permute(0, 3, 1, 2).to(device).float() / 255
    raw = model(x)
    outputs = non_max_suppression(raw, settings.box_score_thresh, settings.box_iou_thresh,
                                  max_det=settings.max_detections)
    out = []
    for im, det in zip(images, outputs):
        boxes = scale_boxes(x.shape[2:], det[:, :4].clone(), im.shape[:2])
        out.append(ImagePredictions(boxes.float().cpu().numpy(), det[:, 5].long().cpu().numpy(),
                                    det[:, 4].float().cpu().numpy()))
    return out


def predict_images(model: nn.Module, images: Sequence[Any], settings: YoloSettings, classes: Sequence[str],
                   *, batch_size: int = 8) -> list[dict[str, Any]]:
    """Spec section 9 responses (``{"boxes": [...]}``), one per image (PIL images or HWC uint8 RGB arrays)."""
    model.eval()
    arrays = [np.asarray(im.convert("RGB")) if hasattr(im, "convert") else np.asarray(im) for im in images]
    out = []
    for start in range(0, len(arrays), batch_size):
        chunk = arrays[start:start + batch_size]
        for im, pred in zip(chunk, predict_arrays(model, chunk, settings)):
            out.append(scoring_output(pred, classes, im.shape[1], im.shape[0]))
    return out


@dataclass
class YoloPackage:
    model: nn.Module
    classes: list[str]
    settings: YoloSettings


def load_yolo(model_dir: str | Path, device: str | torch.device = "cpu",
              overrides: Mapping[str, Any] | None = None) -> YoloPackage:
    """Rebuild a trained yolov5 from its package (``models.package.read_package``: weights, config, labels)."""
    package = read_package(model_dir)
    model_settings = package.config["model_settings"]
    settings = YoloSettings.from_hyperparameters({**model_settings, **(overrides or {})})
    model = build_yolo(len(package.labels), pretrained=False, model_size=model_settings["model_size"])
    model.load_state_dict(package.state_dict())
    model.to(device).eval()
    return YoloPackage(model, package.labels, settings)
