"""Classification metrics against small hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from automl_vision.evaluation.classification import multiclass_metrics, multilabel_metrics

AVG_KEYS = [f"{m}_{a}" for m in ("precision_score", "recall_score", "f1_score") for a in ("micro", "macro", "weighted")]
RANK_KEYS = [f"{m}_{a}" for m in ("AUC", "average_precision_score") for a in ("micro", "macro", "weighted")]


def _probs(preds, num_classes, hi=0.8):
    lo = (1 - hi) / (num_classes - 1)
    p = np.full((len(preds), num_classes), lo)
    p[np.arange(len(preds)), preds] = hi
    return p


# --- multi-class ----------------------------------------------------------------------------------

TARGETS = np.array([0, 0, 1, 1, 2, 2])
PREDS = np.array([0, 1, 1, 1, 2, 0])


def test_multiclass_by_hand():
    m = multiclass_metrics(_probs(PREDS, 3), TARGETS, 3)
    assert m["accuracy"] == pytest.approx(4 / 6)
    # precision per class: 1/2, 2/3, 1/1; recall per class: 1/2, 2/2, 1/2
    assert m["precision_score_macro"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    assert m["recall_score_macro"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
    f1 = [2 * p * r / (p + r) for p, r in ((1 / 2, 1 / 2), (2 / 3, 1), (1, 1 / 2))]
    assert m["f1_score_macro"] == pytest.approx(sum(f1) / 3)
    assert m["precision_score_micro"] == pytest.approx(4 / 6)
    assert m["recall_score_micro"] == pytest.approx(4 / 6)
    # every class has two samples here, so weighted == macro
    assert m["precision_score_weighted"] == pytest.approx(m["precision_score_macro"])
    assert m["balanced_accuracy"] == pytest.approx(2 / 3)
    # log loss: 4 right at p=0.8, 2 wrong with p(target)=0.1
    assert m["log_loss"] == pytest.approx((4 * -math.log(0.8) + 2 * -math.log(0.1)) / 6)


def test_multiclass_keys_present_and_finite():
    m = multiclass_metrics(_probs(PREDS, 3), TARGETS, 3)
    expected = {"accuracy", "balanced_accuracy", "matthews_correlation", "log_loss", *AVG_KEYS, *RANK_KEYS}
    assert set(m) == expected
    assert all(isinstance(v, float) and math.isfinite(v) for v in m.values())


def test_multiclass_perfect():
    targets = np.array([0, 1, 2, 1])
    m = multiclass_metrics(_probs(targets, 3, hi=0.98), targets, 3)
    for key in ("accuracy", "balanced_accuracy", "matthews_correlation", "precision_score_macro",
                "recall_score_macro", "f1_score_macro", "AUC_macro", "AUC_micro", "average_precision_score_macro"):
        assert m[key] == pytest.approx(1.0), key


def test_multiclass_class_absent_from_targets():
    # 4 classes, class 3 never true and never predicted
    m = multiclass_metrics(_probs(PREDS, 4), TARGETS, 4)
    assert m["accuracy"] == pytest.approx(4 / 6)
    # the absent class counts as 0 in the macro average (zero_division=0)
    assert m["precision_score_macro"] == pytest.approx((1 / 2 + 2 / 3 + 1 + 0) / 4)
    assert all(math.isfinite(v) for v in m.values())
    assert "AUC_macro" in m  # computed over the classes present


def test_multiclass_single_class_present_has_no_auc():
    targets = np.array([1, 1, 1])
    m = multiclass_metrics(_probs(np.array([1, 0, 1]), 3), targets, 3)
    assert m["accuracy"] == pytest.approx(2 / 3)
    assert not any(k.startswith(("AUC", "average_precision")) for k in m)


# --- multi-label ----------------------------------------------------------------------------------

ML_TARGETS = np.array([
    [1, 0, 0],
    [1, 1, 0],
    [0, 0, 0],
    [0, 1, 1],
])
ML_PROBS = np.array([
    [0.9, 0.1, 0.2],  # -> [1,0,0] exact
    [0.8, 0.3, 0.1],  # -> [1,0,0] inter 1 / union 2
    [0.1, 0.2, 0.3],  # -> [0,0,0] empty vs empty: 1
    [0.6, 0.7, 0.4],  # -> [1,1,0] inter 1 / union 3
])


def test_multilabel_by_hand():
    m = multilabel_metrics(ML_PROBS, ML_TARGETS)
    assert m["iou"] == pytest.approx((1 + 1 / 2 + 1 + 1 / 3) / 4)
    assert m["accuracy"] == pytest.approx(2 / 4)  # exact match
    # per class: P = 2/3, 1, 0 (never predicted); R = 1, 1/2, 0
    assert m["precision_score_macro"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert m["recall_score_macro"] == pytest.approx((1 + 1 / 2 + 0) / 3)
    # micro: TP 3, FP 1, FN 2
    assert m["precision_score_micro"] == pytest.approx(3 / 4)
    assert m["recall_score_micro"] == pytest.approx(3 / 5)
    expected_ll = -np.mean(ML_TARGETS * np.log(ML_PROBS) + (1 - ML_TARGETS) * np.log(1 - ML_PROBS))
    assert m["log_loss"] == pytest.approx(expected_ll)


def test_multilabel_threshold():
    m = multilabel_metrics(ML_PROBS, ML_TARGETS, threshold=0.25)
    # preds: [1,0,0] [1,1,0] [0,0,1] [1,1,1] -> iou 1, 1, 0 (0/1), 2/3
    assert m["iou"] == pytest.approx((1 + 1 + 0 + 2 / 3) / 4)
    assert m["accuracy"] == pytest.approx(2 / 4)


def test_multilabel_empty_empty_scores_one():
    targets = np.zeros((3, 2), dtype=int)
    m = multilabel_metrics(np.full((3, 2), 0.1), targets)
    assert m["iou"] == 1.0
    assert m["accuracy"] == 1.0


def test_multilabel_keys_present_and_finite():
    m = multilabel_metrics(ML_PROBS, ML_TARGETS)
    assert set(m) == {"iou", "accuracy", "log_loss", *AVG_KEYS, *RANK_KEYS}
    assert all(isinstance(v, float) and math.isfinite(v) for v in m.values())


def test_multilabel_class_absent_from_targets():
    targets = ML_TARGETS.copy()
    targets[:, 2] = 0  # class 2 never true
    m = multilabel_metrics(ML_PROBS, targets)
    assert all(math.isfinite(v) for v in m.values())
    assert "AUC_macro" in m


def test_multilabel_no_class_varies_has_no_auc():
    targets = np.array([[1, 0], [1, 0]])
    m = multilabel_metrics(np.array([[0.9, 0.2], [0.4, 0.1]]), targets)
    assert not any(k.startswith(("AUC", "average_precision")) for k in m)
    assert m["iou"] == pytest.approx((1 + 0) / 2)
