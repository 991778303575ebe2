"""The hyperparameter table against spec sections 1, 3, 4 and 5.

Expected values are written out here from the spec text, not read back from the table, so a
wrong row fails a test.
"""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from automl_vision.spec import hyperparameters as hps
from automl_vision.spec.tasks import LAYER_GROUPS, ImageTask, all_models, parse_task

MC = ImageTask.IMAGE_CLASSIFICATION
ML = ImageTask.IMAGE_CLASSIFICATION_MULTILABEL
OD = ImageTask.IMAGE_OBJECT_DETECTION
IS = ImageTask.IMAGE_INSTANCE_SEGMENTATION

# --- spec section 3 -------------------------------------------------------------------------------

CLASSIFIERS = ["mobilenetv2", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnest50",
               "resnest101", "seresnext", "vits16r224", "vitb16r224", "vitl16r224"]
DETECTORS = ["yolov5", "fasterrcnn_resnet18_fpn", "fasterrcnn_resnet34_fpn", "fasterrcnn_resnet50_fpn",
             "fasterrcnn_resnet101_fpn", "fasterrcnn_resnet152_fpn", "retinanet_resnet50_fpn"]
SEGMENTERS = ["maskrcnn_resnet18_fpn", "maskrcnn_resnet34_fpn", "maskrcnn_resnet50_fpn",
              "maskrcnn_resnet101_fpn", "maskrcnn_resnet152_fpn"]
MODELS = {MC: CLASSIFIERS, ML: CLASSIFIERS, OD: DETECTORS, IS: SEGMENTERS}
VITS = ["vits16r224", "vitb16r224", "vitl16r224"]

TASK_MODEL = [(t, m) for t, ms in MODELS.items() for m in ms]


def _id(case) -> str:
    return f"{case[0].value}-{case[1]}" if isinstance(case, tuple) else str(case)


# --- spec sections 1 and 3 ------------------------------------------------------------------------

@pytest.mark.parametrize(("task", "metric", "default_model"), [
    ("image_classification", "accuracy", "vitb16r224"),
    ("image_classification_multilabel", "iou", "vitb16r224"),
    ("image_object_detection", "mean_average_precision", "yolov5"),
    ("image_instance_segmentation", "mean_average_precision", "maskrcnn_resnet50_fpn"),
])
def test_task_primary_metric_and_default_model(task, metric, default_model):
    t = parse_task(task)
    assert t.primary_metric == metric
    assert t.maximize is True
    assert t.default_model == default_model
    assert str(t) == task


def test_parse_task_rejects_unknown_name():
    with pytest.raises(ValueError, match="task='image_detection' is not a task; allowed: image_classification"):
        parse_task("image_detection")


@pytest.mark.parametrize("task", list(ImageTask), ids=str)
def test_every_model_of_spec_section_3_is_offered_for_its_task(task):
    assert list(task.models) == MODELS[task]
    assert task.default_model in task.models


def test_all_models_lists_each_model_once():
    assert sorted(all_models()) == sorted(set(CLASSIFIERS + DETECTORS + SEGMENTERS))


