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


def confusion(probs: np.ndarray, targets: np.ndarray, num_classes: int, multilabel: bool,
              threshold: float = 0.5) -> list:
    """Multi-class: the confusion matrix, rows the true class and columns the predicted one.
    Multi-label: one ``[[tn, fp], [fn, tp]]`` matrix per class at ``threshold``."""
    if multilabel:
        preds = (probs >= threshold).astype(int)
        return skm.multilabel_confusion_matrix(targets.astype(int), preds, labels=list(range(num_classes))).tolist()
    return skm.confusion_matrix(targets, probs.argmax(1), labels=list(range(num_classes))).tolist()


def per_class_report(probs: np.ndarray, targets: np.ndarray, classes: list[str], multilabel: bool,
                     threshold: float = 0.5) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support of each class (scikit-learn's classification report)."""
    if multilabel:
        preds, truth = (probs >= threshold).astype(int), targets.astype(int)
    else:
        preds, truth = probs.argmax(1), targets
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = skm.classification_report(truth, preds, labels=list(range(len(classes))), target_names=classes,
                                           output_dict=True, zero_division=0)
    return {c: {k: float(v) for k, v in report[c].items()} for c in classes}
