"""Scoring the best model again for the run report, or reading back the evaluation written before it.

The report scores ``best_model/`` on the best trial's own validation split (at most
``MAX_EVALUATION_IMAGES`` images) with the scorer it is given (:data:`ScoreModel`: the pipeline's
``evaluate_model``, the evaluation the ``evaluate`` command runs, which needs the serving engine and
so lives above the report); the pipeline's report step passes its evaluate step's output instead
(:class:`Evaluation`), which is read back, not scored a second time.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from automl_vision.data.load import first_lines_jsonl, split_jsonl
from automl_vision.errors import ConfigError
from automl_vision.evaluation.scoring import METRICS_FILE
from automl_vision.training.runfolder import RunData, TrialView, read_json

log = logging.getLogger(__name__)

#: Scores a model package (folder) on labelled data (JSONL), writing its files into a folder; returns
#: a result whose ``metrics`` are the evaluation's metrics.
ScoreModel = Callable[[Path, Path, Path], Any]

EVALUATION_DIR = "evaluation"
#: Validation images the best model is scored on for the report; beyond that, the first ones.
MAX_EVALUATION_IMAGES = 1000


@dataclass
class Scores:
    """The best model's evaluation as the report shows it."""

    folder: Path
    data: Path  # the validation JSONL scored
    images: int
    total: int
    metrics: dict[str, Any]
    scored_by: str = ""  # who scored the best model, when not this report


@dataclass(frozen=True)
class Evaluation:
    """The best model's evaluation written before the report (the pipeline's evaluate step):
    ``folder`` holds ``evaluate_model``'s files, ``data`` is the labelled JSONL it scored."""

    folder: str | os.PathLike
    data: str | os.PathLike
    scored_by: str = "the pipeline's evaluate step"


def _validation_jsonl(run: RunData, best: TrialView, folder: Path) -> tuple[Path, int, int]:
    """The best trial's validation images as a JSONL file (its own split), at most MAX_EVALUATION_IMAGES."""
    hp = best.hyperparameters
    source = run.job.get("validation_data")
    if source:
        path = Path(source)
    else:
        training = run.job.get("training_data")
        if not training or not str(training).endswith(".jsonl"):
            raise ConfigError(f"the validation split of {training} can only be rebuilt from a JSONL file")
        path = split_jsonl(training, run.task, folder / "split", ratio=hp.get("split_ratio", 0.2),
                           seed=hp.get("seed", 0)).validation
    return first_lines_jsonl(path, MAX_EVALUATION_IMAGES, folder / "validation_first.jsonl")


def evaluate_best(run: RunData, best: TrialView, score_model: ScoreModel) -> Scores:
    """Score ``best_model/`` on the best trial's validation images with ``score_model`` (the evaluation
    the ``evaluate`` command runs: the serving engine's predictions, then the metrics and pictures)."""
    folder = run.run_dir / EVALUATION_DIR
    folder.mkdir(parents=True, exist_ok=True)
    data, n, total = _validation_jsonl(run, best, folder)
    t0 = time.monotonic()
    result = score_model(run.run_dir / "best_model", data, folder)
    log.info("report: best model scored on %d validation images in %.1f s", n, time.monotonic() - t0)
    return Scores(folder, data, n, total, result.metrics)


def given_evaluation(given: Evaluation) -> Scores:
    """An evaluation written before the report, read back (its metrics.json, the data it scored)."""
    folder, data = Path(given.folder), Path(given.data)
    metrics = read_json(folder / METRICS_FILE)
    if not isinstance(metrics, dict):
        raise ConfigError(f"{folder}: no {METRICS_FILE}; it is not the output of an evaluation")
    if not data.is_file():
        raise ConfigError(f"{data}: file not found (the validation data the evaluation scored)")
    n = metrics.get("images")
    if not isinstance(n, int) or isinstance(n, bool):
        n = sum(1 for ln in data.read_text(encoding="utf-8").splitlines() if ln.strip())
    return Scores(folder, data, n, n, metrics, given.scored_by)
