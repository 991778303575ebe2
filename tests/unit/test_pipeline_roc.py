"""The ROC points of the evaluate step's ClassificationMetrics artifact (micro-averaged one-vs-rest,
thinned for the Pipelines UI), and the deploy step's storage URI. The evaluate step itself logs them
in tests/integration/test_pipeline_steps.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from automl_vision.pipeline.steps import ROC_POINTS, roc_curve_points, storage_uri


def _scores(n: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    logits = rng.normal(0, 1, (n, classes))
    logits[np.arange(n), y] += 1.5  # better than chance, far from perfect: a long curve
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return np.eye(classes)[y], probs


def _auc(fpr, tpr) -> float:
    return float(np.sum(np.diff(fpr) * (np.asarray(tpr[1:]) + np.asarray(tpr[:-1])) / 2))


def test_a_long_curve_is_thinned_keeping_its_shape():
    targets, probs = _scores(3000, 5)
    fpr, tpr, thr = roc_curve_points(targets, probs)
    assert len(fpr) == len(tpr) == len(thr) <= ROC_POINTS
    assert len(fpr) >= ROC_POINTS * 0.8  # thinned, not collapsed
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert all(a <= b for a, b in zip(fpr, fpr[1:])) and all(a <= b for a, b in zip(tpr, tpr[1:]))
    assert all(a >= b for a, b in zip(thr, thr[1:])) and thr[0] == 1.0  # infinity is not JSON
    json.dumps({"thresholds": thr}, allow_nan=False)
    micro = roc_auc_score(targets.ravel(), probs.ravel())
    assert abs(_auc(fpr, tpr) - micro) < 0.002, (_auc(fpr, tpr), micro)


def test_a_short_curve_is_kept_whole_and_multilabel_works_the_same():
    targets = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=np.float32)
    probs = np.array([[0.9, 0.2, 0.6], [0.3, 0.8, 0.1], [0.7, 0.4, 0.2], [0.1, 0.3, 0.95]])
    fpr, tpr, thr = roc_curve_points(targets, probs)
    assert len(fpr) < 12 and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert abs(_auc(fpr, tpr) - roc_auc_score(targets.ravel(), probs.ravel())) < 1e-9


@pytest.mark.parametrize("targets", [np.zeros((3, 2)), np.ones((3, 2)), np.zeros((0, 2))])
def test_no_curve_without_both_kinds_of_pair(targets):
    assert roc_curve_points(targets, np.full(targets.shape, 0.5)) is None


@pytest.mark.parametrize("uri, expected", [
    ("minio://mlpipeline/v2/artifacts/automl-vision/run-1/package/model",
     "s3://mlpipeline/v2/artifacts/automl-vision/run-1/package/model"),
    ("s3://bucket/model", "s3://bucket/model"),
    ("gs://bucket/model", "gs://bucket/model"),
    ("/tmp/local/model", "/tmp/local/model"),
])
def test_storage_uri(uri, expected):
    assert storage_uri(uri) == expected
