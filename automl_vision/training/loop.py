"""The epoch loop every trial runs: evaluation cadence, metrics reporting, history, the best model
package, checkpoints and resuming, early stopping, divergence and progress lines.

A task plugs in a :class:`TaskTrial` (build its model and data, train one epoch, evaluate, hand
over its state) with :meth:`TrialLoop.attach`; :func:`run_trial` runs it epoch by epoch. A task
whose library owns the epoch loop (yolov5 through ultralytics) drives the same :class:`TrialLoop`
from its callbacks instead: ``start`` (resume), then per epoch ``due``, ``evaluated`` and
``epoch_done``, then ``finish``.

Checkpoints (``checkpoints/epoch_NNNN.pt``, every ``checkpoint_frequency`` epochs) are one
``torch.save`` dict of tensors and plain values, loadable with ``weights_only=True``::

    format, epoch, global_step, classes, hyperparameters (JSON text)
    model, optimizer, scheduler, scaler      the task's training state (``TaskTrial.checkpoint_state``)
    task                                     anything else the task keeps (yolov5: the EMA weights)
    stopper, result                          early stopping and the history so far
    best_model, best_package                 the best epoch's weights and package metrics
    rng                                      torch, Python, NumPy, the loader's generator, CUDA

``--resume`` continues from the latest one: the same hyperparameters and classes are required,
the metrics files are cut back to the checkpoint's epoch and the model package is rewritten to
the best epoch up to it, so the finished folder reads as if the trial had never stopped.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from automl_vision.errors import ConfigError, TrainingDiverged
from automl_vision.models.detection import DetectorSettings
from automl_vision.models.package import WEIGHTS_FILE, load_state_dict, write_package
from automl_vision.models.preprocessing import normalization
from automl_vision.spec.tasks import YOLO_MODELS
from automl_vision.training.optim import EarlyStopping
from automl_vision.training.reporter import MetricsReporter
from automl_vision.training.runfolder import CONFIG_FILE, METRICS_FILE, OUTPUTS_DIR
from automl_vision.training.trial import TrialResult, TrialSettings

log = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_FORMAT = 1


# --- progress --------------------------------------------------------------------------------------

def _hms(seconds: float) -> str:
    s = int(max(0, seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Progress:
    """A bar per epoch on a terminal, or a log line every ``every`` steps (and at least every
    ``min_interval_s`` seconds) in a pod log: step/total, ETA, loss, lr, images/s.

    No text it writes looks like ``name=value``: Katib would read it as a metric.
    """

    def __init__(self, epochs: int, steps_per_epoch: int, *, bar: bool = False, every: int = 50,
                 min_interval_s: float = 30.0, first_epoch: int = 1):
        self.epochs, self.steps_per_epoch = epochs, steps_per_epoch
        self.total = (epochs - first_epoch + 1) * steps_per_epoch
        self.bar, self.every, self.min_interval_s = bar, every, min_interval_s
        self.done = 0  # steps run by this process (for the ETA)
        self.train_time = 0.0
        self._bar = None
        self.epoch = 0

    def start_epoch(self, epoch: int) -> None:
        self.epoch, self.step, self.images = epoch, 0, 0
        self.t0 = self.last = time.monotonic()
        self.last_step = 0
        if self.bar:
            from tqdm import tqdm  # only on a terminal

            self._bar = tqdm(total=self.steps_per_epoch, desc=f"epoch {epoch}/{self.epochs}", unit="step",
                             dynamic_ncols=True, leave=True)

    def advance(self, images: int) -> None:
        self.step += 1
        self.images += images
        if self._bar is not None:
            self._bar.update(1)

    def due(self) -> bool:
        return self.step - self.last_step >= self.every or time.monotonic() - self.last >= self.min_interval_s

    def show(self, loss: float, lr: float) -> None:
        now = time.monotonic()
        self.last, self.last_step = now, self.step
        elapsed = now - self.t0
        rate = self.images / max(elapsed, 1e-9)
        per_step = (self.train_time + elapsed) / max(1, self.done + self.step)
        eta = per_step * (self.total - self.done - self.step)
        if self._bar is not None:
            self._bar.set_postfix_str(f"loss {loss:.4f}  lr {lr:.3g}  {rate:.1f} img/s", refresh=False)
            return
        log.info("epoch %d/%d step %d/%d  loss %.4f  lr %.3g  %.1f img/s  ETA %s", self.epoch, self.epochs,
                 self.step, self.steps_per_epoch, loss, lr, rate, _hms(eta))

    def end_epoch(self) -> float:
        """Closes the epoch; returns its images/s."""
        elapsed = time.monotonic() - self.t0
        self.train_time += elapsed
        self.done += self.step
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        return self.images / max(elapsed, 1e-9)


# --- the model package -------------------------------------------------------------------------------

def package_config(settings: TrialSettings) -> dict[str, Any]:
    """What a package's ``config.json`` adds for its task: the normalization a classifier was trained
    with, or a detector's inference settings."""
    hp = settings.hyperparameters
    if settings.task.is_classification:
        return {"preprocessing": normalization(hp)}
    if hp["model_name"] in YOLO_MODELS:
        from automl_vision.models.yolo import YoloSettings  # ultralytics is set up only for yolov5 trials

        return {"model_settings": YoloSettings.from_hyperparameters(hp).to_json()}
    return {"model_settings": DetectorSettings.from_hyperparameters(hp).to_json()}


