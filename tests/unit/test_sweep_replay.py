"""The sweep's bookkeeping (``sweep.core``) driven by replayed curves (``sweep.replay``): which trial
each policy stops, at which interval and why, worked out by hand; ranking; compute accounting."""

from __future__ import annotations

import pytest

from automl_vision.spec.policies import (
    AshaPolicy,
    BanditPolicy,
    HyperbandPolicy,
    MedianStoppingPolicy,
    TruncationSelectionPolicy,
)
from automl_vision.sweep.core import SweepState, TrialRecord
from automl_vision.sweep.replay import Curve, replay


def curves(*values, seconds=None):
    return [Curve(tuple(v), tuple(seconds[i]) if seconds else None) for i, v in enumerate(values)]


def outcome(result):
    """trial id -> (status, intervals run)."""
    return {t.trial_id: (t.status, len(t.values)) for t in result.state.trials.values()}


BANDIT = BanditPolicy(slack_factor=0.2, evaluation_interval=1, delay_evaluation=0)


@pytest.mark.parametrize("policy, trials, concurrency, expected, best", [
    # bandit, one trial at a time. trial-0000 runs alone: the best at each interval is its own.
    # trial-0001, interval 1: best of any trial over interval 1 = max(0.5, 0.3) = 0.5; 0.5 / 1.2 = 0.4167;
    #   0.3 < 0.4167 -> terminated after 1 of 3 intervals.
    # trial-0002, interval 1: best = 0.7 (its own) -> kept; interval 2: own 0.75, best over 1..2 = 0.8
    #   (trial-0000), 0.8 / 1.2 = 0.667 -> kept; interval 3 is its last: no decision.
    pytest.param(BANDIT, ([0.5, 0.8, 0.9], [0.3, 0.6, 0.7], [0.7, 0.75, 0.95]), 1,
                 {"trial-0000": ("completed", 3), "trial-0001": ("terminated", 1), "trial-0002": ("completed", 3)},
                 0.95, id="bandit-sequential"),
    # delay_evaluation 2: interval 1 is not evaluated; at interval 2 trial-0001's own best 0.6 < best over
    #   intervals 1..2 (0.8) / 1.2 = 0.667 -> terminated after 2 intervals.
    pytest.param(BanditPolicy(slack_factor=0.2, delay_evaluation=2), ([0.5, 0.8, 0.9], [0.3, 0.6, 0.7]), 1,
                 {"trial-0000": ("completed", 3), "trial-0001": ("terminated", 2)}, 0.9, id="bandit-delay"),
    # slack_amount 0.05: trial-0001 at interval 1: 0.3 < 0.5 - 0.05 -> terminated
    pytest.param(BanditPolicy(slack_amount=0.05), ([0.5, 0.8, 0.9], [0.3, 0.6, 0.7]), 1,
                 {"trial-0000": ("completed", 3), "trial-0001": ("terminated", 1)}, 0.9, id="bandit-amount"),
    # median stopping: trial-0001 at intervals 1..3 is above trial-0000's running average (0.5, 0.55, 0.6);
    # trial-0002 at interval 1: best 0.4 < median(0.5, 0.6) = 0.55 -> terminated, although it would have
    # reached 0.9 (the best trial is still trial-0001, 0.9, so no loss)
    pytest.param(MedianStoppingPolicy(), ([0.5, 0.6, 0.7, 0.8], [0.6, 0.7, 0.8, 0.9], [0.4, 0.45, 0.5, 0.9]), 1,
                 {"trial-0000": ("completed", 4), "trial-0001": ("completed", 4), "trial-0002": ("terminated", 1)},
                 0.9, id="median"),
    # truncation 50%: trial-0001 at interval 1: 2 trials have a value, floor(2 * 50 / 100) = 1 cut, and
    # 0.4 < 0.5 is the worst -> terminated; it would have been the best (0.7): the best found is 0.65
    pytest.param(TruncationSelectionPolicy(truncation_percentage=50), ([0.5, 0.6], [0.4, 0.7], [0.55, 0.65]), 1,
                 {"trial-0000": ("completed", 2), "trial-0001": ("terminated", 1), "trial-0002": ("completed", 2)},
                 0.65, id="truncation"),
    # exclude_finished_jobs: trial-0000 has finished, so trial-0001 is alone at interval 1: 1 trial,
    # floor(1 * 50 / 100) = 0 cut -> kept; trial-0002 at interval 1: trial-0001 has finished too -> kept
    pytest.param(TruncationSelectionPolicy(truncation_percentage=50, exclude_finished_jobs=True),
                 ([0.5, 0.6], [0.4, 0.7], [0.55, 0.65]), 1,
                 {"trial-0000": ("completed", 2), "trial-0001": ("completed", 2), "trial-0002": ("completed", 2)},
                 0.7, id="truncation-exclude-finished"),
    # asha, rungs 1 and 3 (max_resource 9), one trial at a time; the rule is not applied at interval 5, the last.
    # trial-0001 at rung 1: k = 2 (0.5, 0.3), ceil(2 / 3) = 1 continues -> terminated.
    # trial-0002 at rung 1: k = 3 (0.5, 0.3, 0.6): it is the best -> continues; interval 2 is no rung; at rung 3:
    #   the trials with 3 values are trial-0000 (best 0.7) and itself (0.64): k = 2 -> terminated.
    # trial-0003 at rung 1: k = 4, the best 2 continue: 0.6, 0.55 (itself), 0.5, 0.3 -> continues; at rung 3:
    #   k = 3 (0.7, 0.64, 0.8): it is the best -> continues to the end.
    pytest.param(AshaPolicy(max_resource=9), ([0.5, 0.6, 0.7, 0.8, 0.9], [0.3, 0.4, 0.5, 0.6, 0.7],
                                              [0.6, 0.62, 0.64, 0.66, 0.68], [0.55, 0.75, 0.8, 0.85, 0.95]), 1,
                 {"trial-0000": ("completed", 5), "trial-0001": ("terminated", 1), "trial-0002": ("terminated", 3),
                  "trial-0003": ("completed", 5)}, 0.95, id="asha-sequential"),
    # two at once, reporting together: at t=1 trial-0000 reports first and is alone at rung 1 (continues);
    # trial-0001 then meets it there: k = 2, 0.4 < 0.5 -> terminated. Interval 3 is the last: no decision.
    pytest.param(AshaPolicy(), ([0.5, 0.6, 0.7], [0.4, 0.8, 0.9]), 2,
                 {"trial-0000": ("completed", 3), "trial-0001": ("terminated", 1)}, 0.7, id="asha-concurrent"),
    # the other way round: trial-0000 (0.4) was alone when it reached rung 1, and is never compared there again
    pytest.param(AshaPolicy(), ([0.4, 0.8, 0.9], [0.5, 0.6, 0.7]), 2,
                 {"trial-0000": ("completed", 3), "trial-0001": ("completed", 3)}, 0.9, id="asha-asynchronous"),
    # hyperband, max_resource 9: 3 brackets (trial-NNNN: NNNN % 3): rungs 1, 3 / 3 / none.
    # trial-0000 (bracket 0) alone; trial-0001 (bracket 1, far behind) has no rival in its bracket; trial-0002
    # (bracket 2) is never judged; trial-0003 (bracket 0) at rung 1: 0.4 < trial-0000's 0.5, k = 2 -> terminated;
    # trial-0004 (bracket 1) at rung 3: best 0.3 ties trial-0001's 0.3, the earlier trial wins -> terminated.
    pytest.param(HyperbandPolicy(max_resource=9), ([0.5, 0.6, 0.7, 0.8, 0.9], [0.1, 0.2, 0.3, 0.4, 0.5], [0.0] * 5,
                                                   [0.4, 0.5, 0.6, 0.7, 0.8], [0.2, 0.25, 0.3, 0.9, 0.95]), 1,
                 {"trial-0000": ("completed", 5), "trial-0001": ("completed", 5), "trial-0002": ("completed", 5),
                  "trial-0003": ("terminated", 1), "trial-0004": ("terminated", 3)}, 0.9, id="hyperband"),
    # no policy: everything runs
    pytest.param(None, ([0.5, 0.8, 0.9], [0.3, 0.6, 0.7]), 1,
                 {"trial-0000": ("completed", 3), "trial-0001": ("completed", 3)}, 0.9, id="none"),
])
def test_policies_in_a_sweep(policy, trials, concurrency, expected, best):
    result = replay(curves(*trials), policy, concurrency=concurrency)
    assert outcome(result) == expected
    assert result.best_value == best


