"""COCO metrics (spec section 8): the 12 standard statistics, computed by pycocotools itself.

Our images and objects are handed to pycocotools as COCO datasets (pixel ``x, y, w, h`` boxes,
RLE masks); nothing is re-implemented. pycocotools prints its progress and summary table, whose
``IoU=0.50`` fragments Katib would read as metrics, so its output is captured and logged instead.
A statistic is -1 where pycocotools has nothing to measure (no ground truth in that area range).
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from automl_vision.models.detections import ImageGroundTruth, ImagePredictions
from automl_vision.models.masks import rle_area

log = logging.getLogger(__name__)

#: Names of COCOeval.stats, in order (pycocotools' summarize()).
STAT_NAMES = (
    "map", "map_50", "map_75", "map_small", "map_medium", "map_large",
    "mar_1", "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large",
)


def _counts(rle: dict) -> dict:
    c = rle["counts"]
    return {"size": list(rle["size"]), "counts": c.encode("ascii") if isinstance(c, str) else c}


def to_coco(ground_truth: Sequence[ImageGroundTruth], predictions: Sequence[ImagePredictions],
            classes: Sequence[str], iou_type: str) -> tuple[dict, list[dict]]:
    """A COCO ground-truth dataset and result list (image ids from 1, category ids ``index + 1``)."""
    images, annotations, results = [], [], []
    ann_id = 0
    for i, (gt, pred) in enumerate(zip(ground_truth, predictions), start=1):
        images.append({"id": i, "width": int(gt.width), "height": int(gt.height)})
        for k in range(len(gt.labels)):
            x1, y1, x2, y2 = (float(v) for v in gt.boxes[k])
            ann_id += 1
            ann = {"id": ann_id, "image_id": i, "category_id": int(gt.labels[k]) + 1,
                   "bbox": [x1, y1, x2 - x1, y2 - y1], "iscrowd": int(gt.crowd[k])}
            if iou_type == "segm":
                ann["segmentation"] = _counts(gt.masks[k])
                ann["area"] = rle_area(gt.masks[k])
            else:
                ann["area"] = (x2 - x1) * (y2 - y1)
            annotations.append(ann)
        for k in range(len(pred.labels)):
            x1, y1, x2, y2 = (float(v) for v in pred.boxes[k])
            det = {"image_id": i, "category_id": int(pred.labels[k]) + 1,
                   "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(pred.scores[k])}
            if iou_type == "segm":
                det["segmentation"] = _counts(pred.masks[k])
            results.append(det)
    dataset = {"images": images, "annotations": annotations,
               "categories": [{"id": c + 1, "name": name} for c, name in enumerate(classes)]}
    return dataset, results


def coco_stats(dataset: dict, results: list[dict], iou_type: str) -> np.ndarray:
    """The 12 COCOeval statistics of ``results`` on ``dataset``; output of pycocotools is logged, not printed."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        gt = COCO()
        gt.dataset = dataset
        gt.createIndex()
        if results:
            dt = gt.loadRes(results)
        else:  # loadRes refuses an empty list; an empty result set scores 0 where there is ground truth
            dt = COCO()
            dt.dataset = {"images": dataset["images"], "annotations": [], "categories": dataset["categories"]}
            dt.createIndex()
        ev = COCOeval(gt, dt, iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    log.debug("pycocotools output:\n%s", buffer.getvalue())
    return np.asarray(ev.stats, dtype=np.float64)


def coco_evaluate(ground_truth: Sequence[ImageGroundTruth], predictions: Sequence[ImagePredictions],
                  classes: Sequence[str], iou_type: str = "bbox") -> dict[str, float]:
    """``{"map": ..., "map_50": ..., ...}``: the 12 statistics for boxes (``bbox``) or masks (``segm``)."""
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type={iou_type!r}; expected 'bbox' or 'segm'")
    if len(ground_truth) != len(predictions):
        raise ValueError(f"{len(ground_truth)} images of ground truth but {len(predictions)} of predictions")
    dataset, results = to_coco(ground_truth, predictions, classes, iou_type)
    stats = coco_stats(dataset, results, iou_type)
    return {name: float(v) for name, v in zip(STAT_NAMES, stats)}
