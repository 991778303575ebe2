"""Metric computation speed on the same predictions (10,000 boxes by default).

Prints, measured side by side in one run (best of --repeat):
  * our VOC metric (evaluation/voc.py) vs pycocotools' COCOeval run directly (evaluate, accumulate,
    summarize), and
  * our COCO wrapper (evaluation/coco.py: conversion plus the same pycocotools calls) vs pycocotools
    directly, i.e. the wrapper's overhead.

    python benchmarks/det_metrics.py [--boxes 10000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time

import numpy as np


def make_case(n_boxes: int, per_image: int = 20, n_classes: int = 5, seed: int = 0):
    from automl_vision.models.detections import ImageGroundTruth, ImagePredictions

    rng = np.random.default_rng(seed)
    n_images = n_boxes // per_image
    w, h = 640, 480
    gts, preds = [], []
    for _ in range(n_images):
        n = int(rng.integers(5, 15))
        xy = rng.uniform(0, [560, 400], (n, 2))
        wh = rng.uniform(8, 80, (n, 2))
        boxes = np.concatenate([xy, np.minimum(xy + wh, [w, h])], 1)
        labels = rng.integers(0, n_classes, n)
        gts.append(ImageGroundTruth(w, h, boxes, labels, rng.random(n) < 0.05))
        k = per_image
        src = rng.integers(0, n, k)
        pb = boxes[src] + rng.normal(0, 6, (k, 4))
        pb[:, 2:] = np.maximum(pb[:, 2:], pb[:, :2] + 2)
        pl = np.where(rng.random(k) < 0.85, labels[src], rng.integers(0, n_classes, k))
        preds.append(ImagePredictions(np.clip(pb, 0, [w, h, w, h]), pl, rng.random(k)))
    return gts, preds, [f"c{i}" for i in range(n_classes)]


def direct_pycocotools(dataset, results):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = dataset
        gt.createIndex()
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


def best_of(fn, repeat):
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--boxes", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    from automl_vision.evaluation.coco import coco_evaluate, to_coco
    from automl_vision.evaluation.voc import voc_evaluate

    gts, preds, classes = make_case(args.boxes)
    n_pred = sum(len(p.labels) for p in preds)
    n_gt = sum(len(g.labels) for g in gts)
    dataset, results = to_coco(gts, preds, classes, "bbox")

    t_voc, voc = best_of(lambda: voc_evaluate(gts, preds, classes, 0.5), args.repeat)
    t_direct, stats = best_of(lambda: direct_pycocotools(dataset, results), args.repeat)
    t_ours_coco, ours = best_of(lambda: coco_evaluate(gts, preds, classes, "bbox"), args.repeat)
    t_convert, _ = best_of(lambda: to_coco(gts, preds, classes, "bbox"), args.repeat)
    assert np.allclose(list(ours.values()), stats)

    print(f"{len(gts)} images, {n_gt} objects, {n_pred} predicted boxes, {len(classes)} classes")
    print(f"our VOC metric (mAP@0.5 {voc.mean_average_precision:.4f}):   {t_voc * 1000:8.1f} ms")
    print(f"pycocotools directly (AP {stats[0]:.4f}):          {t_direct * 1000:8.1f} ms")
    print(f"our COCO wrapper (same 12 figures):           {t_ours_coco * 1000:8.1f} ms"
          f"   (of which conversion to COCO dicts {t_convert * 1000:.1f} ms)")
    print(f"ratio VOC / pycocotools:            {t_voc / t_direct:.3f}")
    print(f"ratio COCO wrapper / pycocotools:   {t_ours_coco / t_direct:.3f}")


if __name__ == "__main__":
    main()