def test_concurrent_trials_are_judged_on_what_has_arrived():
    # two at once. trial-0000 reports every second, trial-0001 every 1.5 s.
    # t=1: trial-0000 interval 1 (0.2), alone -> kept. t=1.5: trial-0001 interval 1 (0.9) -> kept.
    # t=2: trial-0000 interval 2: best over intervals 1..2 of any trial = 0.9; 0.2 < 0.9 / 1.2 -> terminated.
    result = replay(curves([0.2] * 4, [0.9, 0.9], seconds=[[1] * 4, [1.5, 1.5]]), BANDIT, concurrency=2)
    assert outcome(result) == {"trial-0000": ("terminated", 2), "trial-0001": ("completed", 2)}
    rec = result.state.trials["trial-0000"]
    assert rec.duration_s == 2.0 and result.wall_seconds == 3.0
    assert rec.reason == ("terminated by bandit at interval 2 (epoch 2): bandit: best 0.2 < 0.9 / (1 + 0.2) = 0.75 "
                          "at interval 2 -> terminate")


def test_asha_stops_trials_at_rungs_only():
    # rungs 2 and 6 (min_resource 2, max_resource 10; 8 intervals a trial, the 8th being the last).
    # trial-0000 leads with 0.9; trial-0001..0005 stay at 0.10, 0.11, ..., 0.14, one at a time.
    # rung 2: trial-0001: k = 2, ceil(2 / 3) = 1 continues -> cut; trial-0002: k = 3, 1 continues -> cut;
    #   trial-0003: k = 4, 2 continue (0.9 and its 0.12) -> passes; trial-0004: k = 5, 2 continue -> passes;
    #   trial-0005: k = 6, 2 continue -> passes.
    # rung 6: trial-0003: k = 2 (0.9, 0.12) -> cut; trial-0004: k = 3 -> cut; trial-0005: k = 4, 2 continue
    #   (0.9 and its 0.14) -> passes and runs to the end.
    policy = AshaPolicy(min_resource=2, max_resource=10)
    behind = [[0.1 + 0.01 * i] * 8 for i in range(5)]
    result = replay(curves([0.9] * 8, *behind), policy)
    assert outcome(result) == {
        "trial-0000": ("completed", 8), "trial-0001": ("terminated", 2), "trial-0002": ("terminated", 2),
        "trial-0003": ("terminated", 6), "trial-0004": ("terminated", 6), "trial-0005": ("completed", 8)}
    assert result.state.trials["trial-0004"].reason == (
        "terminated by asha at interval 6 (epoch 6): asha: best 0.13 over intervals 1..6 ranks 2 of 3 trials at "
        "rung 6; the best 1 continue (3 / 3 rounded up, at least 1) -> terminate")
    assert result.state.compute()["trial_epochs"] == 8 + 2 + 2 + 6 + 6 + 8
    assert result.state.compute()["trial_epochs_without_early_termination"] == 6 * 8


