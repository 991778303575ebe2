"""The yolov5 trial: ultralytics' trainer (its augmentation, loss and EMA) driven by our settings,
measured, reported, checkpointed and resumed like every other model.

The validated records are written as a YOLO dataset inside the trial folder (``yolo_data/``:
links to the images, one label file per image, ``data.yaml``); ultralytics writes only under the
trial folder (``ultralytics/``, its config in ``ultralytics_config/``). ultralytics owns the epoch
loop; its callbacks drive ours (``training/loop.py``): progress lines and divergence per batch;
per epoch the predictions ultralytics' validator made (at ``box_score_thresh`` and
``box_iou_thresh``) are scored with our metrics against our ground truth (crowd objects included)
and reported, the best model (the EMA weights) is saved as our package, early stopping is ours,
and checkpoints are ours (``--resume`` restores model, EMA, optimizer and loss scaler).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from collections.abc import Callable, Mapping
from copy import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from automl_vision.errors import DataError, TrainingDiverged
from automl_vision.evaluation.detection_metrics import ground_truth_of
from automl_vision.models import yolo
from automl_vision.models.detections import ImagePredictions
from automl_vision.models.device import pick_device
from automl_vision.models.weights import WeightsSource
from automl_vision.spec.hyperparameters import augmentation_level
from automl_vision.training.detection_common import (PER_LABEL_FILE, init_from_package, load_detection_splits,
                                                     score_epoch)
from automl_vision.training.loop import EpochResult, Progress, TrialLoop
from automl_vision.training.optim import EarlyStopping, build_optimizer
from automl_vision.training.reporter import MetricsReporter
from automl_vision.training.trial import TrialResult, TrialSettings, default_num_workers

log = logging.getLogger(__name__)

YOLO_DATA_DIR = "yolo_data"


def _link(src: Path, dst: Path) -> None:
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    try:
        os.symlink(os.path.abspath(src), dst)
    except OSError:  # file systems without symlinks
        shutil.copyfile(src, dst)


def write_yolo_dataset(root: Path, splits, classes: list[str]) -> tuple[Path, dict[str, int]]:
    """A YOLO dataset of the records under ``root``; returns ``data.yaml`` and, per validation
    image file as ultralytics will name it, the index of its record. Crowd objects are left out
    of the label files (YOLO has no notion of them); they stay in our ground truth."""
    index = {c: i for i, c in enumerate(classes)}
    val_files: dict[str, int] = {}
    for split, records in (("train", splits.train), ("val", splits.validation)):
        images, labels = root / "images" / split, root / "labels" / split
        images.mkdir(parents=True, exist_ok=True)
        labels.mkdir(parents=True, exist_ok=True)
        for k, r in enumerate(records):
            # A numbered name per record: two source folders may hold files of the same name.
            name = f"{k:06d}_{Path(r.path).name}"
            _link(Path(r.path), images / name)
            lines = []
            for o in r.objects:
                if o.is_crowd:
                    continue
                x1, y1, x2, y2 = o.box
                lines.append(f"{index[o.label]} {(x1 + x2) / 2:.6f} {(y1 + y2) / 2:.6f} {x2 - x1:.6f} {y2 - y1:.6f}")
            (labels / name).with_suffix(".txt").write_text("\n".join(lines) + ("\n" if lines else ""))
            if split == "val":
                val_files[str(images / name)] = k
    data_yaml = root / "data.yaml"
    data_yaml.write_text(yaml.safe_dump({"path": str(root.resolve()), "train": "images/train", "val": "images/val",
                                         "names": dict(enumerate(classes))}, sort_keys=False))
    return data_yaml, val_files


def _device_arg(settings: TrialSettings) -> str:
    device = pick_device(settings.device)
    if device.type == "cuda":
        return str(device.index or 0)
    return device.type


# --- ultralytics' trainer ------------------------------------------------------------------------

def lr_lambda(hp: Mapping[str, Any]) -> Callable[[int], float]:
    """Our scheduler as a function of the (0-based) epoch, the granularity ultralytics steps at.
    Its own linear warm-up covers ``warmup_cosine_lr_warmup_epochs`` first."""
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


#: ultralytics' own HSV gains (hue, saturation, value: ``hsv_h``, ``hsv_s``, ``hsv_v`` of its cfg/default.yaml).
ULTRALYTICS_HSV = (0.015, 0.7, 0.4)


def yolo_augmentation(level: str) -> dict[str, Any]:
    """ultralytics' augmentation arguments for an ``augmentation`` level.

    default: none, so ultralytics' own defaults apply (mosaic, random affine with translate 0.1 and
    scale 0.5, HSV, horizontal flip 0.5). light: no mosaic, horizontal flip 0.5, HSV gains a third of
    ultralytics', translate 0.05, scale 0.2, no rotation, shear or perspective. none: no mosaic and every
    geometric and colour augmentation 0; images are only letterboxed to ``img_size``. Both lighter levels
    also set mixup, copy-paste and the vertical flip to 0 (as ultralytics' defaults are; cutmix and the
    channel swap are 0 by default too). Only arguments of every ultralytics 8.3 are set: an unknown one
    is an error there. ultralytics' optional Albumentations extras (blur, grey, CLAHE at probability 0.01)
    run only where the albumentations package is installed; automl-vision does not install it.
    """
    if level == "default":
        return {}
    off = {"mosaic": 0.0, "mixup": 0.0, "copy_paste": 0.0, "flipud": 0.0, "degrees": 0.0, "shear": 0.0,
           "perspective": 0.0}
    if level == "light":
        h, s, v = ULTRALYTICS_HSV
        return {**off, "fliplr": 0.5, "hsv_h": h / 3, "hsv_s": s / 3, "hsv_v": v / 3, "translate": 0.05, "scale": 0.2}
    if level == "none":
        return {**off, "fliplr": 0.0, "hsv_h": 0.0, "hsv_s": 0.0, "hsv_v": 0.0, "translate": 0.0, "scale": 0.0}
    raise ValueError(f"augmentation={level!r} is not allowed; expected one of 'none', 'light', 'default'")


def ultralytics_overrides(hp: Mapping[str, Any], data_yaml: Path, project: Path, device: str, workers: int) -> dict:
    """Our hyperparameters as ultralytics trainer arguments (the rest keep ultralytics' defaults,
    including its augmentation, mosaic, random affine, flips, HSV, unless ``augmentation`` is light or
    none: :func:`yolo_augmentation`)."""
    batch = hp["training_batch_size"]
    return {
        "model": yolo.yaml_name(hp["model_size"]), "data": str(data_yaml), "task": "detect", "mode": "train",
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
        **yolo_augmentation(augmentation_level(hp)),
    }


def _trainer_class(trial: YoloTrial):
    """ultralytics' detection trainer with our model, optimizer, schedule, validation cadence and
    resuming, and a validator that keeps every image's predictions."""
    yolo.prepare_ultralytics()
    from ultralytics.models.yolo.detect import DetectionTrainer, DetectionValidator  # after prepare_ultralytics

    model, hp, val_batch = trial.model, trial.hp, trial.hp["validation_batch_size"]

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

        def resume_training(self, ckpt):
            # Our checkpoint, not ultralytics' pickled one: the loop restored the model; the rest goes here.
            state = trial.resume_state
            if state is None:
                return
            self.optimizer.load_state_dict(state["optimizer"])
            if state["scaler"]:
                self.scaler.load_state_dict(state["scaler"])
            self.ema.ema.load_state_dict(state["task"]["ema"])
            self.ema.updates = state["task"]["ema_updates"]
            self.start_epoch = state["epoch"]

        def validate(self):
            self.evaluated = trial.loop.due(self.epoch + 1)
            if not self.evaluated:
                return self.metrics, self.fitness
            return super().validate()

        def save_model(self):
            return False  # our package is written by the evaluation hook (safetensors, no pickles)

    return Trainer


