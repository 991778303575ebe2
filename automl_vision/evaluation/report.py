"""``automl-vision evaluate``: a model or a predictions file against labelled data, with pictures.

``evaluate_model`` scores the test images with the model package (through the same engine the
server uses, writing ``predictions.jsonl``) and then scores that file; ``evaluate_predictions``
scores any predictions file in the scoring output format (``image_url`` plus the task's fields).
Output folder:

    metrics.json            the metrics of training for the task, per class/label figures, confusion matrix
    per_class.csv           classification: precision, recall, F1, support; detection: AP, precision, recall
    confusion_matrix.png    classification (multi-label: per class at the 0.5 threshold)
    roc_pr_curves.png       classification: ROC and precision-recall curves per class and micro average
    pr_curves.png           detection/segmentation: precision-recall curve per label
    ap_per_label.png        detection/segmentation: average precision per label
    per_class.png           the per-class table as a picture
    samples.png             test images with their true and predicted labels (boxes, masks)
    report.html             all of it on one self-contained page

A predictions line is matched to a labelled image by ``image_url`` as written, or else by the file it
points to (relative to its own JSONL file), as in detection scoring.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from automl_vision.errors import DataError
from automl_vision.spec.tasks import ImageTask

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.jsonl"
SAMPLES = 8
DRAWN_BOXES = 20  # highest-scoring predicted objects drawn on a sample image


@dataclass
class EvaluationResult:
    task: ImageTask
    images: int
    metrics: dict[str, Any]  # metrics.json
    output_dir: Path | None = None
    files: list[Path] = field(default_factory=list)

    @property
    def primary(self) -> float | None:
        v = self.metrics.get(self.task.primary_metric)
        return v if isinstance(v, (int, float)) else None


# --- reading predictions -----------------------------------------------------------------------------

def match_predictions(records: Sequence, predictions: Path, data: str | os.PathLike) -> list[tuple[int, dict]]:
    """``(line, row)`` of the predictions file for each labelled record, in record order."""
    from automl_vision.evaluation.detection_metrics import match_scoring_rows, read_scoring_file

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
    from automl_vision.data.validate import load_dataset
    from automl_vision.evaluation.classification import (confusion, multiclass_metrics, multilabel_metrics,
                                                         per_class_report)

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


def _classification_files(out: Path, metrics: dict[str, Any], scores: ClassificationScores) -> tuple[list[Path], list]:
    from automl_vision.evaluation import plots
    from automl_vision.report import html as H

    files, sections = [], []
    classes = scores.classes
    rows = [[c, f"{v['precision']:.3f}", f"{v['recall']:.3f}", f"{v['f1-score']:.3f}", str(int(v["support"]))]
            for c, v in metrics["per_class"].items()]
    headers = ["class", "precision", "recall", "F1", "support"]
    files.append(_write_csv(out / "per_class.csv", headers, rows))
    pictures = {"per_class.png": plots.table_png(headers, rows, "per class")}
    if scores.multilabel:
        pictures["confusion_matrix.png"] = plots.multilabel_confusion_png(metrics["confusion_matrix"], classes)
    else:
        pictures["confusion_matrix.png"] = plots.confusion_matrix_png(np.asarray(metrics["confusion_matrix"]), classes)
    pictures["roc_pr_curves.png"] = plots.roc_pr_png(scores.targets, scores.probs, classes)
    samples = _classification_samples(scores)
    if samples:
        pictures["samples.png"] = plots.samples_png(samples, classes)
    for name, png in pictures.items():
        (out / name).write_bytes(png)
        files.append(out / name)
    table = H.table([h if i == 0 else (h, True) for i, h in enumerate(headers)],
                    [[H.Cell(r[0])] + [H.Cell(x, float(x), True) for x in r[1:]] for r in rows], sortable=True)
    sections.append(H.Section("per-class", "Per class", table))
    sections.append(H.Section("confusion", "Confusion matrix", H.img(pictures["confusion_matrix.png"], "confusion matrix")))
    sections.append(H.Section("curves", "ROC and precision-recall curves",
                              H.img(pictures["roc_pr_curves.png"], "ROC and PR curves")))
    if "samples.png" in pictures:
        sections.append(H.Section("samples", "Sample images",
                                  H.img(pictures["samples.png"], "test images with true and predicted labels")))
    return files, sections


def _open(path: str):
    from PIL import Image

    from automl_vision.data.images import as_displayed

    try:
        with Image.open(path) as im:
            return as_displayed(im).convert("RGB")  # boxes are drawn on the image as displayed
    except OSError:
        return None


def _classification_samples(scores: ClassificationScores):
    from automl_vision.evaluation.plots import Sample
    from automl_vision.report.draw import Annotations

    n = len(scores.records)
    wrong = [i for i in range(n) if scores.predicted(i) != scores.truth(i)]
    right = [i for i in range(n) if scores.predicted(i) == scores.truth(i)]
    # Up to half mistakes, then correct ones, then more mistakes if there are too few correct ones.
    half = wrong[:SAMPLES // 2]
    chosen = half + right[:SAMPLES - len(half)]
    chosen += wrong[len(half):len(half) + SAMPLES - len(chosen)]
    out = []
    for i in chosen:
        image = _open(scores.records[i].path)
        if image is None:
            continue
        pred = scores.predicted(i)
        out.append(Sample(image, scores.records[i].image_url,
                          Annotations([scores.classes[c] for c in scores.truth(i)]),
                          Annotations([scores.classes[c] for c in pred], scores=[float(scores.probs[i, c]) for c in pred]),
                          correct=pred == scores.truth(i)))
    return out


# --- detection and segmentation ------------------------------------------------------------------------

def pr_curves(ground_truth: Sequence, predictions: Sequence, classes: Sequence[str], iou_threshold: float,
              use_masks: bool, average_precision: Mapping[str, float | None]) -> dict:
    """Each label's precision/recall points, matched exactly as the VOC metric matches them."""
    from automl_vision.evaluation.detections import box_iou
    from automl_vision.evaluation.masks import mask_iou
    from automl_vision.evaluation.plots import PRCurve
    from automl_vision.evaluation.voc import _match_image  # the metric's own matching rule

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
            outcomes.append(_match_image(ious, gt.crowd[g], iou_threshold))
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
    """metrics.json's content, plus the matched ground truth and predictions (pixels) for the pictures."""
    from automl_vision.data.validate import load_dataset
    from automl_vision.evaluation.detection_metrics import ground_truth_of, parse_scoring_line, score_predictions

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


