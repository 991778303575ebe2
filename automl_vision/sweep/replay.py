"""Replaying recorded learning curves through a sweep, on a simulated clock.

Each curve is a trial that already ran: its primary metric at each interval and how long each
interval took. ``replay`` starts the trials in order, at most ``concurrency`` at once, feeds their
values to a :class:`~automl_vision.sweep.core.SweepState` in the order they would arrive, and
stops a trial where the early-termination policy says so, exactly as the local scheduler does.
It answers what a policy would have saved and lost on those trials without training anything.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

from automl_vision.sweep.core import SweepState, TrialRecord, trial_id


@dataclass(frozen=True)
class Curve:
    """A recorded trial: its values (one per interval), the seconds of each interval (default 1),
    how it ended (``completed``, or ``diverged``/``failed`` after its last value) and the
    intervals it was planned to run (default: as many as it has values)."""

    values: tuple[float, ...]
    seconds: tuple[float, ...] | None = None
    status: str = "completed"
    planned: int | None = None
    parameters: dict | None = None

    def interval_seconds(self, i: int) -> float:
        return float(self.seconds[i]) if self.seconds is not None else 1.0


@dataclass
class ReplayResult:
    state: SweepState
    wall_seconds: float

    @property
    def best_value(self) -> float | None:
        best = self.state.best
        return best.best_value if best else None

    @property
    def intervals_used(self) -> int:
        return sum(len(t.values) for t in self.state.trials.values())

    @property
    def seconds_used(self) -> float:
        return sum(t.duration_s for t in self.state.trials.values())


def replay(curves: Sequence[Curve], policy=None, *, maximize: bool = True, concurrency: int = 1,
           primary_metric: str = "value") -> ReplayResult:
    """Run ``curves`` as one sweep under ``policy`` (None: no early termination)."""
    state = SweepState(primary_metric, maximize, policy)
    # events: (time, kind order, trial index, interval); kind 0 = report, so a report and a start
    # at the same instant see the report first; equal times go in trial order.
    events: list[tuple[float, int, int, int]] = []
    started_at: dict[int, float] = {}
    next_trial = 0
    running = 0
    now = 0.0

    def start(t: float) -> None:
        nonlocal next_trial, running
        i = next_trial
        next_trial += 1
        running += 1
        c = curves[i]
        planned = c.planned if c.planned is not None else len(c.values)
        state.add(TrialRecord(trial_id(i), i, dict(c.parameters or {}), status="running",
                              planned_epochs=planned, planned_intervals=planned))
        started_at[i] = t
        if c.values:
            heapq.heappush(events, (t + c.interval_seconds(0), 0, i, 0))
        else:
            heapq.heappush(events, (t, 1, i, -1))

    def end(i: int, t: float, status: str | None) -> None:
        nonlocal running
        rec = state.trials[trial_id(i)]
        if status is not None:
            rec.status = status
        rec.duration_s = t - started_at[i]
        running -= 1

    while next_trial < len(curves) and running < concurrency:
        start(now)
    while events:
        now, kind, i, k = heapq.heappop(events)
        c = curves[i]
        rec = state.trials[trial_id(i)]
        if kind == 1:  # a trial with no values ends at once
            end(i, now, c.status)
        else:
            decision = state.report(rec.trial_id, k + 1, c.values[k])
            if decision is not None and decision.terminate:
                state.terminate(rec.trial_id, decision)
                end(i, now, None)
            elif k + 1 < len(c.values):
                heapq.heappush(events, (now + c.interval_seconds(k + 1), 0, i, k + 1))
            else:
                end(i, now, c.status)
        while next_trial < len(curves) and running < concurrency:
            start(now)
    return ReplayResult(state, now)
