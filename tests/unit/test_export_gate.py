"""The export gate's comparison of two runtimes' answers, and which load-time settings a detector's ONNX
graph allows. (The gate itself runs on real exports in tests/integration/test_det_cli.py and
test_serve_cli.py.)"""

from __future__ import annotations

import pytest

from automl_vision.models.onnx_detectors import graph_settings_problem
from automl_vision.serving.export import compare_answers


def box(x1, y1, x2, y2, label="red", score=0.9, polygon=None):
    d = {"box": {"topX": x1, "topY": y1, "bottomX": x2, "bottomY": y2}, "label": label, "score": score}
    if polygon is not None:
        d["polygon"] = polygon
    return d


SQUARE = [[0.1, 0.1, 0.5, 0.1, 0.5, 0.5, 0.1, 0.5]]


def test_the_same_answers_agree_and_the_worst_differences_are_kept():
    a = {"boxes": [box(0.1, 0.1, 0.5, 0.5, polygon=SQUARE), box(0.6, 0.6, 0.9, 0.9, "blue", 0.5)]}
    b = {"boxes": [box(0.6, 0.6, 0.9, 0.9001, "blue", 0.5004), box(0.1, 0.1, 0.5, 0.5, polygon=SQUARE)]}
    worst = {}
    assert compare_answers(a, b, score_thresh=0.3, worst=worst) == []
    assert worst["box_iou"] == pytest.approx(0.99967, abs=1e-4) and worst["score"] == pytest.approx(4e-4)
    assert worst["mask_iou"] == 1.0 and worst["unpaired_boxes"] == 0


def test_a_confident_box_on_one_side_only_fails():
    a = {"boxes": [box(0.1, 0.1, 0.5, 0.5), box(0.6, 0.6, 0.9, 0.9, score=0.8)]}
    b = {"boxes": [box(0.1, 0.1, 0.5, 0.5)]}
    assert compare_answers(a, b, score_thresh=0.3) == ["a red box (score 0.800) only PyTorch finds"]
    assert compare_answers(b, a, score_thresh=0.3) == ["a red box (score 0.800) only ONNX Runtime finds"]


def test_a_box_at_the_score_threshold_may_be_on_one_side_only():
    a = {"boxes": [box(0.1, 0.1, 0.5, 0.5), box(0.6, 0.6, 0.9, 0.9, score=0.305)]}
    b = {"boxes": [box(0.1, 0.1, 0.5, 0.5)]}
    assert compare_answers(a, b, score_thresh=0.3) == []
    # ... and so may the last box kept when the detection cap is reached
    c = {"boxes": [box(0.1, 0.1, 0.5, 0.5), box(0.6, 0.6, 0.9, 0.9, score=0.5)]}
    d = {"boxes": [box(0.1, 0.1, 0.5, 0.5), box(0.0, 0.6, 0.3, 0.9, score=0.5)]}
    assert compare_answers(c, d, score_thresh=0.3, cap=2) == []
    assert len(compare_answers(c, d, score_thresh=0.3, cap=3)) == 2


def test_nms_may_keep_either_of_two_tied_boxes():
    a = {"boxes": [box(0.10, 0.10, 0.50, 0.50, score=0.61234)]}
    b = {"boxes": [box(0.12, 0.10, 0.52, 0.50, score=0.61236)]}  # IoU 0.9, scores tied within 1e-4
    worst = {}
    assert compare_answers(a, b, score_thresh=0.3, worst=worst) == [] and worst["nms_ties"] == 1
    b["boxes"][0]["score"] = 0.65  # not a tie: two different boxes, each on one side only
    assert compare_answers(a, b, score_thresh=0.3) == ["a red box (score 0.612) only PyTorch finds",
                                                       "a red box (score 0.650) only ONNX Runtime finds"]


def test_scores_masks_and_probabilities_beyond_the_tolerances_fail():
    a = {"boxes": [box(0.1, 0.1, 0.5, 0.5, score=0.9, polygon=SQUARE)]}
    b = {"boxes": [box(0.1, 0.1, 0.5, 0.5, score=0.85, polygon=[[0.1, 0.1, 0.3, 0.1, 0.3, 0.3, 0.1, 0.3]])]}
    problems = compare_answers(a, b)
    assert problems[0] == "a red box's score differs by 0.05 > 0.01"
    assert problems[1].startswith("a red mask has IoU 0.2") and problems[1].endswith("< 0.9 with its counterpart")
    assert compare_answers({"probs": [0.2, 0.8]}, {"probs": [0.2004, 0.7996]}) == []
    assert compare_answers({"probs": [0.2, 0.8]}, {"probs": [0.203, 0.797]}) == \
        ["probabilities differ by 0.003 > 0.001"]


def test_which_load_time_settings_an_exported_detector_allows():
    graph = {"box_nms_thresh": 0.5, "box_score_thresh": 0.3, "box_detections_per_img": 100}
    assert graph_settings_problem(graph, {**graph, "min_size": 800, "tile_grid_size": "3x2"}) is None
    assert graph_settings_problem(graph, {**graph, "box_score_thresh": 0.6, "box_detections_per_img": 10}) is None
    assert graph_settings_problem(graph, {**graph, "box_nms_thresh": 0.4}) == (
        "the ONNX graph fixes these settings, changed at load time: box_nms_thresh=0.4 (exported with 0.5)")
    problem = graph_settings_problem(graph, {**graph, "box_score_thresh": 0.1, "box_detections_per_img": 200})
    assert "box_score_thresh=0.1 below the export's 0.3" in problem
    assert "box_detections_per_img=200 above the export's 100" in problem
    assert graph_settings_problem({}, {"img_size": 320, "box_score_thresh": 0.01}) is None  # yolov5: all outside
