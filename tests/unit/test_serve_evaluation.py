"""Evaluating predictions files: classification metrics and pictures, matching errors, and detection
PR curves that agree with the VOC metric's AP."""

from __future__ import annotations

import json

import numpy as np
import pytest

from automl_vision.errors import DataError
from automl_vision.models.detections import ImageGroundTruth, ImagePredictions
from automl_vision.evaluation.scoring import pr_curves
from automl_vision.report.evaluation import evaluate_predictions
from automl_vision.evaluation.voc import average_precision, voc_evaluate
from automl_vision.spec.tasks import ImageTask

MC, ML = ImageTask.IMAGE_CLASSIFICATION, ImageTask.IMAGE_CLASSIFICATION_MULTILABEL


def write_predictions(path, data, probs_of, labels):
    rows = [json.loads(x) for x in data.read_text().splitlines()]
    path.write_text("".join(json.dumps({"image_url": r["image_url"], "probs": probs_of(r), "labels": labels}) + "\n"
                            for r in rows))
    return rows


def test_multiclass_predictions_file_gives_metrics_and_pictures(tmp_path, make_dataset):
    data = make_dataset(tmp_path / "d", n_per_class=3, classes=("red", "green"))
    pred = tmp_path / "p.jsonl"
    # Right for red, wrong for the first green image.
    rows = write_predictions(pred, data, lambda r: [0.2, 0.8] if r["label"] == "red" or r["image_url"].endswith(
        "green_000_0.png") else [0.7, 0.3], ["green", "red"])
    result = evaluate_predictions(MC, data, pred, tmp_path / "out")
    assert result.images == len(rows) == 6
    assert result.metrics["accuracy"] == pytest.approx(5 / 6)
    assert result.metrics["confusion_matrix"] == [[2, 1], [0, 3]]
    assert result.metrics["per_class"]["green"]["recall"] == pytest.approx(2 / 3)
    names = {p.name for p in result.files}
    assert {"metrics.json", "per_class.csv", "per_class.png", "confusion_matrix.png", "roc_pr_curves.png",
            "samples.png", "report.html"} <= names
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["accuracy"] == pytest.approx(5 / 6)
    assert (tmp_path / "out" / "per_class.csv").read_text().splitlines()[0] == "class,precision,recall,F1,support"


def test_multilabel_predictions_file(tmp_path, make_dataset):
    data = make_dataset(tmp_path / "d", n_per_class=2, classes=("red", "green"), multilabel=True)
    pred = tmp_path / "p.jsonl"
    write_predictions(pred, data, lambda r: [0.9 if "green" in r["label"] else 0.1,
                                            0.9 if "red" in r["label"] else 0.1], ["green", "red"])
    result = evaluate_predictions(ML, data, pred, tmp_path / "out")
    assert result.metrics["iou"] == 1.0
    assert np.asarray(result.metrics["confusion_matrix"]).shape == (2, 2, 2)
    assert (tmp_path / "out" / "confusion_matrix.png").stat().st_size > 0


@pytest.mark.parametrize("mutate, message", [
    (lambda rows: rows[:-1], "no predictions for 1 labelled image(s)"),
    (lambda rows: rows + [rows[0]], "repeats line 1"),
    (lambda rows: rows + [{**rows[0], "image_url": "images/other.png"}], "image_url='images/other.png' is not an image"),
    (lambda rows: rows[:-1] + [{**rows[-1], "labels": ["green", "blue"]}],
     "p.jsonl:4: labels ['green', 'blue'] differ from the first line's ['green', 'red']"),
    (lambda rows: [{**rows[0], "probs": [0.5]}] + rows[1:], "needs 'probs' and 'labels' lists of the same length"),
    (lambda rows: [{"image_url": rows[0]["image_url"], "error": "truncated"}] + rows[1:],
     "the image was not scored: truncated"),
])
def test_predictions_that_do_not_match_the_data(tmp_path, make_dataset, mutate, message):
    data = make_dataset(tmp_path / "d", n_per_class=2, classes=("red", "green"))
    rows = [{"image_url": json.loads(x)["image_url"], "probs": [0.5, 0.5], "labels": ["green", "red"]}
            for x in data.read_text().splitlines()]
    pred = tmp_path / "p.jsonl"
    pred.write_text("".join(json.dumps(r) + "\n" for r in mutate(rows)))
    with pytest.raises(DataError) as e:
        evaluate_predictions(MC, data, pred)
    assert message in str(e.value)


def test_pr_curves_have_the_voc_metrics_area():
    rng = np.random.default_rng(0)
    gts, preds = [], []
    for _ in range(6):
        n = int(rng.integers(1, 4))
        xy = rng.uniform(0, 60, (n, 2))
        boxes = np.hstack([xy, xy + rng.uniform(10, 30, (n, 2))])
        labels = rng.integers(0, 2, n)
        gts.append(ImageGroundTruth(100, 100, boxes, labels, rng.random(n) < 0.2))
        jitter = boxes + rng.normal(0, 4, boxes.shape)
        extra = rng.uniform(0, 80, (2, 2))
        pb = np.vstack([jitter, np.hstack([extra, extra + 15])])
        preds.append(ImagePredictions(pb, np.concatenate([labels, rng.integers(0, 2, 2)]),
                                      np.round(rng.random(n + 2), 1)))  # ties on purpose
    voc = voc_evaluate(gts, preds, ["a", "b"], 0.5)
    ap = {k: v.average_precision for k, v in voc.per_label.items()}
    curves = pr_curves(gts, preds, ["a", "b"], 0.5, False, ap)
    for name, c in curves.items():
        assert average_precision(c.recall, c.precision) == pytest.approx(ap[name])
