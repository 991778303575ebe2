"""The metrics of a detection or segmentation evaluation (spec section 8), by ``validation_metric_type``,
and scoring a file of predictions in the scoring output format (spec section 9) against labelled data.

Names: ``mean_average_precision``, ``precision`` and ``recall`` are the VOC metric at
``validation_iou_threshold`` (on masks for instance segmentation, with the box figures also given
as ``box_mean_average_precision``, ``box_precision``, ``box_recall``); ``coco_<stat>`` are the 12
COCO statistics on boxes and, for segmentation, ``coco_mask_<stat>`` on masks. With metric type
``coco``, ``mean_average_precision`` is COCO's AP@[.5:.95] (on masks for segmentation); with
``voc`` and ``coco_voc`` it is the VOC mAP; ``none`` computes nothing.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from automl_vision.data.load import load_dataset
from automl_vision.errors import ConfigError, DataError
from automl_vision.evaluation.coco import coco_evaluate
from automl_vision.evaluation.voc import voc_evaluate
from automl_vision.models.detections import ImageGroundTruth, ImagePredictions
from automl_vision.models.masks import polygon_to_rle
from automl_vision.spec.tasks import ImageTask

METRIC_TYPES = ("none", "voc", "coco", "coco_voc")


@dataclass
class DetectionMetrics:
    """Scalar metrics (reporter-ready names) and per-label VOC figures (for a JSON file only)."""

    metrics: dict[str, float] = field(default_factory=dict)
    per_label: dict[str, dict] = field(default_factory=dict)
    box_per_label: dict[str, dict] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                               for k, v in self.metrics.items()}
        out["per_label"] = self.per_label
        if self.box_per_label:
            out["box_per_label"] = self.box_per_label
        return out


def detection_metrics(ground_truth: Sequence[ImageGroundTruth], predictions: Sequence[ImagePredictions],
                      classes: Sequence[str], task: ImageTask, metric_type: str = "voc",
                      iou_threshold: float = 0.5) -> DetectionMetrics:
    if metric_type not in METRIC_TYPES:
        raise ConfigError(f"validation_metric_type={metric_type!r}; allowed: {', '.join(METRIC_TYPES)}")
    out = DetectionMetrics()
    if metric_type == "none":
        return out
    segmentation = task is ImageTask.IMAGE_INSTANCE_SEGMENTATION
    voc = voc_evaluate(ground_truth, predictions, classes, iou_threshold, use_masks=segmentation)
    out.metrics.update(voc.metrics())
    out.per_label = voc.per_label_json()
    if segmentation:
        box = voc_evaluate(ground_truth, predictions, classes, iou_threshold, use_masks=False)
        out.metrics.update(box.metrics("box_"))
        out.box_per_label = box.per_label_json()
    if metric_type in ("coco", "coco_voc"):
        out.metrics.update({f"coco_{k}": v for k, v in coco_evaluate(ground_truth, predictions, classes, "bbox").items()})
        if segmentation:
            out.metrics.update({f"coco_mask_{k}": v
                                for k, v in coco_evaluate(ground_truth, predictions, classes, "segm").items()})
        if metric_type == "coco":
            out.metrics["mean_average_precision"] = out.metrics["coco_mask_map" if segmentation else "coco_map"]
    return out


# --- scoring files -------------------------------------------------------------------------------

def _num(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(value)
    return float(value)


def parse_scoring_line(row: Any, classes: dict[str, int], width: int, height: int, segmentation: bool,
                       where: str) -> ImagePredictions:
    """One line of the scoring output format -> pixel predictions; raises DataError naming the problem."""
    boxes, labels, scores, masks = [], [], [], []
    entries = row.get("boxes") if isinstance(row, dict) else None
    if not isinstance(entries, list):
        raise DataError(f"{where}: 'boxes' must be a list of detections")
    for k, det in enumerate(entries):
        at = f"{where}: boxes[{k}]"
        if not isinstance(det, dict) or not isinstance(det.get("box"), dict):
            raise DataError(f"{at}: a detection is {{\"box\": {{topX, topY, bottomX, bottomY}}, \"label\", \"score\"}}")
        try:
            b = det["box"]
            x1, y1, x2, y2 = (_num(b[key]) for key in ("topX", "topY", "bottomX", "bottomY"))
            score = _num(det["score"])
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{at}: missing or non-numeric {e}") from None
        label = det.get("label")
        if label not in classes:
            raise DataError(f"{at}: label={label!r} must be a class name")
        if not all(math.isfinite(v) for v in (x1, y1, x2, y2, score)):
            raise DataError(f"{at}: non-finite coordinate or score")
        boxes.append((x1 * width, y1 * height, x2 * width, y2 * height))
        labels.append(classes[label])
        scores.append(score)
        if segmentation:
            polygon = det.get("polygon")
            if not isinstance(polygon, list):
                raise DataError(f"{at}: instance segmentation predictions need a 'polygon' (list of rings)")
            try:
                masks.append(polygon_to_rle(polygon, width, height))
            except (ValueError, TypeError) as e:
                raise DataError(f"{at}: polygon: {e}") from None
    return ImagePredictions(np.asarray(boxes, dtype=np.float64).reshape(-1, 4), np.asarray(labels, dtype=np.int64),
                            np.asarray(scores, dtype=np.float64), masks if segmentation else None)


def read_scoring_file(path: str | os.PathLike, *, fields: str = "'image_url' and 'boxes'",
                      refuse_errors: bool = False) -> list[tuple[int, dict]]:
    """The lines of a predictions file: ``(line number, object)``; raises DataError listing bad lines
    (``fields``: what a line must hold, for the message; ``refuse_errors``: a line of an image that
    ``predict`` could not score, with its ``error``, is a bad line)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"file not found: {path}")
    rows, problems = [], []
    with path.open(encoding="utf-8") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except json.JSONDecodeError as e:
                problems.append(f"{path}:{number}: not valid JSON ({e.msg} at column {e.colno})")
                continue
            if not isinstance(row, dict) or not isinstance(row.get("image_url"), str):
                problems.append(f"{path}:{number}: a line must be an object with {fields}")
                continue
            if refuse_errors and "error" in row:
                problems.append(f"{path}:{number}: the image was not scored: {row['error']}")
                continue
            rows.append((number, row))
    if problems:
        raise DataError(problems)
    return rows


