"""The SDK-style API, the YAML job and the distributions survive every conversion unchanged."""

from __future__ import annotations

import math

import numpy as np
import pytest
import yaml

from automl_vision.errors import ConfigError
from automl_vision.spec import (
    AshaPolicy,
    AutoMLImageConfig,
    BanditPolicy,
    BayesianParameterSampling,
    GridParameterSampling,
    HyperbandPolicy,
    ImageTask,
    JobSpec,
    MedianStoppingPolicy,
    RandomParameterSampling,
    TruncationSelectionPolicy,
    choice,
    lognormal,
    loguniform,
    normal,
    parse_job,
    qlognormal,
    qloguniform,
    qnormal,
    quniform,
    randint,
    uniform,
)
from automl_vision.spec.distributions import DISTRIBUTION_TYPES
from spec_example import section_10_job


def roundtrip(job: JobSpec) -> None:
    """YAML and SDK round trips give back an equal job."""
    text = job.to_yaml()
    again = parse_job(yaml.safe_load(text))
    assert again == job
    assert again.to_yaml() == text
    assert AutoMLImageConfig.from_job(job).to_job() == job


# --- samplings and policies ------------------------------------------------------------------------

CONDITIONAL = RandomParameterSampling({
    "model": choice(
        {"model_name": choice("yolov5"), "learning_rate": uniform(0.0001, 0.01), "model_size": choice("small", "medium")},
        {"model_name": choice("fasterrcnn_resnet50_fpn"), "learning_rate": uniform(0.0001, 0.001),
         "optimizer": choice("sgd", "adam", "adamw"), "min_size": choice(600, 800)},
    ),
}, seed=7)

SAMPLINGS = {
    "random": RandomParameterSampling({"model_name": choice("resnet18", "mobilenetv2"),
                                       "learning_rate": uniform(0.001, 0.01)}),
    "grid": GridParameterSampling({"model_name": choice("resnet18", "resnet50"),
                                   "learning_rate": choice(0.01, 0.02), "optimizer": choice("sgd", "adam")}),
    "bayesian": BayesianParameterSampling({"learning_rate": uniform(0.001, 0.01),
                                           "number_of_epochs": quniform(5, 15, 1),
                                           "optimizer": choice("sgd", "adamw")}, seed=3),
}


@pytest.mark.parametrize("algorithm", list(SAMPLINGS))
def test_sampling_roundtrip(algorithm):
    config = AutoMLImageConfig(
        task=ImageTask.IMAGE_CLASSIFICATION, training_data="train.jsonl", validation_data="val.jsonl",
        hyperparameter_sampling=SAMPLINGS[algorithm], iterations=8, max_concurrent_iterations=2,
        arguments=["--early_stopping", 1, "--evaluation_frequency", "2", "--weighted_loss", 1],
    )
    job = config.to_job()
    assert job.sweep.sampling_algorithm == algorithm
    assert job.training_parameters == {"early_stopping": True, "evaluation_frequency": 2, "weighted_loss": 1}
    assert job.limits.max_trials == 8 and job.limits.max_concurrent_trials == 2
    assert len(job.search_space) == 1
    roundtrip(job)


def test_conditional_space_roundtrip():
    config = AutoMLImageConfig(
        task="image_object_detection", training_data="train.jsonl", hyperparameter_sampling=CONDITIONAL,
        early_termination_policy=BanditPolicy(evaluation_interval=2, slack_factor=0.2, delay_evaluation=6),
        iterations=10, max_concurrent_iterations=2, experiment_timeout_hours=1,
        arguments=["--early_stopping", True, "--evaluation_frequency", 1],
    )
    job = config.to_job()
    assert job.candidate_models() == ["yolov5", "fasterrcnn_resnet50_fpn"]
    assert [set(e) for e in job.search_space] == [
        {"model_name", "learning_rate", "model_size"},
        {"model_name", "learning_rate", "optimizer", "min_size"},
    ]
    assert job.limits.timeout_minutes == 60
    assert job.sweep.seed == 7
    roundtrip(job)
    back = AutoMLImageConfig.from_job(job)
    assert isinstance(back.hyperparameter_sampling, RandomParameterSampling)
    assert back.hyperparameter_sampling.parameter_space == CONDITIONAL.parameter_space


