"""What every trial shares: its settings, its output folder and its result file."""

from __future__ import annotations

import json
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from automl_vision.models.device import available_cpus
from automl_vision.data.storage import upload_folder
from automl_vision.spec.tasks import ImageTask
from automl_vision.training.reporter import read_metrics
from automl_vision.training.runfolder import METRICS_FILE, RESULT_FILE


@dataclass(frozen=True)
class TrialSettings:
    """A validated trial: the data, the resolved hyperparameters and where to write."""

    task: ImageTask
    training_data: str
    validation_data: str | None
    hyperparameters: dict[str, Any]
    output_dir: str
    device: str = "auto"
    num_workers: int | None = None  # None: chosen from the machine
    #: Pretrained weights: a folder or s3:// prefix (None: the libraries' caches); see models/weights.py.
    weights: str | None = None
    s3_endpoint: str | None = None
    weights_cache: str | None = None
    #: Incremental training: the folder of an earlier model package (model.safetensors, config.json, labels.json).
    from_model: str | None = None
    #: Continue from the latest checkpoint in ``output_dir/checkpoints`` when there is one.
    resume: bool = False
    #: A progress bar per epoch (a terminal) instead of a log line every N steps (a pod log).
    progress_bar: bool = False
    #: Data-parallel training under torchrun: this process's rank, the number of processes, the GPU index.
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["task"] = self.task.value
        return d


@dataclass
class TrialResult:
    status: str  # completed | early_stopped | failed | diverged
    primary_metric: str
    best_value: float | None = None
    best_epoch: int | None = None
    epochs_completed: int = 0
    duration_s: float = 0.0
    message: str = ""
    history: list[dict[str, float]] = field(default_factory=list)

    def write(self, output_dir: str | Path) -> None:
        path = Path(output_dir) / RESULT_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        os.replace(tmp, path)

    @classmethod
    def read(cls, output_dir: str | Path) -> "TrialResult | None":
        path = Path(output_dir) / RESULT_FILE
        if not path.is_file():
            return None
        return cls(**json.loads(path.read_text()))


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def default_num_workers(processes: int = 1) -> int:
    """DataLoader workers of one training process: its share of the cores less its own, at most 8.

    ``processes``: training processes sharing the machine (torchrun's processes per node). With
    two cores, one worker decodes and augments while the model computes (``benchmarks/data_stalls.py``
    compares worker counts); with one core, workers would only take turns with the training.
    """
    share = available_cpus() // max(1, processes)
    return max(0, min(8, share - 1))


# --- a trial that keeps its folder in object storage (Katib trials) --------------------------------

#: Files of a trial folder not worth keeping: resumable checkpoints (large; the model package holds the best epoch).
NOT_UPLOADED = ("checkpoints/",)


class TrialStopped(Exception):
    """The trial's process was asked to stop (SIGTERM: Katib's metrics collector stopping an early-stopped
    trial, or the pod being deleted)."""


def stopped_result(output_dir: str | Path, task: ImageTask, duration_s: float) -> TrialResult:
    """The result of a trial stopped from outside, from the evaluations it reported (``metrics.jsonl``):
    status ``terminated``, the best value among them (the model package holds that epoch)."""
    primary_metric = task.primary_metric
    rows = [r for r in read_metrics(Path(output_dir) / METRICS_FILE) if primary_metric in r]
    result = TrialResult(status="terminated", primary_metric=primary_metric, duration_s=round(duration_s, 2),
                         message="stopped from outside while training (Katib's early stopping, or the pod deleted)")
    for r in rows:
        value, epoch = float(r[primary_metric]), int(r.get("epoch", 0))
        result.history.append({k: float(v) for k, v in r.items() if k != "timestamp"})
        result.epochs_completed = max(result.epochs_completed, epoch)
        if result.best_value is None or (value > result.best_value if task.maximize else value < result.best_value):
            result.best_value, result.best_epoch = value, epoch
    return result


def upload_trial(output_dir: str | Path, uri: str) -> list[str]:
    """Upload the trial folder (model package, metrics.jsonl, result.json, config.json, logs; not the
    checkpoints) to ``uri`` (s3://bucket/prefix), with the endpoint and credentials of the AWS_*
    environment variables (the storage Secret's keys in a trial pod)."""
    return upload_folder(output_dir, uri, skip=lambda rel: rel.startswith(NOT_UPLOADED))