def _detection_files(out: Path, task: ImageTask, metrics: dict[str, Any], records, classes, gts, preds,
                     iou_threshold: float) -> tuple[list[Path], list]:
    from automl_vision.evaluation import plots
    from automl_vision.evaluation.masks import decode_rle
    from automl_vision.report import html as H
    from automl_vision.report.draw import Annotations

    files, sections = [], []
    per_label = metrics.get("per_label", {})
    headers = ["label", "AP", "precision", "recall", "objects", "predictions", "true pos.", "false pos."]

    def f(v):
        return "-" if v is None else f"{v:.3f}"

    rows = [[name, f(v.get("average_precision")), f(v.get("precision")), f(v.get("recall")), str(v["ground_truth"]),
             str(v["predictions"]), str(v["true_positives"]), str(v["false_positives"])] for name, v in per_label.items()]
    files.append(_write_csv(out / "per_class.csv", headers, rows))
    segmentation = task is ImageTask.IMAGE_INSTANCE_SEGMENTATION
    ap = {k: v.get("average_precision") for k, v in per_label.items()}
    curves = pr_curves(gts, preds, classes, iou_threshold, segmentation, ap)
    pictures = {"per_class.png": plots.table_png(headers, rows, "per label"),
                "pr_curves.png": plots.detection_pr_png(curves, iou_threshold=iou_threshold),
                "ap_per_label.png": plots.ap_per_label_png(ap)}
    samples = []
    for i, r in enumerate(records[:SAMPLES]):
        image = _open(r.path)
        if image is None:
            continue
        g, p = gts[i], preds[i]
        top = np.argsort(-p.scores, kind="stable")[:DRAWN_BOXES]  # more would hide the image
        masks_true = np.stack([decode_rle(m) for m in g.masks]) if segmentation and g.masks else None
        masks_pred = np.stack([decode_rle(p.masks[k]) for k in top]) if segmentation and len(top) else None
        samples.append(plots.Sample(
            image, r.image_url,
            Annotations([classes[int(c)] for c in g.labels], g.boxes, masks_true),
            Annotations([classes[int(p.labels[k])] for k in top], p.boxes[top], masks_pred,
                        [float(p.scores[k]) for k in top])))
    if samples:
        pictures["samples.png"] = plots.samples_png(samples, classes)
    for name, png in pictures.items():
        (out / name).write_bytes(png)
        files.append(out / name)
    table = H.table([h if i == 0 else (h, True) for i, h in enumerate(headers)],
                    [[H.Cell(r[0])] + [H.Cell(x, None if x == "-" else float(x), True) for x in r[1:]] for r in rows],
                    sortable=True)
    sections.append(H.Section("per-label", "Per label", table))
    sections.append(H.Section("pr", "Precision-recall and AP per label",
                              H.img(pictures["pr_curves.png"], "PR curves") + H.img(pictures["ap_per_label.png"], "AP")))
    if "samples.png" in pictures:
        sections.append(H.Section("samples", "Sample images", H.img(pictures["samples.png"],
                                                                       "test images with true and predicted objects")))
    return files, sections


