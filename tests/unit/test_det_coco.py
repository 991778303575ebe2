"""COCO figures equal pycocotools run directly on the same data (built here independently)."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from automl_vision.evaluation.coco import STAT_NAMES, coco_evaluate
from automl_vision.models.detections import ImageGroundTruth, ImagePredictions
from automl_vision.models.masks import polygon_to_rle


def _random_case(seed: int, n_images: int = 6, n_classes: int = 3, segm: bool = False):
    """Ground truth with crowd objects and a missing class, noisy predictions with duplicates."""
    rng = np.random.default_rng(seed)
    w, h = 120, 90
    gts, preds, coco_gt, coco_dt = [], [], [], []
    for i in range(n_images):
        n = int(rng.integers(0, 5))
        xy = rng.uniform(0, 70, (n, 2))
        wh = rng.uniform(4, 45, (n, 2))
        boxes = np.concatenate([xy, np.minimum(xy + wh, [w, h])], 1)
        labels = rng.integers(0, n_classes - 1, n)  # the last class never has ground truth
        crowd = rng.random(n) < 0.2
        polys = [[[b[0], b[1], b[2], b[1], (b[0] + b[2]) / 2, b[3]]] for b in boxes]  # triangles, pixels
        masks = [polygon_to_rle([[v / (w if k % 2 == 0 else h) for k, v in enumerate(p[0])]], w, h) for p in polys]
        gts.append(ImageGroundTruth(w, h, boxes, labels, crowd, masks if segm else None))
        for k in range(n):
            x1, y1, x2, y2 = boxes[k]
            ann = {"image_id": i + 1, "category_id": int(labels[k]) + 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                   "iscrowd": int(crowd[k]), "area": float((x2 - x1) * (y2 - y1))}
            if segm:
                ann["segmentation"] = [list(np.asarray(polys[k][0]) / [w, h, w, h, w, h] * [w, h, w, h, w, h])]
                ann["area"] = None  # filled below from the mask
            coco_gt.append(ann)
        m = int(rng.integers(0, 7))
        pb = np.concatenate([boxes, boxes[:1]]) if n else np.zeros((0, 4))  # a duplicate of the first
        pb = pb[:m] + rng.normal(0, 3, pb[:m].shape) if len(pb) else pb
        extra = rng.uniform(0, 60, (2, 2))
        pb = np.concatenate([pb, np.concatenate([extra, extra + 20], 1)]) if len(pb) else np.concatenate([extra, extra + 20], 1)
        pb = np.clip(pb, 0, [w, h, w, h])
        pb[:, 2:] = np.maximum(pb[:, 2:], pb[:, :2] + 1)
        pl = rng.integers(0, n_classes, len(pb))
        ps = np.round(rng.random(len(pb)), 2)  # rounded: ties happen
        pm = []
        for b in pb:  # the triangle of the predicted box
            tri = [b[0] / w, b[1] / h, b[2] / w, b[1] / h, (b[0] + b[2]) / 2 / w, b[3] / h]
            pm.append(polygon_to_rle([tri], w, h))
        preds.append(ImagePredictions(pb, pl, ps, pm if segm else None))
        for k in range(len(pb)):
            x1, y1, x2, y2 = pb[k]
            det = {"image_id": i + 1, "category_id": int(pl[k]) + 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                   "score": float(ps[k])}
            if segm:
                det["segmentation"] = {"size": pm[k]["size"], "counts": pm[k]["counts"].encode()}
            coco_dt.append(det)
    return gts, preds, coco_gt, coco_dt, (w, h)


def _direct(coco_gt, coco_dt, n_images, size, n_classes, iou_type):
    from pycocotools import mask as mask_utils

    w, h = size
    anns = []
    for k, a in enumerate(coco_gt, start=1):
        a = dict(a, id=k)
        if iou_type == "segm":
            a["area"] = float(mask_utils.area(mask_utils.merge(mask_utils.frPyObjects(a["segmentation"], h, w))))
        anns.append(a)
    dataset = {"images": [{"id": i + 1, "width": w, "height": h} for i in range(n_images)],
               "annotations": anns, "categories": [{"id": c + 1, "name": f"c{c}"} for c in range(n_classes)]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = dataset
        gt.createIndex()
        dt = gt.loadRes(coco_dt)
        ev = COCOeval(gt, dt, iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_pycocotools_directly(seed, iou_type):
    n_classes = 3
    gts, preds, coco_gt, coco_dt, size = _random_case(seed, segm=iou_type == "segm")
    ours = coco_evaluate(gts, preds, [f"c{c}" for c in range(n_classes)], iou_type)
    direct = _direct(coco_gt, coco_dt, len(gts), size, n_classes, iou_type)
    assert list(ours) == list(STAT_NAMES)
    np.testing.assert_allclose([ours[k] for k in STAT_NAMES], direct, rtol=0, atol=1e-12)
    assert any(v > 0 for v in ours.values())  # a case with something to measure


def test_perfect_predictions_score_one(capsys):
    boxes = np.array([[10, 10, 50, 40], [60, 20, 90, 80]], float)
    gts = [ImageGroundTruth(100, 100, boxes, [0, 1])]
    preds = [ImagePredictions(boxes, [0, 1], [0.9, 0.8])]
    stats = coco_evaluate(gts, preds, ["a", "b"])
    assert stats["map"] == pytest.approx(1.0) and stats["map_50"] == pytest.approx(1.0)
    assert stats["map_small"] == -1.0  # no small objects: nothing to measure
    assert capsys.readouterr().out == ""  # pycocotools' printing is captured (Katib reads "IoU=0.50")


def test_no_predictions_scores_zero():
    gts = [ImageGroundTruth(100, 100, [[10, 10, 50, 40]], [0])]
    stats = coco_evaluate(gts, [ImagePredictions.empty()], ["a"])
    assert stats["map"] == 0.0 and stats["mar_100"] == 0.0


def test_unknown_iou_type():
    with pytest.raises(ValueError, match="iou_type='keypoints'; expected 'bbox' or 'segm'"):
        coco_evaluate([], [], [], "keypoints")
