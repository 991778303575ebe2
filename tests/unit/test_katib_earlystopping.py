"""Katib early-stopping rules from the policies, and the metrics collector's side of them.

The central property: a frozen rule, checked the way Katib's collector checks it (RuleSet: the
objective's best value so far, from start_step on), stops a new trial exactly when the policy
function the local sweep uses (spec.policies.decide) terminates it at its first evaluation point.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from automl_vision.earlystopping import rules as es
from automl_vision.earlystopping.collector import (
    UNAVAILABLE,
    ZERO_TIME,
    MetricLog,
    RuleSet,
    metric_value,
    parse_text_log,
)
from automl_vision.spec.policies import BanditPolicy, MedianStoppingPolicy, TruncationSelectionPolicy, decide
from automl_vision.spec.termination import is_evaluation_point

NEW = "trial-new"  # sorts after "trial-NN": on equal values the new trial is the later (worse) one


def collector_stops(rule: es.StopRule | None, values: list[float], maximize: bool) -> bool:
    """Feed a trial's reported values to Katib's rule checker; True when it would stop the trial."""
    if rule is None:
        return False
    rules = RuleSet([rule], rule.metric, maximize)
    for v in values:
        rules.update(rule.metric, v)
        if rules.stop:
            return True
    return False


def _history(rng, n_trials: int, max_len: int) -> dict[str, list[float]]:
    return {f"trial-{i:02d}": list(rng.uniform(0.1, 0.9, int(rng.integers(1, max_len + 1))).round(4))
            for i in range(n_trials)}


POLICIES = [
    BanditPolicy(evaluation_interval=1, delay_evaluation=0, slack_factor=0.2),
    BanditPolicy(evaluation_interval=2, delay_evaluation=3, slack_factor=0.1),
    BanditPolicy(evaluation_interval=1, delay_evaluation=2, slack_amount=0.15),
    TruncationSelectionPolicy(evaluation_interval=1, delay_evaluation=2, truncation_percentage=30),
    TruncationSelectionPolicy(evaluation_interval=3, delay_evaluation=1, truncation_percentage=50),
    TruncationSelectionPolicy(evaluation_interval=1, delay_evaluation=0, truncation_percentage=99),
]


@pytest.mark.parametrize("maximize", [True, False])
@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: f"{p.type}-{p.evaluation_interval}-{p.delay_evaluation}")
def test_frozen_rule_decides_as_the_policy_function(policy, maximize):
    rng = np.random.default_rng(7)
    k = es.first_evaluation_step(policy)
    checked = stopped = 0
    for _ in range(150):
        earlier = _history(rng, int(rng.integers(0, 7)), k + 3)
        rule = es.stop_rule(policy, "accuracy", earlier, maximize=maximize)
        # The new trial's values up to k, improving (so its value at k is its best so far: the one
        # truncation selection ranks; see test_truncation_compares_the_best_so_far for a dip).
        values = sorted(rng.uniform(0.1, 0.9, k).round(4), reverse=not maximize)
        expected = decide(policy, NEW, {**earlier, NEW: list(values)}, maximize=maximize).terminate
        assert collector_stops(rule, list(values), maximize) == expected, (earlier, values, rule)
        if rule is not None:
            assert rule.start_step == k and rule.metric == "accuracy"
        checked += 1
        stopped += expected
    assert 0 < stopped < checked  # both outcomes occur


def test_bandit_rule_uses_the_best_so_far_like_the_policy():
    policy = BanditPolicy(evaluation_interval=1, delay_evaluation=3, slack_factor=0.25)
    earlier = {"trial-00": [0.5, 0.7, 0.8, 0.9], "trial-01": [0.4, 0.4]}
    rule = es.stop_rule(policy, "accuracy", earlier, maximize=True)
    assert rule == es.StopRule("accuracy", "less", 0.8 / 1.25, 3)  # intervals 1..3 only: 0.8, not 0.9
    for values in ([0.1, 0.65, 0.2], [0.1, 0.2, 0.63], [0.62, 0.1, 0.1]):
        assert collector_stops(rule, values, True) == decide(policy, NEW, {**earlier, NEW: values}).terminate


def test_truncation_compares_the_best_so_far():
    """Katib's collector compares the objective's best value so far; the policy ranks the value AT the
    interval. A trial whose value dips at the evaluation point is cut locally but not on Katib."""
    policy = TruncationSelectionPolicy(evaluation_interval=2, delay_evaluation=0, truncation_percentage=50)
    earlier = {"trial-00": [0.5, 0.6], "trial-01": [0.6, 0.7], "trial-02": [0.7, 0.8]}
    rule = es.stop_rule(policy, "accuracy", earlier, maximize=True)
    assert rule == es.StopRule("accuracy", "less", 0.7, 2)  # cut 2 of 4: below the 2nd worst (0.7)
    dip = [0.75, 0.65]
    assert decide(policy, NEW, {**earlier, NEW: dip}).terminate
    assert not collector_stops(rule, dip, True)


@pytest.mark.parametrize("policy, history, why", [
    (BanditPolicy(slack_factor=0.2), {}, "no earlier trial"),
    (BanditPolicy(slack_factor=0.2), {"t": [math.nan]}, "only non-finite values"),
    (TruncationSelectionPolicy(truncation_percentage=30), {"t": [0.5], "u": [0.6]}, "30% of 3 rounds to 0"),
    (TruncationSelectionPolicy(truncation_percentage=50, delay_evaluation=3), {"t": [0.5, 0.6]}, "none reached k"),
])
def test_no_rule_when_nothing_can_be_cut(policy, history, why):
    assert es.stop_rule(policy, "accuracy", history, maximize=True) is None, why


@pytest.mark.parametrize("interval, delay, k", [(1, 0, 1), (1, 5, 5), (2, 6, 6), (2, 5, 6), (3, 0, 3), (4, 9, 12)])
def test_first_evaluation_step(interval, delay, k):
    policy = BanditPolicy(evaluation_interval=interval, delay_evaluation=delay, slack_amount=0.1)
    assert es.first_evaluation_step(policy) == k
    assert is_evaluation_point(policy, k) and not any(is_evaluation_point(policy, n) for n in range(1, k))


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: p.type)
def test_settings_round_trip(policy):
    name, settings = es.katib_settings(policy)
    assert es.policy_from_settings(name, dict(settings)) == policy


@pytest.mark.parametrize("algorithm, settings, message", [
    ("medianstop", {}, "unknown early-stopping algorithm 'medianstop'; this service runs bandit, truncation-selection"),
    ("bandit", {"slack_factor": "0.2", "slack": "1"}, "bandit: unknown setting(s) 'slack'; allowed: evaluation_interval"),
    ("bandit", {}, "bandit: settings: bandit needs exactly one of slack_factor or slack_amount"),
    ("bandit", {"slack_factor": "x"}, "bandit: slack_factor: Input should be a valid number"),
    ("truncation-selection", {"truncation_percentage": "100"},
     "truncation-selection: truncation_percentage: Input should be less than or equal to 99"),
    ("truncation-selection", {"truncation_percentage": "10", "exclude_finished_jobs": "true"},
     "truncation-selection: exclude_finished_jobs: on Katib every trial whose values"),
])
def test_invalid_settings(algorithm, settings, message):
    with pytest.raises(ValueError) as e:
        es.policy_from_settings(algorithm, settings)
    assert str(e.value).startswith(message)


def test_median_stopping_is_not_served_here():
    with pytest.raises(ValueError, match="medianstop"):
        es.katib_settings(MedianStoppingPolicy())


# --- the collector ---------------------------------------------------------------------------------

LOG = """\
2026-01-01T10:00:00Z epoch=1 accuracy=0.5 loss=1.2 balanced_accuracy=0.4
10:00:01 INFO epoch 1 done
2026-01-01T10:00:02.5+02:00 epoch=2 accuracy=0.75 loss=0.9
epoch=3 accuracy=0.7 loss=0.8
2026-13-01T10:00:00Z accuracy=0.6
"""


def test_parse_text_log_as_katib():
    logs = parse_text_log(LOG.splitlines(), ["accuracy", "loss"])
    assert logs == [
        MetricLog("2026-01-01T10:00:00Z", "accuracy", "0.5"), MetricLog("2026-01-01T10:00:00Z", "loss", "1.2"),
        MetricLog("2026-01-01T10:00:02.5+02:00", "accuracy", "0.75"),
        MetricLog("2026-01-01T10:00:02.5+02:00", "loss", "0.9"),
        # no timestamp first: Go's zero time (such values cannot be ordered for early stopping)
        MetricLog(ZERO_TIME, "accuracy", "0.7"), MetricLog(ZERO_TIME, "loss", "0.8"),
        MetricLog(ZERO_TIME, "accuracy", "0.6"),  # month 13 is no time
    ]
    assert metric_value(logs, "accuracy", "max") == 0.75
    assert metric_value(logs, "accuracy", "latest") == 0.6
    assert metric_value(logs, "loss", "min") == 0.8


def test_missing_objective_is_stored_unavailable():
    assert parse_text_log(["2026-01-01T10:00:00Z loss=0.3"], ["accuracy", "loss"]) == [
        MetricLog(ZERO_TIME, "accuracy", UNAVAILABLE)]


def test_ruleset_waits_for_start_step_and_keeps_the_best():
    rules = RuleSet([es.StopRule("accuracy", "less", 0.6, 3)], "accuracy", maximize=True)
    for line in ["2026-01-01T10:00:00Z epoch=1 accuracy=0.2", "2026-01-01T10:00:01Z epoch=2 accuracy=0.3"]:
        rules.update_line(line)
        assert not rules.stop  # below 0.6, but before start_step
    rules.update_line("2026-01-01T10:00:02Z epoch=3 accuracy=0.4 loss=1")
    assert rules.stop
    kept = RuleSet([es.StopRule("accuracy", "less", 0.6, 2)], "accuracy", maximize=True)
    for v in (0.7, 0.1, 0.1):  # the best so far (0.7) is compared, not the latest
        kept.update("accuracy", v)
    assert not kept.stop


# --- the service's status write ----------------------------------------------------------------------

@pytest.mark.parametrize("status, expected_types", [
    ({"conditions": [{"type": "Running", "status": "True"}]}, ["Running", "EarlyStopped"]),
    ({"startTime": "2026-01-01T10:00:00Z"}, ["EarlyStopped"]),  # a status without conditions
    ({"conditions": None}, ["EarlyStopped"]),
    (None, ["EarlyStopped"]),  # no status at all
])
def test_status_patch_appends_the_condition_under_a_version_precondition(status, expected_types):
    pytest.importorskip("grpc")
    from kube_api_fake import json_patch

    from automl_vision.earlystopping.service import early_stopped_condition, is_early_stopped, status_patch

    trial = {"metadata": {"name": "t", "resourceVersion": "12"}, **({"status": status} if status is not None else {})}
    ops = status_patch(trial, early_stopped_condition())
    assert ops[0] == {"op": "replace", "path": "/metadata/resourceVersion", "value": "12"}
    assert [op["op"] for op in ops[1:]] == ["add"]  # only adds: nothing read is written back
    patched = json_patch(trial, ops)
    assert [c["type"] for c in patched["status"]["conditions"]] == expected_types
    assert is_early_stopped(patched) and not is_early_stopped(trial)
    assert {k: v for k, v in patched["status"].items() if k != "conditions"} == \
        {k: v for k, v in (status or {}).items() if k != "conditions"}
    # the same patch against a trial the controller has written since: the version no longer matches
    newer = json_patch({**trial, "metadata": {"name": "t", "resourceVersion": "13"}}, ops)
    assert newer["metadata"]["resourceVersion"] == "12"  # what the API server compares with its 13: 409