def test_the_model_lists_do_not_import_torch():
    """The task lists come from the catalogue's rows, which name their builders without importing them."""
    code = ("import sys, automl_vision.spec.tasks, automl_vision.models.registry; "
            "print(sorted(m for m in ('torch', 'torchvision', 'timm', 'ultralytics') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- defaults (spec sections 4 and 5) -------------------------------------------------------------

COMMON = {
    "number_of_epochs": 15,
    "grad_accumulation_step": 1,
    "early_stopping": True,
    "early_stopping_patience": 5,
    "early_stopping_delay": 5,
    "lr_scheduler": "warmup_cosine",
    "step_lr_gamma": 0.5,
    "step_lr_step_size": 5,
    "warmup_cosine_lr_cycles": 0.45,
    "warmup_cosine_lr_warmup_epochs": 2,
    "optimizer": "sgd",
    "momentum": 0.9,
    "nesterov": True,
    "weight_decay": 1e-4,
    "beta1": 0.9,
    "beta2": 0.999,
    "amsgrad": False,
    "evaluation_frequency": 1,
    "split_ratio": 0.2,
    "checkpoint_frequency": None,  # keep the best epoch
    "layers_to_freeze": None,
    # ours
    "pretrained": True,
    "seed": 0,
    "augmentation": "default",
}
CLASSIFICATION = {"weighted_loss": 0, "valid_resize_size": 256, "valid_crop_size": 224, "train_crop_size": 224}
TORCHVISION_DETECTION = {
    "validation_metric_type": "voc",
    "validation_iou_threshold": 0.5,
    "min_size": 600,
    "max_size": 1333,
    "box_score_thresh": 0.3,
    "box_nms_thresh": 0.5,
    "box_detections_per_img": 100,
}
TILING = {"tile_grid_size": None, "tile_overlap_ratio": 0.25, "tile_predictions_nms_thresh": 0.25}
YOLO = {
    "validation_metric_type": "voc",
    "img_size": 640,
    "model_size": "medium",
    "multi_scale": False,
    "box_score_thresh": 0.1,
    "box_iou_thresh": 0.5,
}
SEGMENTATION = {"mask_pixel_score_threshold": 0.5, "max_number_of_polygon_points": 100}

CLS_TRAIN_BATCH = {"vits16r224": 128, "vitb16r224": 48, "vitl16r224": 10}
MC_LR = {"vits16r224": 0.0125, "vitb16r224": 0.0125, "vitl16r224": 0.001}
ML_LR = {"vits16r224": 0.025, "vitb16r224": 0.025, "vitl16r224": 0.002}


def expected_defaults(task: ImageTask, model: str) -> dict:
    out = {**COMMON, "model_name": model}
    if task in (MC, ML):
        batch = CLS_TRAIN_BATCH.get(model, 78)
        lr = (MC_LR if task is MC else ML_LR).get(model, 0.01 if task is MC else 0.035)
        out.update(CLASSIFICATION, training_batch_size=batch, validation_batch_size=batch, learning_rate=lr)
    elif model == "yolov5":
        out.update(YOLO, number_of_epochs=30, training_batch_size=16, validation_batch_size=16, learning_rate=0.01)
    else:
        out.update(TORCHVISION_DETECTION, training_batch_size=2, validation_batch_size=1, learning_rate=0.005)
        out.update(TILING if task is OD else SEGMENTATION)
    return out


@pytest.mark.parametrize(("task", "model"), TASK_MODEL, ids=[_id(c) for c in TASK_MODEL])
def test_defaults_per_task_and_model(task, model):
    got = hps.defaults(task, model)
    want = expected_defaults(task, model)
    assert set(got) == set(want), f"missing {set(want) - set(got)}, unexpected {set(got) - set(want)}"
    for name, value in want.items():
        assert got[name] == value and type(got[name]) is type(value), (name, got[name], value)
    assert hps.resolve(task, {"model_name": model}) == want


@pytest.mark.parametrize("task", list(ImageTask), ids=str)
def test_resolve_without_model_uses_the_task_default_model(task):
    assert hps.resolve(task, {}) == expected_defaults(task, task.default_model)


@pytest.mark.parametrize(("task", "model", "name", "value"), [
    (MC, "resnet50", "number_of_epochs", 15),
    (OD, "yolov5", "number_of_epochs", 30),
    (MC, "resnet50", "training_batch_size", 78),
    (MC, "vits16r224", "training_batch_size", 128),
    (MC, "vitb16r224", "training_batch_size", 48),
    (MC, "vitl16r224", "training_batch_size", 10),
    (ML, "vitl16r224", "validation_batch_size", 10),
    (OD, "fasterrcnn_resnet50_fpn", "training_batch_size", 2),
    (OD, "fasterrcnn_resnet50_fpn", "validation_batch_size", 1),
    (OD, "yolov5", "training_batch_size", 16),
    (OD, "yolov5", "validation_batch_size", 16),
    (IS, "maskrcnn_resnet50_fpn", "training_batch_size", 2),
    (IS, "maskrcnn_resnet50_fpn", "validation_batch_size", 1),
    (MC, "mobilenetv2", "learning_rate", 0.01),
    (MC, "vits16r224", "learning_rate", 0.0125),
    (MC, "vitb16r224", "learning_rate", 0.0125),
    (MC, "vitl16r224", "learning_rate", 0.001),
    (ML, "seresnext", "learning_rate", 0.035),
    (ML, "vits16r224", "learning_rate", 0.025),
    (ML, "vitb16r224", "learning_rate", 0.025),
    (ML, "vitl16r224", "learning_rate", 0.002),
    (OD, "retinanet_resnet50_fpn", "learning_rate", 0.005),
    (OD, "yolov5", "learning_rate", 0.01),
    (IS, "maskrcnn_resnet101_fpn", "learning_rate", 0.005),
    (OD, "fasterrcnn_resnet18_fpn", "box_score_thresh", 0.3),
    (IS, "maskrcnn_resnet18_fpn", "box_score_thresh", 0.3),
    (OD, "yolov5", "box_score_thresh", 0.1),
])
def test_model_dependent_defaults_named_in_the_spec(task, model, name, value):
    assert hps.defaults(task, model)[name] == value
    assert hps.resolve(task, {"model_name": model})[name] == value


# --- ranges, generated from the table -------------------------------------------------------------

def _where(hp: hps.HyperParameter) -> tuple[ImageTask, str]:
    """A task and model the row applies to."""
    return next((t, m) for t, m in TASK_MODEL if hp.applies_to(t, m))


def _bound_cases():
    cases = []
    for hp in hps.HYPERPARAMETERS:
        if hp.type not in (int, float) or hp.choices is not None:
            continue
        for bound, inclusive, direction in ((hp.minimum, hp.min_inclusive, -1), (hp.maximum, hp.max_inclusive, 1)):
            if bound is None:
                continue
            if hp.type is int:
                inside, outside = (int(bound), int(bound) + direction) if inclusive else (
                    int(bound) - direction, int(bound))
            else:
                beyond = math.nextafter(bound, direction * math.inf)
                within = math.nextafter(bound, -direction * math.inf)
                inside, outside = (bound, beyond) if inclusive else (within, bound)
            cases.append(pytest.param(hp.name, inside, True, id=f"{hp.name}={inside!r}-ok"))
            cases.append(pytest.param(hp.name, outside, False, id=f"{hp.name}={outside!r}-rejected"))
    return cases


BOUND_CASES = _bound_cases()


def test_every_numeric_row_has_range_cases():
    numeric = {hp.name for hp in hps.HYPERPARAMETERS if hp.type in (int, float) and hp.choices is None}
    assert numeric == {c.values[0] for c in BOUND_CASES}


@pytest.mark.parametrize(("name", "value", "ok"), BOUND_CASES)
def test_value_just_inside_or_outside_each_bound(name, value, ok):
    hp = hps.get(name)
    _, model = _where(hp)
    if ok:
        assert hp.coerce(value, model) == value
        assert hp.coerce(str(value), model) == value  # the same through the command line
    else:
        with pytest.raises(ValueError) as e:
            hp.coerce(value, model)
        assert str(e.value) == f"{name}={hps._show(value)} out of range; expected {hp.allowed()}"


@pytest.mark.parametrize("name", [hp.name for hp in hps.HYPERPARAMETERS if hp.type is float])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_floats_are_rejected(name, value):
    with pytest.raises(ValueError, match="out of range"):
        hps.get(name).coerce(value)


def _choice_cases():
    for hp in hps.HYPERPARAMETERS:
        if hp.choices is None:
            continue
        for c in hp.choices:
            yield pytest.param(hp.name, c, True, id=f"{hp.name}={c!r}")
        bad = "nope" if hp.type is str else max(hp.choices) + 1
        yield pytest.param(hp.name, bad, False, id=f"{hp.name}={bad!r}-rejected")


@pytest.mark.parametrize(("name", "value", "ok"), list(_choice_cases()))
def test_choices(name, value, ok):
    hp = hps.get(name)
    if ok:
        assert hp.coerce(value) == value
    else:
        with pytest.raises(ValueError, match=f"is not allowed; expected {hp.allowed()}"):
            hp.coerce(value)


@pytest.mark.parametrize(("name", "choices"), [
    ("lr_scheduler", ("warmup_cosine", "step")),
    ("optimizer", ("sgd", "adam", "adamw")),
    ("weighted_loss", (0, 1, 2)),
    ("validation_metric_type", ("none", "coco", "voc", "coco_voc")),
    ("model_size", ("small", "medium", "large", "xlarge")),
])
def test_choices_are_those_of_the_spec(name, choices):
    assert hps.get(name).choices == choices


def test_choice_typo_gets_a_suggestion():
    with pytest.raises(ValueError, match=r"optimizer='adamx' is not allowed; .* \(did you mean 'adam'\?\)"):
        hps.get("optimizer").coerce("adamx")


@pytest.mark.parametrize(("value", "ok"), [("3x2", True), ("1x2", True), ("10x10", True), ("1x1", False),
                                           ("3*2", False), ("0x2", False), ("x2", False), (None, True)])
def test_tile_grid_size_format(value, ok):
    hp = hps.get("tile_grid_size")
    if ok:
        assert hp.coerce(value, "fasterrcnn_resnet50_fpn") == value
    else:
        with pytest.raises(ValueError, match="tile_grid_size="):
            hp.coerce(value, "fasterrcnn_resnet50_fpn")


def test_parse_tile_grid_size():
    assert hps.parse_tile_grid_size("3x2") == (3, 2)
    with pytest.raises(ValueError, match="must look like '3x2'"):
        hps.parse_tile_grid_size("3 by 2")


# --- applicability --------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "task", "model", "applies"), [
    ("weighted_loss", MC, "resnet50", True),
    ("weighted_loss", ML, "vitb16r224", True),
    ("weighted_loss", OD, "fasterrcnn_resnet50_fpn", False),
    ("weighted_loss", OD, "yolov5", False),
    ("weighted_loss", IS, "maskrcnn_resnet50_fpn", False),
    ("min_size", OD, "fasterrcnn_resnet50_fpn", True),
    ("min_size", IS, "maskrcnn_resnet50_fpn", True),
    ("min_size", OD, "yolov5", False),
    ("min_size", MC, "resnet50", False),
    ("img_size", OD, "yolov5", True),
    ("img_size", OD, "fasterrcnn_resnet50_fpn", False),
    ("img_size", IS, "maskrcnn_resnet50_fpn", False),
    ("img_size", MC, "resnet50", False),
    ("model_size", OD, "yolov5", True),
    ("model_size", OD, "retinanet_resnet50_fpn", False),
    ("tile_grid_size", OD, "fasterrcnn_resnet50_fpn", True),
    ("tile_grid_size", OD, "retinanet_resnet50_fpn", True),
    ("tile_grid_size", OD, "yolov5", False),
    ("tile_grid_size", IS, "maskrcnn_resnet50_fpn", False),
    ("tile_grid_size", MC, "resnet50", False),
    ("mask_pixel_score_threshold", IS, "maskrcnn_resnet50_fpn", True),
    ("mask_pixel_score_threshold", OD, "fasterrcnn_resnet50_fpn", False),
    ("mask_pixel_score_threshold", MC, "resnet50", False),
    ("box_score_thresh", OD, "yolov5", True),
    ("box_score_thresh", MC, "resnet50", False),
    ("valid_crop_size", ML, "resnet50", True),
    ("valid_crop_size", OD, "yolov5", False),
])
def test_applicability(name, task, model, applies):
    hp = hps.get(name)
    assert hp.applies_to(task, model) is applies
    assert (name in hps.defaults(task, model)) is applies
    if applies:
        return
    with pytest.raises(ValueError) as e:
        hps.resolve(task, {"model_name": model, name: hp.default_for(task, model)})
    assert str(e.value) == hps.why_not(hp, task, model)


