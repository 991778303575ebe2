"""The VOC metric against figures computed by hand (docs/detection.md states the rules)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from automl_vision.models.detections import ImageGroundTruth, ImagePredictions, box_iou
from automl_vision.models.masks import encode_mask
from automl_vision.evaluation.voc import average_precision, voc_evaluate

A = [0, 0, 10, 10]
B = [20, 20, 30, 30]


def gt(boxes, labels, crowd=None, w=100, h=100, masks=None):
    return ImageGroundTruth(w, h, boxes, labels, crowd, masks)


def pred(boxes, labels, scores, masks=None):
    return ImagePredictions(boxes, labels, scores, masks)


def test_box_iou():
    assert box_iou([A], [A])[0, 0] == 1.0
    assert box_iou([A], [B])[0, 0] == 0.0
    assert box_iou([[0, 0, 10, 20]], [A])[0, 0] == pytest.approx(0.5)
    assert box_iou([[5, 0, 15, 10]], [A])[0, 0] == pytest.approx(50 / 150)
    assert box_iou(np.zeros((0, 4)), [A]).shape == (0, 1)


def test_average_precision_all_point_interpolation():
    # points (recall, precision): (.5, 1), (.5, .5), (1, 2/3): precision made monotone from the right
    assert average_precision(np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3])) == pytest.approx(0.5 + 0.5 * 2 / 3)
    # a dip in the middle is lifted to the best precision further right
    assert average_precision(np.array([0.25, 0.5, 0.75]), np.array([1.0, 0.4, 0.6])) == pytest.approx(
        0.25 * 1.0 + 0.25 * 0.6 + 0.25 * 0.6)


def test_duplicate_detection_is_a_false_positive():
    r = voc_evaluate([gt([A, B], [0, 0])],
                     [pred([A, [0, 0, 10, 9], B], [0, 0, 0], [0.9, 0.8, 0.7])], ["cell"])
    # TP, FP, TP: recall .5 .5 1, precision 1 .5 2/3 -> AP = .5 * 1 + .5 * 2/3
    assert r.mean_average_precision == pytest.approx(0.5 + 0.5 * 2 / 3)
    label = r.per_label["cell"]
    assert (label.true_positives, label.false_positives, label.ground_truth) == (2, 1, 2)
    assert label.precision == pytest.approx(2 / 3)
    assert label.recall == 1.0
    assert r.precision == pytest.approx(2 / 3) and r.recall == 1.0


def test_crowd_matches_are_ignored_and_crowd_is_not_counted():
    crowd = [50, 50, 100, 100]
    r = voc_evaluate([gt([A, crowd], [0, 0], [False, True])],
                     [pred([crowd, A, [52, 50, 100, 100]], [0, 0, 0], [0.9, 0.8, 0.6])], ["cell"])
    label = r.per_label["cell"]
    assert label.ground_truth == 1  # the crowd box is not an object to find
    assert label.ignored == 2  # both predictions on the crowd region, even the second one
    assert (label.true_positives, label.false_positives) == (1, 0)
    assert r.mean_average_precision == 1.0


def test_non_crowd_object_is_preferred_over_crowd():
    crowd = [0, 0, 10, 12]
    r = voc_evaluate([gt([A, crowd], [0, 0], [False, True])], [pred([A], [0], [0.9])], ["cell"])
    assert r.per_label["cell"].true_positives == 1 and r.per_label["cell"].ignored == 0


def test_matches_the_unmatched_object_with_highest_iou():
    # p2's best overlap is the object p1 took; it still matches the other object (IoU .87 >= .5)
    b_tall = [0, 0, 10, 12]
    r = voc_evaluate([gt([A, b_tall], [0, 0])],
                     [pred([b_tall, [0, 0, 10, 11.5]], [0, 0], [0.9, 0.8])], ["cell"])
    assert r.per_label["cell"].true_positives == 2
    assert r.mean_average_precision == 1.0


def test_iou_threshold_is_inclusive_and_configurable():
    half = [0, 0, 10, 20]  # IoU with A is exactly 0.5
    assert voc_evaluate([gt([A], [0])], [pred([half], [0], [0.9])], ["c"], 0.5).mean_average_precision == 1.0
    assert voc_evaluate([gt([A], [0])], [pred([half], [0], [0.9])], ["c"], 0.6).mean_average_precision == 0.0


def test_class_without_ground_truth_is_left_out_of_the_mean():
    r = voc_evaluate([gt([A], [0])], [pred([A, B], [0, 1], [0.9, 0.8])], ["a", "b"])
    assert r.mean_average_precision == 1.0 and r.precision == 1.0 and r.recall == 1.0
    b = r.per_label["b"]
    assert b.average_precision is None and b.recall is None
    assert b.precision == 0.0 and b.false_positives == 1 and b.ground_truth == 0


def test_class_with_ground_truth_and_no_prediction_scores_zero():
    r = voc_evaluate([gt([A, B], [0, 1])], [pred([A], [0], [0.9])], ["a", "b"])
    assert r.per_label["b"].average_precision == 0.0
    assert r.per_label["b"].precision == 0.0 and r.per_label["b"].recall == 0.0
    assert r.mean_average_precision == pytest.approx(0.5)
    assert r.recall == pytest.approx(0.5)


@pytest.mark.parametrize("first", ["fp", "tp"])
def test_equal_scores_enter_the_curve_together(first):
    # image 0 holds a false positive and image 1 a true positive, same score, 2 objects in all:
    # one point (recall 1/2, precision 1/2) whatever their order -> AP 0.25
    fp_image = (gt([B], [0]), pred([[60, 60, 70, 70]], [0], [0.5]))
    tp_image = (gt([A], [0]), pred([A], [0], [0.5]))
    images = [fp_image, tp_image] if first == "fp" else [tp_image, fp_image]
    r = voc_evaluate([g for g, _ in images], [p for _, p in images], ["c"])
    assert r.mean_average_precision == pytest.approx(0.25)


def test_ties_in_one_image_are_matched_in_given_order():
    # two equal-score predictions on one object: the first listed takes it
    r = voc_evaluate([gt([A], [0])], [pred([A, [0, 0, 10, 9]], [0, 0], [0.5, 0.5])], ["c"])
    assert r.per_label["c"].true_positives == 1 and r.per_label["c"].false_positives == 1
    assert r.mean_average_precision == pytest.approx(0.5)  # one point: recall 1, precision 1/2


def test_predictions_across_images_are_ranked_together():
    images = [gt([A], [0]), gt([A], [0])]
    preds = [pred([[60, 60, 70, 70]], [0], [0.9]), pred([A], [0], [0.8])]
    r = voc_evaluate(images, preds, ["c"])
    # FP (.9) then TP (.8): recall 0 then .5 with precision .5 -> AP .25
    assert r.mean_average_precision == pytest.approx(0.25)


def test_no_predictions_at_all():
    r = voc_evaluate([gt([A], [0])], [ImagePredictions.empty()], ["c"])
    assert r.mean_average_precision == 0.0 and r.precision == 0.0 and r.recall == 0.0


def test_no_ground_truth_anywhere_gives_nan():
    r = voc_evaluate([gt([], [])], [pred([A], [0], [0.9])], ["c"])
    assert math.isnan(r.mean_average_precision)


def test_masks_decide_for_segmentation():
    h = w = 20
    square = np.zeros((h, w), bool)
    square[2:12, 2:12] = True
    other = np.zeros((h, w), bool)
    other[2:12, 2:4] = True  # same box region, mask IoU 0.2
    g = gt([[2, 2, 12, 12]], [0], w=w, h=h, masks=[encode_mask(square)])
    p = pred([[2, 2, 12, 12]], [0], [0.9], masks=[encode_mask(other)])
    assert voc_evaluate([g], [p], ["c"], use_masks=False).mean_average_precision == 1.0
    assert voc_evaluate([g], [p], ["c"], use_masks=True).mean_average_precision == 0.0


@pytest.mark.parametrize("make, message", [
    (lambda: voc_evaluate([gt([A], [0])], [], ["c"]), "1 images of ground truth but 0 of predictions"),
    (lambda: voc_evaluate([gt([A], [3])], [ImagePredictions.empty()], ["c"]), "label index 3 outside the 1 classes"),
    (lambda: voc_evaluate([gt([A], [0])], [pred([A], [0], [1.0])], ["c"], use_masks=True),
     "mask evaluation needs masks"),
    (lambda: ImagePredictions([A], [0, 1], [0.5]), "must have the same length"),
])
def test_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()
