"""The VOC metric of spec section 8, exactly as documented in docs/detection.md.

Per class: every prediction of the class, over all images, is taken in order of decreasing score
(ties: image order, then the order of the image's predictions) and matched to the not yet
matched, non-crowd ground-truth object of its image with the highest IoU, if that IoU is at least
the threshold (a true positive). Otherwise, if its IoU with a crowd object of the class is at
least the threshold, it is ignored (neither true nor false positive); else it is a false positive.
Crowd objects are never counted as objects to find. IoU is the plain intersection over union
(boxes, or masks for segmentation), for crowd objects too.

The precision/recall curve has one point per distinct score (predictions with equal scores enter
together, so the result does not depend on their order). Precision is made monotone (each point
takes the highest precision at its recall or beyond) and AP is the area under that step curve
(all-point interpolation). A class's precision and recall are those of all its predictions.
mean_average_precision, precision and recall average the classes that have ground truth; a class
without ground truth gets no AP or recall and is left out of the averages.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from automl_vision.models.detections import ImageGroundTruth, ImagePredictions, box_iou
from automl_vision.models.masks import mask_iou


@dataclass
class LabelResult:
    average_precision: float | None
    precision: float | None
    recall: float | None
    ground_truth: int  # non-crowd objects
    predictions: int  # not counting ignored ones
    true_positives: int
    false_positives: int
    ignored: int

    def to_json(self) -> dict:
        return dict(self.__dict__)


@dataclass
class VocResult:
    mean_average_precision: float
    precision: float
    recall: float
    per_label: dict[str, LabelResult]

    def metrics(self, prefix: str = "") -> dict[str, float]:
        """The averages, ready for the reporter (per-label values go to a JSON file instead)."""
        return {f"{prefix}mean_average_precision": self.mean_average_precision,
                f"{prefix}precision": self.precision, f"{prefix}recall": self.recall}

    def per_label_json(self) -> dict[str, dict]:
        return {name: r.to_json() for name, r in self.per_label.items()}


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the all-point interpolated PR curve; ``recall`` must be non-decreasing."""
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # max to the right
    steps = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def match_image(ious: np.ndarray, crowd: np.ndarray, threshold: float) -> np.ndarray:
    """Outcome of each prediction (rows, already in score order): 1 TP, 0 FP, -1 ignored."""
    n_pred = ious.shape[0]
    out = np.zeros(n_pred, dtype=np.int8)
    if ious.shape[1] == 0:
        return out
    free = ~crowd.copy()
    for i in range(n_pred):
        row = ious[i]
        candidates = np.where(free & (row >= threshold), row, -1.0)
        j = int(np.argmax(candidates))
        if candidates[j] >= 0:
            out[i] = 1
            free[j] = False
        elif crowd.any() and (row[crowd] >= threshold).any():
            out[i] = -1
    return out


def voc_evaluate(ground_truth: Sequence[ImageGroundTruth], predictions: Sequence[ImagePredictions],
                 classes: Sequence[str], iou_threshold: float = 0.5, use_masks: bool = False) -> VocResult:
    """The VOC metric over images ``ground_truth[i]`` / ``predictions[i]``; labels index ``classes``."""
    if len(ground_truth) != len(predictions):
        raise ValueError(f"{len(ground_truth)} images of ground truth but {len(predictions)} of predictions")
    n_cls = len(classes)
    scores: list[list[np.ndarray]] = [[] for _ in range(n_cls)]
    outcomes: list[list[np.ndarray]] = [[] for _ in range(n_cls)]
    n_gt = np.zeros(n_cls, dtype=np.int64)
    for gt, pred in zip(ground_truth, predictions):
        if use_masks and (gt.masks is None or pred.masks is None):
            raise ValueError("mask evaluation needs masks in both ground truth and predictions")
        for c in np.unique(np.concatenate([gt.labels, pred.labels])):
            c = int(c)
            if not 0 <= c < n_cls:
                raise ValueError(f"label index {c} outside the {n_cls} classes")
            g = np.nonzero(gt.labels == c)[0]
            n_gt[c] += int((~gt.crowd[g]).sum())
            p = np.nonzero(pred.labels == c)[0]
            if len(p) == 0:
                continue
            order = p[np.argsort(-pred.scores[p], kind="stable")]
            if use_masks:
                ious = mask_iou([pred.masks[i] for i in order], [gt.masks[j] for j in g])
            else:
                ious = box_iou(pred.boxes[order], gt.boxes[g])
            scores[c].append(pred.scores[order])
            outcomes[c].append(match_image(ious, gt.crowd[g], iou_threshold))

    per_label: dict[str, LabelResult] = {}
    aps, precisions, recalls = [], [], []
    for c, name in enumerate(classes):
        s = np.concatenate(scores[c]) if scores[c] else np.zeros(0)
        o = np.concatenate(outcomes[c]) if outcomes[c] else np.zeros(0, dtype=np.int8)
        ignored = int((o == -1).sum())
        keep = o >= 0
        s, o = s[keep], o[keep]
        # Stable sort keeps image order, then in-image score order, among equal scores.
        order = np.argsort(-s, kind="stable")
        s, tp = s[order], o[order].astype(np.float64)
        ctp = np.cumsum(tp)
        cfp = np.cumsum(1.0 - tp)
        n_tp, n_fp = int(ctp[-1]) if len(ctp) else 0, int(cfp[-1]) if len(cfp) else 0
        precision = n_tp / (n_tp + n_fp) if n_tp + n_fp else 0.0
        if n_gt[c] == 0:
            per_label[name] = LabelResult(None, precision if n_fp else None, None, 0, len(s), n_tp, n_fp, ignored)
            continue
        last_of_tie = np.nonzero(np.append(s[1:] != s[:-1], True))[0] if len(s) else np.zeros(0, dtype=np.int64)
        rec = ctp[last_of_tie] / n_gt[c]
        prec = ctp[last_of_tie] / (ctp[last_of_tie] + cfp[last_of_tie])
        ap = average_precision(rec, prec)
        recall = n_tp / n_gt[c]
        per_label[name] = LabelResult(ap, precision, recall, int(n_gt[c]), len(s), n_tp, n_fp, ignored)
        aps.append(ap)
        precisions.append(precision)
        recalls.append(recall)

    def mean(xs: list[float]) -> float:
        return float(np.mean(xs)) if xs else math.nan

    return VocResult(mean(aps), mean(precisions), mean(recalls), per_label)