# --- entry points --------------------------------------------------------------------------------------

def evaluate_predictions(task: ImageTask, data: str | os.PathLike, predictions: str | os.PathLike,
                         output_dir: str | os.PathLike | None = None, *, metric_type: str = "coco_voc",
                         iou_threshold: float = 0.5, title: str | None = None) -> EvaluationResult:
    """Score a predictions file; with ``output_dir``, write metrics.json, the pictures and report.html."""
    if task.is_classification:
        metrics, scores = score_classification(task, data, predictions)
        extra = (scores,)
    else:
        metrics, records, classes, gts, preds = score_detection(task, data, predictions, metric_type=metric_type,
                                                                iou_threshold=iou_threshold)
        extra = (records, classes, gts, preds)
    result = EvaluationResult(task, metrics["images"], metrics)
    if output_dir is None:
        return result
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / METRICS_FILE).write_text(json.dumps(_finite(metrics), indent=2) + "\n")
    if task.is_classification:
        files, sections = _classification_files(out, metrics, *extra)
    else:
        files, sections = _detection_files(out, task, metrics, *extra, iou_threshold)
    files.insert(0, out / METRICS_FILE)
    files.append(_write_html(out, task, metrics, sections, title or f"Evaluation on {Path(data).name}"))
    result.output_dir, result.files = out, files
    return result


def evaluate_model(model_dir: str | os.PathLike, data: str | os.PathLike, output_dir: str | os.PathLike, *,
                   settings_layers: Sequence[tuple[str, Mapping[str, Any]]] = (), metric_type: str = "coco_voc",
                   iou_threshold: float = 0.5, batch_size: int | None = None,
                   num_workers: int | None = None) -> EvaluationResult:
    """Score ``data``'s images with the package, write ``predictions.jsonl``, then evaluate it."""
    from automl_vision.serving.batch import predict_batch
    from automl_vision.serving.package import load_package

    package = load_package(model_dir)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    batch = predict_batch(model_dir, data, out / PREDICTIONS_FILE, settings_layers=settings_layers,
                          batch_size=batch_size, num_workers=num_workers)
    log.info("scored %d images in %.1f s (%.1f images/s)", batch.images, batch.seconds, batch.images_per_second)
    result = evaluate_predictions(package.task, data, out / PREDICTIONS_FILE, out, metric_type=metric_type,
                                  iou_threshold=iou_threshold,
                                  title=f"{package.model_name} on {Path(data).name}")
    result.files.insert(1, out / PREDICTIONS_FILE)
    return result


# --- files ---------------------------------------------------------------------------------------------

def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _write_csv(path: Path, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(headers)
        w.writerows(rows)
    return path


def _write_html(out: Path, task: ImageTask, metrics: dict[str, Any], sections: list, title: str) -> Path:
    from automl_vision.report import html as H

    scalars = [(k, H.fmt_number(v)) for k, v in metrics.items() if isinstance(v, (int, float)) and k != "images"]
    primary = task.primary_metric
    top = [(primary, H.fmt_number(metrics.get(primary))), ("images", metrics["images"])]
    summary = H.Section("summary", "Summary", H.cards(top) + H.key_values(scalars))
    page = H.page(title, f"{task.value}, {metrics['images']} images", [summary, *sections], script=True)
    path = out / "report.html"
    path.write_text(page)
    return path