def save_model(model: torch.nn.Module | Mapping[str, torch.Tensor], out_dir: Path, settings: TrialSettings,
               classes: list[str], metrics: Mapping[str, Any], epoch: int,
               files: Mapping[str, Any] | None = None) -> None:
    """The trial's model package (``models.package.write_package``): weights (safetensors, no code
    unpickled to load them), config, labels, the epoch's metrics and any further JSON ``files``."""
    state = model.state_dict() if hasattr(model, "state_dict") else model
    hp = settings.hyperparameters
    write_package(out_dir, state, task=settings.task, model_name=hp["model_name"], hyperparameters=hp,
                  labels=list(classes), epoch=epoch, metrics=metrics, config=package_config(settings), files=files)


# --- what a task plugs in ----------------------------------------------------------------------------

@dataclass
class EpochResult:
    """A task's evaluation of one epoch.

    ``row``: the metrics to report, history and judge the epoch by (``None`` or non-finite values
    are kept out of the report); ``package_metrics`` and ``package_files``: what the model package
    of this epoch records (``metrics.json``, further JSON files) if it is the best so far.
    """

    row: dict[str, float | None]
    package_metrics: dict[str, Any]
    package_files: dict[str, Any] = field(default_factory=dict)


class TaskTrial(Protocol):
    """A task's side of a trial (classification, torchvision detection); built ready to train."""

    settings: TrialSettings
    classes: list[str]
    stopper: EarlyStopping
    #: Batches per epoch (progress lines).
    steps_per_epoch: int
    #: Per-evaluation JSON-lines files of the trial folder, cut back to the checkpoint on resume.
    evaluation_files: Sequence[str]

    def train_epoch(self, epoch: int, global_step: int, progress: Progress | None) -> tuple[int, float]:
        """Train one epoch; returns the global step after it and the mean training loss. Raises
        TrainingDiverged at a non-finite loss."""

    def evaluate(self, epoch: int, global_step: int, train_loss: float, out: Path) -> EpochResult:
        """Evaluate on the validation data (main process only). Raises TrainingDiverged when the
        model's outputs are not finite."""

    def model_state(self) -> Mapping[str, torch.Tensor]:
        """The weights the model package holds."""

    def checkpoint_state(self) -> dict[str, Any]:
        """``model``, ``optimizer``, ``scheduler``, ``scaler`` (state dicts) and ``task`` (anything else)."""

    def restore(self, state: Mapping[str, Any]) -> None:
        """Load what ``checkpoint_state`` gave."""


# --- the loop --------------------------------------------------------------------------------------

def checkpoint_path(out: str | Path, epoch: int) -> Path:
    return Path(out) / CHECKPOINTS_DIR / f"epoch_{epoch:04d}.pt"


def latest_checkpoint(out: str | Path) -> Path | None:
    found = sorted((Path(out) / CHECKPOINTS_DIR).glob("epoch_*.pt"))
    return found[-1] if found else None


def _truncate_jsonl(path: Path, epoch: int) -> None:
    if not path.is_file():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and float(json.loads(ln)["epoch"]) <= epoch]
    path.write_text("".join(ln + "\n" for ln in keep))


def _finite_or_none(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (v if v is None or not isinstance(v, float) or math.isfinite(v) else None) for k, v in row.items()}