@pytest.mark.parametrize(("task", "model", "name", "message"), [
    (OD, "fasterrcnn_resnet50_fpn", "weighted_loss",
     "weighted_loss does not apply to task image_object_detection (only to image_classification, "
     "image_classification_multilabel)"),
    (OD, "yolov5", "min_size", "min_size does not apply to model yolov5"),
    (OD, "fasterrcnn_resnet50_fpn", "img_size", "img_size applies only to model(s) yolov5, not fasterrcnn_resnet50_fpn"),
    (IS, "maskrcnn_resnet50_fpn", "tile_grid_size",
     "tile_grid_size does not apply to task image_instance_segmentation (only to image_object_detection)"),
])
def test_why_not_messages(task, model, name, message):
    assert hps.why_not(hps.get(name), task, model) == message


def test_unknown_hyperparameter_gets_a_suggestion():
    with pytest.raises(KeyError, match="unknown hyperparameter 'learning_rte' \\(did you mean 'learning_rate'\\?\\)"):
        hps.get("learning_rte")
    with pytest.raises(ValueError, match="unknown hyperparameter 'numbr_of_epochs' \\(did you mean 'number_of_epochs'"):
        hps.resolve(MC, {"numbr_of_epochs": 3})


# --- coercion of strings and numbers --------------------------------------------------------------