def test_no_decision_at_the_last_interval():
    # trial-0001's only interval is its last: it has done its work, nothing left to save
    result = replay(curves([0.9], [0.1]), BANDIT)
    assert outcome(result) == {"trial-0000": ("completed", 1), "trial-0001": ("completed", 1)}


def test_minimize():
    # loss-like metric: bandit mirrors the rule; 0.9 > 0.5 * 1.2 = 0.6 -> terminated
    result = replay(curves([0.5, 0.4, 0.3], [0.9, 0.8, 0.7]), BANDIT, maximize=False)
    assert outcome(result) == {"trial-0000": ("completed", 3), "trial-0001": ("terminated", 1)}
    assert result.best_value == 0.3


def test_a_diverged_curve_is_not_ranked():
    c = [Curve((0.5, 0.6)), Curve((0.9,), status="diverged", planned=2)]
    result = replay(c, None)
    assert outcome(result) == {"trial-0000": ("completed", 2), "trial-0001": ("diverged", 1)}
    assert result.state.best.trial_id == "trial-0000"


def test_compute_accounting():
    # trial-0001 terminated after 1 of 3 intervals of 2 s each: it would have used 3 intervals, 6 s
    result = replay(curves([0.5, 0.8, 0.9], [0.3, 0.6, 0.7], seconds=[[1, 1, 1], [2, 2, 2]]), BANDIT)
    assert result.state.compute() == {
        "trial_epochs": 4, "trial_epochs_without_early_termination": 6, "saved_share": round(1 - 4 / 6, 4),
        "trial_seconds": 5.0, "trial_seconds_without_early_termination": 9.0,
        "device_hours": round(5.0 / 3600, 5),  # no device share recorded: each trial held a whole device
    }


def _rec(i, status, value, **kw):
    return TrialRecord(f"trial-{i:04d}", i, {"model_name": "resnet18"}, status=status, best_value=value, **kw)


def test_ranking_best_first_ties_to_the_earlier_trial():
    state = SweepState("accuracy", True, None, [
        _rec(0, "completed", 0.8), _rec(1, "failed", 0.99), _rec(2, "completed", 0.9), _rec(3, "terminated", 0.5),
        _rec(4, "completed", 0.9), _rec(5, "running", 0.95), _rec(6, "diverged", None),
        _rec(7, "early_stopped", 0.85), _rec(8, "timeout", 0.7),
    ])
    assert [t.index for t in state.ranked()] == [2, 4, 7, 0, 8, 3, 1, 5, 6]
    assert state.best.trial_id == "trial-0002"
    low = SweepState("loss", False, None, [_rec(0, "completed", 0.3), _rec(1, "completed", 0.2),
                                            _rec(2, "completed", 0.2)])
    assert [t.index for t in low.ranked()] == [1, 2, 0]


def test_record_json_roundtrip():
    rec = _rec(3, "terminated", 0.5, reason="terminated by bandit", planned_epochs=4)
    rec.values, rec.epochs, rec.losses = [0.4, 0.5], [1, 2], [0.9, None]
    d = rec.to_json("accuracy")
    assert d["history"] == [{"epoch": 1, "accuracy": 0.4, "loss": 0.9}, {"epoch": 2, "accuracy": 0.5, "loss": None}]
    assert TrialRecord.from_json(d, "accuracy") == rec
