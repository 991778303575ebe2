"""Sampling trials from a search space: every distribution drawn as the spec defines it, checked
statistically over a 1000-trial random sweep; grid coverage; reproducibility; Bayesian sampling."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from scipy import stats

from automl_vision.errors import ConfigError
from automl_vision.spec.job import grid_points, parse_job
from automl_vision.sweep.sampling import (
    BayesianSampling,
    Observation,
    bayesian_startup_trials,
    make_sampler,
    sample_trials,
)
from automl_vision.sweep.space import quantize

CLS = {"task": "image_classification", "training_data": "train.jsonl"}
P_MIN = 1e-3  # the draws are seeded, so each test is deterministic; this only sets how strict it is


def d(kind: str, **kw) -> dict:
    return {"type": kind, **kw}


# One entry per model family, every distribution of the spec somewhere.
CONDITIONAL = [
    {   # entry 0
        "model_name": d("choice", values=["resnet18", "resnet34", "resnet50"]),
        "learning_rate": d("loguniform", min_value=-6, max_value=-2),
        "optimizer": d("choice", values=["sgd", "adam", "adamw"]),
        "training_batch_size": d("quniform", min_value=8, max_value=64, q=8),
        "weight_decay": d("uniform", min_value=0.0, max_value=0.01),
    },
    {   # entry 1
        "model_name": d("choice", values=["mobilenetv2"]),
        "momentum": d("normal", mu=0.9, sigma=0.02),
        "learning_rate": d("lognormal", mu=-4, sigma=0.5),
        "warmup_cosine_lr_warmup_epochs": d("randint", upper=4),
        "step_lr_gamma": d("qnormal", mu=0.5, sigma=0.1, q=0.05),
    },
    {   # entry 2
        "model_name": d("choice", values=["seresnext"]),
        "learning_rate": d("qloguniform", min_value=-7, max_value=-3, q=0.0005),
        "validation_batch_size": d("qlognormal", mu=3, sigma=0.5, q=1),
        "number_of_epochs": 5,  # a fixed value of this entry
    },
]


@pytest.fixture(scope="module")
def thousand():
    job = parse_job({**CLS, "limits": {"max_trials": 1000}, "search_space": CONDITIONAL,
                     "sweep": {"seed": 7}})
    return sample_trials(job)


def _entry(params: dict) -> int:
    return {"resnet18": 0, "resnet34": 0, "resnet50": 0, "mobilenetv2": 1, "seresnext": 2}[params["model_name"]]


def test_1000_trials_each_has_exactly_one_entrys_keys(thousand):
    assert len(thousand) == 1000
    for params in thousand:
        assert set(params) == set(CONDITIONAL[_entry(params)]), params


def test_entries_are_chosen_uniformly(thousand):
    counts = Counter(_entry(p) for p in thousand)
    assert stats.chisquare([counts[0], counts[1], counts[2]]).pvalue > P_MIN


def test_choice_is_uniform_within_its_entry(thousand):
    entry0 = [p for p in thousand if _entry(p) == 0]
    for name, values in (("model_name", ["resnet18", "resnet34", "resnet50"]), ("optimizer", ["sgd", "adam", "adamw"])):
        counts = Counter(p[name] for p in entry0)
        assert set(counts) == set(values)
        assert stats.chisquare([counts[v] for v in values]).pvalue > P_MIN


def _values(trials, entry, name):
    return np.array([p[name] for p in trials if _entry(p) == entry], dtype=float)


@pytest.mark.parametrize("entry, name, transform, reference", [
    # loguniform(-6, -2): the natural log of a draw is uniform on [-6, -2]
    (0, "learning_rate", np.log, stats.uniform(loc=-6, scale=4)),
    (0, "weight_decay", None, stats.uniform(loc=0.0, scale=0.01)),
    (1, "momentum", None, stats.norm(loc=0.9, scale=0.02)),
    # lognormal(mu, sigma): the log of a draw is normal(mu, sigma)
    (1, "learning_rate", np.log, stats.norm(loc=-4, scale=0.5)),
])
def test_continuous_distributions(thousand, entry, name, transform, reference):
    x = _values(thousand, entry, name)
    if transform is not None:
        x = transform(x)
    assert stats.kstest(x, reference.cdf).pvalue > P_MIN


def test_quniform_rounds_to_q_with_half_weight_at_the_ends(thousand):
    # round(U(8, 64) / 8) * 8: 8 and 64 take half an interval (4/56), 16..56 a whole one (8/56)
    x = _values(thousand, 0, "training_batch_size")
    support = list(range(8, 65, 8))
    counts = Counter(int(v) for v in x)
    assert set(counts) <= set(support)
    expected = np.array([4 if v in (8, 64) else 8 for v in support]) / 56 * len(x)
    assert stats.chisquare([counts[v] for v in support], expected).pvalue > P_MIN
    assert all(isinstance(p["training_batch_size"], int) for p in thousand if _entry(p) == 0)


def test_randint_is_uniform_over_0_to_upper_minus_1(thousand):
    x = _values(thousand, 1, "warmup_cosine_lr_warmup_epochs")
    counts = Counter(int(v) for v in x)
    assert set(counts) == {0, 1, 2, 3}
    assert stats.chisquare([counts[v] for v in range(4)]).pvalue > P_MIN


def test_qnormal_is_a_rounded_normal(thousand):
    x = _values(thousand, 1, "step_lr_gamma")
    assert np.allclose(np.round(x / 0.05) * 0.05, x)
    # P(value = k q) = P((k - 1/2) q <= normal < (k + 1/2) q)
    support = sorted(set(np.round(x / 0.05).astype(int)))
    norm = stats.norm(0.5, 0.1)
    probs = np.array([norm.cdf((k + 0.5) * 0.05) - norm.cdf((k - 0.5) * 0.05) for k in support])
    counts = Counter(np.round(x / 0.05).astype(int))
    observed = np.array([counts[k] for k in support])
    expected = probs / probs.sum() * len(x)
    keep = expected >= 5  # chi-square needs enough expected per cell: pool the tails
    obs = np.append(observed[keep], observed[~keep].sum())
    exp = np.append(expected[keep], expected[~keep].sum())
    assert stats.chisquare(obs, exp).pvalue > P_MIN


def test_qloguniform_and_qlognormal(thousand):
    lr = _values(thousand, 2, "learning_rate")
    assert np.allclose(np.round(lr / 0.0005) * 0.0005, lr)
    assert lr.min() >= quantize(math.exp(-7), 0.0005) and lr.max() <= quantize(math.exp(-3), 0.0005)
    vb = _values(thousand, 2, "validation_batch_size")
    assert np.all(vb == np.round(vb)) and vb.min() >= 1
    # log of a qlognormal(3, 0.5, q=1) draw is about normal(3, 0.5): its median is e^3 ~ 20
    assert abs(np.median(vb) - math.exp(3)) <= 2
    assert all(p["number_of_epochs"] == 5 for p in thousand if _entry(p) == 2)


def test_random_is_seeded_and_prefix_stable():
    def draw(n, seed):
        job = parse_job({**CLS, "limits": {"max_trials": n}, "search_space": CONDITIONAL, "sweep": {"seed": seed}})
        return sample_trials(job)

    assert draw(20, 3) == draw(20, 3)
    assert draw(20, 3) != draw(20, 4)
    # more trials (a resumed sweep given a larger max_trials) keep the first ones
    assert draw(50, 3)[:20] == draw(20, 3)


def test_no_search_space_is_one_trial_of_defaults():
    assert sample_trials(parse_job({**CLS, "limits": {"max_trials": 5}})) == [{}]


# --- grid -----------------------------------------------------------------------------------------

GRID = [
    {"model_name": d("choice", values=["resnet18", "resnet50"]), "learning_rate": d("choice", values=[0.01, 0.001]),
     "optimizer": d("choice", values=["sgd", "adamw"])},
    {"model_name": d("choice", values=["mobilenetv2"]), "learning_rate": d("choice", values=[0.05, 0.1])},
]


def _grid_job(max_trials, seed=0):
    return parse_job({**CLS, "sweep": {"sampling_algorithm": "grid", "seed": seed},
                      "limits": {"max_trials": max_trials}, "search_space": GRID})


def test_grid_visits_every_point_once():
    trials = sample_trials(_grid_job(100))
    assert len(trials) == 10  # 2 * 2 * 2 + 1 * 2
    assert sorted(map(repr, trials)) == sorted(map(repr, grid_points(_grid_job(100))))


def test_grid_smaller_budget_runs_distinct_points_spread_over_entries():
    trials = sample_trials(_grid_job(5))
    assert len(trials) == 5
    assert len({repr(t) for t in trials}) == 5
    # the seeded shuffle: the first 5 points are not just the first entry's
    assert trials == sample_trials(_grid_job(5))
    assert trials != grid_points(_grid_job(5))[:5]
    assert sample_trials(_grid_job(10, seed=1)) != sample_trials(_grid_job(10, seed=2))


# --- refused spaces (spec section 7), one row per distribution --------------------------------------

DISTS = {
    "choice": d("choice", values=[0.01, 0.02]),
    "randint": d("randint", upper=2),
    "uniform": d("uniform", min_value=0.001, max_value=0.1),
    "loguniform": d("loguniform", min_value=-6, max_value=-2),
    "quniform": d("quniform", min_value=0.01, max_value=0.1, q=0.01),
    "qloguniform": d("qloguniform", min_value=-6, max_value=-2, q=0.001),
    "normal": d("normal", mu=0.05, sigma=0.01),
    "lognormal": d("lognormal", mu=-4, sigma=0.5),
    "qnormal": d("qnormal", mu=0.05, sigma=0.01, q=0.01),
    "qlognormal": d("qlognormal", mu=-4, sigma=0.5, q=0.001),
}


@pytest.mark.parametrize("algo, kind, message", [
    *[("grid", k, None if k == "choice" else f"search_space[0].learning_rate: grid sampling takes only choice "
                                              f"distributions, not {k}") for k in DISTS],
    *[("bayesian", k, None if k in ("choice", "uniform", "quniform") else
       f"search_space[0].learning_rate: bayesian sampling takes only choice, uniform and quniform, not {k}")
      for k in DISTS],
    *[("random", k, None) for k in DISTS],
])
def test_which_distributions_each_algorithm_takes(algo, kind, message):
    job = {**CLS, "sweep": {"sampling_algorithm": algo},
           "search_space": [{"model_name": d("choice", values=["resnet18"]), "learning_rate": DISTS[kind]}]}
    if message is None:
        assert make_sampler(parse_job(job)).total >= 1
    else:
        with pytest.raises(ConfigError) as e:
            parse_job(job)
        assert message in str(e.value)


@pytest.mark.parametrize("changes, message", [
    ({"sweep": {"sampling_algorithm": "bayesian"}, "search_space": GRID},
     "sweep.sampling_algorithm=bayesian does not support a conditional search space (2 entries)"),
    ({"sweep": {"sampling_algorithm": "bayesian", "early_termination": {"type": "bandit", "slack_factor": 0.1}},
      "search_space": [{"learning_rate": DISTS["uniform"]}]},
     "sweep.early_termination: bayesian sampling does not support early termination"),
    ({"search_space": [{"model_name": d("choice", values=["resnet18"]), "layers_to_freeze": d("randint", upper=9)}]},
     "search_space[0].layers_to_freeze: randint can draw 8: resnet18 has 5 layer groups; allowed 0..5"),
    ({"search_space": [{"model_name": d("choice", values=["mobilenetv2", "resnet18"]),
                        "layers_to_freeze": d("quniform", min_value=0, max_value=7, q=1)}]},
     "search_space[0].layers_to_freeze: quniform can draw 7: resnet18 has 5 layer groups; allowed 0..5"),
    ({"search_space": [{"training_batch_size": d("lognormal", mu=3, sigma=0.5)}]},
     "search_space[0].training_batch_size: training_batch_size is an integer; use choice, randint, quniform, "
     "qloguniform, qnormal or qlognormal, not lognormal"),
])
def test_refused_sweeps(changes, message):
    with pytest.raises(ConfigError) as e:
        parse_job({**CLS, **changes})
    assert message in str(e.value)


# --- Bayesian ---------------------------------------------------------------------------------------

BAYES = {**CLS, "sweep": {"sampling_algorithm": "bayesian", "seed": 5}, "limits": {"max_trials": 10},
         "search_space": [{"model_name": d("choice", values=["resnet18", "mobilenetv2"]),
                           "learning_rate": d("uniform", min_value=0.0, max_value=0.2),
                           "training_batch_size": d("quniform", min_value=8, max_value=64, q=8)}]}


def _objective(p: dict) -> float:
    # best near learning_rate 0.05 with resnet18; batch size matters a little
    return 1 - 40 * (p["learning_rate"] - 0.05) ** 2 - (0.2 if p["model_name"] == "mobilenetv2" else 0) \
        - abs(p["training_batch_size"] - 32) / 640


@pytest.fixture(scope="module")
def bayes_run():
    """One sequential Bayesian sweep on a known objective: (suggestions, observations)."""
    sampler = make_sampler(parse_job(BAYES))
    suggestions, observations = [], []
    for i in range(sampler.total):
        s = sampler.suggest(i, observations)
        suggestions.append(s)
        observations.append(Observation(s.sampler_params, "complete", _objective(s.parameters)))
    return suggestions, observations


def test_bayesian_uses_the_gp_sampler(bayes_run):
    sampler = make_sampler(parse_job(BAYES))
    assert isinstance(sampler, BayesianSampling) and "GPSampler" in sampler.description
    assert sampler.startup == bayesian_startup_trials(10) == 2
    for s in bayes_run[0]:
        assert s.parameters["model_name"] in ("resnet18", "mobilenetv2")
        assert 0.0 <= s.parameters["learning_rate"] <= 0.2
        assert s.parameters["training_batch_size"] in range(8, 65, 8)


@pytest.mark.parametrize("index", [1, 6, 9])
def test_bayesian_suggestion_depends_only_on_seed_index_and_results(bayes_run, index):
    # reproducible, and what a resumed sweep relies on: a new sampler shown the same results
    # suggests the same trial
    suggestions, observations = bayes_run
    assert make_sampler(parse_job(BAYES)).suggest(index, observations[:index]) == suggestions[index]


def test_bayesian_learns_from_results():
    # one learning rate, best at 0.05: after 2 random trials the Gaussian process closes in on it
    job = parse_job({**BAYES, "limits": {"max_trials": 8},
                     "search_space": [{"learning_rate": d("uniform", min_value=0.0, max_value=0.2)}]})
    sampler = make_sampler(job)
    observations, tried = [], []
    for i in range(sampler.total):
        s = sampler.suggest(i, observations)
        tried.append(s.parameters["learning_rate"])
        observations.append(Observation(s.sampler_params, "complete", -(tried[-1] - 0.05) ** 2))
    assert min(abs(x - 0.05) for x in tried[:2]) > 0.01  # the random start did not find it
    assert min(abs(x - 0.05) for x in tried[2:]) < 0.005, tried


def test_bayesian_running_trials_are_not_suggested_again(bayes_run):
    suggestions, observations = bayes_run
    sampler = make_sampler(parse_job(BAYES))
    first = sampler.suggest(5, observations[:5])
    second = sampler.suggest(6, observations[:5] + [Observation(first.sampler_params, "running")])
    assert second.parameters != first.parameters