def match_scoring_rows(records: Sequence, rows: Sequence[tuple[int, dict]], pred_path: Path, data: str | os.PathLike,
                       *, missing_hint: str = "") -> tuple[dict[int, tuple[int, dict]], list[str]]:
    """Each predictions line ``(line number, row)`` matched to its labelled record by ``image_url``, as
    written or else by the file it points to (each relative to its own JSONL file): ``{record index:
    (line number, row)}`` and the problems (unknown or repeated images, labelled images without a line)."""
    by_url = {r.image_url: k for k, r in enumerate(records)}
    by_path = {os.path.realpath(r.path): k for k, r in enumerate(records)}
    found: dict[int, tuple[int, dict]] = {}
    problems = []
    for number, row in rows:
        url = row["image_url"]
        k = by_url.get(url)
        if k is None:
            local = Path(url) if Path(url).is_absolute() else pred_path.parent / url
            k = by_path.get(os.path.realpath(local))
        if k is None:
            problems.append(f"{pred_path}:{number}: image_url={url!r} is not an image of {data}")
        elif k in found:
            problems.append(f"{pred_path}:{number}: image_url={url!r} repeats line {found[k][0]}")
        else:
            found[k] = (number, row)
    missing = [records[k].image_url for k in range(len(records)) if k not in found]
    if missing:
        shown = ", ".join(repr(u) for u in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        problems.append(f"{pred_path}: no predictions for {len(missing)} labelled image(s): {shown}{missing_hint}")
    return found, problems


def ground_truth_of(record: Any, class_index: dict[str, int], *, masks: bool) -> ImageGroundTruth:
    """An image record of the data layer (``objects`` with normalized boxes, crowd flags and polygons;
    ``width`` and ``height``) as pixel ground truth; masks are rasterized polygons (XOR of rings)."""
    w, h = record.width, record.height
    objects = record.objects
    boxes = np.asarray([o.box for o in objects], dtype=np.float64).reshape(-1, 4) * (w, h, w, h)
    return ImageGroundTruth(
        w, h, boxes, [class_index[o.label] for o in objects], [o.is_crowd for o in objects],
        [polygon_to_rle(o.polygons, w, h) for o in objects] if masks else None)


def score_predictions(task: ImageTask, data: str | os.PathLike, predictions: str | os.PathLike, *,
                      metric_type: str = "coco_voc", iou_threshold: float = 0.5) -> DetectionMetrics:
    """Score a predictions file (scoring output format, one line per image with its ``image_url``)
    against a labelled JSONL file. Every labelled image needs exactly one line of predictions and
    every line must name a labelled image; ``image_url`` is matched as written, or else by the
    file it points to (each relative to its own JSONL file)."""
    if task.is_classification:
        raise ConfigError(f"evaluate --predictions scores detection and segmentation; {task.value} is not supported")
    dataset = load_dataset(data, task)
    records = list(dataset.records)
    classes = list(dataset.classes)
    pred_path = Path(predictions)
    found, problems = match_scoring_rows(records, read_scoring_file(pred_path), pred_path, data,
                                         missing_hint=" (an image without detections needs a line with \"boxes\": [])")
    # Labels predicted but absent from the labelled data are classes without ground truth: their
    # detections are false positives, reported per label, outside the averages.
    predicted = {d.get("label") for _, row in found.values() if isinstance(row.get("boxes"), list)
                 for d in row["boxes"] if isinstance(d, dict) and isinstance(d.get("label"), str)}
    classes += sorted(predicted - set(classes))
    index = {c: i for i, c in enumerate(classes)}
    segmentation = task is ImageTask.IMAGE_INSTANCE_SEGMENTATION
    gts, preds = [], []
    for k in sorted(found):
        number, row = found[k]
        try:
            preds.append(parse_scoring_line(row, index, records[k].width, records[k].height, segmentation,
                                            f"{pred_path}:{number}"))
        except DataError as e:
            problems += e.problems
        gts.append(ground_truth_of(records[k], index, masks=segmentation))
    if problems:
        raise DataError(problems)
    return detection_metrics(gts, preds, classes, task, metric_type, iou_threshold)