# --- the trial -----------------------------------------------------------------------------------

class YoloTrial:
    """A yolov5 trial's side of the epoch loop; ultralytics' callbacks call :meth:`fit`'s hooks."""

    evaluation_files = (PER_LABEL_FILE,)

    def __init__(self, settings: TrialSettings, out: Path):
        self.settings, self.hp, self.task, self.out = settings, settings.hyperparameters, settings.task, out
        hp = self.hp
        yolo.prepare_ultralytics(out / "ultralytics_config")
        splits = load_detection_splits(settings)
        self.splits, self.classes = splits, splits.classes
        index = {c: i for i, c in enumerate(self.classes)}
        self.data_yaml, self.val_files = write_yolo_dataset(out / YOLO_DATA_DIR, splits, self.classes)
        self.ground_truth = [ground_truth_of(r, index, masks=False) for r in splits.validation]
        self.device = _device_arg(settings)
        self.workers = settings.num_workers if settings.num_workers is not None else default_num_workers()
        log.info("yolov5 (%s): %d training and %d validation images, %d classes, device %s", hp["model_size"],
                 len(splits.train), len(splits.validation), len(self.classes), self.device)
        weights = None
        if settings.weights:
            weights = WeightsSource(settings.weights, settings.s3_endpoint, settings.weights_cache)
        self.model = yolo.build_yolo(len(self.classes), pretrained=hp["pretrained"] and not settings.from_model,
                                     model_size=hp["model_size"], weights=weights)
        if settings.from_model:
            init_from_package(self.model, settings.from_model, hp["model_name"], self.classes)
        self.stopper = EarlyStopping.for_trial(hp, self.task)
        self.steps_per_epoch = max(1, math.ceil(len(splits.train) / hp["training_batch_size"]))
        self.trainer = None
        self.resume_state: Mapping[str, Any] | None = None
        self.loop: TrialLoop | None = None

    # --- TaskTrial ---

    def evaluate(self, epoch: int, global_step: int, train_loss: float, out: Path) -> EpochResult:
        collected = self.trainer.validator.collected
        missing = [f for f in self.val_files if f not in collected]
        if missing:
            raise DataError(f"ultralytics skipped {len(missing)} validation image(s) it could not read: "
                            + ", ".join(str(self.splits.validation[self.val_files[f]].path) for f in missing[:5]))
        preds = [ImagePredictions.empty()] * len(self.ground_truth)
        for f, k in self.val_files.items():
            preds[k] = collected[f]
        return score_epoch(epoch, global_step, train_loss, self.ground_truth, preds, self.classes, self.task,
                           self.hp["validation_metric_type"], 0.5, out)

    def model_state(self) -> dict[str, torch.Tensor]:
        return self.trainer.ema.ema.float().state_dict()

    def checkpoint_state(self) -> dict[str, Any]:
        t = self.trainer
        return {"model": self.model.state_dict(), "optimizer": t.optimizer.state_dict(),
                "scheduler": t.scheduler.state_dict(), "scaler": t.scaler.state_dict(),
                "task": {"ema": t.ema.ema.state_dict(), "ema_updates": int(t.ema.updates)}}

    def restore(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.resume_state = state  # the trainer takes the rest once it has built its optimizer and EMA

    # --- ultralytics' callbacks ---

    def fit(self, loop: TrialLoop, start_epoch: int, global_step: int) -> None:
        """Train with ultralytics' trainer from ``start_epoch``; everything it writes goes under the trial folder."""
        self.loop = loop
        if start_epoch > loop.epochs:
            return
        trainer = _trainer_class(self)(overrides=ultralytics_overrides(self.hp, self.data_yaml, self.out, self.device,
                                                                         self.workers))
        self.trainer = trainer
        progress = Progress(loop.epochs, self.steps_per_epoch, bar=self.settings.progress_bar,
                            first_epoch=start_epoch)
        steps = {"n": global_step}

        def on_epoch_start(t):
            progress.start_epoch(t.epoch + 1)

        def on_batch_end(t):
            steps["n"] += 1
            loss = float(t.loss.detach())
            if not math.isfinite(loss):
                raise TrainingDiverged(t.epoch + 1, steps["n"], loss)
            progress.advance(t.batch_size)
            if progress.due():
                progress.show(loss, t.optimizer.param_groups[0]["lr"])

        def on_fit_epoch_end(t):
            epoch = t.epoch + 1
            rate = progress.end_epoch()
            train_loss = float(sum(float(v) for v in (t.tloss or {}).values()))
            loop.result.epochs_completed = epoch
            log.info("epoch %d/%d trained: loss %.4f, %.1f img/s", epoch, loop.epochs, train_loss, rate)
            stop = False
            if t.evaluated:
                t.evaluated = False
                stop = loop.evaluated(epoch, self.evaluate(epoch, steps["n"], train_loss, self.out))
            loop.epoch_done(epoch, steps["n"])
            if stop:
                loop.stopped_early(epoch)
                t.stop = True

        trainer.add_callback("on_train_epoch_start", on_epoch_start)
        trainer.add_callback("on_train_batch_end", on_batch_end)
        trainer.add_callback("on_fit_epoch_end", on_fit_epoch_end)
        trainer.train()


def train_yolo(settings: TrialSettings, reporter: MetricsReporter | None = None) -> TrialResult:
    """Run one yolov5 trial to the end; returns its result (also written to ``result.json``)."""
    loop = TrialLoop(settings, reporter)
    trial = YoloTrial(settings, Path(settings.output_dir).resolve())
    loop.attach(trial)
    start_epoch, global_step = loop.start()
    trial.fit(loop, start_epoch, global_step)
    return loop.finish()
