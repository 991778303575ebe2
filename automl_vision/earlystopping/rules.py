"""Early-termination policies as Katib early-stopping rules.

Katib asks the early-stopping service for rules once, when it creates a trial, and freezes them
into the trial. Its metrics collector then compares the trial's BEST value so far of the objective
with each rule's value, from the rule's ``start_step``-th reported value on, and stops the trial
when every rule has held. A comparison of a best-so-far with one fixed value can only first hold
at ``start_step`` (the best never gets worse), so a frozen rule is a single check:

- ``start_step`` = the policy's first evaluation point ``k`` (the smallest multiple of
  ``evaluation_interval`` that is >= ``delay_evaluation`` and >= 1);
- the value = the threshold the policy function would apply at interval ``k`` given the earlier
  trials' values (their first ``k`` reported values).

``stop_rule`` computes it with the local sweep's own threshold (:mod:`automl_vision.spec.termination`);
``tests/unit/test_katib_earlystopping.py`` checks that the rule holds exactly when
:func:`automl_vision.spec.policies.decide` terminates the trial.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import ValidationError

from automl_vision.spec.policies import BanditPolicy, MedianStoppingPolicy, TruncationSelectionPolicy
from automl_vision.spec.termination import bandit_threshold, clean

#: Katib early-stopping algorithm names served by ``automl_vision.earlystopping.service``.
BANDIT = "bandit"
TRUNCATION_SELECTION = "truncation-selection"
ALGORITHMS: dict[str, type] = {BANDIT: BanditPolicy, TRUNCATION_SELECTION: TruncationSelectionPolicy}
#: Katib's built-in early stopping, used for ``median_stopping``.
MEDIANSTOP = "medianstop"
#: The port Katib's controller and metrics collector call an early-stopping service on.
SERVICE_PORT = 6788

EXCLUDE_FINISHED_REASON = (
    "on Katib every trial whose values the early-stopping service can read has finished (the metrics "
    "collector reports a trial's values when it ends), so exclude_finished_jobs would leave no trial to "
    "compare with and never stop one; remove it"
)


@dataclass(frozen=True)
class StopRule:
    """``metric <comparison> value``, checked from the ``start_step``-th reported value on."""

    metric: str
    comparison: Literal["less", "greater"]
    value: float
    start_step: int

    def holds(self, best_so_far: float) -> bool:
        """Whether the rule holds for the trial's best value so far (what Katib's collector compares)."""
        return best_so_far < self.value if self.comparison == "less" else best_so_far > self.value


def first_evaluation_step(policy) -> int:
    """The first interval at which the policy applies: a multiple of ``evaluation_interval`` that is
    >= ``delay_evaluation`` and >= 1."""
    start = max(1, policy.delay_evaluation)
    return policy.evaluation_interval * math.ceil(start / policy.evaluation_interval)


def katib_settings(policy) -> tuple[str, list[tuple[str, str]]]:
    """The Katib early-stopping algorithm name and settings of a policy (bandit, truncation_selection)."""
    if isinstance(policy, BanditPolicy):
        settings = [("evaluation_interval", str(policy.evaluation_interval)),
                    ("delay_evaluation", str(policy.delay_evaluation))]
        if policy.slack_factor is not None:
            settings.append(("slack_factor", repr(float(policy.slack_factor))))
        else:
            settings.append(("slack_amount", repr(float(policy.slack_amount))))
        return BANDIT, settings
    if isinstance(policy, TruncationSelectionPolicy):
        if policy.exclude_finished_jobs:
            raise ValueError(f"truncation_selection.exclude_finished_jobs: {EXCLUDE_FINISHED_REASON}")
        return TRUNCATION_SELECTION, [("evaluation_interval", str(policy.evaluation_interval)),
                                      ("delay_evaluation", str(policy.delay_evaluation)),
                                      ("truncation_percentage", str(policy.truncation_percentage))]
    if isinstance(policy, MedianStoppingPolicy):
        raise ValueError("median_stopping runs as Katib's own medianstop, not on this service")
    raise TypeError(f"not an early-termination policy: {type(policy).__name__}")


def policy_from_settings(algorithm_name: str, settings: Mapping[str, str]):
    """The policy a Katib early-stopping spec describes; raises ValueError naming every problem."""
    cls = ALGORITHMS.get(algorithm_name)
    if cls is None:
        raise ValueError(f"unknown early-stopping algorithm {algorithm_name!r}; this service runs "
                         f"{', '.join(ALGORITHMS)}")
    fields = [f for f in cls.model_fields if f != "type"]
    unknown = [k for k in settings if k not in fields]
    if unknown:
        raise ValueError(f"{algorithm_name}: unknown setting(s) {', '.join(map(repr, unknown))}; "
                         f"allowed: {', '.join(fields)}")
    try:
        policy = cls.model_validate(dict(settings))
    except ValidationError as e:
        problems = [f"{'.'.join(map(str, d['loc'])) or 'settings'}: {d['msg'].removeprefix('Value error, ')}"
                    for d in e.errors(include_url=False)]
        raise ValueError(f"{algorithm_name}: " + "; ".join(problems)) from None
    if isinstance(policy, TruncationSelectionPolicy) and policy.exclude_finished_jobs:
        raise ValueError(f"{algorithm_name}: exclude_finished_jobs: {EXCLUDE_FINISHED_REASON}")
    return policy


def stop_rule(policy, metric: str, history: Mapping[str, Sequence[float]], *, maximize: bool = True
              ) -> StopRule | None:
    """The rule a NEW trial gets, from the earlier trials' values (``history``: trial -> the metric's
    values, one per reported interval). None when the policy could not stop the trial at interval
    ``k`` (no earlier trial to compare with, or nobody to cut)."""
    k = first_evaluation_step(policy)
    comparison: Literal["less", "greater"] = "less" if maximize else "greater"
    if isinstance(policy, BanditPolicy):
        values = [clean(v, maximize) for vals in history.values() for v in list(vals)[:k]]
        if not values:
            return None
        best = max(values) if maximize else min(values)
        if not math.isfinite(best):
            return None
        threshold, _ = bandit_threshold(policy, best, maximize)
        return StopRule(metric, comparison, threshold, k)
    if isinstance(policy, TruncationSelectionPolicy):
        at_k = [clean(list(vals)[k - 1], maximize) for vals in history.values() if len(vals) >= k]
        cut = (len(at_k) + 1) * policy.truncation_percentage // 100  # the new trial is in the cohort
        if cut == 0:
            return None
        worst_first = sorted(at_k, reverse=not maximize)
        threshold = worst_first[cut - 1]
        if not math.isfinite(threshold):
            return None  # "worse than the worst possible value" never holds
        return StopRule(metric, comparison, threshold, k)
    raise TypeError(f"no Katib rule for {type(policy).__name__}")
