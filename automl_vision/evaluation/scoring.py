"""Scoring a predictions file (the scoring output format: ``image_url`` plus the task's fields) against
labelled data, keeping what an evaluation's pictures are drawn from: the matched probabilities of a
classification, the pixel ground truth and predictions of a detection, each label's precision-recall points.

A predictions line is matched to a labelled image by ``image_url`` as written, or else by the file it
points to (relative to its own JSONL file), as in detection scoring.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from automl_vision.data.load import load_dataset
from automl_vision.errors import DataError
from automl_vision.evaluation.classification import (
    confusion,
    multiclass_metrics,
    multilabel_metrics,
    per_class_report,
)
from automl_vision.evaluation.detection_metrics import (
    ground_truth_of,
    match_scoring_rows,
    parse_scoring_line,
    read_scoring_file,
    score_predictions,
)
from automl_vision.evaluation.voc import match_image
from automl_vision.models.detections import box_iou
from automl_vision.models.masks import mask_iou
from automl_vision.spec.tasks import ImageTask

#: The files of an evaluation's output folder that other steps read back.
METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.jsonl"


def match_predictions(records: Sequence, predictions: Path, data: str | os.PathLike) -> list[tuple[int, dict]]:
    """``(line, row)`` of the predictions file for each labelled record, in record order."""
    rows = read_scoring_file(predictions, fields="'image_url'", refuse_errors=True)
    found, problems = match_scoring_rows(records, rows, predictions, data)
    if problems:
        raise DataError(problems)
    return [found[k] for k in range(len(records))]


# --- classification ------------------------------------------------------------------------------------

@dataclass
class ClassificationScores:
    task: ImageTask
    classes: list[str]
    records: list
    probs: np.ndarray  # (N, C)
    targets: np.ndarray  # (N, C) 0/1

    @property
    def multilabel(self) -> bool:
        return self.task is ImageTask.IMAGE_CLASSIFICATION_MULTILABEL

    def predicted(self, i: int) -> list[int]:
        if self.multilabel:
            return [int(c) for c in np.flatnonzero(self.probs[i] >= 0.5)]
        return [int(self.probs[i].argmax())]

    def truth(self, i: int) -> list[int]:
        return [int(c) for c in np.flatnonzero(self.targets[i] > 0.5)]


def score_classification(task: ImageTask, data: str | os.PathLike, predictions: str | os.PathLike
                         ) -> tuple[dict[str, Any], ClassificationScores]:
    """metrics.json's content and the matched probabilities of a classification predictions file."""
    dataset = load_dataset(data, task)
    records = list(dataset.records)
    pred_path = Path(predictions)
    matched = match_predictions(records, pred_path, data)
    classes: list[str] | None = None
    problems, probs = [], []
    for number, row in matched:
        labels, p = row.get("labels"), row.get("probs")
        where = f"{pred_path}:{number}"
        if not isinstance(labels, list) or not isinstance(p, list) or len(labels) != len(p) or not labels:
            problems.append(f"{where}: a classification line needs 'probs' and 'labels' lists of the same length")
            continue
        if classes is None:
            classes = [str(x) for x in labels]
        elif labels != classes:
            problems.append(f"{where}: labels {labels} differ from the first line's {classes}")
            continue
        try:
            row_probs = [float(x) for x in p]
        except (TypeError, ValueError):
            problems.append(f"{where}: 'probs' must be numbers")
            continue
        if not all(math.isfinite(x) for x in row_probs):
            problems.append(f"{where}: non-finite probability")
            continue
        probs.append(row_probs)
    if problems:
        raise DataError(problems)
    unknown = sorted(set(dataset.classes) - set(classes))
    if unknown:
        raise DataError(f"{data}: classes the model does not know: {', '.join(unknown)} "
                        f"(the model's classes: {', '.join(classes)})")
    index = {c: i for i, c in enumerate(classes)}
    targets = np.zeros((len(records), len(classes)), dtype=np.float32)
    for i, r in enumerate(records):
        for lab in r.labels:
            targets[i, index[lab]] = 1
    P = np.asarray(probs, dtype=np.float64)
    scores = ClassificationScores(task, classes, records, P, targets)
    multilabel = scores.multilabel
    y = targets if multilabel else targets.argmax(1)
    metrics = multilabel_metrics(P, targets) if multilabel else multiclass_metrics(P, y, len(classes))
    out: dict[str, Any] = {"task": task.value, "images": len(records), "labels": classes, **metrics,
                           "per_class": per_class_report(P, y, classes, multilabel),
                           "confusion_matrix": confusion(P, y, len(classes), multilabel)}
    return out, scores


