"""Early-termination rules (spec section 7) as pure functions, the one place they are written.

Every rule takes a policy of :mod:`automl_vision.spec.policies` (read by its fields only), the id
of the trial to judge and ``history``: trial id -> that trial's primary-metric values, one per
reported interval (index 0 is interval 1). The decision is for ``trial_id`` at its latest interval
``n = len(history[trial_id])``. Each returns a :class:`Decision`; ``decision.rule`` is a sentence
with the numbers, for the log. The local sweep applies them through the policies' ``explain``; the
Katib early-stopping service freezes the same thresholds into its stop rules
(:mod:`automl_vision.earlystopping.rules`).

Non-finite values (NaN, +/-inf) count as the worst possible value: -inf when maximizing, +inf when
minimizing.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass

__all__ = [
    "Decision",
    "bandit_should_terminate",
    "bandit_threshold",
    "clean",
    "is_evaluation_point",
    "median_stopping_should_terminate",
    "natural_key",
    "truncation_selection_should_terminate",
]

History = Mapping[str, Sequence[float]]


@dataclass(frozen=True)
class Decision:
    """Whether to terminate a trial, and why (a human sentence with the numbers)."""

    terminate: bool
    rule: str


# --------------------------------------------------------------------------- helpers


def natural_key(trial_id: str) -> tuple:
    """Sort key in natural order: ``'trial-2' < 'trial-10'``.

    ``re.split`` with a capturing group alternates text (even positions) and digit runs (odd
    positions), so keys compare position by position between like types. The id itself is the final
    tie-break (``'trial-02'`` vs ``'trial-2'``) so the order is total.
    """
    parts = re.split(r"(\d+)", trial_id)
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), trial_id


class _Reversed:
    """Wraps a value so that it sorts in the opposite order."""

    __slots__ = ("v",)

    def __init__(self, v):
        self.v = v

    def __lt__(self, other: _Reversed) -> bool:
        return other.v < self.v

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Reversed) and self.v == other.v


def _worst(maximize: bool) -> float:
    return -math.inf if maximize else math.inf


def clean(value: float, maximize: bool) -> float:
    """A metric value with any non-finite value replaced by the worst possible one."""
    value = float(value)
    return value if math.isfinite(value) else _worst(maximize)


def _best(values: Sequence[float], maximize: bool) -> float:
    cleaned = [clean(v, maximize) for v in values]
    if not cleaned:
        return _worst(maximize)
    return max(cleaned) if maximize else min(cleaned)


def _mean(values: Sequence[float], maximize: bool) -> float:
    cleaned = [clean(v, maximize) for v in values]
    if any(math.isinf(v) for v in cleaned):
        return _worst(maximize)
    return math.fsum(cleaned) / len(cleaned)


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def _name(policy) -> str:
    return policy.type


def is_evaluation_point(policy, n: int) -> bool:
    """True when the rule applies after ``n`` reported values: ``n >= 1``, ``n >= delay_evaluation``
    and ``n`` is a multiple of ``evaluation_interval``."""
    return n >= 1 and n >= policy.delay_evaluation and n % policy.evaluation_interval == 0


def _gate(policy, trial_id: str, history: History) -> tuple[int, Decision | None]:
    """The trial's interval ``n``, and a 'no decision' Decision when the rule does not apply at n."""
    n = len(history.get(trial_id, ()))
    if is_evaluation_point(policy, n):
        return n, None
    return n, Decision(
        False,
        f"{_name(policy)}: no evaluation at interval {n} "
        f"(every {policy.evaluation_interval}, from {policy.delay_evaluation}) -> continue",
    )


def _verdict(terminate: bool) -> str:
    return "terminate" if terminate else "continue"


# --------------------------------------------------------------------------- rules


def bandit_threshold(policy, best: float, maximize: bool) -> tuple[float, str]:
    """The bandit's threshold from the best value of all trials, and its formula for the log.

    Maximize: ``best / (1 + slack_factor)`` or ``best - slack_amount``; minimize:
    ``best * (1 + slack_factor)`` or ``best + slack_amount``. A trial whose own best is worse than the
    threshold (below it when maximizing, above it when minimizing) is terminated.
    """
    if policy.slack_factor is not None:
        s = policy.slack_factor
        if maximize:
            return best / (1 + s), f"{_fmt(best)} / (1 + {_fmt(s)})"
        return best * (1 + s), f"{_fmt(best)} * (1 + {_fmt(s)})"
    a = policy.slack_amount
    if maximize:
        return best - a, f"{_fmt(best)} - {_fmt(a)}"
    return best + a, f"{_fmt(best)} + {_fmt(a)}"