@pytest.mark.parametrize(("name", "raw", "value"), [
    ("early_stopping", "true", True),
    ("early_stopping", "True", True),
    ("early_stopping", "1", True),
    ("early_stopping", "0", False),
    ("early_stopping", "false", False),
    ("early_stopping", 1, True),
    ("early_stopping", 0, False),
    ("nesterov", "yes", True),
    ("learning_rate", "0.5", 0.5),
    ("learning_rate", 1, 1.0),
    ("learning_rate", " 0.01 ", 0.01),
    ("min_size", "800", 800),
    ("min_size", 800.0, 800),
    ("min_size", "800.0", 800),
    ("optimizer", "adam", "adam"),
    ("validation_metric_type", "none", "none"),  # a real choice, not null
    ("tile_grid_size", "none", None),
    ("checkpoint_frequency", "null", None),
    ("checkpoint_frequency", None, None),
    ("layers_to_freeze", "none", None),
])
def test_coercion(name, raw, value):
    got = hps.get(name).coerce(raw)
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize(("name", "raw", "message"), [
    ("early_stopping", "maybe", "early_stopping='maybe' is not a valid bool; expected 0 or 1 (also true/false)"),
    ("early_stopping", 2, "early_stopping=2 is not a valid bool"),
    ("min_size", "800.5", "min_size='800.5' is not a valid int; expected int >= 1"),
    ("min_size", True, "min_size=True is not a valid int"),
    ("learning_rate", "fast", "learning_rate='fast' is not a valid float; expected float in [0, 1]"),
    ("learning_rate", None, "learning_rate=None is not allowed; expected float in [0, 1]"),
    ("optimizer", True, "optimizer=True is not a valid str"),
])
def test_coercion_errors(name, raw, message):
    with pytest.raises(ValueError) as e:
        hps.get(name).coerce(raw)
    assert message in str(e.value)


