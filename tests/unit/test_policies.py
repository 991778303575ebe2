"""Early-termination rules (spec section 7): hand-made tables, every expected value worked out by hand.

``history`` maps a trial id to its primary-metric values, one per interval (index 0 = interval 1);
the decision is for the trial at its latest interval n = len(history[trial]).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import math

import pytest
import yaml
from pydantic import ValidationError

from automl_vision.spec import policies as spec_policies
from automl_vision.spec.job import parse_job
from automl_vision.spec.policies import (
    AshaPolicy,
    BanditPolicy,
    HyperbandPolicy,
    MedianStoppingPolicy,
    TruncationSelectionPolicy,
    decide,
)
from automl_vision.spec.termination import (
    Decision,
    asha_should_terminate,
    bandit_should_terminate,
    bracket_count,
    first_rung,
    is_evaluation_point,
    is_rung,
    max_brackets,
    median_stopping_should_terminate,
    natural_key,
    rungs,
    trial_bracket,
    truncation_selection_should_terminate,
)

NAN = math.nan
INF = math.inf


# ----------------------------------------------------------------------------- gating


@pytest.mark.parametrize(
    "interval, delay, n, expected",
    [
        # n = 0: nothing reported, never a decision
        (1, 0, 0, False),
        # interval 1, delay 0: every n >= 1
        (1, 0, 1, True),
        (1, 0, 7, True),
        # interval 2, delay 4: n in {4, 6, 8, ...}
        (2, 4, 1, False),
        (2, 4, 2, False),  # multiple of 2 but 2 < 4
        (2, 4, 3, False),
        (2, 4, 4, True),  # 4 >= 4 and 4 % 2 == 0
        (2, 4, 5, False),  # 5 % 2 == 1
        (2, 4, 6, True),
        (2, 4, 7, False),
        (2, 4, 8, True),
        # interval 2, delay 5: first evaluation at 6 (5 is not a multiple of 2)
        (2, 5, 5, False),
        (2, 5, 6, True),
        # interval 3, delay 3: 3, 6, 9
        (3, 3, 3, True),
        (3, 3, 4, False),
        (3, 3, 6, True),
        # interval 1, delay 5 (the spec's median-stopping recommendation): 5, 6, ...
        (1, 5, 4, False),
        (1, 5, 5, True),
    ],
)
def test_bandit_gating(interval, delay, n, expected):
    # 'a' is always 0.0 and 'b' always 1.0; with slack_amount 0.1, 0.0 < 1.0 - 0.1 = 0.9, so the
    # trial is terminated exactly when the rule is evaluated.
    policy = BanditPolicy(slack_amount=0.1, evaluation_interval=interval, delay_evaluation=delay)
    history = {"a": [0.0] * n, "b": [1.0] * max(n, 1)}
    assert is_evaluation_point(policy, n) is expected
    assert policy.should_terminate("a", history) is expected


@pytest.mark.parametrize(
    "n, expected",
    [
        (1, False),  # 1 < delay 2
        (2, False),  # 2 % 3 != 0
        (3, True),  # 3 >= 2, 3 % 3 == 0: own best 0.0 < median 1.0 of b's averages
        (4, False),
        (6, True),
    ],
)
def test_median_gating(n, expected):
    policy = MedianStoppingPolicy(evaluation_interval=3, delay_evaluation=2)
    history = {"a": [0.0] * n, "b": [1.0] * n}
    assert policy.should_terminate("a", history) is expected


@pytest.mark.parametrize(
    "n, expected",
    [
        (1, False),
        (2, True),  # 2 >= delay 2, 2 % 2 == 0: k = 2, cut = floor(2 * 50 / 100) = 1, 'a' is worst
        (3, False),
        (4, True),
    ],
)
def test_truncation_gating(n, expected):
    policy = TruncationSelectionPolicy(truncation_percentage=50, evaluation_interval=2, delay_evaluation=2)
    history = {"a": [0.0] * n, "b": [1.0] * n}
    assert policy.should_terminate("a", history) is expected


def test_unknown_trial_is_no_decision():
    # a trial with no reported values has n = 0: no decision
    policy = BanditPolicy(slack_factor=0.2)
    assert policy.should_terminate("ghost", {"a": [0.9]}) is False


# ----------------------------------------------------------------------------- bandit


@pytest.mark.parametrize(
    "slack, history, trial, maximize, expected",
    [
        # --- the spec's example: best 0.8, slack_factor 0.2 -> cancel below 0.8 / 1.2 = 0.6667
        pytest.param({"slack_factor": 0.2}, {"a": [0.66], "b": [0.8]}, "a", True, True,
                     id="spec-example-0.66-terminated"),  # 0.66 < 0.6667
        pytest.param({"slack_factor": 0.2}, {"a": [0.67], "b": [0.8]}, "a", True, False,
                     id="spec-example-0.67-kept"),  # 0.67 >= 0.6667
        # own = best so far, not the latest: own = max(0.7, 0.5) = 0.7; best = 0.8; 0.7 >= 0.6667
        pytest.param({"slack_factor": 0.2}, {"a": [0.7, 0.5], "b": [0.6, 0.8]}, "a", True, False,
                     id="max-own-is-best-so-far"),
        # best only over intervals 1..n (n = 1): best = max(0.5, 0.55) = 0.55 -> 0.55 / 1.2 = 0.4583;
        # 0.5 >= 0.4583 -> kept (b's 0.9 at interval 2 would give 0.75 and terminate)
        pytest.param({"slack_factor": 0.2}, {"a": [0.5], "b": [0.55, 0.9]}, "a", True, False,
                     id="max-best-only-up-to-n"),
        # best includes the trial itself: best = own = 0.9 -> 0.9 >= 0.75
        pytest.param({"slack_factor": 0.2}, {"a": [0.9], "b": [0.1]}, "a", True, False,
                     id="max-trial-is-the-best"),
        # best is any trial's best over 1..n, even an earlier peak: best = 0.9 (b, interval 1);
        # 0.9 / 1.2 = 0.75; own = max(0.5, 0.6) = 0.6 < 0.75 -> terminate
        pytest.param({"slack_factor": 0.2}, {"a": [0.5, 0.6], "b": [0.9, 0.2]}, "a", True, True,
                     id="max-best-earlier-peak"),
        # slack_amount 0.1: 0.8 - 0.1 = 0.7; 0.69 < 0.7 -> terminate; 0.71 >= 0.7 -> kept
        pytest.param({"slack_amount": 0.1}, {"a": [0.69], "b": [0.8]}, "a", True, True,
                     id="max-amount-terminated"),
        pytest.param({"slack_amount": 0.1}, {"a": [0.71], "b": [0.8]}, "a", True, False,
                     id="max-amount-kept"),
        # alone: best = own = 0.3; 0.3 >= 0.3 - 0.1
        pytest.param({"slack_amount": 0.1}, {"a": [0.3]}, "a", True, False, id="max-alone"),
        # --- minimize: threshold best * (1 + s) or best + a
        # best = 0.5; 0.5 * 1.2 = 0.6; 0.61 > 0.6 -> terminate; 0.59 <= 0.6 -> kept
        pytest.param({"slack_factor": 0.2}, {"a": [0.61], "b": [0.5]}, "a", False, True,
                     id="min-factor-terminated"),
        pytest.param({"slack_factor": 0.2}, {"a": [0.59], "b": [0.5]}, "a", False, False,
                     id="min-factor-kept"),
        # own = min(0.55, 0.9) = 0.55; best = 0.5; 0.55 <= 0.6 -> kept
        pytest.param({"slack_factor": 0.2}, {"a": [0.55, 0.9], "b": [0.5, 0.5]}, "a", False, False,
                     id="min-own-is-best-so-far"),
        # n = 1: best = min(0.5, 0.45) = 0.45 -> 0.54; 0.5 <= 0.54 -> kept (0.1 at interval 2 ignored)
        pytest.param({"slack_factor": 0.2}, {"a": [0.5], "b": [0.45, 0.1]}, "a", False, False,
                     id="min-best-only-up-to-n"),
        # slack_amount 0.05: 1.0 + 0.05 = 1.05; 1.06 > 1.05 -> terminate; 1.04 -> kept
        pytest.param({"slack_amount": 0.05}, {"a": [1.06], "b": [1.0]}, "a", False, True,
                     id="min-amount-terminated"),
        pytest.param({"slack_amount": 0.05}, {"a": [1.04], "b": [1.0]}, "a", False, False,
                     id="min-amount-kept"),
        # the same table read the other way: maximizing, best = 1.06 -> 1.06 - 0.05 = 1.01;
        # b's 1.0 < 1.01 -> 'b' terminated
        pytest.param({"slack_amount": 0.05}, {"a": [1.06], "b": [1.0]}, "b", True, True,
                     id="max-amount-mirror"),
        # --- NaN / inf count as the worst value
        # own = NaN -> -inf < 0.5 / 1.2 = 0.4167 -> terminate
        pytest.param({"slack_factor": 0.2}, {"a": [NAN], "b": [0.5]}, "a", True, True,
                     id="max-nan-own"),
        # own = max(0.5, NaN->-inf) = 0.5; best = 0.55 -> 0.4583; 0.5 >= -> kept
        pytest.param({"slack_factor": 0.2}, {"a": [0.5, NAN], "b": [0.55, 0.55]}, "a", True, False,
                     id="max-nan-later-value-ignored-by-best"),
        # other trial NaN is not the best: best = own = 0.5 -> kept
        pytest.param({"slack_factor": 0.2}, {"a": [0.5], "b": [NAN]}, "a", True, False,
                     id="max-nan-other"),
        # +inf is non-finite too: worst, not best -> best = own = 0.5 -> kept
        pytest.param({"slack_factor": 0.2}, {"a": [0.5], "b": [INF]}, "a", True, False,
                     id="max-inf-other"),
        # everyone NaN: own = best = -inf; -inf < -inf / 1.2 = -inf is false -> kept
        pytest.param({"slack_factor": 0.2}, {"a": [NAN], "b": [NAN]}, "a", True, False,
                     id="max-all-nan"),
        pytest.param({"slack_amount": 0.1}, {"a": [NAN], "b": [NAN]}, "a", True, False,
                     id="max-all-nan-amount"),
        # minimize: own = NaN -> +inf > 0.5 * 1.2 = 0.6 -> terminate
        pytest.param({"slack_factor": 0.2}, {"a": [NAN], "b": [0.5]}, "a", False, True,
                     id="min-nan-own"),
        # minimize: other NaN is not the best (would be min otherwise if taken as -inf): best = 0.5
        pytest.param({"slack_factor": 0.2}, {"a": [0.5], "b": [NAN]}, "a", False, False,
                     id="min-nan-other"),
        pytest.param({"slack_factor": 0.2}, {"a": [0.5], "b": [-INF]}, "a", False, False,
                     id="min-minus-inf-other"),
    ],
)
def test_bandit(slack, history, trial, maximize, expected):
    policy = BanditPolicy(**slack)
    assert policy.should_terminate(trial, history, maximize=maximize) is expected
    assert bandit_should_terminate(policy, trial, history, maximize).terminate is expected


def test_bandit_rule_sentence():
    policy = BanditPolicy(slack_factor=0.2, evaluation_interval=2, delay_evaluation=6)
    history = {"a": [0.5, 0.55, 0.6, 0.61, 0.6, 0.6], "b": [0.5, 0.6, 0.7, 0.75, 0.8, 0.8]}
    decision = policy.explain("a", history)
    # own = 0.61, best = 0.8, 0.8 / 1.2 = 0.6667, at interval 6
    assert decision == Decision(True, "bandit: best 0.61 < 0.8 / (1 + 0.2) = 0.6667 at interval 6 -> terminate")
    kept = policy.explain("b", history)
    assert kept.terminate is False and "0.8 >= 0.8 / (1 + 0.2) = 0.6667" in kept.rule
    minimize = BanditPolicy(slack_amount=0.05).explain("a", {"a": [1.06], "b": [1.0]}, maximize=False)
    assert minimize.rule == "bandit: best 1.06 > 1 + 0.05 = 1.05 at interval 1 -> terminate"


def test_gated_rule_sentence():
    decision = BanditPolicy(slack_factor=0.2, evaluation_interval=2, delay_evaluation=6).explain(
        "a", {"a": [0.1] * 5, "b": [0.9] * 5})
    assert decision.terminate is False
    assert decision.rule == "bandit: no evaluation at interval 5 (every 2, from 6) -> continue"


# ----------------------------------------------------------------------------- median stopping


@pytest.mark.parametrize(
    "history, trial, maximize, expected",
    [
        # no peers at all -> False
        pytest.param({"a": [0.1]}, "a", True, False, id="no-peers"),
        pytest.param({"a": [0.9]}, "a", False, False, id="no-peers-min"),
        # peers all shorter than n = 2: b has 1 value -> no peers -> False
        pytest.param({"a": [0.1, 0.1], "b": [0.9]}, "a", True, False, id="peers-too-short"),
        # peers of different lengths, n = 2, own = max(0.2, 0.3) = 0.3:
        #   b = [0.5, 0.7, 0.0, 0.0] -> mean of intervals 1..2 = 0.6 (all four would be 0.3)
        #   c = [0.9]                -> left out, only 1 value
        #   d = [0.1, 0.3]           -> mean 0.2
        # median(0.6, 0.2) = 0.4; 0.3 < 0.4 -> terminate
        # (averaging all four of b's values would give median(0.3, 0.2) = 0.25 and keep a)
        pytest.param({"a": [0.2, 0.3], "b": [0.5, 0.7, 0.0, 0.0], "c": [0.9], "d": [0.1, 0.3]},
                     "a", True, True, id="peers-different-lengths"),
        # strictly worse: own 0.4 vs median 0.4 -> kept
        pytest.param({"a": [0.4], "b": [0.4]}, "a", True, False, id="equal-to-median"),
        # own is the best so far: own = max(0.6, 0.1) = 0.6; means b 0.5, c 0.55 -> median 0.525;
        # 0.6 >= 0.525 -> kept (the latest value 0.1 alone would terminate)
        pytest.param({"a": [0.6, 0.1], "b": [0.5, 0.5], "c": [0.5, 0.6]}, "a", True, False,
                     id="own-is-best-so-far"),
        # the trial's own average is not in the median: own = 0.5; others: b mean 0.6 -> median 0.6;
        # 0.5 < 0.6 -> terminate (with a's own mean 0.25 the median would be 0.425, kept)
        pytest.param({"a": [0.0, 0.5], "b": [0.6, 0.6]}, "a", True, True, id="self-excluded"),
        # odd count: means 0.1, 0.3, 0.9 -> median 0.3; 0.35 >= 0.3 kept; 0.25 < 0.3 terminated
        pytest.param({"a": [0.35], "b": [0.1], "c": [0.3], "d": [0.9]}, "a", True, False, id="odd-kept"),
        pytest.param({"a": [0.25], "b": [0.1], "c": [0.3], "d": [0.9]}, "a", True, True,
                     id="odd-terminated"),
        # --- minimize: own = min; means b 0.3, c (0.2 + 0.4) / 2 = 0.3 -> median 0.3
        # own = min(0.5, 0.4) = 0.4 > 0.3 -> terminate
        pytest.param({"a": [0.5, 0.4], "b": [0.3, 0.3], "c": [0.2, 0.4]}, "a", False, True,
                     id="min-terminated"),
        # own = min(0.5, 0.25) = 0.25 <= 0.3 -> kept
        pytest.param({"a": [0.5, 0.25], "b": [0.3, 0.3], "c": [0.2, 0.4]}, "a", False, False,
                     id="min-kept"),
        # the same numbers maximized: own = 0.5 >= 0.3 -> kept
        pytest.param({"a": [0.5, 0.4], "b": [0.3, 0.3], "c": [0.2, 0.4]}, "a", True, False,
                     id="min-table-maximized"),
        # --- NaN
        # own NaN -> -inf < 0.1 -> terminate
        pytest.param({"a": [NAN], "b": [0.1]}, "a", True, True, id="nan-own"),
        # peer with a NaN: its mean is the worst (-inf). means: b -inf, c 0.3, d 0.1 -> median 0.1;
        # own 0.2 >= 0.1 -> kept (ignoring the NaN, b's mean 0.5 would give median 0.3 and terminate)
        pytest.param({"a": [0.2, 0.2], "b": [0.5, NAN], "c": [0.3, 0.3], "d": [0.1, 0.1]},
                     "a", True, False, id="nan-peer"),
        # minimize: own NaN -> +inf > 0.9 -> terminate
        pytest.param({"a": [NAN], "b": [0.9]}, "a", False, True, id="min-nan-own"),
        # minimize: peer NaN mean = +inf; means b +inf, c 0.3 -> median +inf; 0.5 <= inf -> kept
        pytest.param({"a": [0.5], "b": [NAN], "c": [0.3]}, "a", False, False, id="min-nan-peer"),
    ],
)
def test_median_stopping(history, trial, maximize, expected):
    policy = MedianStoppingPolicy()
    assert policy.should_terminate(trial, history, maximize=maximize) is expected
    assert median_stopping_should_terminate(policy, trial, history, maximize).terminate is expected


def test_median_rule_sentence():
    decision = MedianStoppingPolicy().explain("a", {"a": [0.0, 0.5], "b": [0.6, 0.6]})
    assert decision.rule == (
        "median_stopping: best 0.5 < median 0.6 of 1 other trials' averages over intervals 1..2 -> terminate"
    )
    assert "no other trial" in MedianStoppingPolicy().explain("a", {"a": [0.1]}).rule


# ----------------------------------------------------------------------------- truncation selection

FOUR = {"t1": [0.1], "t2": [0.2], "t3": [0.3], "t4": [0.4]}


@pytest.mark.parametrize(
    "percentage, history, trial, maximize, expected",
    [
        # k = 4, 50% -> cut floor(2.0) = 2; worst first t1, t2, t3, t4
        pytest.param(50, FOUR, "t1", True, True, id="50-t1"),
        pytest.param(50, FOUR, "t2", True, True, id="50-t2"),
        pytest.param(50, FOUR, "t3", True, False, id="50-t3"),
        pytest.param(50, FOUR, "t4", True, False, id="50-t4"),
        # 30% of 4 = 1.2 -> 1: only t1
        pytest.param(30, FOUR, "t1", True, True, id="30-t1"),
        pytest.param(30, FOUR, "t2", True, False, id="30-t2"),
        # 20% of 4 = 0.8 -> 0: nobody
        pytest.param(20, FOUR, "t1", True, False, id="20-nobody"),
        # 99% of 4 = 3.96 -> 3: all but the best
        pytest.param(99, FOUR, "t3", True, True, id="99-t3"),
        pytest.param(99, FOUR, "t4", True, False, id="99-best-kept"),
        # alone: k = 1, 50% -> 0
        pytest.param(50, {"a": [0.0]}, "a", True, False, id="alone"),
        # minimize: worst first t4, t3, t2, t1; cut 2
        pytest.param(50, FOUR, "t4", False, True, id="min-50-t4"),
        pytest.param(50, FOUR, "t3", False, True, id="min-50-t3"),
        pytest.param(50, FOUR, "t2", False, False, id="min-50-t2"),
        pytest.param(50, FOUR, "t1", False, False, id="min-50-t1"),
        # value at interval n, not the best: n = 2, a at 2 = 0.1, b at 2 = 0.5; k = 2, cut 1 -> a
        pytest.param(50, {"a": [0.9, 0.1], "b": [0.2, 0.5]}, "a", True, True, id="value-at-n-a"),
        pytest.param(50, {"a": [0.9, 0.1], "b": [0.2, 0.5]}, "b", True, False, id="value-at-n-b"),
        # trials with fewer than n values are left out: n = 2, cohort {a, b}, k = 2, cut 1; a (0.5)
        # is worst -> terminate (with c, k = 3, cut 1, c = 0.1 would be the one cut)
        pytest.param(50, {"a": [0.5, 0.5], "b": [0.9, 0.9], "c": [0.1]}, "a", True, True,
                     id="shorter-left-out"),
        # longer trials compare by their value at n: b at 2 = 0.4 < a's 0.5 -> b cut, a kept
        pytest.param(50, {"a": [0.5, 0.5], "b": [0.9, 0.4, 0.99]}, "a", True, False,
                     id="longer-value-at-n"),
        # --- ties: the later id is worse
        # trial-1 = trial-2 = 0.5; worst first trial-2, trial-1; cut 1
        pytest.param(50, {"trial-1": [0.5], "trial-2": [0.5]}, "trial-2", True, True, id="tie-later-cut"),
        pytest.param(50, {"trial-1": [0.5], "trial-2": [0.5]}, "trial-1", True, False, id="tie-earlier-kept"),
        # natural order: trial-2 < trial-10, so trial-10 is the later id and the worse one
        # (plain string order would put 'trial-10' first and cut trial-2)
        pytest.param(50, {"trial-2": [0.5], "trial-10": [0.5]}, "trial-10", True, True, id="natural-10-cut"),
        pytest.param(50, {"trial-2": [0.5], "trial-10": [0.5]}, "trial-2", True, False, id="natural-2-kept"),
        pytest.param(50, {"trial-2": [0.5], "trial-10": [0.5]}, "trial-10", False, True,
                     id="natural-10-cut-min"),
        # three-way tie plus a better one, cut 2: worst first trial-3, trial-2, trial-1, trial-10
        pytest.param(50, {"trial-1": [0.5], "trial-2": [0.5], "trial-3": [0.5], "trial-10": [0.9]},
                     "trial-3", True, True, id="tie3-trial-3"),
        pytest.param(50, {"trial-1": [0.5], "trial-2": [0.5], "trial-3": [0.5], "trial-10": [0.9]},
                     "trial-2", True, True, id="tie3-trial-2"),
        pytest.param(50, {"trial-1": [0.5], "trial-2": [0.5], "trial-3": [0.5], "trial-10": [0.9]},
                     "trial-1", True, False, id="tie3-trial-1"),
        pytest.param(50, {"trial-1": [0.5], "trial-2": [0.5], "trial-3": [0.5], "trial-10": [0.9]},
                     "trial-10", True, False, id="tie3-trial-10"),
        # --- NaN is the worst
        pytest.param(50, {"a": [NAN], "b": [0.1]}, "a", True, True, id="nan-max-cut"),
        pytest.param(50, {"a": [NAN], "b": [0.1]}, "b", True, False, id="nan-max-other-kept"),
        pytest.param(50, {"a": [NAN], "b": [0.9]}, "a", False, True, id="nan-min-cut"),
        # +inf when maximizing is non-finite too: worst
        pytest.param(50, {"a": [INF], "b": [0.1]}, "a", True, True, id="inf-max-cut"),
        # two NaN tie: the later id is worse -> trial-2 cut, trial-1 kept
        pytest.param(50, {"trial-1": [NAN], "trial-2": [NAN]}, "trial-2", True, True, id="nan-tie-later"),
        pytest.param(50, {"trial-1": [NAN], "trial-2": [NAN]}, "trial-1", True, False, id="nan-tie-earlier"),
    ],
)
def test_truncation_selection(percentage, history, trial, maximize, expected):
    policy = TruncationSelectionPolicy(truncation_percentage=percentage)
    assert policy.should_terminate(trial, history, maximize=maximize) is expected
    assert truncation_selection_should_terminate(policy, trial, history, maximize).terminate is expected


THREE = {"a": [0.5], "b": [0.1], "c": [0.9]}


@pytest.mark.parametrize(
    "exclude, finished, trial, expected",
    [
        # all three: k = 3, cut floor(1.5) = 1 -> b (0.1) cut, a kept
        pytest.param(False, frozenset(), "a", False, id="no-finished"),
        # finished given but exclude_finished_jobs off: the same as above
        pytest.param(False, frozenset({"b"}), "a", False, id="finished-not-excluded"),
        # b finished and excluded: cohort {a, c}, k = 2, cut 1 -> a (0.5) cut
        pytest.param(True, frozenset({"b"}), "a", True, id="finished-excluded"),
        # the judged trial is never left out: a and b finished, cohort {a, c} -> a cut
        pytest.param(True, frozenset({"a", "b"}), "a", True, id="self-never-excluded"),
        # judging finished b with everyone else finished: cohort {b}, k = 1, cut 0 -> kept
        pytest.param(True, frozenset({"a", "b", "c"}), "b", False, id="only-self-left"),
        # judging b with c finished: cohort {a, b}, k = 2, cut 1 -> b (0.1) cut
        pytest.param(True, frozenset({"c"}), "b", True, id="other-excluded-self-cut"),
    ],
)
def test_truncation_exclude_finished(exclude, finished, trial, expected):
    policy = TruncationSelectionPolicy(truncation_percentage=50, exclude_finished_jobs=exclude)
    assert policy.should_terminate(trial, THREE, finished=finished) is expected
    assert truncation_selection_should_terminate(policy, trial, THREE, True, finished).terminate is expected


def test_truncation_rule_sentence():
    decision = TruncationSelectionPolicy(truncation_percentage=50).explain("t2", FOUR)
    assert decision.rule == (
        "truncation_selection: value 0.2 ranks 2 of 4 from the worst at interval 1; "
        "the worst 2 (50% of 4, rounded down) are cut -> terminate"
    )


# ----------------------------------------------------------------------------- asha and hyperband: rungs, brackets


@pytest.mark.parametrize(
    "policy, bracket, up_to, expected",
    [
        # min_resource * 3**k below max_resource: 27 is not a rung (a trial that reaches it is done)
        (AshaPolicy(max_resource=27), 0, None, [1, 3, 9]),
        (AshaPolicy(max_resource=28), 0, None, [1, 3, 9, 27]),
        # 2, 6, 18; 54 >= 50
        (AshaPolicy(min_resource=2, max_resource=50), 0, None, [2, 6, 18]),
        # eta 2.5: 1, 2.5 -> 3 (halves round up), 6.25 -> 6, 15.625 -> 16; 39.06 >= 20
        (AshaPolicy(reduction_factor=2.5, max_resource=20), 0, None, [1, 3, 6, 16]),
        # no max_resource: rungs without end, listed up to a bound
        (AshaPolicy(), 0, 30, [1, 3, 9, 27]),
        (AshaPolicy(min_resource=4, reduction_factor=2), 0, 40, [4, 8, 16, 32]),
        # hyperband bracket s starts at min_resource * 3**s
        (HyperbandPolicy(max_resource=27), 1, None, [3, 9]),
        (HyperbandPolicy(max_resource=27), 2, None, [9]),
        (HyperbandPolicy(max_resource=27), 3, None, []),  # 27 is not below 27: never judged
        (HyperbandPolicy(min_resource=2, max_resource=18), 1, None, [6]),
    ],
)
def test_rungs(policy, bracket, up_to, expected):
    assert rungs(policy, bracket, up_to) == expected
    assert first_rung(policy, bracket) == (expected[0] if expected else None)
    assert [n for n in range(41) if is_rung(policy, bracket, n)] == rungs(policy, bracket, 40)


def test_rungs_without_max_resource_need_a_bound():
    with pytest.raises(ValueError, match="give up_to"):
        rungs(AshaPolicy())


@pytest.mark.parametrize(
    "min_resource, max_resource, eta, expected",
    [
        (1, 27, 3, 4),  # 1, 3, 9, 27
        (1, 26, 3, 3),  # 1, 3, 9
        (1, 243, 3, 6),  # floor(log3(243)) + 1 = 6 (the float logarithm gives 4.9999...)
        (2, 18, 3, 3),  # 2, 6, 18
        (1, 8, 2, 4),  # 1, 2, 4, 8
        (1, 20, 2.5, 4),  # 1, 2.5, 6.25, 15.625
        (1, 2, 3, 1),
    ],
)
def test_max_brackets(min_resource, max_resource, eta, expected):
    assert max_brackets(min_resource, max_resource, eta) == expected
    policy = HyperbandPolicy(min_resource=min_resource, max_resource=max_resource, reduction_factor=eta)
    assert bracket_count(policy) == expected


@pytest.mark.parametrize(
    "policy, trial, expected",
    [
        (AshaPolicy(), "trial-0007", 0),  # one bracket
        (HyperbandPolicy(max_resource=27), "trial-0007", 3),  # 4 brackets: 7 % 4
        (HyperbandPolicy(max_resource=27), "trial-0012", 0),
        (HyperbandPolicy(max_resource=27), "trial-5", 1),
        (HyperbandPolicy(max_resource=27, brackets=3), "trial-0007", 1),
        # other ids: CRC-32 modulo the brackets (934289556 % 4 = 0, 227179537 % 4 = 1, 1178301602 % 3 = 2)
        (HyperbandPolicy(max_resource=27), "exp-4k2j9xqw", 0),
        (HyperbandPolicy(max_resource=27), "exp-8dj2kq0a", 1),
        (HyperbandPolicy(max_resource=27, brackets=3), "bccd-0-x7k2m9qa", 2),
    ],
)
def test_trial_bracket(policy, trial, expected):
    assert trial_bracket(policy, trial) == expected


def test_hyperband_evaluation_points_by_bracket():
    policy = HyperbandPolicy(max_resource=27)  # brackets 0..3: rungs 1, 3, 9 / 3, 9 / 9 / none
    assert [n for n in range(1, 30) if is_evaluation_point(policy, n)] == [1, 3, 9]  # any bracket
    assert [n for n in range(1, 30) if is_evaluation_point(policy, n, "trial-0001")] == [3, 9]
    assert [n for n in range(1, 30) if is_evaluation_point(policy, n, "trial-0002")] == [9]
    assert [n for n in range(1, 30) if is_evaluation_point(policy, n, "trial-0003")] == []
    assert not is_evaluation_point(policy, 0)


# ----------------------------------------------------------------------------- asha: the rule

ASHA = AshaPolicy(max_resource=27)  # rungs 1, 3, 9; the best ceil(k / 3) of k continue
FIVE = {"t1": [0.1], "t2": [0.2], "t3": [0.3], "t4": [0.4], "t5": [0.5]}


@pytest.mark.parametrize(
    "policy, history, trial, maximize, expected",
    [
        # k = 5 at rung 1: the best ceil(5 / 3) = 2 continue (t5, t4)
        pytest.param(ASHA, FIVE, "t5", True, False, id="five-t5"),
        pytest.param(ASHA, FIVE, "t4", True, False, id="five-t4"),
        pytest.param(ASHA, FIVE, "t3", True, True, id="five-t3"),
        pytest.param(ASHA, FIVE, "t1", True, True, id="five-t1"),
        # k = 2: ceil(2 / 3) = 1 continues
        pytest.param(ASHA, {"a": [0.5], "b": [0.6]}, "a", True, True, id="two-worse"),
        pytest.param(ASHA, {"a": [0.5], "b": [0.6]}, "b", True, False, id="two-better"),
        # a single trial: max(1, ceil(1 / 3)) = 1 -> it continues, however bad
        pytest.param(ASHA, {"a": [0.0]}, "a", True, False, id="alone"),
        pytest.param(ASHA, {"a": [math.nan]}, "a", True, False, id="alone-nan"),
        # interval 2 is not a rung: no decision, however far behind
        pytest.param(ASHA, {"a": [0.1, 0.1], "b": [0.9, 0.9]}, "a", True, False, id="not-a-rung"),
        # rung 3 ranks the best over intervals 1..3, not the value at 3: a's 0.9 (interval 1) beats c's 0.8
        # and b's 0.7; k = 3, 1 continues -> a continues, c and b are terminated
        pytest.param(ASHA, {"a": [0.9, 0.2, 0.2], "b": [0.5, 0.6, 0.7], "c": [0.1, 0.2, 0.8]}, "a", True, False,
                     id="best-so-far-a"),
        pytest.param(ASHA, {"a": [0.9, 0.2, 0.2], "b": [0.5, 0.6, 0.7], "c": [0.1, 0.2, 0.8]}, "c", True, True,
                     id="best-so-far-c"),
        # the cohort is the trials with >= 3 values, each by its best over 1..3: b (2 values) is left out,
        # c counts with 0.25 (not its 0.99 at interval 4); k = 2, 1 continues: a (0.3)
        # (with b, or with c's 0.99, a would be terminated)
        pytest.param(ASHA, {"a": [0.1, 0.2, 0.3], "b": [0.9, 0.9], "c": [0.2, 0.2, 0.25, 0.99]}, "a", True, False,
                     id="cohort-reached-the-rung"),
        # ties: the earlier trial (natural order) is the better one
        pytest.param(ASHA, {"trial-1": [0.5], "trial-2": [0.5]}, "trial-2", True, True, id="tie-later-cut"),
        pytest.param(ASHA, {"trial-1": [0.5], "trial-2": [0.5]}, "trial-1", True, False, id="tie-earlier-kept"),
        pytest.param(ASHA, {"trial-2": [0.5], "trial-10": [0.5]}, "trial-10", True, True, id="tie-natural-order"),
        pytest.param(ASHA, {"trial-2": [0.5], "trial-10": [0.5]}, "trial-2", False, False, id="tie-natural-min"),
        # minimize: k = 4, the lowest ceil(4 / 3) = 2 continue (a 0.1, b 0.2)
        pytest.param(ASHA, {"a": [0.1], "b": [0.2], "c": [0.3], "d": [0.4]}, "b", False, False, id="min-b"),
        pytest.param(ASHA, {"a": [0.1], "b": [0.2], "c": [0.3], "d": [0.4]}, "c", False, True, id="min-c"),
        # the same table maximized: d and c continue, b is cut
        pytest.param(ASHA, {"a": [0.1], "b": [0.2], "c": [0.3], "d": [0.4]}, "b", True, True, id="max-b"),
        # NaN / inf is the worst value
        pytest.param(ASHA, {"a": [math.nan], "b": [0.1]}, "a", True, True, id="nan-max"),
        pytest.param(ASHA, {"a": [math.nan], "b": [0.9]}, "a", False, True, id="nan-min"),
        pytest.param(ASHA, {"a": [math.inf], "b": [0.1]}, "a", True, True, id="inf-max"),
        pytest.param(ASHA, {"a": [0.05], "b": [math.nan]}, "a", True, False, id="nan-other"),
        # NaN earlier, a value at the rung: the best over 1..3 is 0.5 > b's 0.4
        pytest.param(ASHA, {"a": [math.nan, math.nan, 0.5], "b": [0.4, 0.4, 0.4]}, "a", True, False,
                     id="nan-then-value"),
        # max_resource: AshaPolicy(max_resource=3) has the rung 1 only, so interval 3 is no decision;
        # with max_resource 4 it is a rung and a (0.1 < 0.9) is terminated
        pytest.param(AshaPolicy(max_resource=3), {"a": [0.1] * 3, "b": [0.9] * 3}, "a", True, False,
                     id="max-resource-3"),
        pytest.param(AshaPolicy(max_resource=4), {"a": [0.1] * 3, "b": [0.9] * 3}, "a", True, True,
                     id="max-resource-4"),
        # min_resource 2: interval 1 is no rung; at 2 the better of two continues
        pytest.param(AshaPolicy(min_resource=2), {"a": [0.1], "b": [0.9]}, "a", True, False, id="min-resource-2-n1"),
        pytest.param(AshaPolicy(min_resource=2), {"a": [0.1, 0.1], "b": [0.9, 0.9]}, "a", True, True,
                     id="min-resource-2-n2"),
        # eta 2.5: k = 5 -> ceil(2) = 2 continue; k = 6 -> ceil(2.4) = 3 continue
        pytest.param(AshaPolicy(reduction_factor=2.5), FIVE, "t4", True, False, id="eta-2.5-k5-t4"),
        pytest.param(AshaPolicy(reduction_factor=2.5), FIVE, "t3", True, True, id="eta-2.5-k5-t3"),
        pytest.param(AshaPolicy(reduction_factor=2.5), {**FIVE, "t6": [0.6]}, "t4", True, False, id="eta-2.5-k6-t4"),
        pytest.param(AshaPolicy(reduction_factor=2.5), {**FIVE, "t6": [0.6]}, "t3", True, True, id="eta-2.5-k6-t3"),
    ],
)
def test_asha(policy, history, trial, maximize, expected):
    assert policy.should_terminate(trial, history, maximize=maximize) is expected
    assert asha_should_terminate(policy, trial, history, maximize).terminate is expected


HB = HyperbandPolicy(max_resource=27)  # 4 brackets (trial-NNNN: NNNN % 4): rungs 1, 3, 9 / 3, 9 / 9 / none


@pytest.mark.parametrize(
    "history, trial, expected",
    [
        # rung 1, bracket 0 = {trial-0000, trial-0004}: k = 2, 1 continues; trial-0001 (bracket 1, 0.9) is
        # not compared
        ({"trial-0000": [0.2], "trial-0001": [0.9], "trial-0004": [0.5]}, "trial-0000", True),
        ({"trial-0000": [0.2], "trial-0001": [0.9], "trial-0004": [0.5]}, "trial-0004", False),
        # interval 1 is a rung of bracket 0 but not of bracket 1: no decision for trial-0001
        ({"trial-0000": [0.95], "trial-0001": [0.1], "trial-0004": [0.5]}, "trial-0001", False),
        # rung 3 of bracket 1 = {trial-0001 (best 0.9), trial-0005 (best 0.5)}: trial-0005 is terminated;
        # trial-0000 (bracket 0, 0.95) is not in its cohort (with it, k = 3 and still 1 continues)
        ({"trial-0000": [0.95] * 3, "trial-0001": [0.9, 0.1, 0.1], "trial-0005": [0.3, 0.4, 0.5]}, "trial-0005", True),
        ({"trial-0000": [0.95] * 3, "trial-0001": [0.9, 0.1, 0.1], "trial-0005": [0.3, 0.4, 0.5]}, "trial-0001", False),
        # bracket 2 starts at 9: trial-0002 far behind at 3 is not judged there; at 9 it is (k = 2)
        ({"trial-0002": [0.0] * 3, "trial-0006": [0.9] * 3}, "trial-0002", False),
        ({"trial-0002": [0.0] * 9, "trial-0006": [0.9] * 9}, "trial-0002", True),
        # bracket 3 has no rung below 27: its trials run to the end
        ({"trial-0003": [0.0] * 9, "trial-0007": [0.9] * 9}, "trial-0003", False),
        ({"trial-0003": [0.0] * 26, "trial-0007": [0.9] * 26}, "trial-0003", False),
    ],
)
def test_hyperband_compares_within_the_bracket(history, trial, expected):
    assert HB.should_terminate(trial, history) is expected
    assert asha_should_terminate(HB, trial, history).terminate is expected


def test_asha_rule_sentences():
    assert ASHA.explain("t3", FIVE) == Decision(True, (
        "asha: best 0.3 over intervals 1..1 ranks 3 of 5 trials at rung 1; the best 2 continue "
        "(5 / 3 rounded up, at least 1) -> terminate"))
    assert ASHA.explain("t4", FIVE).rule.endswith("ranks 2 of 5 trials at rung 1; the best 2 continue "
                                                  "(5 / 3 rounded up, at least 1) -> continue")
    assert ASHA.explain("a", {"a": [0.1, 0.1]}).rule == (
        "asha: interval 2 is not a rung (rungs 1, 3, 9 below max_resource 27) -> continue")
    assert AshaPolicy().explain("a", {"a": [0.1, 0.1]}).rule == "asha: interval 2 is not a rung (rungs 1, 3, ...) -> continue"
    assert HB.explain("trial-0001", {"trial-0001": [0.1]}).rule == (
        "hyperband: interval 1 is not a rung of bracket 1 (rungs 3, 9 below max_resource 27) -> continue")
    assert HB.explain("trial-0003", {"trial-0003": [0.1] * 9}).rule == (
        "hyperband: interval 9 is not a rung of bracket 3 (no rung below max_resource 27) -> continue")
    minimize = HB.explain("trial-0005", {"trial-0001": [0.2, 0.1, 0.3], "trial-0005": [0.4, 0.3, 0.2]},
                          maximize=False)
    assert minimize == Decision(True, (
        "hyperband: best 0.2 over intervals 1..3 ranks 2 of 2 trials of bracket 1 at rung 3; the best 1 continue "
        "(2 / 3 rounded up, at least 1) -> terminate"))


# ----------------------------------------------------------------------------- asha and hyperband: settings


@pytest.mark.parametrize(
    "cls, settings, message",
    [
        (AshaPolicy, {"evaluation_interval": 2},
         "asha takes no evaluation_interval=2: it judges a trial only at its rungs, min_resource * "
         "reduction_factor**k reported values; to judge trials later, raise min_resource (the first rung, "
         "default 1); allowed keys: type, min_resource, max_resource, reduction_factor"),
        (HyperbandPolicy, {"max_resource": 9, "delay_evaluation": 3, "evaluation_interval": 1},
         "hyperband takes no evaluation_interval=1 or delay_evaluation=3: it judges a trial only at its rungs"),
        (AshaPolicy, {"min_resource": 3, "max_resource": 3}, "asha: max_resource=3 must be greater than min_resource=3"),
        (AshaPolicy, {"min_resource": 0}, "min_resource\n  Input should be greater than or equal to 1"),
        (AshaPolicy, {"reduction_factor": 1.5}, "reduction_factor\n  Input should be greater than or equal to 2"),
        (HyperbandPolicy, {}, "hyperband needs max_resource: the most reported values a trial makes "
                              "(number_of_epochs / evaluation_frequency)"),
        (HyperbandPolicy, {"max_resource": 27, "brackets": 5},
         "hyperband: brackets=5, but at most 4 with min_resource=1, max_resource=27, reduction_factor=3"),
        (HyperbandPolicy, {"max_resource": 27, "brackets": 0}, "brackets\n  Input should be greater than or equal to 1"),
        (HyperbandPolicy, {"max_resource": 9, "min_resource": 10}, "hyperband: max_resource=9 must be greater than"),
    ],
)
def test_rung_policy_settings_are_checked(cls, settings, message):
    with pytest.raises(ValidationError) as e:
        cls(**settings)
    assert message in str(e.value)


def test_rung_policy_defaults():
    assert AshaPolicy() == AshaPolicy(min_resource=1, max_resource=None, reduction_factor=3)
    assert HyperbandPolicy(max_resource=27).brackets is None and bracket_count(HyperbandPolicy(max_resource=27)) == 4
    assert bracket_count(HyperbandPolicy(max_resource=27, brackets=2)) == 2
    assert "evaluation_interval" not in AshaPolicy.model_fields  # nothing a user could set and see ignored


JOB = """
task: image_classification
training_data: train.jsonl
limits: {max_trials: 12, max_concurrent_trials: 3}
training_parameters: {number_of_epochs: 20}
sweep:
  sampling_algorithm: random
  early_termination: {EARLY_TERMINATION}
