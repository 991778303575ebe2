"""Classification metrics (spec section 8), computed with scikit-learn's formulas."""

from __future__ import annotations

import warnings

import numpy as np
from sklearn import metrics as skm


def multiclass_metrics(probs: np.ndarray, targets: np.ndarray, num_classes: int) -> dict[str, float]:
    """``probs``: (N, C) softmax outputs; ``targets``: (N,) class indices."""
    preds = probs.argmax(1)
    labels = np.arange(num_classes)
    out: dict[str, float] = {"accuracy": float(skm.accuracy_score(targets, preds))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # undefined precision for a class never predicted -> 0
        for avg in ("micro", "macro", "weighted"):
            p, r, f, _ = skm.precision_recall_fscore_support(targets, preds, labels=labels, average=avg, zero_division=0)
            out[f"precision_score_{avg}"] = float(p)
            out[f"recall_score_{avg}"] = float(r)
            out[f"f1_score_{avg}"] = float(f)
        out["balanced_accuracy"] = float(skm.balanced_accuracy_score(targets, preds))
        out["matthews_correlation"] = float(skm.matthews_corrcoef(targets, preds))
        out["log_loss"] = float(skm.log_loss(targets, np.clip(probs, 1e-15, 1), labels=labels))
        onehot = np.eye(num_classes)[targets]
        present = onehot.sum(0) > 0
        if present.sum() >= 2:
            for avg in ("macro", "weighted"):
                out[f"AUC_{avg}"] = float(skm.roc_auc_score(onehot[:, present], probs[:, present], average=avg))
                out[f"average_precision_score_{avg}"] = float(
                    skm.average_precision_score(onehot[:, present], probs[:, present], average=avg))
            out["AUC_micro"] = float(skm.roc_auc_score(onehot[:, present], probs[:, present], average="micro"))
            out["average_precision_score_micro"] = float(
                skm.average_precision_score(onehot[:, present], probs[:, present], average="micro"))
    return out


def multilabel_metrics(probs: np.ndarray, targets: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """``probs``: (N, C) sigmoid outputs; ``targets``: (N, C) 0/1. ``iou`` is the per-image Jaccard
    index at the threshold, averaged (an image with no true and no predicted label scores 1)."""
    preds = (probs >= threshold).astype(int)
    targets = targets.astype(int)
    out: dict[str, float] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        inter = (preds & targets).sum(1)
        union = (preds | targets).sum(1)
        out["iou"] = float(np.where(union == 0, 1.0, inter / np.maximum(union, 1)).mean())
        out["accuracy"] = float(skm.accuracy_score(targets, preds))  # exact match
        for avg in ("micro", "macro", "weighted"):
            p, r, f, _ = skm.precision_recall_fscore_support(targets, preds, average=avg, zero_division=0)
            out[f"precision_score_{avg}"] = float(p)
            out[f"recall_score_{avg}"] = float(r)
            out[f"f1_score_{avg}"] = float(f)
        present = (targets.sum(0) > 0) & (targets.sum(0) < len(targets))
        if present.any():
            for avg in ("micro", "macro", "weighted"):
                out[f"AUC_{avg}"] = float(skm.roc_auc_score(targets[:, present], probs[:, present], average=avg))
                out[f"average_precision_score_{avg}"] = float(
                    skm.average_precision_score(targets[:, present], probs[:, present], average=avg))
        out["log_loss"] = float(skm.log_loss(targets.ravel(), np.clip(probs.ravel(), 1e-15, 1 - 1e-15), labels=[0, 1]))
    return out
