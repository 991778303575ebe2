"""Choosing each trial's hyperparameters with optuna: random, grid and Bayesian sampling.

Every sampler is seeded by ``sweep.seed`` and reproducible: the same job gives the same trials in
the same order. A sampler answers ``suggest(index, observations)`` for trial ``index`` (0-based),
given what the trials started before it have shown so far.

- ``random``: optuna's ``RandomSampler``, one seeded stream, trial after trial. A conditional
  space first draws its entry uniformly, then the entry's distributions (see ``space.py``).
  Trials do not depend on results, so trial ``i`` is the same however the sweep runs.
- ``grid``: every point of every entry (``spec.job.grid_points``), visited in the order of
  optuna's ``GridSampler`` over the point numbers: a seeded shuffle, so that a ``max_trials``
  smaller than the grid still spreads over the models and values rather than taking the first
  entry's points. At most ``max_trials`` points run.
- ``bayesian``: optuna's ``GPSampler``: Gaussian-process Bayesian optimization with a
  log-expected-improvement acquisition (q-batch over the running trials, so concurrent trials
  do not all get the same point). Chosen over TPE because it is the method the original's
  "Bayesian sampling" names and the most sample-efficient in the budgets an image sweep has
  (tens of trials of minutes each), where a suggestion's cost (well under a second to a few
  seconds) is nothing next to a trial's; the original allows Bayesian sampling only on one
  entry of choice/uniform/quniform distributions, exactly the kind of space a GP handles well.
  The first ``bayesian_startup_trials(max_trials)`` trials are drawn at random. Each suggestion
  builds a fresh study from the observations and a sampler seeded by (seed, index), so a
  suggestion depends only on the seed, the trial number and the results it is shown: a sweep
  resumed after a crash suggests what the uninterrupted sweep would have.
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState, create_trial

from automl_vision.errors import ConfigError
from automl_vision.spec.job import JobSpec, grid_points
from automl_vision.sweep.space import SearchSpace

GRID_PARAM = "grid_point"


@dataclass(frozen=True)
class Suggestion:
    """A trial's swept hyperparameters, and optuna's parameters behind them (kept to rebuild a study)."""

    parameters: dict[str, Any]
    sampler_params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Observation:
    """What a sampler may learn from an earlier trial: its optuna parameters and its result.

    ``state``: ``running``, ``complete`` (``value`` is its best primary metric) or ``failed``.
    """

    sampler_params: dict[str, Any]
    state: str
    value: float | None = None


@contextlib.contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Optuna's own info lines and warnings (e.g. a missing optional speed-up) stay out of the sweep log."""
    logger = logging.getLogger("optuna")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _trial_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def bayesian_startup_trials(max_trials: int) -> int:
    """Random trials before the Gaussian process takes over: a fifth of the budget, between 2 and 10."""
    return min(10, max(2, max_trials // 5))


class _Precomputed:
    """Suggestions that do not depend on results, drawn lazily from one seeded optuna study."""

    def __init__(self, total: int):
        self.total = total
        self._drawn: list[Suggestion] = []

    def _draw(self) -> Suggestion:  # pragma: no cover - abstract
        raise NotImplementedError

    def suggest(self, index: int, observations: Sequence[Observation] = ()) -> Suggestion:
        if not 0 <= index < self.total:
            raise IndexError(f"trial {index} is outside the sweep's {self.total} trial(s)")
        with _quiet_optuna():
            while len(self._drawn) <= index:
                self._drawn.append(self._draw())
        return self._drawn[index]


class RandomSampling(_Precomputed):
    name = "random"

    def __init__(self, job: JobSpec):
        self.space = SearchSpace.of(job)
        super().__init__(job.limits.max_trials if self.space.entries else 1)
        self.description = f"random sampling (optuna RandomSampler, seed {job.sweep.seed})"
        with _quiet_optuna():
            self._study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=job.sweep.seed))

    def _draw(self) -> Suggestion:
        trial = self._study.ask()
        values, latent = self.space.suggest(trial)
        return Suggestion(values, latent)