POLICIES = [
    BanditPolicy(evaluation_interval=2, slack_factor=0.2, delay_evaluation=6),
    BanditPolicy(slack_amount=0.05),
    MedianStoppingPolicy(evaluation_interval=1, delay_evaluation=5),
    TruncationSelectionPolicy(evaluation_interval=1, delay_evaluation=2, truncation_percentage=20,
                              exclude_finished_jobs=True),
    AshaPolicy(min_resource=2, max_resource=20),
    HyperbandPolicy(max_resource=27, reduction_factor=3, brackets=2),
    None,
]


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: "none" if p is None else f"{p.type}")
def test_policy_roundtrip(policy):
    config = AutoMLImageConfig(task=ImageTask.IMAGE_INSTANCE_SEGMENTATION, training_data="train.jsonl",
                               hyperparameter_sampling=RandomParameterSampling({"learning_rate": uniform(0.001, 0.01)}),
                               early_termination_policy=policy, iterations=6)
    job = config.to_job()
    assert job.sweep.early_termination == policy
    roundtrip(job)
    dumped = yaml.safe_load(job.to_yaml())
    if policy is not None:
        assert next(iter(dumped["sweep"]["early_termination"])) == "type"  # type first, for readability


def test_config_without_sampling():
    job = AutoMLImageConfig(task="image_classification_multilabel", training_data="t.jsonl",
                            arguments=["--model_name", "resnet50"]).to_job()
    assert job.search_space == [] and job.candidate_models() == ["resnet50"]
    roundtrip(job)


def test_automode_from_the_sdk_with_a_budget():
    job = AutoMLImageConfig(task="image_object_detection", training_data="t.jsonl", budget_hours=2.5,
                            max_concurrent_iterations=2).to_job()
    assert job.automode and job.limits.budget == 2.5 and job.limits.max_trials == 1000
    roundtrip(job)
    capped = AutoMLImageConfig(task="image_object_detection", training_data="t.jsonl", budget_hours=2.5,
                               iterations=12).to_job()
    assert capped.limits.max_trials == 12
    roundtrip(capped)


@pytest.mark.parametrize(("arguments", "message"), [
    (["--learning_rate"], "arguments must alternate '--name', value; got an odd count"),
    (["learning_rate", 0.1], "arguments: 'learning_rate' must be a flag such as '--learning_rate'"),
    (["--learning_rate", 5], "training_parameters.learning_rate=5: out of range"),
])
def test_bad_arguments(arguments, message):
    with pytest.raises(ConfigError, match=message):
        AutoMLImageConfig(task="image_classification", training_data="t.jsonl", arguments=arguments).to_job()


def test_conditional_key_must_hold_dicts():
    sampling = RandomParameterSampling({"model": choice("resnet18", "resnet50")})
    with pytest.raises(ConfigError, match=r"parameter_space\['model'\] must be choice\(\{...\}, \{...\}\) of dicts"):
        AutoMLImageConfig(task="image_classification", training_data="t.jsonl",
                          hyperparameter_sampling=sampling).to_job()


# --- the spec section 10 example ---------------------------------------------------------------------

SPEC_EXAMPLE = section_10_job("data/train.jsonl", "data/val.jsonl")


def test_spec_example_parses_and_roundtrips():
    job = parse_job(yaml.safe_load(SPEC_EXAMPLE))
    assert job.task is ImageTask.IMAGE_OBJECT_DETECTION
    assert job.primary_metric == "mean_average_precision"
    assert (job.limits.timeout_minutes, job.limits.max_trials, job.limits.max_concurrent_trials) == (60, 10, 2)
    assert job.training_parameters == {"early_stopping": True, "evaluation_frequency": 1}
    assert job.sweep.early_termination == BanditPolicy(evaluation_interval=2, slack_factor=0.2, delay_evaluation=6)
    assert job.candidate_models() == ["yolov5", "fasterrcnn_resnet50_fpn"]
    assert job.search_space[1]["min_size"] == choice(600, 800)
    roundtrip(job)


def test_spec_example_through_the_sdk():
    job = parse_job(yaml.safe_load(SPEC_EXAMPLE))
    config = AutoMLImageConfig(
        task=ImageTask.IMAGE_OBJECT_DETECTION, training_data="data/train.jsonl", validation_data="data/val.jsonl",
        hyperparameter_sampling=RandomParameterSampling({"model": choice(
            {"model_name": choice("yolov5"), "learning_rate": uniform(0.0001, 0.01),
             "model_size": choice("small", "medium")},
            {"model_name": choice("fasterrcnn_resnet50_fpn"), "learning_rate": uniform(0.0001, 0.001),
             "optimizer": choice("sgd", "adam", "adamw"), "min_size": choice(600, 800)},
        )}),
        early_termination_policy=BanditPolicy(evaluation_interval=2, slack_factor=0.2, delay_evaluation=6),
        iterations=10, max_concurrent_iterations=2, experiment_timeout_hours=1,
        arguments=["--early_stopping", 1, "--evaluation_frequency", 1],
    )
    assert config.to_job() == job


# --- distributions ---------------------------------------------------------------------------------

