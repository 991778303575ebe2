"""The explanation parameters and the request rows that carry them: the original's defaults, its row as a
JSON string or an object, KServe v1 instances, and every mistake named with its place, key and what is allowed."""

from __future__ import annotations

import base64
import json

import pytest

from automl_vision.explain import params as P
from automl_vision.serving.protocol import BadRequest, parse_json_request
from automl_vision.spec.tasks import ImageTask

IC, ML, OD = ImageTask.IMAGE_CLASSIFICATION, ImageTask.IMAGE_CLASSIFICATION_MULTILABEL, ImageTask.IMAGE_OBJECT_DETECTION
IMAGE = base64.encodebytes(b"\x89PNG not decoded here").decode()


def test_the_originals_defaults():
    p = P.parse_params(None, IC)
    assert (p.algorithm, p.visualizations, p.attributions, p.n_steps, p.xrai_fast) == ("xrai", True, False, 50, True)
    assert p.confidence_score_threshold_multilabel == 0.5 and p.passes() == 100
    ig = P.parse_params({"xai_algorithm": "integrated_gradients", "approximation_method": "gausslegendre"}, ML)
    assert ig.approximation_method == "gausslegendre" and ig.passes() == 50
    d = P.parse_params({}, OD)
    assert (d.algorithm, d.num_masks, d.max_boxes, d.mask_grid_size) == ("d_rise", 1000, 3, 16)
    assert d.to_json() == {"xai_algorithm": "d_rise", "visualizations": True, "attributions": False,
                           "num_masks": 1000, "mask_grid_size": 16, "mask_keep_probability": 0.5, "max_boxes": 3,
                           "seed": 0}


def test_a_server_limit_lowers_a_default_and_refuses_more():
    limits = P.ExplainLimits(max_steps=20, max_masks=100)
    assert P.parse_params({}, IC, limits=limits).n_steps == 20
    assert P.parse_params({}, OD, limits=limits).num_masks == 100
    with pytest.raises(P.ExplainError) as e:
        P.parse_params({"n_steps": 21}, IC, "row.xai_parameters", limits)
    assert "row.xai_parameters.n_steps=21: allowed from 2 to 20 (the server's limit" in str(e.value)
    with pytest.raises(P.ExplainError) as e:
        P.parse_params({"num_masks": 101}, OD, limits=limits)
    assert "num_masks=101: allowed from 1 to 100" in str(e.value)


def test_every_problem_is_reported_at_once():
    with pytest.raises(P.ExplainError) as e:
        P.parse_params({"xai_algorithm": "integrated_gradients", "n_steps": 2.5, "xrai_fast": True,
                        "confidence_score_threshold_multilabel": 2, "attributions": 1}, IC)
    text = str(e.value)
    for part in ("n_steps=2.5: expected a whole number", "xrai_fast: not a parameter of integrated_gradients",
                 "confidence_score_threshold_multilabel=2.0: allowed from 0 to 1",
                 "attributions=1: expected true or false"):
        assert part in text, part
    with pytest.raises(P.ExplainError) as e:
        P.parse_params({"mask_keep_probability": 1.0, "max_boxes": 0, "seed": -1, "mask_grid_size": 1}, OD)
    for part in ("mask_keep_probability=1.0: allowed above 0 and below 1", "max_boxes=0: allowed from 1 to 20",
                 "seed=-1: allowed from 0", "mask_grid_size=1: allowed from 2 to 64"):
        assert part in str(e.value), part
    with pytest.raises(P.ExplainError, match=r"must be a JSON object like"):
        P.parse_params(["xrai"], IC)


def test_the_originals_row_as_a_json_string_or_an_object():
    flags = {"model_explainability": True, "xai_parameters": {"xai_algorithm": "guided_backprop"}}
    as_string = json.dumps({"image_base64": IMAGE, **flags})
    body = {"input_data": {"columns": ["image"], "data": [as_string, {"image_base64": IMAGE, **flags}, IMAGE,
                                                          json.dumps({"image_base64": IMAGE})]}}
    r = parse_json_request(body)
    assert r.explain == [{"xai_algorithm": "guided_backprop"}, {"xai_algorithm": "guided_backprop"}, None, None]
    assert r.explained() == [0, 1] and len(set(r.images)) == 1
    # without xai_parameters: the defaults ({}); a KServe v1 instance carries the same keys
    r = parse_json_request({"instances": [{"image": {"b64": IMAGE}, "model_explainability": True}, {"b64": IMAGE}]})
    assert r.explain == [{}, None]


@pytest.mark.parametrize("row, message", [
    ('{"image_base64": "', "input_data.data[0]: a string starting with { is read as a JSON object, but it is not valid JSON"),
    (json.dumps({"model_explainability": True}), 'input_data.data[0]: a row object needs the key "image"'),
    (json.dumps({"image_base64": IMAGE, "xai_parameters": {}, "explain": True}),
     "input_data.data[0]: unknown key(s) explain; an explanation row has image_base64, model_explainability, "
     "xai_parameters"),
    (json.dumps({"image_base64": IMAGE, "model_explainability": 1}),
     "input_data.data[0].model_explainability=1: expected true or false"),
    (json.dumps({"image_base64": IMAGE, "model_explainability": True, "xai_parameters": "xrai"}),
     'input_data.data[0].xai_parameters must be a JSON object like {"xai_algorithm": "xrai"}, got a JSON string'),
])
def test_bad_explanation_rows(row, message):
    with pytest.raises(BadRequest) as e:
        parse_json_request({"input_data": {"columns": ["image"], "data": [row]}})
    assert message in str(e.value)
