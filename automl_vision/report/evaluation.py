"""An evaluation as files: ``automl-vision evaluate``'s metrics, tables and pictures of a predictions file.

``evaluate_predictions`` scores any predictions file in the scoring output format (``image_url`` plus
the task's fields) against labelled data and writes, into its output folder:

    metrics.json            the metrics of training for the task, per class/label figures, confusion matrix
    per_class.csv           classification: precision, recall, F1, support; detection: AP, precision, recall
    confusion_matrix.png    classification (multi-label: per class at the 0.5 threshold)
    roc_pr_curves.png       classification: ROC and precision-recall curves per class and micro average
    pr_curves.png           detection/segmentation: precision-recall curve per label
    ap_per_label.png        detection/segmentation: average precision per label
    per_class.png           the per-class table as a picture
    samples.png             test images with their true and predicted labels (boxes, masks)
    report.html             all of it on one self-contained page

Scoring a model package first (its ``predictions.jsonl``) is serving's batch scoring; the pipeline's
``evaluate_model`` runs both.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from automl_vision.data.images import as_displayed
from automl_vision.evaluation.scoring import (
    METRICS_FILE,
    ClassificationScores,
    pr_curves,
    score_classification,
    score_detection,
)
from automl_vision.models.masks import decode_rle
from automl_vision.report import html as H
from automl_vision.report import plots
from automl_vision.report.draw import Annotations
from automl_vision.spec.tasks import ImageTask

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


# --- classification ------------------------------------------------------------------------------------

def _classification_files(out: Path, metrics: dict[str, Any], scores: ClassificationScores) -> tuple[list[Path], list]:
    classes = scores.classes
    rows = [[c, f"{v['precision']:.3f}", f"{v['recall']:.3f}", f"{v['f1-score']:.3f}", str(int(v["support"]))]
            for c, v in metrics["per_class"].items()]
    headers = ["class", "precision", "recall", "F1", "support"]
    pictures = {"per_class.png": plots.table_png(headers, rows, "per class")}
    if scores.multilabel:
        pictures["confusion_matrix.png"] = plots.multilabel_confusion_png(metrics["confusion_matrix"], classes)
    else:
        pictures["confusion_matrix.png"] = plots.confusion_matrix_png(np.asarray(metrics["confusion_matrix"]), classes)
    pictures["roc_pr_curves.png"] = plots.roc_pr_png(scores.targets, scores.probs, classes)
    samples = _classification_samples(scores)
    if samples:
        pictures["samples.png"] = plots.samples_png(samples, classes)
    files = _write_tables_and_pictures(out, headers, rows, pictures)
    sections = [
        H.Section("per-class", "Per class", _per_class_table(headers, rows)),
        H.Section("confusion", "Confusion matrix", H.img(pictures["confusion_matrix.png"], "confusion matrix")),
        H.Section("curves", "ROC and precision-recall curves",
                  H.img(pictures["roc_pr_curves.png"], "ROC and PR curves")),
    ]
    if "samples.png" in pictures:
        sections.append(H.Section("samples", "Sample images",
                                  H.img(pictures["samples.png"], "test images with true and predicted labels")))
    return files, sections


def _open(path: str) -> Image.Image | None:
    try:
        with Image.open(path) as im:
            return as_displayed(im).convert("RGB")  # boxes are drawn on the image as displayed
    except OSError:
        return None


def _classification_samples(scores: ClassificationScores) -> list[plots.Sample]:
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
        out.append(plots.Sample(image, scores.records[i].image_url,
                                Annotations([scores.classes[c] for c in scores.truth(i)]),
                                Annotations([scores.classes[c] for c in pred],
                                            scores=[float(scores.probs[i, c]) for c in pred]),
                                correct=pred == scores.truth(i)))
    return out


# --- detection and segmentation ------------------------------------------------------------------------

def _detection_files(out: Path, task: ImageTask, metrics: dict[str, Any], records, classes, gts, preds,
                     iou_threshold: float) -> tuple[list[Path], list]:
    per_label = metrics.get("per_label", {})
    headers = ["label", "AP", "precision", "recall", "objects", "predictions", "true pos.", "false pos."]

    def f(v):
        return "-" if v is None else f"{v:.3f}"

    rows = [[name, f(v.get("average_precision")), f(v.get("precision")), f(v.get("recall")), str(v["ground_truth"]),
             str(v["predictions"]), str(v["true_positives"]), str(v["false_positives"])] for name, v in per_label.items()]
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
    files = _write_tables_and_pictures(out, headers, rows, pictures)
    sections = [
        H.Section("per-label", "Per label", _per_class_table(headers, rows)),
        H.Section("pr", "Precision-recall and AP per label",
                  H.img(pictures["pr_curves.png"], "PR curves") + H.img(pictures["ap_per_label.png"], "AP")),
    ]
    if "samples.png" in pictures:
        sections.append(H.Section("samples", "Sample images", H.img(pictures["samples.png"],
                                                                       "test images with true and predicted objects")))
    return files, sections


# --- entry point ---------------------------------------------------------------------------------------

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


# --- files ---------------------------------------------------------------------------------------------

def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _write_tables_and_pictures(out: Path, headers: Sequence[str], rows: Sequence[Sequence[str]],
                               pictures: Mapping[str, bytes]) -> list[Path]:
    """Write ``per_class.csv`` and each picture into ``out``; returns the files in that order."""
    files = [out / "per_class.csv"]
    with files[0].open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(headers)
        w.writerows(rows)
    for name, png in pictures.items():
        (out / name).write_bytes(png)
        files.append(out / name)
    return files


def _per_class_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """The per-class (per-label) rows as a sortable table; ``-`` (no value) sorts as missing."""
    return H.table([h if i == 0 else (h, True) for i, h in enumerate(headers)],
                   [[H.Cell(r[0])] + [H.Cell(x, None if x == "-" else float(x), True) for x in r[1:]] for r in rows],
                   sortable=True)


def _write_html(out: Path, task: ImageTask, metrics: dict[str, Any], sections: list, title: str) -> Path:
    scalars = [(k, H.fmt_number(v)) for k, v in metrics.items() if isinstance(v, (int, float)) and k != "images"]
    primary = task.primary_metric
    top = [(primary, H.fmt_number(metrics.get(primary))), ("images", metrics["images"])]
    summary = H.Section("summary", "Summary", H.cards(top) + H.key_values(scalars))
    page = H.page(title, f"{task.value}, {metrics['images']} images", [summary, *sections], script=True)
    path = out / "report.html"
    path.write_text(page)
    return path
