"""Job validation: every mistake is named, with its place and, where possible, a suggestion."""

from __future__ import annotations

from pathlib import Path

import pytest

from automl_vision.errors import ConfigError
from automl_vision.spec.job import grid_points, grid_size, load_job, parse_job, resolved

DET = {"task": "image_object_detection", "training_data": "train.jsonl"}
CLS = {"task": "image_classification", "training_data": "train.jsonl"}


def uniform(lo, hi):
    return {"type": "uniform", "min_value": lo, "max_value": hi}


def choice(*values):
    return {"type": "choice", "values": list(values)}


def loguniform(lo, hi):
    return {"type": "loguniform", "min_value": lo, "max_value": hi}


def bandit(**kw):
    return {"sweep": {"early_termination": {"type": "bandit", "evaluation_interval": 1, **kw}}}


# (id, job, substrings the ConfigError must contain)
CASES = [
    ("unknown-top-level-key", {**DET, "limitz": {"max_trials": 2}},
     ["limitz: unknown key 'limitz' (did you mean 'limits'?)"]),
    ("unknown-top-level-key-no-match", {**DET, "zzz": 1},
     ["zzz: unknown key 'zzz'; allowed: task, training_data"]),
    ("unknown-limits-key", {**DET, "limits": {"max_trial": 3}},
     ["limits.max_trial: unknown key 'max_trial' (did you mean 'max_trials'?)"]),
    ("unknown-sweep-key", {**DET, "sweep": {"sampling_algoritm": "grid"}},
     ["sweep.sampling_algoritm: unknown key 'sampling_algoritm' (did you mean 'sampling_algorithm'?)"]),
    ("unknown-early-termination-key", {**DET, **bandit(slack_factor=0.2, delay_evaluaton=3)},
     ["sweep.early_termination.delay_evaluaton: unknown key 'delay_evaluaton' (did you mean 'delay_evaluation'?)"]),
    ("unknown-distribution-key", {**DET, "search_space": [{"learning_rate": {"type": "uniform", "min_value": 0.001,
                                                                             "max_valu": 0.01}}]},
     ["search_space[0].learning_rate.max_valu: unknown key 'max_valu' (did you mean 'max_value'?)"]),
    ("unknown-distribution-type", {**DET, "search_space": [{"learning_rate": {"type": "unifrom", "min_value": 0.001,
                                                                              "max_value": 0.01}}]},
     ["search_space[0].learning_rate: type='unifrom' is not a distribution (did you mean 'uniform'?)"]),
    ("unknown-early-termination-type", {**DET, "sweep": {"early_termination": {"type": "bandid"}}},
     ["sweep.early_termination: Input tag 'bandid' found using 'type' does not match any of the expected tags: "
      "'bandit', 'median_stopping', 'truncation_selection'"]),
    ("unknown-sampling-algorithm", {**DET, "sweep": {"sampling_algorithm": "grdi"}},
     ["sweep.sampling_algorithm='grdi': Input should be 'random', 'grid' or 'bayesian'"]),
    ("unknown-hyperparameter", {**DET, "training_parameters": {"learning_rte": 0.01}},
     ["training_parameters.learning_rte: unknown hyperparameter 'learning_rte' (did you mean 'learning_rate'?)"]),
    ("unknown-hyperparameter-in-search-space", {**DET, "search_space": [{"optimiser": choice("sgd")}]},
     ["search_space[0].optimiser: unknown hyperparameter 'optimiser' (did you mean 'optimizer'?)"]),
    ("out-of-range", {**DET, "training_parameters": {"learning_rate": 1.5}},
     ["training_parameters.learning_rate=1.5: out of range; expected float in [0, 1]"]),
    ("not-a-number", {**DET, "training_parameters": {"number_of_epochs": "many"}},
     ["training_parameters.number_of_epochs='many': is not a valid int; expected int >= 1"]),
    ("hyperparameter-of-another-task", {**DET, "training_parameters": {"weighted_loss": 1}},
     ["training_parameters.weighted_loss: weighted_loss does not apply to task image_object_detection "
      "(only to image_classification, image_classification_multilabel)"]),
    ("hyperparameter-of-another-model", {**DET, "training_parameters": {"model_name": "yolov5", "min_size": 800}},
     ["training_parameters.min_size: min_size does not apply to model yolov5"]),
    ("hyperparameter-of-default-model", {**DET, "training_parameters": {"min_size": 800}},
     ["training_parameters.min_size: min_size does not apply to model yolov5"]),
    ("hyperparameter-of-another-model-in-space",
     {**DET, "search_space": [{"model_name": choice("yolov5"), "tile_grid_size": choice("3x2")}]},
     ["search_space[0].tile_grid_size: tile_grid_size does not apply to model yolov5"]),
    ("fixed-value-for-one-of-several-models",
     {**DET, "training_parameters": {"min_size": 800},
      "search_space": [{"model_name": choice("yolov5", "fasterrcnn_resnet50_fpn")}]},
     ["training_parameters.min_size: min_size does not apply to model yolov5; "
      "set it in the search_space entry of the models it applies to"]),
    ("wrong-primary-metric", {**DET, "primary_metric": "accuracy"},
     ["primary_metric='accuracy': the primary metric of image_object_detection is fixed to "
      "'mean_average_precision'"]),
    ("wrong-task-name", {**DET, "task": "image_detection"},
     ["task='image_detection' is not a task (did you mean 'image_object_detection'?); allowed: "
      "image_classification, image_classification_multilabel, image_object_detection, image_instance_segmentation"]),
    ("missing-training-data", {"task": "image_classification"}, ["training_data: required key missing"]),
    ("grid-with-uniform", {**DET, "sweep": {"sampling_algorithm": "grid"},
                           "search_space": [{"learning_rate": uniform(0.001, 0.01)}]},
     ["search_space[0].learning_rate: grid sampling takes only choice distributions, not uniform"]),
    ("bayesian-with-loguniform", {**DET, "sweep": {"sampling_algorithm": "bayesian"},
                                  "search_space": [{"learning_rate": loguniform(-9, -3)}]},
     ["search_space[0].learning_rate: bayesian sampling takes only choice, uniform and quniform, not loguniform"]),
    ("bayesian-with-two-entries", {**DET, "sweep": {"sampling_algorithm": "bayesian"},
                                   "search_space": [{"model_name": choice("yolov5")},
                                                    {"model_name": choice("fasterrcnn_resnet50_fpn")}]},
     ["sweep.sampling_algorithm=bayesian does not support a conditional search space (2 entries)"]),
    ("bayesian-with-early-termination", {**DET, "sweep": {"sampling_algorithm": "bayesian",
                                                          "early_termination": {"type": "median_stopping"}},
                                         "search_space": [{"learning_rate": uniform(0.001, 0.01)}]},
     ["sweep.early_termination: bayesian sampling does not support early termination"]),
    ("bandit-with-both-slacks", {**DET, **bandit(slack_factor=0.2, slack_amount=0.1)},
     ["sweep.early_termination: bandit needs exactly one of slack_factor or slack_amount"]),
    ("bandit-with-neither-slack", {**DET, **bandit()},
     ["sweep.early_termination: bandit needs exactly one of slack_factor or slack_amount"]),
    ("bandit-negative-slack", {**DET, **bandit(slack_factor=-0.2)},
     ["sweep.early_termination.slack_factor=-0.2: Input should be greater than 0"]),
    ("truncation-percentage-100", {**DET, "sweep": {"early_termination": {"type": "truncation_selection",
                                                                          "truncation_percentage": 100}}},
     ["sweep.early_termination.truncation_percentage=100: Input should be less than or equal to 99"]),
    ("truncation-percentage-0", {**DET, "sweep": {"early_termination": {"type": "truncation_selection",
                                                                        "truncation_percentage": 0}}},
     ["sweep.early_termination.truncation_percentage=0: Input should be greater than or equal to 1"]),
    ("asha-with-evaluation-interval", {**DET, "sweep": {"early_termination": {"type": "asha", "evaluation_interval": 2}}},
     ["sweep.early_termination: asha takes no evaluation_interval=2: it judges a trial only at its rungs, "
      "min_resource * reduction_factor**k reported values; to judge trials later, raise min_resource"]),
    ("asha-unknown-key", {**DET, "sweep": {"early_termination": {"type": "asha", "min_resourse": 2}}},
     ["sweep.early_termination.min_resourse: unknown key 'min_resourse' (did you mean 'min_resource'?)"]),
    ("asha-max-not-above-min", {**DET, "sweep": {"early_termination": {"type": "asha", "min_resource": 4,
                                                                       "max_resource": 4}}},
     ["sweep.early_termination: asha: max_resource=4 must be greater than min_resource=4"]),
    ("asha-reduction-factor-1", {**DET, "sweep": {"early_termination": {"type": "asha", "reduction_factor": 1}}},
     ["sweep.early_termination.reduction_factor=1: Input should be greater than or equal to 2"]),
    ("hyperband-without-max-resource", {**DET, "sweep": {"early_termination": {"type": "hyperband"}}},
     ["sweep.early_termination: hyperband needs max_resource"]),
    ("hyperband-too-many-brackets", {**DET, "sweep": {"early_termination": {"type": "hyperband", "max_resource": 9,
                                                                            "brackets": 4}}},
     ["sweep.early_termination: hyperband: brackets=4, but at most 3 with min_resource=1, max_resource=9"]),
    ("max-trials-0", {**DET, "limits": {"max_trials": 0}},
     ["limits.max_trials=0: Input should be greater than or equal to 1"]),
    ("max-trials-1001", {**DET, "limits": {"max_trials": 1001}},
     ["limits.max_trials=1001: Input should be less than or equal to 1000"]),
    ("max-concurrent-trials-101", {**DET, "limits": {"max_concurrent_trials": 101}},
     ["limits.max_concurrent_trials=101: Input should be less than or equal to 100"]),
    ("timeout-over-60-days", {**DET, "limits": {"timeout_minutes": 60 * 24 * 60 + 1}},
     ["limits.timeout_minutes=86401: Input should be less than or equal to 86400"]),
    ("min-not-below-max", {**DET, "search_space": [{"learning_rate": uniform(0.01, 0.001)}]},
     ["search_space[0].learning_rate: min_value=0.01 must be < max_value=0.001"]),
    ("min-equals-max", {**DET, "search_space": [{"learning_rate": uniform(0.01, 0.01)}]},
     ["search_space[0].learning_rate: min_value=0.01 must be < max_value=0.01"]),
    ("list-instead-of-choice", {**DET, "search_space": [{"optimizer": ["sgd", "adam"]}]},
     ["search_space[0].optimizer: ['sgd', 'adam']: write a list of values as {type: choice, values: [...]}"]),
    ("int-with-uniform", {**DET, "search_space": [{"number_of_epochs": uniform(5, 20)}]},
     ["search_space[0].number_of_epochs: number_of_epochs is an integer; use choice, randint, quniform, "
      "qloguniform, qnormal or qlognormal, not uniform"]),
    ("int-with-fractional-q", {**DET, "search_space": [{"number_of_epochs": {"type": "quniform", "min_value": 5,
                                                                             "max_value": 20, "q": 0.5}}]},
     ["search_space[0].number_of_epochs: number_of_epochs is an integer; q=0.5 must be a whole number"]),
    ("str-with-uniform", {**DET, "search_space": [{"optimizer": uniform(0, 1)}]},
     ["search_space[0].optimizer: optimizer takes a choice of values, not a uniform distribution"]),
    ("distribution-beyond-range", {**DET, "search_space": [{"learning_rate": uniform(0.001, 2)}]},
     ["search_space[0].learning_rate: uniform can draw 2, outside what learning_rate allows (float in [0, 1])"]),
    ("randint-below-minimum", {**DET, "search_space": [{"number_of_epochs": {"type": "randint", "upper": 5}}]},
     ["search_space[0].number_of_epochs: randint can draw 0, outside what number_of_epochs allows (int >= 1)"]),
    ("choice-out-of-range", {**DET, "search_space": [{"learning_rate": choice(0.01, 2.0)}]},
     ["search_space[0].learning_rate: choice value 2.0: out of range; expected float in [0, 1]"]),
    ("choice-not-allowed", {**DET, "search_space": [{"optimizer": choice("sgd", "adamx")}]},
     ["search_space[0].optimizer: choice value 'adamx': is not allowed; expected one of 'sgd', 'adam', 'adamw' "
      "(did you mean 'adam'?)"]),
    ("empty-choice", {**DET, "search_space": [{"optimizer": choice()}]},
     ["search_space[0].optimizer.values: List should have at least 1 item"]),
    ("model-not-of-the-task", {**DET, "training_parameters": {"model_name": "resnet50"}},
     ["model_name='resnet50' is not a model for image_object_detection; allowed: yolov5, fasterrcnn_resnet18_fpn"]),
    ("model-not-of-the-task-in-space", {**CLS, "search_space": [{"model_name": choice("resnet50", "yolov5")}]},
     ["model_name='yolov5' is not a model for image_classification"]),
    ("model-typo", {**CLS, "training_parameters": {"model_name": "resnet5"}},
     ["model_name='resnet5' is not a model for image_classification (did you mean 'resnet50'?)"]),
    ("key-in-both-places", {**DET, "training_parameters": {"learning_rate": 0.01},
                            "search_space": [{"learning_rate": uniform(0.001, 0.01)}]},
     ["search_space[0].learning_rate: also set in training_parameters; keep one"]),
    ("model-in-both-places", {**DET, "training_parameters": {"model_name": "yolov5"},
                              "search_space": [{"model_name": choice("yolov5")}]},
     ["training_parameters.model_name: the model is also chosen in search_space; keep one"]),
    ("job-wide-setting-swept", {**DET, "search_space": [{"seed": choice(0, 1)}]},
     ["search_space[0].seed: seed is fixed for a whole job; set it in training_parameters"]),
    ("layers-to-freeze-beyond-model", {**CLS, "training_parameters": {"model_name": "resnet50",
                                                                      "layers_to_freeze": 6}},
     ["training_parameters.layers_to_freeze=6: resnet50 has 5 layer groups; allowed 0..5"]),
    ("vit-crop-sizes", {**CLS, "training_parameters": {"train_crop_size": 256, "valid_resize_size": 288}},
     ["training_parameters (vitb16r224): vitb16r224 needs valid_crop_size == train_crop_size (got 224 and 256)"]),
    ("cross-rule-in-entry", {**DET, "search_space": [{"model_name": choice("fasterrcnn_resnet50_fpn"),
                                                      "min_size": choice(900), "max_size": choice(800)}]},
     ["search_space[0] (fasterrcnn_resnet50_fpn): max_size=800 must be >= min_size=900"]),
    ("bad-name", {**DET, "name": "My Job"}, ["name='My Job': String should match pattern"]),
    ("not-a-mapping", ["task", "image_classification"], ["a job must be a mapping of keys, got list"]),
]


