"""Katib early-stopping rules from the policies, and the metrics collector's side of them.

The central property: a frozen rule, checked the way Katib's collector checks it (RuleSet: the
objective's best value so far, at the start_step-th reported value), stops a new trial exactly when
the policy function the local sweep uses (spec.policies.decide) terminates it at its first
evaluation point (bandit, truncation selection) or its first rung (asha, hyperband).
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
from automl_vision.spec.policies import (
    AshaPolicy,
    BanditPolicy,
    HyperbandPolicy,
    MedianStoppingPolicy,
    TruncationSelectionPolicy,
    decide,
)
from automl_vision.spec.termination import first_rung, is_evaluation_point, trial_bracket

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


RUNG_POLICIES = [
    AshaPolicy(),
    AshaPolicy(min_resource=2, reduction_factor=2),
    AshaPolicy(min_resource=3, max_resource=20, reduction_factor=2.5),
    HyperbandPolicy(max_resource=9),  # brackets 0, 1, 2 start at 1, 3, 9 (bracket 2: no rung)
    HyperbandPolicy(max_resource=8, reduction_factor=2, brackets=3),  # start at 1, 2, 4
]
GRID = np.round(np.arange(0.1, 0.95, 0.05), 2)  # coarse values: ties are common


def _rung_id(policy) -> str:
    return f"{policy.type}-{policy.min_resource}-{policy.max_resource}-{policy.reduction_factor:g}"


@pytest.mark.parametrize("maximize", [True, False])
@pytest.mark.parametrize("policy", RUNG_POLICIES, ids=_rung_id)
def test_frozen_rung_rule_decides_as_the_policy_function(policy, maximize):
    """The new trial is the next one in creation order (it loses ties); the collector compares its best
    value so far at the first rung of its bracket, once: later values change nothing."""
    rng = np.random.default_rng(11)
    checked = stopped = 0
    for _ in range(300):
        m = int(rng.integers(0, 12))
        earlier = {f"trial-{i:02d}": [float(v) for v in rng.choice(GRID, int(rng.integers(1, 10)))] for i in range(m)}
        for values in earlier.values():
            if rng.random() < 0.05:
                values[0] = math.nan  # locally the worst value (Katib never reads one)
        new = f"trial-{m:02d}"
        rule = es.stop_rule(policy, "accuracy", earlier, maximize=maximize, new_trial=new)
        n = first_rung(policy, trial_bracket(policy, new))
        if n is None:  # a bracket without rungs: never judged
            assert rule is None
            continue
        values = [float(v) for v in rng.choice(GRID, n + 2)]
        expected = decide(policy, new, {**earlier, new: values[:n]}, maximize=maximize).terminate
        assert collector_stops(rule, values, maximize) == expected, (earlier, values, rule)
        if rule is not None:
            assert rule.start_step == n and rule.metric == "accuracy"
            assert rule.comparison == ("less" if maximize else "greater")
        checked += 1
        stopped += expected
    assert 0 < stopped < checked


def test_asha_rule_is_exact_on_ties():
    """Katib compares strictly; the new trial loses a tie (it is the later trial), so the rule's value is
    the next float past the threshold."""
    earlier = {"trial-00": [0.5], "trial-01": [0.7]}  # k = 3 with the new trial: the best 1 continues
    rule = es.stop_rule(AshaPolicy(), "accuracy", earlier, maximize=True, new_trial="trial-02")
    assert rule == es.StopRule("accuracy", "less", math.nextafter(0.7, 1), 1)
    for own, cut in ((0.7, True), (0.69, True), (0.7000001, False)):
        assert decide(AshaPolicy(), "trial-02", {**earlier, "trial-02": [own]}).terminate is cut
        assert collector_stops(rule, [own], True) is cut
    low = es.stop_rule(AshaPolicy(), "loss", {"trial-00": [0.5], "trial-01": [0.3]}, maximize=False,
                       new_trial="trial-02")
    assert low == es.StopRule("loss", "greater", math.nextafter(0.3, 0), 1)
    assert collector_stops(low, [0.3], False) and not collector_stops(low, [0.2999], False)


def test_hyperband_rule_uses_the_new_trials_bracket():
    policy = HyperbandPolicy(max_resource=9)  # 3 brackets: rungs 1, 3 / 3 / none
    earlier = {"trial-0000": [0.9, 0.9, 0.9], "trial-0001": [0.2, 0.3, 0.4], "trial-0002": [0.1] * 9,
               "trial-0003": [0.5, 0.5, 0.5]}
    # trial-0004 is in bracket 1 (first rung 3) with trial-0001 only: k = 2, the best 1 continues
    assert es.stop_rule(policy, "accuracy", earlier, new_trial="trial-0004") == \
        es.StopRule("accuracy", "less", math.nextafter(0.4, 1), 3)
    # trial-0005 is in bracket 2: no rung below 9, no rule
    assert es.stop_rule(policy, "accuracy", {**earlier, "trial-0004": [0.6] * 3}, new_trial="trial-0005") is None
    # trial-0006 is in bracket 0 (rung 1) with trial-0000 and trial-0003: k = 3, the best 1 continues
    later = {**earlier, "trial-0004": [0.6] * 3, "trial-0005": [0.7] * 9}
    assert es.stop_rule(policy, "accuracy", later, new_trial="trial-0006") == \
        es.StopRule("accuracy", "less", math.nextafter(0.9, 1), 1)


def test_creation_order_numbers_the_trials():
    history, new = es.creation_order(["exp-zz", "exp-aa", "exp-mm"], {"exp-aa": [0.5], "exp-zz": [0.4, 0.6]})
    assert history == {"trial-0000": [0.4, 0.6], "trial-0001": [0.5], "trial-0002": []}
    assert new == "trial-0003"
    assert trial_bracket(HyperbandPolicy(max_resource=9), new) == 0


@pytest.mark.parametrize("policy, history, new, why", [
    (AshaPolicy(), {}, "trial-00", "no earlier trial: it continues alone"),
    (AshaPolicy(min_resource=2), {"trial-00": [0.5]}, "trial-01", "no earlier trial reached rung 2"),
    (AshaPolicy(), {"trial-00": [math.nan], "trial-01": [math.nan]}, "trial-02", "threshold is the worst value"),
    (HyperbandPolicy(max_resource=9), {"trial-00": [0.9], "trial-01": [0.9]}, "trial-02", "bracket 2 has no rung"),
    (HyperbandPolicy(max_resource=9), {"trial-00": [0.9] * 3, "trial-02": [0.9] * 3, "trial-03": [0.9] * 3},
     "trial-04", "nobody else in bracket 1"),
])
def test_no_rung_rule(policy, history, new, why):
    assert es.stop_rule(policy, "accuracy", history, maximize=True, new_trial=new) is None, why


def test_rung_rule_needs_the_new_trial_last():
    with pytest.raises(ValueError, match="give new_trial"):
        es.stop_rule(AshaPolicy(), "accuracy", {"trial-00": [0.5]})
    with pytest.raises(ValueError, match="new trial 'trial-01' must come after every earlier trial, not before "
                                         "'trial-02'"):
        es.stop_rule(AshaPolicy(), "accuracy", {"trial-00": [0.5], "trial-02": [0.6]}, new_trial="trial-01")


@pytest.mark.parametrize("policy", POLICIES + RUNG_POLICIES + [HyperbandPolicy(max_resource=27, brackets=2)],
                         ids=lambda p: p.type)
def test_settings_round_trip(policy):
    name, settings = es.katib_settings(policy)
    assert es.policy_from_settings(name, dict(settings)) == policy


def test_rung_policy_settings():
    assert es.katib_settings(AshaPolicy(min_resource=2)) == (
        "asha", [("min_resource", "2"), ("reduction_factor", "3.0")])
    assert es.katib_settings(HyperbandPolicy(max_resource=27, brackets=2, reduction_factor=2.5)) == (
        "hyperband", [("min_resource", "1"), ("reduction_factor", "2.5"), ("max_resource", "27"),
                      ("brackets", "2")])


@pytest.mark.parametrize("algorithm, settings, message", [
    ("medianstop", {}, "unknown early-stopping algorithm 'medianstop'; this service runs bandit, truncation-selection, "
                       "asha, hyperband"),
    ("asha", {"evaluation_interval": "2"},
     "asha: unknown setting(s) 'evaluation_interval'; allowed: min_resource, max_resource, reduction_factor"),
    ("asha", {"reduction_factor": "1"}, "asha: reduction_factor: Input should be greater than or equal to 2"),
    ("hyperband", {"min_resource": "1"}, "hyperband: settings: hyperband needs max_resource"),
    ("hyperband", {"max_resource": "9", "brackets": "4"}, "hyperband: settings: hyperband: brackets=4, but at most 3"),
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


def test_ruleset_compares_a_rule_once_at_its_start_step():
    # Katib's count reaches 0 at the 2nd value and goes negative after: a rule that would hold later is
    # never compared again
    late = RuleSet([es.StopRule("accuracy", "greater", 0.5, 2)], "accuracy", maximize=True)
    for v in (0.1, 0.2, 0.9, 0.9):
        late.update("accuracy", v)
    assert not late.stop
    # start_step 0: compared at every value (a rule on the loss, whose latest value is compared)
    every = RuleSet([es.StopRule("loss", "greater", 1.0, 0)], "accuracy", maximize=True)
    for i, v in enumerate((0.5, 0.8, 1.2)):
        every.update("loss", v)
        assert every.stop is (i == 2)


def test_two_rules_on_the_objective_never_stop_a_trial():
    """Rules on one metric share one count (the last rule's start step, counted down once per pending rule),
    so at most one of them is ever compared while the trial needs both: why a frozen rule is one rule."""
    alone = RuleSet([es.StopRule("accuracy", "less", 0.9, 1)], "accuracy", maximize=True)
    both = RuleSet([es.StopRule("accuracy", "less", 0.9, 1), es.StopRule("accuracy", "less", 0.9, 3)],
                   "accuracy", maximize=True)
    for _ in range(10):
        alone.update("accuracy", 0.1)
        both.update("accuracy", 0.1)
    assert alone.stop and not both.stop
    assert len(both.pending) == 1  # the count of 3, counted down twice a value, hit 0 once: one rule held


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