# --- detection and segmentation ------------------------------------------------------------------------

@dataclass(frozen=True)
class PRCurve:
    """One label's precision/recall points (one per distinct score, decreasing score)."""

    recall: np.ndarray
    precision: np.ndarray
    average_precision: float | None


def pr_curves(ground_truth: Sequence, predictions: Sequence, classes: Sequence[str], iou_threshold: float,
              use_masks: bool, average_precision: Mapping[str, float | None]) -> dict[str, PRCurve]:
    """Each label's precision/recall points, matched exactly as the VOC metric matches them."""
    curves = {}
    for c, name in enumerate(classes):
        scores, outcomes, n_gt = [], [], 0
        for gt, pred in zip(ground_truth, predictions):
            g = np.nonzero(gt.labels == c)[0]
            n_gt += int((~gt.crowd[g]).sum())
            p = np.nonzero(pred.labels == c)[0]
            if len(p) == 0:
                continue
            order = p[np.argsort(-pred.scores[p], kind="stable")]
            ious = (mask_iou([pred.masks[i] for i in order], [gt.masks[j] for j in g]) if use_masks
                    else box_iou(pred.boxes[order], gt.boxes[g]))
            scores.append(pred.scores[order])
            outcomes.append(match_image(ious, gt.crowd[g], iou_threshold))
        if n_gt == 0:
            continue
        s = np.concatenate(scores) if scores else np.zeros(0)
        o = np.concatenate(outcomes) if outcomes else np.zeros(0, dtype=np.int8)
        s, o = s[o >= 0], o[o >= 0]
        order = np.argsort(-s, kind="stable")
        s, tp = s[order], o[order].astype(np.float64)
        ctp, cfp = np.cumsum(tp), np.cumsum(1 - tp)
        last = np.nonzero(np.append(s[1:] != s[:-1], True))[0] if len(s) else np.zeros(0, dtype=np.int64)
        curves[name] = PRCurve(ctp[last] / n_gt, ctp[last] / np.maximum(ctp[last] + cfp[last], 1e-12),
                               average_precision.get(name))
    return curves


def score_detection(task: ImageTask, data: str | os.PathLike, predictions: str | os.PathLike, *,
                    metric_type: str, iou_threshold: float):
    """metrics.json's content, plus the matched records, classes, ground truth and predictions (pixels)."""
    result = score_predictions(task, data, predictions, metric_type=metric_type, iou_threshold=iou_threshold)
    dataset = load_dataset(data, task)
    records = list(dataset.records)
    pred_path = Path(predictions)
    matched = match_predictions(records, pred_path, data)
    classes = list(dataset.classes)
    classes += sorted({d["label"] for _, row in matched for d in row.get("boxes", [])
                       if isinstance(d, dict) and isinstance(d.get("label"), str)} - set(classes))
    index = {c: i for i, c in enumerate(classes)}
    segmentation = task is ImageTask.IMAGE_INSTANCE_SEGMENTATION
    gts = [ground_truth_of(r, index, masks=segmentation) for r in records]
    preds = [parse_scoring_line(row, index, r.width, r.height, segmentation, f"{pred_path}:{n}")
             for r, (n, row) in zip(records, matched)]
    metrics = {"task": task.value, "images": len(records), "validation_metric_type": metric_type,
               "validation_iou_threshold": iou_threshold, **result.to_json()}
    return metrics, records, classes, gts, preds