class GridSampling(_Precomputed):
    name = "grid"

    def __init__(self, job: JobSpec):
        self.points = grid_points(job)
        super().__init__(min(job.limits.max_trials, len(self.points)))
        self.description = (f"grid sampling ({len(self.points)} point(s), {self.total} run, in the order of "
                            f"optuna GridSampler, seed {job.sweep.seed})")
        with _quiet_optuna():
            sampler = optuna.samplers.GridSampler({GRID_PARAM: list(range(len(self.points)))}, seed=job.sweep.seed)
            self._study = optuna.create_study(sampler=sampler)

    def _draw(self) -> Suggestion:
        trial = self._study.ask()
        point = trial.suggest_categorical(GRID_PARAM, list(range(len(self.points))))
        return Suggestion(dict(self.points[point]), {GRID_PARAM: point})


class BayesianSampling:
    name = "bayesian"

    def __init__(self, job: JobSpec):
        self.space = SearchSpace.of(job)
        if self.space.conditional:
            raise ConfigError("bayesian sampling does not support a conditional search space")
        self.total = job.limits.max_trials if self.space.entries else 1
        self.seed = job.sweep.seed
        self.maximize = job.task.maximize
        self.startup = bayesian_startup_trials(job.limits.max_trials)
        self.description = (f"bayesian sampling (optuna GPSampler, {self.startup} random trial(s) first, "
                            f"seed {self.seed})")
        self._distributions = self.space.distributions(0) if self.space.entries else {}

    def suggest(self, index: int, observations: Sequence[Observation] = ()) -> Suggestion:
        if not 0 <= index < self.total:
            raise IndexError(f"trial {index} is outside the sweep's {self.total} trial(s)")
        if not self._distributions:
            return Suggestion(self.space.values(0, {}) if self.space.entries else {}, {})
        seed = _trial_seed(self.seed, index)
        with _quiet_optuna():
            sampler = optuna.samplers.GPSampler(seed=seed, n_startup_trials=self.startup,
                                                independent_sampler=optuna.samplers.RandomSampler(seed=seed))
            study = optuna.create_study(direction="maximize" if self.maximize else "minimize", sampler=sampler)
            for ob in observations:
                if set(ob.sampler_params) != set(self._distributions):
                    continue  # not a trial of this space (cannot happen for a validated job)
                if ob.state == "complete" and ob.value is not None and math.isfinite(ob.value):
                    study.add_trial(create_trial(params=ob.sampler_params, distributions=self._distributions,
                                                 value=float(ob.value)))
                elif ob.state == "running":
                    study.add_trial(create_trial(params=ob.sampler_params, distributions=self._distributions,
                                                 state=TrialState.RUNNING))
                else:
                    study.add_trial(create_trial(params=ob.sampler_params, distributions=self._distributions,
                                                 state=TrialState.FAIL))
            trial = study.ask()
            values, latent = self.space.suggest(trial)
        return Suggestion(values, latent)


def make_sampler(job: JobSpec) -> RandomSampling | GridSampling | BayesianSampling:
    """The sampler of ``job.sweep.sampling_algorithm``."""
    algo = job.sweep.sampling_algorithm
    if algo == "random":
        return RandomSampling(job)
    if algo == "grid":
        return GridSampling(job)
    if algo == "bayesian":
        return BayesianSampling(job)
    raise ConfigError(f"sweep.sampling_algorithm={algo!r}: allowed: random, grid, bayesian")


def sample_trials(job: JobSpec) -> list[dict[str, Any]]:
    """The swept values of every trial of a random or grid sweep, in order (training_parameters not included)."""
    sampler = make_sampler(job)
    if isinstance(sampler, BayesianSampling):
        raise ConfigError("bayesian sampling chooses each trial from the results before it; "
                          "use make_sampler(job).suggest(index, observations)")
    return [sampler.suggest(i).parameters for i in range(sampler.total)]
