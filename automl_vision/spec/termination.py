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

``bandit``, ``median_stopping`` and ``truncation_selection`` apply at the multiples of
``evaluation_interval`` from ``delay_evaluation`` on; ``asha`` and ``hyperband`` apply at their
rungs only (:func:`rungs`). :func:`is_evaluation_point` says which.
"""

from __future__ import annotations

import math
import re
import statistics
import zlib
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass

__all__ = [
    "Decision",
    "asha_should_terminate",
    "bandit_should_terminate",
    "bandit_threshold",
    "bracket_count",
    "clean",
    "first_rung",
    "is_evaluation_point",
    "is_rung",
    "max_brackets",
    "median_stopping_should_terminate",
    "natural_key",
    "rungs",
    "trial_bracket",
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


def is_evaluation_point(policy, n: int, trial_id: str | None = None) -> bool:
    """True when the rule applies after ``n`` reported values.

    ``bandit``, ``median_stopping``, ``truncation_selection``: ``n >= 1``, ``n >= delay_evaluation``
    and ``n`` is a multiple of ``evaluation_interval``. ``asha``, ``hyperband``: ``n`` is one of the
    rungs of the bracket of ``trial_id``; without ``trial_id``, of any bracket (bracket 0's rungs
    include every other bracket's).
    """
    if _has_rungs(policy):
        bracket = 0 if trial_id is None else trial_bracket(policy, trial_id)
        return is_rung(policy, bracket, n)
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


# --------------------------------------------------------------------------- rungs and brackets

#: The local sweep's trial ids (``trial-0007``): the number is the trial's place in the sweep.
_TRIAL_NUMBER = re.compile(r"trial-(\d+)")


def _has_rungs(policy) -> bool:
    return policy.type in ("asha", "hyperband")


def max_brackets(min_resource: int, max_resource: int, reduction_factor: float) -> int:
    """``floor(log_eta(max_resource / min_resource)) + 1``: the number of ``s >= 0`` with
    ``min_resource * eta**s <= max_resource`` (counted, so that 243 / 1 with eta 3 gives 6, where
    the floating-point logarithm gives 4.9999...)."""
    s = 0
    while min_resource * reduction_factor ** (s + 1) <= max_resource:
        s += 1
    return s + 1


def bracket_count(policy) -> int:
    """How many brackets a rung-based policy has: 1 for ``asha``; ``brackets`` for ``hyperband``,
    by default :func:`max_brackets` of its resources."""
    if policy.type != "hyperband":
        return 1
    if policy.brackets is not None:
        return policy.brackets
    return max_brackets(policy.min_resource, policy.max_resource, policy.reduction_factor)


def trial_bracket(policy, trial_id: str) -> int:
    """The bracket a trial belongs to: the number of an id ``trial-NNNN`` modulo the bracket count,
    for any other id its CRC-32 (``zlib.crc32``, the same in every process) modulo the count."""
    count = bracket_count(policy)
    if count == 1:
        return 0
    match = _TRIAL_NUMBER.fullmatch(trial_id)
    number = int(match.group(1)) if match else zlib.crc32(trial_id.encode())
    return number % count


def _rung_at(policy, j: int) -> int:
    """``min_resource * reduction_factor**j`` rounded to a whole interval (halves up)."""
    return math.floor(policy.min_resource * policy.reduction_factor ** j + 0.5)


def rungs(policy, bracket: int = 0, up_to: int | None = None) -> list[int]:
    """The intervals at which a trial of ``bracket`` is judged, in order:
    ``min_resource * reduction_factor**j`` for ``j >= bracket``, rounded to whole intervals, below
    ``max_resource`` when it is set, and not past ``up_to`` when given (needed without a
    ``max_resource``: the rungs then never end)."""
    if policy.max_resource is None and up_to is None:
        raise ValueError("rungs without max_resource never end: give up_to")
    out = []
    j = bracket
    while True:
        r = _rung_at(policy, j)
        if (policy.max_resource is not None and r >= policy.max_resource) or (up_to is not None and r > up_to):
            return out
        out.append(r)
        j += 1


def first_rung(policy, bracket: int = 0) -> int | None:
    """The first rung of ``bracket``, or None when it has none (it would be at or above
    ``max_resource``: such a bracket's trials are never judged)."""
    r = _rung_at(policy, bracket)
    return None if policy.max_resource is not None and r >= policy.max_resource else r


def is_rung(policy, bracket: int, n: int) -> bool:
    """Whether interval ``n`` is one of the rungs of ``bracket``."""
    return n >= 1 and n in rungs(policy, bracket, up_to=n)


def _rungs_text(policy, bracket: int, n: int) -> str:
    if policy.max_resource is not None:
        listed = rungs(policy, bracket)
        below = f" below max_resource {policy.max_resource}"
        return f"rungs {', '.join(map(str, listed))}{below}" if listed else f"no rung{below}"
    listed = rungs(policy, bracket, up_to=n)
    listed.append(_rung_at(policy, bracket + len(listed)))
    return f"rungs {', '.join(map(str, listed))}, ..."


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


def asha_should_terminate(policy, trial_id: str, history: History, maximize: bool = True) -> Decision:
    """Asynchronous successive halving (``asha``), and asynchronous Hyperband (``hyperband``: the same
    rule within each bracket), after Li et al., "A System for Massively Parallel Hyperparameter
    Tuning" (MLSys 2020).

    Only at an interval ``n`` that is one of the trial's rungs (:func:`rungs` of its bracket,
    :func:`trial_bracket`): take the ``k`` trials of its bracket that have reported at least ``n``
    values (this one included), each with its best value over intervals 1..n; the trial continues
    when it ranks among the best ``max(1, ceil(k / reduction_factor))``, otherwise it is
    terminated. Ties: the earlier trial id (natural order) is the better one. At other intervals:
    no decision (continue).
    """
    n = len(history.get(trial_id, ()))
    name = _name(policy)
    bracket = trial_bracket(policy, trial_id)
    of_bracket = f" of bracket {bracket}" if bracket_count(policy) > 1 else ""
    if not is_rung(policy, bracket, n):
        return Decision(False, f"{name}: interval {n} is not a rung{of_bracket} "
                               f"({_rungs_text(policy, bracket, n)}) -> continue")
    cohort = [t for t, values in history.items()
              if len(values) >= n and trial_bracket(policy, t) == bracket]
    k = len(cohort)
    eta = policy.reduction_factor
    keep = max(1, math.ceil(k / eta))

    def better_first(t: str) -> tuple:
        v = _best(history[t][:n], maximize)
        return (-v if maximize else v), natural_key(t)

    ranked = sorted(cohort, key=better_first)
    position = ranked.index(trial_id) + 1  # 1 = best
    terminate = position > keep
    own = _best(history[trial_id][:n], maximize)
    return Decision(
        terminate,
        f"{name}: best {_fmt(own)} over intervals 1..{n} ranks {position} of {k} trials{of_bracket} "
        f"at rung {n}; the best {keep} continue ({k} / {_fmt(eta)} rounded up, at least 1) -> {_verdict(terminate)}",
    )
