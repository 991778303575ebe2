"""Early-termination policies (spec section 7), with the original SDK's class names.

They are part of the job spec (``sweep.early_termination``) and are used as-is from Python:
``BanditPolicy(evaluation_interval=2, slack_factor=0.2, delay_evaluation=6)``. Their rules are the
functions of :mod:`automl_vision.spec.termination`; :func:`decide` applies whichever a policy is.

``AshaPolicy`` and ``HyperbandPolicy`` are ours (the original SDK has neither): they judge a trial at
rungs, ``min_resource * reduction_factor**k`` reported values, instead of every
``evaluation_interval`` values, so they take no ``evaluation_interval`` or ``delay_evaluation``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set as AbstractSet
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from automl_vision.spec.termination import (
    Decision,
    asha_should_terminate,
    bandit_should_terminate,
    max_brackets,
    median_stopping_should_terminate,
    truncation_selection_should_terminate,
)


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

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


class _Policy(_Rule):
    evaluation_interval: int = Field(1, ge=1, description="Apply the rule every N reported values.")
    delay_evaluation: int = Field(0, ge=0, description="Never apply the rule before N reported values.")


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


_RESOURCE = ("reported values of the primary metric, one per evaluation_frequency epochs (with the "
             "default evaluation_frequency 1: epochs)")


class _RungPolicy(_Rule):
    """Judges a trial at its rungs: ``min_resource * reduction_factor**k`` reported values."""

    min_resource: int = Field(1, ge=1, description=f"The first rung, in {_RESOURCE}.")
    max_resource: int | None = Field(
        None, ge=1, description=f"No rung at or above it, in {_RESOURCE}: the most a trial reports "
                                "(number_of_epochs / evaluation_frequency). Unset: rungs without end.")
    reduction_factor: float = Field(
        3.0, ge=2, description="eta: rungs are min_resource * eta**k reported values, and at each the best "
                             "1 / eta of the trials that reached it continue.")

    @model_validator(mode="before")
    @classmethod
    def _no_interval_settings(cls, data):
        if isinstance(data, Mapping):
            given = [f"{k}={data[k]!r}" for k in ("evaluation_interval", "delay_evaluation") if k in data]
            if given:
                kind = cls.model_fields["type"].default
                allowed = ", ".join(f for f in cls.model_fields if f != "type")
                raise ValueError(
                    f"{kind} takes no {' or '.join(given)}: it judges a trial only at its rungs, min_resource * "
                    f"reduction_factor**k reported values; to judge trials later, raise min_resource (the first "
                    f"rung, default 1); allowed keys: type, {allowed}")
        return data

    @model_validator(mode="after")
    def _max_above_min(self):
        if self.max_resource is not None and self.max_resource <= self.min_resource:
            raise ValueError(f"{self.type}: max_resource={self.max_resource} must be greater than "
                             f"min_resource={self.min_resource}")
        return self


class AshaPolicy(_RungPolicy):
    """Asynchronous successive halving: at each rung, a trial continues when it is among the best
    ``max(1, ceil(k / reduction_factor))`` of the ``k`` trials that reached that rung."""

    type: Literal["asha"] = "asha"


class HyperbandPolicy(_RungPolicy):
    """Asynchronous Hyperband: successive halving in ``brackets`` brackets; bracket ``s`` starts its rungs
    at ``min_resource * reduction_factor**s``, and a trial is compared with its own bracket only."""

    type: Literal["hyperband"] = "hyperband"
    brackets: int | None = Field(
        None, ge=1, description="How many brackets (default: floor(log_eta(max_resource / min_resource)) + 1, "
                                "every bracket whose first rung is at most max_resource).")

    @model_validator(mode="after")
    def _bracket_count(self):
        if self.max_resource is None:
            raise ValueError("hyperband needs max_resource: the most reported values a trial makes "
                             "(number_of_epochs / evaluation_frequency); its brackets start at min_resource * "
                             "reduction_factor**s up to it")
        most = max_brackets(self.min_resource, self.max_resource, self.reduction_factor)
        if self.brackets is not None and self.brackets > most:
            raise ValueError(f"hyperband: brackets={self.brackets}, but at most {most} with min_resource="
                             f"{self.min_resource}, max_resource={self.max_resource}, reduction_factor="
                             f"{self.reduction_factor:g} (bracket s starts at min_resource * reduction_factor**s, "
                             "which may not pass max_resource)")
        return self


EarlyTerminationPolicy = Annotated[
    Union[BanditPolicy, MedianStoppingPolicy, TruncationSelectionPolicy, AshaPolicy, HyperbandPolicy],
    Field(discriminator="type"),
]
POLICY_TYPES = {"bandit": BanditPolicy, "median_stopping": MedianStoppingPolicy,
                "truncation_selection": TruncationSelectionPolicy, "asha": AshaPolicy, "hyperband": HyperbandPolicy}
#: Policies judged at rungs, not every evaluation_interval values.
RUNG_POLICIES = (AshaPolicy, HyperbandPolicy)


def decide(policy, trial_id: str, history: Mapping[str, Sequence[float]], *, maximize: bool = True,
           finished: AbstractSet[str] = frozenset()) -> Decision:
    """Apply whichever rule ``policy`` is (see :meth:`_Rule.explain`)."""
    if isinstance(policy, BanditPolicy):
        return bandit_should_terminate(policy, trial_id, history, maximize)
    if isinstance(policy, MedianStoppingPolicy):
        return median_stopping_should_terminate(policy, trial_id, history, maximize)
    if isinstance(policy, TruncationSelectionPolicy):
        return truncation_selection_should_terminate(policy, trial_id, history, maximize, finished)
    if isinstance(policy, RUNG_POLICIES):
        return asha_should_terminate(policy, trial_id, history, maximize)
    raise TypeError(f"not an early-termination policy: {type(policy).__name__}")