def test_resolve_coerces_strings():
    values = hps.resolve(OD, {"model_name": "fasterrcnn_resnet50_fpn", "min_size": "800", "early_stopping": "0",
                              "learning_rate": "0.5", "nesterov": "true"})
    assert (values["min_size"], values["early_stopping"], values["learning_rate"], values["nesterov"]) == (
        800, False, 0.5, True)


def test_resolve_reports_every_problem():
    with pytest.raises(ValueError) as e:
        hps.resolve(MC, {"learning_rate": 2, "min_size": 600, "optimzer": "sgd"})
    lines = str(e.value).splitlines()
    assert len(lines) == 3
    assert any("learning_rate=2 out of range" in line for line in lines)
    assert any("min_size does not apply to task image_classification" in line for line in lines)
    assert any("did you mean 'optimizer'" in line for line in lines)


@pytest.mark.parametrize(("task", "model", "message"), [
    (MC, "yolov5", "model_name='yolov5' is not a model for image_classification; allowed: mobilenetv2"),
    (OD, "resnet50", "model_name='resnet50' is not a model for image_object_detection; allowed: yolov5"),
    (MC, "resnet5O", "model_name='resnet5O': unknown model (did you mean 'resnet50'?)"),
])
def test_resolve_rejects_a_model_of_another_task(task, model, message):
    with pytest.raises(ValueError) as e:
        hps.resolve(task, {"model_name": model})
    assert message in str(e.value)