search_space:
- learning_rate: {type: loguniform, min_value: -9, max_value: -3}
"""


@pytest.mark.parametrize("text, policy, first_rungs", [
    ("{type: asha, min_resource: 2, max_resource: 20, reduction_factor: 3}",
     AshaPolicy(min_resource=2, max_resource=20), [2, 6, 18]),
    ("{type: asha}", AshaPolicy(), [1, 3, 9]),
    ("{type: hyperband, max_resource: 20, reduction_factor: 2}",
     HyperbandPolicy(max_resource=20, reduction_factor=2), [1, 2, 4, 8, 16]),
])
def test_job_yaml_with_a_rung_policy(text, policy, first_rungs):
    job = parse_job(yaml.safe_load(JOB.replace("{EARLY_TERMINATION}", text)))
    assert job.sweep.early_termination == policy
    assert rungs(job.sweep.early_termination, 0, up_to=20) == first_rungs
    assert parse_job(yaml.safe_load(job.to_yaml())) == job


# ----------------------------------------------------------------------------- natural order


@pytest.mark.parametrize(
    "ids, expected",
    [
        (["trial-10", "trial-2", "trial-1"], ["trial-1", "trial-2", "trial-10"]),
        # equal numbers: the id itself breaks the tie ('0' < '2')
        (["trial-2", "trial-02"], ["trial-02", "trial-2"]),
        # text vs numbers at the same place never raises
        (["b", "a1", "a", "1a", "a10", "a9"], ["1a", "a", "a1", "a9", "a10", "b"]),
        (["run-1-10", "run-1-9", "run-2-1"], ["run-1-9", "run-1-10", "run-2-1"]),
    ],
)
def test_natural_key(ids, expected):
    assert sorted(ids, key=natural_key) == expected


# ----------------------------------------------------------------------------- plumbing


def test_decision_is_frozen():
    decision = BanditPolicy(slack_factor=0.2).explain("a", {"a": [0.66], "b": [0.8]})
    assert isinstance(decision, Decision)
    with pytest.raises(dataclasses.FrozenInstanceError):
        decision.terminate = False  # type: ignore[misc]


@pytest.mark.parametrize(
    "policy",
    [BanditPolicy(slack_factor=0.2), MedianStoppingPolicy(), TruncationSelectionPolicy(truncation_percentage=50),
     AshaPolicy(), HyperbandPolicy(max_resource=9)],
    ids=["bandit", "median", "truncation", "asha", "hyperband"],
)
def test_method_is_the_function(policy):
    history = {"a": [0.1, 0.2], "b": [0.5, 0.6], "c": [0.4, 0.3]}
    for trial in history:
        for maximize in (True, False):
            decision = decide(policy, trial, history, maximize=maximize)
            assert policy.explain(trial, history, maximize=maximize) == decision
            assert policy.should_terminate(trial, history, maximize=maximize) is decision.terminate


def test_decide_rejects_other_objects():
    with pytest.raises(TypeError):
        decide(object(), "a", {"a": [1.0]})


def test_spec_does_not_import_sweep_at_module_level():
    # spec must import cleanly without sweep: any sweep import is inside a function
    tree = ast.parse(inspect.getsource(spec_policies))
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            assert not (node.module or "").startswith("automl_vision.sweep")
        elif isinstance(node, ast.Import):
            assert not any(alias.name.startswith("automl_vision.sweep") for alias in node.names)