class TrialLoop:
    """The pieces of the epoch loop, for :func:`run_trial` and for tasks whose library runs the epochs.

    Made first (its folder, settings file and reporter exist before the data are read), then given
    its task with :meth:`attach`. ``is_main``: the process that reports and writes (rank 0).
    """

    def __init__(self, settings: TrialSettings, reporter: MetricsReporter | None = None, *, is_main: bool = True):
        self.settings = settings
        self.trial: TaskTrial | None = None
        self.hp = settings.hyperparameters
        self.primary = settings.task.primary_metric
        self.out = Path(settings.output_dir)
        self.is_main = is_main
        self.reporter = reporter
        self.generator: torch.Generator | None = None
        self.device: torch.device | None = None
        self.broadcast: Callable[[Any], Any] = lambda value: value
        if is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / CONFIG_FILE).write_text(json.dumps(settings.to_json(), indent=2))
            self.reporter = self.reporter or MetricsReporter(self.out / METRICS_FILE)
        self.result = TrialResult(status="running", primary_metric=self.primary)
        self.epochs = self.hp["number_of_epochs"]
        self.best_package: dict[str, Any] | None = None
        self.t0 = time.monotonic()

    # --- start ---

    def attach(self, trial: TaskTrial, *, generator: torch.Generator | None = None,
               device: torch.device | None = None, broadcast: Callable[[Any], Any] | None = None) -> None:
        """The task to run. ``generator``: the data loader's random generator, kept in checkpoints;
        ``device``: where CUDA's random state lives; ``broadcast``: hands the main process's decisions
        to the others (data-parallel training)."""
        self.trial, self.generator, self.device = trial, generator, device
        if broadcast is not None:
            self.broadcast = broadcast

    def start(self) -> tuple[int, int]:
        """Resume when asked and a checkpoint exists; returns (first epoch to train, global step)."""
        if not self.settings.resume:
            return 1, 0
        path = latest_checkpoint(self.out)
        if path is None:
            log.info("no checkpoint in %s: starting from the beginning", self.out / CHECKPOINTS_DIR)
            return 1, 0
        done, step = self.restore(path)
        log.info("resuming from %s after epoch %d of %d", path, done, self.epochs)
        return done + 1, step

    # --- per epoch ---

    def due(self, epoch: int) -> bool:
        """Whether to evaluate after ``epoch``: every ``evaluation_frequency`` epochs and the last."""
        return epoch % self.hp["evaluation_frequency"] == 0 or epoch == self.epochs

    def evaluated(self, epoch: int, evaluation: EpochResult) -> bool:
        """Report, keep in the history, save the package if best; returns True to stop early."""
        value = evaluation.row.get(self.primary)
        self.reporter.report({"epoch": epoch, **{k: v for k, v in evaluation.row.items() if v is not None}})
        self.result.history.append(_finite_or_none({"epoch": epoch, **evaluation.row}))
        stopper = self.trial.stopper
        # Without a metric (validation_metric_type none) the latest model is kept.
        if value is None or stopper.improved(value):
            self.result.best_value = value if value is not None and math.isfinite(value) else None
            self.result.best_epoch = epoch
            self.best_package = {"metrics": evaluation.package_metrics, "files": evaluation.package_files}
            save_model(self.trial.model_state(), self.out / OUTPUTS_DIR, self.settings, self.trial.classes,
                       evaluation.package_metrics, epoch, evaluation.package_files)
        return value is not None and stopper.update(value) and epoch < self.epochs

    def epoch_done(self, epoch: int, global_step: int) -> None:
        self.result.epochs_completed = epoch
        every = self.hp.get("checkpoint_frequency")
        if self.is_main and every and epoch % every == 0:
            self.save_checkpoint(checkpoint_path(self.out, epoch), epoch, global_step)

    def stopped_early(self, epoch: int) -> None:
        stopper = self.trial.stopper
        log.info("early stopping at epoch %d: %s has not improved for %d evaluations (best %.4f)",
                 epoch, self.primary, stopper.patience, stopper.best)
        self.result.status = "early_stopped"

    def finish(self) -> TrialResult:
        if self.result.status == "running":
            self.result.status = "completed"
        self.result.duration_s = round(time.monotonic() - self.t0, 2)
        if self.is_main:
            self.result.write(self.out)
        return self.result

    # --- checkpoints ---

    def save_checkpoint(self, path: Path, epoch: int, global_step: int) -> None:
        """A resumable checkpoint (tensors and plain values only, loadable with ``weights_only=True``)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        result, stopper = self.result, self.trial.stopper
        best = None
        if result.best_epoch == epoch:
            best = dict(self.trial.model_state())
        elif result.best_epoch is not None and (self.out / OUTPUTS_DIR / WEIGHTS_FILE).is_file():
            best = load_state_dict(self.out / OUTPUTS_DIR / WEIGHTS_FILE)
        np_state = np.random.get_state()
        cuda = self.device is not None and self.device.type == "cuda"
        state = {
            "format": CHECKPOINT_FORMAT, "epoch": epoch, "global_step": global_step, "classes": self.trial.classes,
            "hyperparameters": json.dumps(self.hp, sort_keys=True),
            **self.trial.checkpoint_state(),
            "stopper": {"best": stopper.best, "evaluations": stopper.evaluations, "stale": stopper.stale},
            "result": {"best_value": result.best_value, "best_epoch": result.best_epoch,
                       "history": json.dumps(result.history)},
            "best_model": best,
            "best_package": json.dumps(self.best_package),
            "rng": {"torch": torch.get_rng_state(), "python": json.dumps(random.getstate()),
                    "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
                    "loader": self.generator.get_state() if self.generator is not None else None,
                    "cuda": torch.cuda.get_rng_state(self.device) if cuda else None},
        }
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(path)

    def restore(self, path: Path) -> tuple[int, int]:
        """Load a checkpoint into the trial and the loop; returns (epoch, global_step) it was taken at."""
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        saved = json.loads(ckpt["hyperparameters"])
        now = json.loads(json.dumps(self.hp, sort_keys=True))
        differ = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
        if differ:
            raise ConfigError([f"cannot resume from {path}: it was trained with other hyperparameters "
                               f"(use another --output-dir, or the same values):",
                               *(f"{k}: checkpoint {saved.get(k)!r}, now {now.get(k)!r}" for k in differ)])
        if ckpt["classes"] != self.trial.classes:
            raise ConfigError(f"cannot resume from {path}: it was trained on the classes {ckpt['classes']}, "
                              f"the data now has {self.trial.classes}")
        self.trial.restore(ckpt)
        stopper = self.trial.stopper
        saved_stopper = ckpt["stopper"]
        stopper.best, stopper.evaluations, stopper.stale = (saved_stopper[k] for k in ("best", "evaluations", "stale"))
        r, result = ckpt["result"], self.result
        result.best_value, result.best_epoch = r["best_value"], r["best_epoch"]
        result.history = json.loads(r["history"])
        result.epochs_completed = epoch = ckpt["epoch"]
        self.best_package = json.loads(ckpt.get("best_package") or "null")
        self._restore_rng(ckpt["rng"])
        if self.is_main:
            self._rewind_folder(ckpt, epoch)
        return epoch, ckpt["global_step"]

    def _restore_rng(self, rng: Mapping[str, Any]) -> None:
        torch.set_rng_state(rng["torch"])
        py = json.loads(rng["python"])
        random.setstate((py[0], tuple(py[1]), py[2]))
        np.random.set_state((rng["numpy"][0], rng["numpy"][1].numpy().astype(np.uint32), *rng["numpy"][2:]))
        if rng.get("loader") is not None and self.generator is not None:
            self.generator.set_state(rng["loader"])
        if rng.get("cuda") is not None and self.device is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)

    def _rewind_folder(self, ckpt: Mapping[str, Any], epoch: int) -> None:
        """Metrics files back to ``epoch``; the model package back to the best epoch up to it."""
        for name in (METRICS_FILE, *self.trial.evaluation_files):
            _truncate_jsonl(self.out / name, epoch)
        meta = self.out / OUTPUTS_DIR / "metrics.json"
        packaged = json.loads(meta.read_text())["epoch"] if meta.is_file() else None
        best_epoch = self.result.best_epoch
        if best_epoch is None or packaged == best_epoch:
            return
        state = ckpt["best_model"] if ckpt["best_model"] is not None else ckpt["model"]
        if self.best_package is not None:
            metrics, files = self.best_package["metrics"], self.best_package["files"]
        else:
            metrics = next((h for h in self.result.history if h["epoch"] == best_epoch), {})
            metrics, files = {k: v for k, v in metrics.items() if k != "epoch"}, {}
        save_model(state, self.out / OUTPUTS_DIR, self.settings, self.trial.classes, metrics, best_epoch, files)


def run_trial(loop: TrialLoop, progress_bar: bool = False, distributed: bool = False) -> TrialResult:
    """Train the loop's task epoch by epoch to the end, an early stop or a divergence."""
    trial = loop.trial
    start_epoch, global_step = loop.start()
    progress = Progress(loop.epochs, trial.steps_per_epoch, bar=progress_bar and loop.is_main,
                        first_epoch=start_epoch)
    for epoch in range(start_epoch, loop.epochs + 1):
        global_step, train_loss = trial.train_epoch(epoch, global_step, progress)
        rate = progress.end_epoch()
        loop.result.epochs_completed = epoch
        log.info("epoch %d/%d trained: loss %.4f, %.1f img/s%s", epoch, loop.epochs, train_loss, rate,
                 " per process" if distributed else "")
        decision: dict[str, Any] = {"diverged": None, "stop": False}
        if loop.due(epoch):
            if loop.is_main:
                try:
                    decision["stop"] = loop.evaluated(epoch, trial.evaluate(epoch, global_step, train_loss, loop.out))
                except TrainingDiverged as e:
                    decision["diverged"] = e.loss
            decision = loop.broadcast(decision)
            if decision["diverged"] is not None:
                raise TrainingDiverged(epoch, global_step, decision["diverged"], during="validation")
        loop.epoch_done(epoch, global_step)
        if decision["stop"]:
            if loop.is_main:
                loop.stopped_early(epoch)
            else:
                loop.result.status = "early_stopped"
            break
    return loop.finish()