# (constructor call, a hyperparameter it suits)
DISTRIBUTIONS = [
    (choice(0.001, 0.01, 0.1), "learning_rate"),
    (randint(5), "early_stopping_delay"),
    (uniform(0.001, 0.01), "learning_rate"),
    (loguniform(-9, -3), "learning_rate"),
    (quniform(2, 20, 2), "number_of_epochs"),
    (qloguniform(0, 3, 1), "number_of_epochs"),
    (normal(0.01, 0.001), "learning_rate"),
    (lognormal(-5, 1), "learning_rate"),
    (qnormal(16, 4, 2), "training_batch_size"),
    (qlognormal(2, 0.5, 1), "number_of_epochs"),
]


def test_every_distribution_type_is_covered():
    assert sorted(d.type for d, _ in DISTRIBUTIONS) == sorted(DISTRIBUTION_TYPES)


@pytest.mark.parametrize(("dist", "name"), DISTRIBUTIONS, ids=[d.type for d, _ in DISTRIBUTIONS])
def test_distribution_roundtrip(dist, name):
    config = AutoMLImageConfig(
        task="image_object_detection", training_data="t.jsonl",
        hyperparameter_sampling=RandomParameterSampling({"model_name": choice("fasterrcnn_resnet50_fpn"), name: dist}),
    )
    job = config.to_job()
    assert job.search_space[0][name] == dist
    roundtrip(job)
    dumped = yaml.safe_load(job.to_yaml())["search_space"][0][name]
    assert dumped["type"] == dist.type and next(iter(dumped)) == "type"
    assert DISTRIBUTION_TYPES[dist.type].model_validate(dumped) == dist


@pytest.mark.parametrize(("dist", "name"), DISTRIBUTIONS, ids=[d.type for d, _ in DISTRIBUTIONS])
def test_seeded_sample_lies_within_bounds(dist, name):
    rng = np.random.default_rng(1234)
    draws = [dist.sample(rng) for _ in range(300)]
    again = [dist.sample(np.random.default_rng(1234)) for _ in range(1)]
    assert again[0] == draws[0]  # the seed decides the draws
    assert all(math.isfinite(x) for x in draws if not isinstance(x, str))
    kind = dist.type
    if kind == "choice":
        assert set(draws) <= set(dist.values) and len(set(draws)) == len(dist.values)
    elif kind == "randint":
        assert all(isinstance(x, int) and 0 <= x < dist.upper for x in draws)
        assert set(draws) == set(range(dist.upper))
    elif kind == "uniform":
        assert all(dist.min_value <= x <= dist.max_value for x in draws)
    elif kind == "loguniform":
        # bounds are natural-log exponents: draws lie in [e^min, e^max], far from [min, max] themselves
        assert all(math.exp(dist.min_value) <= x <= math.exp(dist.max_value) for x in draws)
        assert all(dist.min_value <= math.log(x) <= dist.max_value for x in draws)
        assert dist.bounds() == pytest.approx((math.exp(-9), math.exp(-3)))
    elif kind in ("quniform", "qloguniform"):
        lo, hi = (dist.min_value, dist.max_value) if kind == "quniform" else (
            math.exp(dist.min_value), math.exp(dist.max_value))
        assert all(lo - dist.q / 2 <= x <= hi + dist.q / 2 for x in draws)
        assert all(x / dist.q == pytest.approx(round(x / dist.q)) for x in draws)
    elif kind in ("lognormal", "qlognormal"):
        assert all(x >= 0 for x in draws)
        if kind == "lognormal":
            assert all(x > 0 for x in draws)
            logs = np.log(draws)
            assert abs(logs.mean() - dist.mu) < 0.3 and abs(logs.std() - dist.sigma) < 0.3
    elif kind in ("normal", "qnormal"):
        assert abs(np.mean(draws) - dist.mu) < 4 * dist.sigma / math.sqrt(len(draws)) + getattr(dist, "q", 0)
    if kind in ("qnormal", "qlognormal"):
        assert all(x / dist.q == pytest.approx(round(x / dist.q)) for x in draws)
    bounds = dist.bounds()
    if bounds is not None:
        assert all(bounds[0] <= x <= bounds[1] for x in draws)


@pytest.mark.parametrize(("call", "message"), [
    (lambda: uniform(1, 1), "min_value=1.0 must be < max_value=1.0"),
    (lambda: loguniform(-2, -3), "min_value=-2.0 must be < max_value=-3.0"),
    (lambda: quniform(0, 10, 0), "greater than 0"),
    (lambda: randint(0), "greater than or equal to 1"),
    (lambda: normal(0, 0), "greater than 0"),
    (lambda: choice(), "at least 1 item"),
])
def test_bad_distribution_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_choice_takes_a_list_or_values():
    assert choice([1, 2]) == choice(1, 2) == choice((1, 2))
