"""The yolov5 trial: ultralytics' trainer (its augmentation, loss and EMA) driven by our settings,
measured and reported like every other model.

The validated records are written as a YOLO dataset inside the trial folder (``yolo_data/``:
links to the images, one label file per image, ``data.yaml``); ultralytics writes only under the
trial folder (``ultralytics/``, its config in ``ultralytics_config/``). At each evaluation the
predictions ultralytics' validator made (at ``box_score_thresh`` and ``box_iou_thresh``) are
scored with our metrics against our ground truth (crowd objects included) and reported through
the metrics reporter; the best model is saved as our package (the YAML-built model's weights in
safetensors plus ``model_size`` and the inference settings), and early stopping is ours.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import yaml

from automl_vision.errors import DataError, TrainingDiverged
from automl_vision.evaluation.detection_metrics import detection_metrics, ground_truth_of
from automl_vision.evaluation.detections import ImagePredictions
from automl_vision.training.detection import PER_LABEL_FILE, load_detection_splits, save_detection_model, write_per_label
from automl_vision.training.optim import EarlyStopping
from automl_vision.training.reporter import MetricsReporter
from automl_vision.training.trial import (
    CONFIG_FILE,
    METRICS_FILE,
    OUTPUTS_DIR,
    TrialResult,
    TrialSettings,
    default_num_workers,
    pick_device,
)

log = logging.getLogger(__name__)

YOLO_DATA_DIR = "yolo_data"


def _link(src: Path, dst: Path) -> None:
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    try:
        os.symlink(os.path.abspath(src), dst)
    except OSError:  # file systems without symlinks
        import shutil

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


def train_yolo(settings: TrialSettings, reporter: MetricsReporter | None = None) -> TrialResult:
    """Run one yolov5 trial to the end; returns its result (also written to ``result.json``)."""
    from automl_vision.models import yolo

    t0 = time.monotonic()
    hp = settings.hyperparameters
    task = settings.task
    out = Path(settings.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_FILE).write_text(json.dumps(settings.to_json(), indent=2))
    reporter = reporter or MetricsReporter(out / METRICS_FILE)
    primary = task.primary_metric
    yolo.prepare_ultralytics(out / "ultralytics_config")

    splits = load_detection_splits(settings)
    classes = splits.classes
    index = {c: i for i, c in enumerate(classes)}
    data_yaml, val_files = write_yolo_dataset(out / YOLO_DATA_DIR, splits, classes)
    ground_truth = [ground_truth_of(r, index, masks=False) for r in splits.validation]
    device = _device_arg(settings)
    workers = settings.num_workers if settings.num_workers is not None else default_num_workers()
    log.info("yolov5 (%s): %d training and %d validation images, %d classes, device %s", hp["model_size"],
             len(splits.train), len(splits.validation), len(classes), device)

    weights = None
    if getattr(settings, "weights", None):
        from automl_vision.models.weights import WeightsSource

        weights = WeightsSource(settings.weights, settings.s3_endpoint, settings.weights_cache)
    model = yolo.build_yolo(len(classes), pretrained=hp["pretrained"], model_size=hp["model_size"], weights=weights)
    model_settings = yolo.YoloSettings.from_hyperparameters(hp).to_json()

    stopper = EarlyStopping(hp["early_stopping"], hp["early_stopping_patience"], hp["early_stopping_delay"],
                            maximize=task.maximize)
    result = TrialResult(status="running", primary_metric=primary)
    steps_per_epoch = max(1, math.ceil(len(splits.train) / hp["training_batch_size"]))
    last_log = {"t": time.monotonic()}

    def batch_end(epoch: int, step: int, loss: float) -> None:
        if not math.isfinite(loss):
            raise TrainingDiverged(epoch, step, loss)
        now = time.monotonic()
        if step % 20 == 0 or now - last_log["t"] > 10:
            last_log["t"] = now
            log.info("epoch %d step %d/%d  loss %.4f", epoch, step, hp["number_of_epochs"] * steps_per_epoch, loss)

    def evaluation(epoch: int, ema_model, collected: dict[str, ImagePredictions], train_loss: float) -> bool:
        result.epochs_completed = epoch
        missing = [f for f in val_files if f not in collected]
        if missing:
            raise DataError(f"ultralytics skipped {len(missing)} validation image(s) it could not read: "
                            + ", ".join(str(splits.validation[val_files[f]].path) for f in missing[:5]))
        preds = [ImagePredictions.empty()] * len(ground_truth)
        for f, k in val_files.items():
            preds[k] = collected[f]
        for p in preds:
            if not (np.isfinite(p.boxes).all() and np.isfinite(p.scores).all()):
                raise TrainingDiverged(epoch, epoch * steps_per_epoch, math.nan, during="validation")
        metrics = detection_metrics(ground_truth, preds, classes, task, hp["validation_metric_type"], 0.5)
        value = metrics.metrics.get(primary)
        row = {"epoch": epoch, **({primary: value} if value is not None else {}), "train_loss": train_loss,
               **{k: v for k, v in metrics.metrics.items() if k != primary}}
        reporter.report(row)
        write_per_label(out / PER_LABEL_FILE, epoch, metrics)
        result.history.append({k: (v if v is None or math.isfinite(v) else None) for k, v in row.items()})
        if value is None or stopper.improved(value):
            result.best_value = value if value is not None and math.isfinite(value) else None
            result.best_epoch = epoch
            save_detection_model(ema_model.float(), out / OUTPUTS_DIR, settings, classes, metrics, epoch,
                                 model_settings)
        stop = value is not None and stopper.update(value) and epoch < hp["number_of_epochs"]
        if stop:
            log.info("early stopping at epoch %d: %s has not improved for %d evaluations (best %.4f)",
                     epoch, primary, stopper.patience, stopper.best)
            result.status = "early_stopped"
        return stop

    hooks = yolo.YoloHooks(batch_end=batch_end, evaluation=evaluation,
                           should_evaluate=lambda e: e % hp["evaluation_frequency"] == 0)
    yolo.train_ultralytics(model, hp, data_yaml, out, device, workers, hooks)
    if result.status == "running":
        result.status = "completed"
    result.duration_s = round(time.monotonic() - t0, 2)
    result.write(out)
    return result