def _worse(own: float, threshold: float, maximize: bool) -> tuple[bool, str]:
    """Whether ``own`` is strictly worse than ``threshold``, and the comparison as shown in the log."""
    if maximize:
        return own < threshold, "<" if own < threshold else ">="
    return own > threshold, ">" if own > threshold else "<="


def bandit_should_terminate(policy, trial_id: str, history: History, maximize: bool = True) -> Decision:
    """Bandit: terminate when the trial's best so far is outside the slack of the best of all trials.

    ``own`` = best of the trial's values up to ``n``; ``best`` = best value of any trial (itself
    included) over intervals 1..n; the threshold is :func:`bandit_threshold`.
    """
    n, skip = _gate(policy, trial_id, history)
    if skip:
        return skip
    own = _best(history[trial_id][:n], maximize)
    best = _best([v for values in history.values() for v in values[:n]], maximize)
    threshold, formula = bandit_threshold(policy, best, maximize)
    terminate, op = _worse(own, threshold, maximize)
    return Decision(
        terminate,
        f"bandit: best {_fmt(own)} {op} {formula} = {_fmt(threshold)} at interval {n} "
        f"-> {_verdict(terminate)}",
    )


def median_stopping_should_terminate(policy, trial_id: str, history: History, maximize: bool = True) -> Decision:
    """Median stopping: terminate when the trial's best up to ``n`` is strictly worse than the median
    of the running averages (intervals 1..n) of the OTHER trials that have reported at least ``n``
    values. No such trials: no termination."""
    n, skip = _gate(policy, trial_id, history)
    if skip:
        return skip
    own = _best(history[trial_id][:n], maximize)
    means = [
        _mean(values[:n], maximize)
        for other, values in history.items()
        if other != trial_id and len(values) >= n
    ]
    if not means:
        return Decision(
            False, f"median_stopping: no other trial has reported {n} or more values -> continue"
        )
    median = statistics.median(means)
    terminate, op = _worse(own, median, maximize)
    return Decision(
        terminate,
        f"median_stopping: best {_fmt(own)} {op} median {_fmt(median)} of {len(means)} other "
        f"trials' averages over intervals 1..{n} -> {_verdict(terminate)}",
    )


def truncation_selection_should_terminate(
    policy,
    trial_id: str,
    history: History,
    maximize: bool = True,
    finished: Set[str] = frozenset(),
) -> Decision:
    """Truncation selection: rank the ``k`` trials that have reported at least ``n`` values (this one
    included; ids in ``finished`` left out when ``exclude_finished_jobs``, but never ``trial_id``) by
    their value at interval ``n``; terminate when the trial is among the worst
    ``floor(k * truncation_percentage / 100)``. Ties: the later trial id (natural order) is worse."""
    n, skip = _gate(policy, trial_id, history)
    if skip:
        return skip
    cohort = [
        t
        for t, values in history.items()
        if len(values) >= n
        and (t == trial_id or not (policy.exclude_finished_jobs and t in finished))
    ]
    k = len(cohort)
    cut = k * policy.truncation_percentage // 100

    def worse_first(t: str) -> tuple:
        v = clean(history[t][n - 1], maximize)
        goodness = v if maximize else -v
        # ascending goodness = worst first; for equal values the later id sorts first (is worse)
        return goodness, _Reversed(natural_key(t))

    ranked = sorted(cohort, key=worse_first)
    position = ranked.index(trial_id)  # 0 = worst
    terminate = position < cut
    value = clean(history[trial_id][n - 1], maximize)
    return Decision(
        terminate,
        f"truncation_selection: value {_fmt(value)} ranks {position + 1} of {k} from the worst at "
        f"interval {n}; the worst {cut} ({policy.truncation_percentage}% of {k}, rounded down) "
        f"are cut -> {_verdict(terminate)}",
    )