# --- layers_to_freeze (spec section 4 layer groups) -----------------------------------------------

LAYER_GROUPS_SPEC = {
    **{m: 5 for m in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnest50", "resnest101")},
    "mobilenetv2": 19,  # features.0. ... features.18.
    "seresnext": 5,  # layer0. ... layer4.
    **{m: 13 for m in VITS},  # patch_embed, blocks.0. ... blocks.11.
    "yolov5": 10,  # model.0. ... model.9.
    **{m: 5 for m in DETECTORS[1:] + SEGMENTERS},  # backbone.body.conv1., layer1 ... layer4
}


def test_layer_groups_cover_every_model():
    assert LAYER_GROUPS == LAYER_GROUPS_SPEC


@pytest.mark.parametrize(("task", "model"), TASK_MODEL, ids=[_id(c) for c in TASK_MODEL])
def test_layers_to_freeze_per_model_maximum(task, model):
    top = LAYER_GROUPS_SPEC[model]
    assert hps.resolve(task, {"model_name": model, "layers_to_freeze": top})["layers_to_freeze"] == top
    assert hps.resolve(task, {"model_name": model, "layers_to_freeze": 0})["layers_to_freeze"] == 0
    with pytest.raises(ValueError) as e:
        hps.resolve(task, {"model_name": model, "layers_to_freeze": top + 1})
    assert str(e.value) == f"layers_to_freeze={top + 1}: {model} has {top} layer groups; allowed 0..{top}"


# --- rules across hyperparameters -----------------------------------------------------------------

@pytest.mark.parametrize("task", [MC, ML], ids=str)
@pytest.mark.parametrize("model", VITS)
def test_vit_needs_equal_crop_sizes(task, model):
    ok = hps.resolve(task, {"model_name": model, "train_crop_size": 256, "valid_crop_size": 256,
                            "valid_resize_size": 288})
    assert ok["train_crop_size"] == ok["valid_crop_size"] == 256
    with pytest.raises(ValueError) as e:
        hps.resolve(task, {"model_name": model, "train_crop_size": 256, "valid_resize_size": 288})
    assert str(e.value) == f"{model} needs valid_crop_size == train_crop_size (got 224 and 256)"


@pytest.mark.parametrize("model", ["resnet50", "mobilenetv2", "seresnext"])
def test_other_classifiers_may_crop_differently(model):
    values = hps.resolve(MC, {"model_name": model, "train_crop_size": 256})
    assert (values["train_crop_size"], values["valid_crop_size"]) == (256, 224)


@pytest.mark.parametrize(("task", "given", "message"), [
    (MC, {"model_name": "resnet50", "valid_resize_size": 200},
     "valid_resize_size=200 must be >= valid_crop_size=224"),
    (OD, {"model_name": "fasterrcnn_resnet50_fpn", "min_size": 800, "max_size": 700},
     "max_size=700 must be >= min_size=800"),
])
def test_cross_checks(task, given, message):
    with pytest.raises(ValueError) as e:
        hps.resolve(task, given)
    assert str(e.value) == message


# --- the table itself ------------------------------------------------------------------------------

def test_every_row_is_consistent():
    for hp in hps.HYPERPARAMETERS:
        assert hp.type in (int, float, str, bool), hp.name
        assert hp.origin in ("original", "extension"), hp.name
        assert hp.help, hp.name
        for task, model in TASK_MODEL:
            if hp.applies_to(task, model):
                # every default passes its own row's check
                assert hp.coerce(hp.default_for(task, model), model) == hp.default_for(task, model), (hp.name, model)
