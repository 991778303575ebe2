"""The bookkeeping of a sweep, with no processes and no files: trials, their metric history,
early-termination decisions, the ranking and the compute used.

The local scheduler (``local.py``) and the replay of recorded learning curves (``replay.py``)
drive the same :class:`SweepState`, so a benchmark replaying curves measures the scheduler's own
decisions.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from automl_vision.spec.termination import Decision, is_evaluation_point

#: Trials whose best metric counts for the leaderboard: they ran as asked, or were stopped on
#: purpose by the sweep (early termination, their own time limit) with a model of their best epoch.
RANKED = frozenset({"completed", "early_stopped", "terminated", "timeout"})
#: Trials that count against ``max_failed_trials``.
FAILED = frozenset({"failed", "diverged", "timeout"})
#: Trials that have ended for good: a resumed sweep keeps them as they are.
FINISHED = frozenset({"completed", "early_stopped", "terminated", "failed", "diverged", "timeout"})
#: Trials a resumed sweep runs again from the start: killed with the sweep, or never started.
RERUN = frozenset({"pending", "running", "interrupted", "canceled"})


def trial_id(index: int) -> str:
    return f"trial-{index:04d}"


@dataclass
class TrialRecord:
    """One trial of a sweep: what it was given, what it reported, how and why it ended."""

    trial_id: str
    index: int
    parameters: dict[str, Any]
    sampler_params: dict[str, Any] = field(default_factory=dict)
    status: str = "pending"
    reason: str = ""
    best_value: float | None = None
    best_epoch: int | None = None
    epochs_completed: int = 0
    planned_epochs: int | None = None
    planned_intervals: int | None = None
    #: The primary metric at each reported interval, the epoch of each, and the validation loss.
    values: list[float] = field(default_factory=list)
    epochs: list[int] = field(default_factory=list)
    losses: list[float | None] = field(default_factory=list)
    #: Seconds from the trial's start to each report (what the budget's estimates are measured on).
    report_s: list[float] = field(default_factory=list)
    duration_s: float = 0.0
    started_at: str | None = None
    ended_at: str | None = None
    exit_code: int | None = None
    threads: int | None = None
    #: The share of the devices the trial held: 1 for a GPU of its own, else its threads / the machine's cores.
    device_share: float | None = None
    gpu: str | None = None
    pid: int | None = None
    #: Seconds from the sweep's decision to stop the trial to the end of its process.
    stop_s: float | None = None
    #: The model it trained where the sampled parameters do not say (set in training_parameters, or the
    #: task's default).
    model: str | None = None
    #: Not judged by the early-termination policy (AutoMode's final training of its best settings).
    exempt: bool = False

    @property
    def model_name(self) -> str | None:
        return self.parameters.get("model_name") or self.model

    def to_json(self, primary_metric: str) -> dict[str, Any]:
        d = asdict(self)
        d["history"] = [{"epoch": e, primary_metric: v, "loss": lo}
                        for e, v, lo in zip(self.epochs, self.values, self.losses)]
        for k in ("values", "epochs", "losses"):
            del d[k]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any], primary_metric: str) -> TrialRecord:
        known = {f.name for f in fields(cls)}
        rec = cls(**{k: v for k, v in d.items() if k in known})
        for h in d.get("history", []):
            rec.epochs.append(h["epoch"])
            rec.values.append(h[primary_metric])
            rec.losses.append(h.get("loss"))
        return rec


#: The reasons the local scheduler gives a trial it stopped for the compute budget, not by the policy.
BUDGET_STOP = "budget of"


def _by_budget(t: TrialRecord) -> bool:
    """A trial stopped because the budget could not pay for more: what it would have used without early
    termination is what it used."""
    return BUDGET_STOP in t.reason and not t.reason.startswith("terminated by")


def _better(a: float, b: float, maximize: bool) -> bool:
    return a > b if maximize else a < b


class SweepState:
    """Every trial of a sweep and the early-termination policy applied to their reports."""

    def __init__(self, primary_metric: str, maximize: bool, policy=None,
                 trials: Iterable[TrialRecord] = ()):
        self.primary_metric = primary_metric
        self.maximize = maximize
        self.policy = policy
        self.trials: dict[str, TrialRecord] = {t.trial_id: t for t in trials}

    def add(self, record: TrialRecord) -> TrialRecord:
        self.trials[record.trial_id] = record
        return record

    def history(self) -> dict[str, list[float]]:
        """trial id -> primary-metric values, for the policies (every trial that has reported)."""
        return {t.trial_id: list(t.values) for t in self.trials.values() if t.values}

    def finished(self) -> set[str]:
        return {t.trial_id for t in self.trials.values() if t.status in FINISHED}

    def report(self, trial_id: str, epoch: int | None, value: float, loss: float | None = None) -> Decision | None:
        """Record one reported value of a running trial; returns the policy's decision when the
        rule applies at this interval (``decision.terminate``: stop the trial now), else None.

        The rule is not applied at a trial's last planned interval: the trial has done its work.
        """
        rec = self.trials[trial_id]
        rec.values.append(float(value))
        rec.epochs.append(int(epoch) if epoch is not None else len(rec.values))
        rec.losses.append(loss)
        rec.epochs_completed = max(rec.epochs_completed, rec.epochs[-1])
        if math.isfinite(value) and (rec.best_value is None or _better(value, rec.best_value, self.maximize)):
            rec.best_value, rec.best_epoch = float(value), rec.epochs[-1]
        if self.policy is None or rec.status != "running" or rec.exempt:
            return None
        n = len(rec.values)
        if rec.planned_intervals is not None and n >= rec.planned_intervals:
            return None
        if not is_evaluation_point(self.policy, n):
            return None
        return self.policy.explain(trial_id, self.history(), maximize=self.maximize, finished=self.finished())

    def terminate(self, trial_id: str, decision: Decision) -> None:
        rec = self.trials[trial_id]
        rec.status = "terminated"
        rec.reason = (f"terminated by {self.policy.type} at interval {len(rec.values)} "
                      f"(epoch {rec.epochs[-1]}): {decision.rule}")

    # -- results --------------------------------------------------------------------------------

    def ranked(self) -> list[TrialRecord]:
        """Trials on the leaderboard, best first (ties: the earlier trial); then the others in order."""
        sign = -1 if self.maximize else 1
        trials = sorted(self.trials.values(), key=lambda t: t.index)
        scored = [t for t in trials if t.status in RANKED and t.best_value is not None]
        scored.sort(key=lambda t: (sign * t.best_value, t.index))
        return scored + [t for t in trials if t not in scored]

    @property
    def best(self) -> TrialRecord | None:
        ranked = self.ranked()
        if ranked and ranked[0].status in RANKED and ranked[0].best_value is not None:
            return ranked[0]
        return None

    def compute(self) -> dict[str, Any]:
        """Trial-epochs and trial-seconds used, against what the same trials would have used with
        no early termination (a terminated trial would have run all its planned epochs, each as
        long as its epochs so far took on average)."""
        used_epochs = full_epochs = 0
        used_s = full_s = device_s = 0.0
        for t in self.trials.values():
            used_epochs += t.epochs_completed
            used_s += t.duration_s
            device_s += t.duration_s * (t.device_share if t.device_share is not None else 1.0)
            if t.status == "terminated" and t.planned_epochs and t.epochs_completed and not _by_budget(t):
                full_epochs += max(t.planned_epochs, t.epochs_completed)
                full_s += t.duration_s * max(t.planned_epochs, t.epochs_completed) / t.epochs_completed
            else:
                full_epochs += t.epochs_completed
                full_s += t.duration_s
        return {
            "trial_epochs": used_epochs,
            "trial_epochs_without_early_termination": full_epochs,
            "saved_share": round(1 - used_epochs / full_epochs, 4) if full_epochs else 0.0,
            "trial_seconds": round(used_s, 1),
            "trial_seconds_without_early_termination": round(full_s, 1),
            "device_hours": round(device_s / 3600, 5),
        }

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.trials.values():
            out[t.status] = out.get(t.status, 0) + 1
        return out