@pytest.mark.parametrize(("job", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_job_error(job, expected):
    with pytest.raises(ConfigError) as e:
        parse_job(job, source="job.yaml")
    text = str(e.value)
    assert text.startswith("job.yaml: ")
    for part in expected:
        assert part in text, f"{part!r} not in:\n{text}"


def test_several_mistakes_are_named_in_one_error():
    job = {
        **DET,
        "limitz": {"max_trials": 2},  # unknown key
        "primary_metric": "accuracy",  # wrong primary metric
        "training_parameters": {"learning_rate": 1.5, "weighted_loss": 1},  # out of range, another task's
    }
    with pytest.raises(ConfigError) as e:
        parse_job(job, source="job.yaml")
    err = e.value
    assert len(err.problems) == 4, err.problems
    text = str(err)
    assert text.splitlines()[0] == "job.yaml: 4 problems:"
    for part in ("limitz: unknown key 'limitz' (did you mean 'limits'?)",
                 "training_parameters.learning_rate=1.5: out of range",
                 "training_parameters.weighted_loss: weighted_loss does not apply to task image_object_detection",
                 "primary_metric='accuracy': the primary metric of image_object_detection is fixed"):
        assert sum(part in p for p in err.problems) == 1, part
        assert f"  - {part}" in text


def test_problems_in_several_search_space_entries_are_all_named():
    job = {**DET, "search_space": [
        {"learning_rate": {"type": "uniform", "min_value": 0.001, "max_valu": 0.01}},
        {"model_name": choice("fasterrcnn_resnet50_fpn"), "optimizer": choice()},
    ]}
    with pytest.raises(ConfigError) as e:
        parse_job(job)
    text = str(e.value)
    assert "search_space[0].learning_rate.max_valu: unknown key 'max_valu'" in text
    assert "search_space[0].learning_rate.max_value: required key missing" in text
    assert "search_space[1].optimizer.values: List should have at least 1 item" in text


# --- valid jobs -----------------------------------------------------------------------------------

def test_valid_job_gets_defaults_and_typed_values():
    job = parse_job({**DET, "training_parameters": {"model_name": "fasterrcnn_resnet50_fpn", "min_size": "800",
                                                    "early_stopping": "true",
                                                    "validation_metric_type": "none"}})
    assert job.primary_metric == "mean_average_precision"
    assert job.training_parameters == {"model_name": "fasterrcnn_resnet50_fpn", "min_size": 800,
                                       "early_stopping": True, "validation_metric_type": "none"}
    assert job.limits.max_trials == 1 and job.limits.timeout_minutes == 7 * 24 * 60
    assert job.sweep.sampling_algorithm == "random"
    assert job.candidate_models() == ["fasterrcnn_resnet50_fpn"]
    by_model = resolved(job)["hyperparameters_by_model"]
    assert by_model["fasterrcnn_resnet50_fpn"]["min_size"] == 800
    assert by_model["fasterrcnn_resnet50_fpn"]["max_size"] == 1333


def test_concurrency_is_capped_at_max_trials():
    job = parse_job({**DET, "limits": {"max_trials": 3, "max_concurrent_trials": 10}})
    assert job.limits.max_concurrent_trials == 3


def test_correct_primary_metric_is_accepted():
    assert parse_job({**CLS, "primary_metric": "accuracy"}).primary_metric == "accuracy"


def test_grid_points():
    job = parse_job({**CLS, "sweep": {"sampling_algorithm": "grid"}, "search_space": [
        {"model_name": choice("resnet18", "resnet50"), "learning_rate": choice(0.01, 0.02, 0.03)},
        {"model_name": choice("mobilenetv2"), "optimizer": choice("adam", "adamw")},
    ]})
    assert grid_size(job) == 8
    points = grid_points(job)
    assert len(points) == 8
    assert points[0] == {"model_name": "resnet18", "learning_rate": 0.01}
    assert points[-1] == {"model_name": "mobilenetv2", "optimizer": "adamw"}


# --- job files ------------------------------------------------------------------------------------

def test_bad_yaml_names_the_file_and_line(tmp_path: Path):
    path = tmp_path / "job.yaml"
    path.write_text("task: image_classification\ntraining_data: train.jsonl\n  limits: 3\n")
    with pytest.raises(ConfigError) as e:
        load_job(path)
    assert e.value.source == f"{path}:3"
    assert str(e.value).startswith(f"{path}:3: not valid YAML: ")


def test_unclosed_bracket_names_the_file_and_line(tmp_path: Path):
    path = tmp_path / "job.yaml"
    path.write_text("task: image_classification\n\n\ntraining_data: [a\nlimits: {max_trials: 2}\n")
    with pytest.raises(ConfigError, match=rf"^{path}:5: not valid YAML"):
        load_job(path)


def test_missing_job_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="cannot read job file: No such file or directory"):
        load_job(tmp_path / "nope.yaml")


def test_validation_errors_name_the_file(tmp_path: Path):
    path = tmp_path / "job.yaml"
    path.write_text("task: image_classification\ntraining_data: train.jsonl\nlimitz: {}\n")
    with pytest.raises(ConfigError) as e:
        load_job(path)
    assert e.value.source == str(path)
    assert str(e.value) == f"{path}: limitz: unknown key 'limitz' (did you mean 'limits'?)"


def test_relative_data_paths_resolve_against_the_job_file(tmp_path: Path):
    folder = tmp_path / "jobs"
    folder.mkdir()
    path = folder / "job.yaml"
    path.write_text("task: image_classification\ntraining_data: data/train.jsonl\n"
                    "validation_data: ../val.jsonl\n")
    job = load_job(path)
    assert job.training_data == str(folder / "data" / "train.jsonl")
    assert job.validation_data == str(folder / ".." / "val.jsonl")


@pytest.mark.parametrize("location", ["s3://bucket/train.jsonl", "/abs/train.jsonl",
                                      "azureml://datastores/x/paths/train.jsonl"])
def test_absolute_paths_and_uris_are_kept(tmp_path: Path, location):
    path = tmp_path / "job.yaml"
    path.write_text(f"task: image_classification\ntraining_data: {location}\n")
    assert load_job(path).training_data == location


def test_parse_job_without_base_dir_keeps_relative_paths():
    assert parse_job({**CLS, "training_data": "data/train.jsonl"}).training_data == "data/train.jsonl"


def test_the_originals_mltable_input_mapping_is_read_as_its_path(tmp_path: Path):
    """The original's job files give data as `{path: ..., type: mltable}`; the path is what is read."""
    job_file = tmp_path / "job.yaml"
    job_file.write_text("task: image_classification\n"
                        "training_data: {path: ./data/training-mltable-folder, type: mltable}\n"
                        "validation_data: {path: 'azureml://datastores/ds/paths/val-mltable', type: mltable}\n")
    job = load_job(job_file)
    assert job.training_data == str(tmp_path / "data" / "training-mltable-folder")
    assert job.validation_data == "azureml://datastores/ds/paths/val-mltable"


@pytest.mark.parametrize("value", [{"path": "train.jsonl", "type": "uri_file"}, {"type": "mltable"},
                                   {"path": "x", "type": "mltable", "description": "?"}])
def test_other_input_mappings_are_refused(value):
    with pytest.raises(ConfigError) as e:
        parse_job({"task": "image_classification", "training_data": value})
    assert "training_data: " in str(e.value) and "{path: <MLTable folder>, type: mltable}" in str(e.value)
