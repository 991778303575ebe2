"""Evaluating a model package: serving's batch scoring writes ``predictions.jsonl`` (through the same
engine the server uses), then the report's evaluation scores that file and writes the metrics and pictures.

It sits here, above both, because scoring images needs the serving engine and the pictures are the
report's; ``automl-vision evaluate --model`` and the pipeline's evaluate step call it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from automl_vision.evaluation.scoring import PREDICTIONS_FILE
from automl_vision.report.evaluation import EvaluationResult, evaluate_predictions
from automl_vision.pipeline.explanations import explain_validation_images, report_parameters
from automl_vision.serving.batch import predict_batch
from automl_vision.serving.engine import load_engine
from automl_vision.serving.package import load_package

log = logging.getLogger(__name__)


def evaluate_model(model_dir: str | os.PathLike, data: str | os.PathLike, output_dir: str | os.PathLike, *,
                   settings_layers: Sequence[tuple[str, Mapping[str, Any]]] = (), metric_type: str = "coco_voc",
                   iou_threshold: float = 0.5, batch_size: int | None = None,
                   num_workers: int | None = None, explain_images: int | None = None,
                   explain_parameters: Mapping[str, Any] | None = None,
                   echo: Callable[[str], None] | None = None) -> EvaluationResult:
    """Score ``data``'s images with the package, write ``predictions.jsonl``, then evaluate it, and explain
    ``explain_images`` of them (None: ``pipeline/explanations.py``'s default for the task; 0: none) with
    ``explain_parameters`` over its ``EXPLAIN_PARAMETERS`` for the task; ``echo`` (default: the log) says how
    the explanations go, image by image."""
    package = load_package(model_dir)
    engine = load_engine(package, package.settings(*settings_layers))
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    batch = predict_batch(model_dir, data, out / PREDICTIONS_FILE, settings_layers=settings_layers,
                          batch_size=batch_size, num_workers=num_workers, engine=engine)
    log.info("scored %d images in %.1f s (%.1f images/s)", batch.images, batch.seconds, batch.images_per_second)
    result = evaluate_predictions(package.task, data, out / PREDICTIONS_FILE, out, metric_type=metric_type,
                                  iou_threshold=iou_threshold,
                                  title=f"{package.model_name} on {Path(data).name}")
    result.files.insert(1, out / PREDICTIONS_FILE)
    if explain_parameters is not None:  # the caller's own: a mistake in them is an error, not a missing section
        report_parameters(engine, explain_parameters)
    try:
        index = explain_validation_images(engine, data, out, explain_images, explain_parameters, echo=echo)
    except Exception as e:  # the evaluation stands without its explanations; say why they are missing
        log.warning("no explanations for the report: %s: %s", type(e).__name__, e)
        index = None
    if index is not None:
        result.files.append(index.parent)
    return result
