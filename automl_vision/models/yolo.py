"""yolov5 through ultralytics: the only module that imports ultralytics.

ultralytics reads its environment once, at import: :func:`prepare_ultralytics` points it at a
folder we own (``YOLO_CONFIG_DIR``), offline (``YOLO_OFFLINE``), without run-time pip installs
(``YOLO_AUTOINSTALL``), quiet (``YOLO_VERBOSE``), with a settings file that turns off syncing and third-party loggers and a
font so that it never reaches for the network. Its global settings object is never modified.
Models are built from ultralytics' YAML (``yolov5{s,m,l,x}u.yaml``, the anchor-free YOLOv5u
heads ultralytics maintains), never from ``.pt`` names, which would download.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from copy import copy
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from automl_vision.errors import ConfigError
from automl_vision.evaluation.detections import ImagePredictions
from automl_vision.models.registry import register_model
from automl_vision.models.weights import WeightsFile, WeightsSource, locate
from automl_vision.spec.tasks import ImageTask

log = logging.getLogger(__name__)

YOLO_GROUPS = [f"model.{i}." for i in range(10)]  # the yolov5 backbone
SIZES = {"small": "s", "medium": "m", "large": "l", "xlarge": "x"}

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
    root = Path(config_dir) if config_dir else Path(tempfile.mkdtemp(prefix="automl-vision-ultralytics-"))
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
    from PIL import Image

    try:
        from ultralytics.utils import patches
    except ImportError:
        return
    original = getattr(patches, "_image_open", None)
    if original is not None:
        Image.open = original


def yaml_name(model_size: str) -> str:
    try:
        return f"yolov5{SIZES[model_size]}u.yaml"
    except KeyError:
        raise ConfigError(f"model_size={model_size!r}; allowed: {', '.join(SIZES)}") from None


def weights_file(model_size: str) -> WeightsFile:
    """ultralytics' COCO checkpoint ``yolov5{s,m,l,x}u.pt`` (a release asset of ultralytics/assets, the tag
    ultralytics' own ``attempt_download_asset`` uses), cached beside torchvision's checkpoints
    (``$TORCH_HOME/hub/checkpoints/``) or read from a mirror."""
    from automl_vision.models.catalogue import ULTRALYTICS
    from automl_vision.models.weights import BASE_URL_ENV

    name = yaml_name(model_size).replace(".yaml", ".pt")
    # ultralytics scales pixels to [0, 1] and does not normalize further; letterbox resizing.
    pre = {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0], "interpolation": "bilinear"}
    return WeightsFile(f"yolov5 (model_size {model_size})", name, f"{BASE_URL_ENV['ultralytics'][1]}/{name}",
                       "ultralytics", code_licence=ULTRALYTICS, weights_licence=ULTRALYTICS, preprocessing=pre)


def build_yolo(num_classes: int, *, pretrained: bool, model_size: str = "medium",
               weights: WeightsSource | None = None, verbose: bool = False) -> nn.Module:
    """A yolov5 DetectionModel for ``num_classes`` classes built from YAML; pretrained weights (COCO,
    ultralytics' checkpoint) are transferred where shapes match, the class-specific head stays random."""
    prepare_ultralytics()
    from ultralytics.nn.tasks import DetectionModel, load_checkpoint

    model = DetectionModel(yaml_name(model_size), nc=num_classes, verbose=verbose)
    if pretrained:
        path = locate(weights_file(model_size), weights)
        # ultralytics checkpoints are pickled modules: this unpickles code from the file, as ultralytics does.
        source, _ = load_checkpoint(str(path))
        model.load(source, verbose=verbose)
    return model


@register_model("yolov5", tasks=frozenset({ImageTask.IMAGE_OBJECT_DETECTION}), layer_groups=YOLO_GROUPS)
def yolov5(num_classes: int, *, pretrained: bool, model_size: str = "medium",
           weights: WeightsSource | None = None) -> nn.Module:
    return build_yolo(num_classes, pretrained=pretrained, model_size=model_size, weights=weights)


# --- training through ultralytics' own trainer -------------------------------------------------

@dataclass
class YoloHooks:
    """What our trial does at ultralytics' callback points.

    ``batch_end(epoch, global_step, loss)`` may raise to end the trial (non-finite loss);
    ``evaluation(epoch, model, predictions, train_loss)`` gets the EMA model and the validation
    predictions by image file, ``{file: ImagePredictions}`` in original pixels, and returns
    True to stop training (early stopping). ``should_evaluate(epoch)`` says whether to validate
    after that epoch (1-based).
    """

    batch_end: Callable[[int, int, float], None]
    evaluation: Callable[[int, nn.Module, dict[str, ImagePredictions], float], bool]
    should_evaluate: Callable[[int], bool]


def lr_lambda(hp: Mapping[str, Any]) -> Callable[[int], float]:
    """Our scheduler as a function of the (0-based) epoch, the granularity ultralytics steps at.
    Its own linear warm-up covers ``warmup_cosine_lr_warmup_epochs`` first."""
    import math

    epochs = hp["number_of_epochs"]
    if hp["lr_scheduler"] == "step":
        return lambda e: hp["step_lr_gamma"] ** (e // hp["step_lr_step_size"])
    warmup = min(hp["warmup_cosine_lr_warmup_epochs"], max(epochs - 1, 0))
    cycles = hp["warmup_cosine_lr_cycles"]

    def f(e: int) -> float:
        if e < warmup:
            return 1.0
        progress = (e - warmup) / max(1, epochs - warmup)
        return max(0.0, 0.5 * (1.0 + math.cos(2.0 * math.pi * cycles * progress)))

    return f


def ultralytics_overrides(hp: Mapping[str, Any], data_yaml: Path, project: Path, device: str, workers: int) -> dict:
    """Our hyperparameters as ultralytics trainer arguments (the rest keep ultralytics' defaults,
    including its augmentation: mosaic, random affine, flips, HSV)."""
    batch = hp["training_batch_size"]
    return {
        "model": yaml_name(hp["model_size"]), "data": str(data_yaml), "task": "detect", "mode": "train",
        "epochs": hp["number_of_epochs"], "batch": batch, "imgsz": hp["img_size"],
        "device": device, "workers": workers, "seed": hp["seed"], "deterministic": True,
        "project": str(project), "name": "ultralytics", "exist_ok": True, "plots": False, "verbose": False,
        "pretrained": False, "val": True, "save": False, "patience": 10**6,  # early stopping is ours
        "lr0": hp["learning_rate"], "momentum": hp["momentum"] if hp["optimizer"] == "sgd" else hp["beta1"],
        "weight_decay": hp["weight_decay"],
        "warmup_epochs": hp["warmup_cosine_lr_warmup_epochs"] if hp["lr_scheduler"] == "warmup_cosine" else 0,
        # nbs = batch * accumulation: ultralytics then accumulates exactly grad_accumulation_step
        # batches and leaves weight_decay unscaled.
        "nbs": batch * hp["grad_accumulation_step"],
        "multi_scale": 0.5 if hp["multi_scale"] else 0.0,
        "freeze": hp.get("layers_to_freeze") or None,
        "conf": hp["box_score_thresh"], "iou": hp["box_iou_thresh"],
        "amp": device not in ("cpu", "mps"),
    }


def _trainer_class(model: nn.Module, hp: Mapping[str, Any], hooks: YoloHooks, val_batch: int):
    prepare_ultralytics()
    from ultralytics.models.yolo.detect import DetectionTrainer, DetectionValidator

    from automl_vision.training.optim import build_optimizer

    class Validator(DetectionValidator):
        """ultralytics' validator, also keeping every image's predictions in original pixels."""

        collected: dict[str, ImagePredictions]

        def init_metrics(self, m):
            super().init_metrics(m)
            self.collected = {}

        def update_metrics(self, preds, batch):
            super().update_metrics(preds, batch)
            for si, pred in enumerate(preds):
                pbatch = self._prepare_batch(si, batch)
                scaled = self.scale_preds(pred, pbatch)
                self.collected[pbatch["im_file"]] = ImagePredictions(
                    scaled["bboxes"].float().cpu().numpy(), scaled["cls"].cpu().numpy().astype(np.int64),
                    scaled["conf"].float().cpu().numpy())

    class Trainer(DetectionTrainer):
        evaluated = False

        def get_model(self, cfg=None, weights=None, verbose=True):
            return model

        def get_validator(self):
            return Validator(self.test_loader, save_dir=self.save_dir, args=copy(self.args), _callbacks=self.callbacks)

        def get_dataloader(self, dataset_path, batch_size=16, rank=0, mode="train"):
            return super().get_dataloader(dataset_path, val_batch if mode == "val" else batch_size, rank, mode)

        def build_optimizer(self, model, name="auto", lr=0.001, momentum=0.9, decay=1e-5, iterations=1e5):
            # ultralytics' three groups (decayed weights, normalization weights, biases) with our optimizer.
            # The bias group's name makes ultralytics' warm-up start it at warmup_bias_lr.
            norm = tuple(v for k, v in nn.__dict__.items() if "Norm" in k)
            groups: list[list[nn.Parameter]] = [[], [], []]
            for module in model.modules():
                for pname, p in module.named_parameters(recurse=False):
                    if p.requires_grad:
                        groups[2 if "bias" in pname else 1 if isinstance(module, norm) else 0].append(p)
            opt = build_optimizer(groups[0], {**hp, "weight_decay": decay})
            opt.param_groups[0]["param_group"] = "weight"
            for params, name in ((groups[1], "bn"), (groups[2], "bias")):
                if params:
                    opt.add_param_group({"params": params, "weight_decay": 0.0, "param_group": name})
            return opt

        def _setup_scheduler(self):
            self.lf = lr_lambda(hp)
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda=self.lf)

        def validate(self):
            self.evaluated = hooks.should_evaluate(self.epoch + 1) or self.epoch + 1 >= self.epochs
            if not self.evaluated:
                return self.metrics, self.fitness
            return super().validate()

        def save_model(self):
            return False  # our package is written by the evaluation hook (safetensors, no pickles)

    return Trainer


def train_ultralytics(model: nn.Module, hp: Mapping[str, Any], data_yaml: Path, project: Path, device: str,
                      workers: int, hooks: YoloHooks) -> None:
    """Train ``model`` with ultralytics' trainer on ``data_yaml``; everything it writes goes under ``project``."""
    trainer_cls = _trainer_class(model, hp, hooks, hp["validation_batch_size"])
    trainer = trainer_cls(overrides=ultralytics_overrides(hp, data_yaml, project, device, workers))
    steps = {"n": 0}

    def on_batch_end(t):
        steps["n"] += 1
        hooks.batch_end(t.epoch + 1, steps["n"], float(t.loss.detach()))

    def on_fit_epoch_end(t):
        if not t.evaluated:
            return
        t.evaluated = False
        train_loss = float(sum(float(v) for v in (t.tloss or {}).values()))
        if hooks.evaluation(t.epoch + 1, t.ema.ema, t.validator.collected, train_loss):
            t.stop = True

    trainer.add_callback("on_train_batch_end", on_batch_end)
    trainer.add_callback("on_fit_epoch_end", on_fit_epoch_end)
    trainer.train()


# --- prediction ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class YoloSettings:
    """Inference settings of yolov5 (spec section 9), changeable at load time."""

    img_size: int = 640
    model_size: str = "medium"
    box_score_thresh: float = 0.1
    box_iou_thresh: float = 0.5
    max_detections: int = 300

    @classmethod
    def from_hyperparameters(cls, hp: Mapping[str, Any]) -> "YoloSettings":
        return cls(**{k: hp[k] for k in cls.__dataclass_fields__ if hp.get(k) is not None})

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@torch.inference_mode()
def predict_arrays(model: nn.Module, images: Sequence[np.ndarray], settings: YoloSettings) -> list[ImagePredictions]:
    """Detections (original pixels) on HWC uint8 RGB arrays: letterbox to ``img_size``, NMS, scale back."""
    prepare_ultralytics()
    from ultralytics.data.augment import LetterBox
    from ultralytics.utils.nms import non_max_suppression
    from ultralytics.utils.ops import scale_boxes

    if not images:
        return []
    device = next(model.parameters()).device
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
    from automl_vision.models.detection import scoring_output

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
    """Rebuild a trained yolov5 from its package (``model.safetensors``, ``config.json``, ``labels.json``)."""
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    classes = json.loads((model_dir / "labels.json").read_text())
    settings = YoloSettings.from_hyperparameters({**config["model_settings"], **(overrides or {})})
    model = build_yolo(len(classes), pretrained=False, model_size=config["model_settings"]["model_size"])
    model.load_state_dict(load_file(str(model_dir / "model.safetensors")))
    model.to(device).eval()
    return YoloPackage(model, classes, settings)
