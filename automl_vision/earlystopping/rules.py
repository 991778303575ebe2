"""Early-termination policies as Katib early-stopping rules.

Katib asks the early-stopping service for rules when it creates trials (one request per batch of new
trials, which all get the same rules; the request names the experiment and the trials that exist, not
the trials being created) and freezes them into the trials. Its metrics collector
(``cmd/metricscollector/v1beta1/file-metricscollector/main.go``, ``watchMetricsFile`` and
``updateStopRules``) compares a rule on the objective with the trial's BEST value so far, and stops
the trial once every rule has held (the rules are ANDed). A rule's ``start_step`` is kept per metric
name, counted down by each reported value, and the rule is compared only at the value that brings
the count to exactly 0, never after: each rule is ONE check, at its ``start_step``-th value. Rules
on the same metric share one count (the last rule's start step, counted down once per pending rule),
so of two rules on the objective at most one is ever compared and the trial is never stopped: a
frozen rule here is always a single rule.

- ``bandit``, ``truncation_selection``: ``start_step`` = the policy's first evaluation point ``k``
  (the smallest multiple of ``evaluation_interval`` that is >= ``delay_evaluation`` and >= 1); the
  value = the threshold the policy function would apply at interval ``k`` given the earlier trials'
  values (their first ``k`` reported values).
- ``asha``, ``hyperband``: ``start_step`` = the first rung of the new trial's bracket; the value =
  the threshold below which the new trial ranks outside the best ``max(1, ceil(k / eta))`` of the
  ``k`` trials of its bracket at that rung (the earlier trials that reached it, and itself).

``stop_rule`` computes it with the local sweep's own functions (:mod:`automl_vision.spec.termination`);
``tests/unit/test_katib_earlystopping.py`` checks that the rule holds exactly when
:func:`automl_vision.spec.policies.decide` terminates the trial at that interval.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import ValidationError

from automl_vision.spec.policies import (
    RUNG_POLICIES,
    AshaPolicy,
    BanditPolicy,
    HyperbandPolicy,
    MedianStoppingPolicy,
    TruncationSelectionPolicy,
)
from automl_vision.spec.termination import bandit_threshold, clean, first_rung, natural_key, trial_bracket

#: Katib early-stopping algorithm names served by ``automl_vision.earlystopping.service`` (Katib puts no
#: rule on their characters: an Experiment's name is looked up among KatibConfig's ``earlyStoppings`` and
#: used in no object name).
BANDIT = "bandit"
TRUNCATION_SELECTION = "truncation-selection"
ASHA = "asha"
HYPERBAND = "hyperband"
ALGORITHMS: dict[str, type] = {BANDIT: BanditPolicy, TRUNCATION_SELECTION: TruncationSelectionPolicy,
                               ASHA: AshaPolicy, HYPERBAND: HyperbandPolicy}
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
    """The Katib early-stopping algorithm name and settings of a policy (bandit, truncation_selection,
    asha, hyperband)."""
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
    if isinstance(policy, RUNG_POLICIES):
        settings = [("min_resource", str(policy.min_resource)),
                    ("reduction_factor", repr(float(policy.reduction_factor)))]
        if policy.max_resource is not None:
            settings.append(("max_resource", str(policy.max_resource)))
        if isinstance(policy, HyperbandPolicy):
            if policy.brackets is not None:
                settings.append(("brackets", str(policy.brackets)))
            return HYPERBAND, settings
        return ASHA, settings
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


def creation_order(names: Sequence[str], history: Mapping[str, Sequence[float]]
                   ) -> tuple[dict[str, list[float]], str]:
    """Katib trials, ``names`` in the order they were created, under the local sweep's ids: the i-th
    becomes ``trial-000i`` with its values from ``history`` (none when it has reported nothing), and
    the trial being created is the next id, which is returned too. A trial's number is then its place
    in the sweep, as locally: it gives its hyperband bracket (number modulo brackets) and makes it the
    later trial on ties. Katib's own trial names cannot: the trial being created has none yet when its
    rule is asked for."""
    renamed = {f"trial-{i:04d}": list(history.get(name, ())) for i, name in enumerate(names)}
    return renamed, f"trial-{len(names):04d}"


def stop_rule(policy, metric: str, history: Mapping[str, Sequence[float]], *, maximize: bool = True,
              new_trial: str | None = None) -> StopRule | None:
    """The rule a NEW trial gets, from the earlier trials' values (``history``: trial -> the metric's
    values, one per reported interval). None when the policy could not stop the trial at its one
    checked interval (no earlier trial to compare with, or nobody to cut).

    ``asha`` and ``hyperband`` need ``new_trial``, the id the new trial has among ``history``'s ids
    (its bracket comes from it), and it must come after every one of them in natural order, as a trial
    being created does (it loses ties): :func:`creation_order` gives both.
    """
    comparison: Literal["less", "greater"] = "less" if maximize else "greater"
    if isinstance(policy, RUNG_POLICIES):
        return _rung_rule(policy, metric, history, maximize, new_trial, comparison)
    k = first_evaluation_step(policy)
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


def _rung_rule(policy, metric: str, history: Mapping[str, Sequence[float]], maximize: bool,
               new_trial: str | None, comparison: Literal["less", "greater"]) -> StopRule | None:
    """ASHA at the first rung ``n`` of the new trial's bracket: with ``m`` earlier trials of that bracket
    that reported ``n`` values, ``k = m + 1`` trials compete and the best ``keep = max(1, ceil(k / eta))``
    continue. The new trial loses every tie (it is the later trial), so it is terminated exactly when its
    best over intervals 1..n is worse than or equal to the ``keep``-th best of the earlier trials' bests.
    Katib compares strictly (``less``/``greater``), so the rule's value is the next float past that
    threshold: ``best < nextafter(threshold, +inf)`` is ``best <= threshold`` for every float."""
    if new_trial is None:
        raise ValueError(f"{policy.type}: the rule depends on the new trial's bracket; give new_trial")
    later = [t for t in history if t != new_trial and natural_key(t) > natural_key(new_trial)]
    if later:
        raise ValueError(f"{policy.type}: new trial {new_trial!r} must come after every earlier trial, "
                         f"not before {later[0]!r}")
    bracket = trial_bracket(policy, new_trial)
    n = first_rung(policy, bracket)
    if n is None:
        return None  # a bracket without rungs: its trials run to the end
    bests = [(max if maximize else min)(clean(v, maximize) for v in list(vals)[:n])
             for t, vals in history.items()
             if t != new_trial and len(vals) >= n and trial_bracket(policy, t) == bracket]
    keep = max(1, math.ceil((len(bests) + 1) / policy.reduction_factor))
    if len(bests) < keep:
        return None  # fewer earlier trials than places: the new trial always continues
    threshold = sorted(bests, reverse=maximize)[keep - 1]
    if not math.isfinite(threshold):
        return None  # only a non-finite best would be as bad, and Katib never reads one
    return StopRule(metric, comparison, math.nextafter(threshold, math.inf if maximize else -math.inf), n)
