"""Inference settings: which apply per task and model, precedence of the layers, every problem reported."""

from __future__ import annotations

import json

import pytest

from automl_vision.errors import ConfigError
from automl_vision.serving.settings import (applicable_model_settings, flatten, parse_settings_text,
                                            resolve_settings)
from automl_vision.spec import hyperparameters as hps
from automl_vision.spec.tasks import ImageTask

MC, ML = ImageTask.IMAGE_CLASSIFICATION, ImageTask.IMAGE_CLASSIFICATION_MULTILABEL
OD, IS = ImageTask.IMAGE_OBJECT_DETECTION, ImageTask.IMAGE_INSTANCE_SEGMENTATION


@pytest.mark.parametrize("task, model, expected", [
    (MC, "resnet18", ["valid_resize_size", "valid_crop_size"]),
    (ML, "vitb16r224", ["valid_resize_size", "valid_crop_size"]),
    (OD, "fasterrcnn_resnet50_fpn", ["min_size", "max_size", "box_score_thresh", "box_nms_thresh",
                                     "box_detections_per_img", "tile_grid_size", "tile_overlap_ratio",
                                     "tile_predictions_nms_thresh"]),
    (OD, "yolov5", ["box_score_thresh", "img_size", "model_size", "box_iou_thresh"]),
    (IS, "maskrcnn_resnet50_fpn", ["min_size", "max_size", "box_score_thresh", "box_nms_thresh",
                                   "box_detections_per_img", "mask_pixel_score_threshold",
                                   "max_number_of_polygon_points"]),
])
def test_settings_per_task_and_model_follow_spec_section_9(task, model, expected):
    assert applicable_model_settings(task, model) == expected


def trained(task, model, **given):
    return hps.resolve(task, {"model_name": model, **given})


def test_layers_override_trained_values_in_order():
    hp = trained(OD, "fasterrcnn_resnet18_fpn", box_score_thresh=0.4)
    s = resolve_settings(OD, "fasterrcnn_resnet18_fpn", hp, [])
    assert s["box_score_thresh"] == 0.4 and s.sources == {}
    s = resolve_settings(OD, "fasterrcnn_resnet18_fpn", hp, [
        ("settings.json", {"box_score_thresh": 0.5, "max_batch_size": 4}),
        ("$AUTOML_VISION_SETTINGS", {"box_score_thresh": "0.6", "tile_grid_size": "3x2"}),
        ("--settings", {"box_score_thresh": 0.7}),
    ])
    assert s["box_score_thresh"] == 0.7 and s["tile_grid_size"] == "3x2" and s.max_batch_size == 4
    assert s.sources == {"box_score_thresh": "--settings", "max_batch_size": "settings.json",
                         "tile_grid_size": "$AUTOML_VISION_SETTINGS"}


def test_settings_json_layout_round_trips():
    hp = trained(MC, "resnet18", valid_crop_size=200)
    s = resolve_settings(MC, "resnet18", hp, [("x", {"max_batch_latency_ms": 2})])
    again = resolve_settings(MC, "resnet18", hp, [("settings.json", flatten(json.loads(json.dumps(s.to_json())), "f"))])
    assert again == s
    assert s.to_json()["model_settings"] == {"valid_resize_size": 256, "valid_crop_size": 200}


@pytest.mark.parametrize("task, model, layer, messages", [
    (MC, "resnet18", {"valid_crop_sise": 200},
     ["unknown setting 'valid_crop_sise' (did you mean 'valid_crop_size'?)"]),
    (MC, "resnet18", {"box_score_thresh": 0.5},
     ["box_score_thresh does not apply to task image_classification"]),
    (MC, "resnet18", {"learning_rate": 0.1}, ["learning_rate is a training hyperparameter, not an inference setting"]),
    (MC, "resnet18", {"valid_crop_size": 300}, ["valid_resize_size=256 must be >= valid_crop_size=300"]),
    (MC, "vitb16r224", {"valid_crop_size": 192, "valid_resize_size": 256},
     ["vitb16r224 needs valid_crop_size == train_crop_size"]),
    (OD, "fasterrcnn_resnet18_fpn", {"box_score_thresh": 2, "tile_grid_size": "3by2"},
     ["box_score_thresh=2 out of range", "tile_grid_size='3by2'"]),
    (OD, "yolov5", {"model_size": "large"}, ["model_size='large': fixed by the trained weights ('medium')"]),
    (OD, "yolov5", {"tile_grid_size": "2x2"}, ["tile_grid_size does not apply to model yolov5"]),
    (IS, "maskrcnn_resnet18_fpn", {"tile_grid_size": "2x2"}, ["tile_grid_size does not apply to task"]),
    (MC, "resnet18", {"max_batch_size": 0, "runtime": "tensorrt", "device": "tpu"},
     ["max_batch_size=0 out of range", "runtime='tensorrt' is not allowed", "device='tpu'"]),
    (MC, "resnet18", {"task": "image_object_detection"}, ["task='image_object_detection' but the model is"]),
])
def test_bad_settings_report_every_problem(task, model, layer, messages):
    with pytest.raises(ConfigError) as e:
        resolve_settings(task, model, trained(task, model), [("over.json", layer)])
    text = str(e.value)
    for m in messages:
        assert m in text, text
    assert "over.json" in text


def test_settings_text_is_json_or_a_file(tmp_path):
    assert parse_settings_text(' {"box_score_thresh": 0.2} ', "env") == {"box_score_thresh": 0.2}
    f = tmp_path / "s.json"
    f.write_text(json.dumps({"model_settings": {"min_size": 300}, "serving": {"max_batch_size": 2}}))
    assert parse_settings_text(str(f), "env") == {"min_size": 300, "max_batch_size": 2}
    assert parse_settings_text("", "env") == {}


@pytest.mark.parametrize("text, message", [
    ('{"a": ', "not valid JSON"),
    ("/no/such/file.json", "settings file not found: /no/such/file.json"),
    ('{"model_settings": 3}', "model_settings must be a JSON object"),
])
def test_bad_settings_text(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_settings_text(text, "$AUTOML_VISION_SETTINGS")


def test_batch_size_defaults_by_device_unless_set():
    hp = trained(MC, "resnet18")
    unset = resolve_settings(MC, "resnet18", hp, [])
    assert unset.max_batch_size is None
    assert unset.batch_size_for("cpu") == 1 and unset.batch_size_for("cuda:0") == 16
    assert resolve_settings(MC, "resnet18", hp, [("f", {"max_batch_size": 8})]).batch_size_for("cpu") == 8
