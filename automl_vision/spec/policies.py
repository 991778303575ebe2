"""Early-termination policies (spec section 7), with the original SDK's class names.

They are part of the job spec (``sweep.early_termination``) and are used as-is from Python:
``BanditPolicy(evaluation_interval=2, slack_factor=0.2, delay_evaluation=6)``. Their rules are the
functions of :mod:`automl_vision.spec.termination`; :func:`decide` applies whichever a policy is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set as AbstractSet
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from automl_vision.spec.termination import (
    Decision,
    bandit_should_terminate,
    median_stopping_should_terminate,
    truncation_selection_should_terminate,
)


class _Policy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    evaluation_interval: int = Field(1, ge=1, description="Apply the rule every N reported values.")
    delay_evaluation: int = Field(0, ge=0, description="Never apply the rule before N reported values.")

    def explain(self, trial_id: str, history: Mapping[str, Sequence[float]], *, maximize: bool = True,
                finished: AbstractSet[str] = frozenset()) -> Decision:
        """The decision for ``trial_id`` at its latest interval ``n = len(history[trial_id])``, as a
        ``Decision(terminate, rule)`` (``rule``: a sentence with the numbers, for the log).

        ``history`` maps each trial id to its primary-metric values, one per reported interval
        (index 0 is interval 1); ``finished`` is the set of trials that have ended (used by
        ``truncation_selection`` with ``exclude_finished_jobs``).
        """
        return decide(self, trial_id, history, maximize=maximize, finished=finished)

    def should_terminate(self, trial_id: str, history: Mapping[str, Sequence[float]], *,
                         maximize: bool = True, finished: AbstractSet[str] = frozenset()) -> bool:
        """True when ``trial_id`` should be cancelled now; see :meth:`explain`."""
        return self.explain(trial_id, history, maximize=maximize, finished=finished).terminate


class BanditPolicy(_Policy):
    """Stop a trial whose best value falls outside the slack of the best trial at the same interval."""

    type: Literal["bandit"] = "bandit"
    slack_factor: float | None = Field(None, gt=0)
    slack_amount: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _one_slack(self):
        if (self.slack_factor is None) == (self.slack_amount is None):
            raise ValueError("bandit needs exactly one of slack_factor or slack_amount")
        return self


class MedianStoppingPolicy(_Policy):
    """Stop a trial whose best value is worse than the median of the other trials' running averages."""

    type: Literal["median_stopping"] = "median_stopping"


class TruncationSelectionPolicy(_Policy):
    """At each interval, stop the lowest ``truncation_percentage`` percent of the trials."""

    type: Literal["truncation_selection"] = "truncation_selection"
    truncation_percentage: int = Field(ge=1, le=99)
    exclude_finished_jobs: bool = False


EarlyTerminationPolicy = Annotated[
    Union[BanditPolicy, MedianStoppingPolicy, TruncationSelectionPolicy], Field(discriminator="type")
]
POLICY_TYPES = {"bandit": BanditPolicy, "median_stopping": MedianStoppingPolicy,
                "truncation_selection": TruncationSelectionPolicy}


def decide(policy, trial_id: str, history: Mapping[str, Sequence[float]], *, maximize: bool = True,
           finished: AbstractSet[str] = frozenset()) -> Decision:
    """Apply whichever rule ``policy`` is (see :meth:`_Policy.explain`)."""
    if isinstance(policy, BanditPolicy):
        return bandit_should_terminate(policy, trial_id, history, maximize)
    if isinstance(policy, MedianStoppingPolicy):
        return median_stopping_should_terminate(policy, trial_id, history, maximize)
    if isinstance(policy, TruncationSelectionPolicy):
        return truncation_selection_should_terminate(policy, trial_id, history, maximize, finished)
    raise TypeError(f"not an early-termination policy: {type(policy).__name__}")
