"""The job's search space as optuna distributions (spec section 7).

Each distribution of the spec is drawn through an optuna parameter (the *latent* value) and a
fixed transform of it, so that optuna's samplers see an ordinary space and the trial gets exactly
the spec's distribution:

| spec                          | optuna parameter                         | trial value                      |
|-------------------------------|------------------------------------------|----------------------------------|
| choice{values}                | categorical(values)                      | the value                        |
| randint{upper}                | int in [0, upper - 1]                    | the value                        |
| uniform{min, max}             | float in [min, max]                      | the value                        |
| loguniform{min, max}          | float in [e^min, e^max], log scale       | the value                        |
| quniform{min, max, q}         | float in [min, max]                      | round(x / q) * q                 |
| qloguniform{min, max, q}      | float in [e^min, e^max], log scale       | round(x / q) * q                 |
| normal{mu, sigma}             | float u in [0, 1]                        | mu + sigma * Phi^-1(u)           |
| lognormal{mu, sigma}          | float u in [0, 1]                        | exp(mu + sigma * Phi^-1(u))      |
| qnormal / qlognormal          | as normal / lognormal                    | then round(x / q) * q            |

The normal family goes through the inverse normal CDF because optuna has no normal distribution;
a uniform u drawn by the random sampler gives exactly a normal draw. A conditional space (several
entries) first draws the entry, uniformly (``choice`` over the entries, as the original SDK wrote
it), and names the entry's parameters ``<entry>:<name>`` so that entries never share an optuna
parameter.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from automl_vision.spec import hyperparameters as hps
from automl_vision.spec.distributions import (
    Choice,
    LogNormal,
    LogUniform,
    Normal,
    QLogNormal,
    QLogUniform,
    QNormal,
    QUniform,
    RandInt,
    Uniform,
    is_distribution,
)
from automl_vision.spec.job import JobSpec

ENTRY_PARAM = "search_space_entry"
_STANDARD_NORMAL = NormalDist()
# u = 0 or 1 would map to -inf / +inf; the random sampler draws them with probability ~0.
_U_EPS = 1e-12


def quantize(x: float, q: float) -> float:
    """round(x / q) * q, with the float noise of the product removed (0.30000000000000004 -> 0.3)."""
    return round(round(x / q) * q, 12)


def _latent(dist: Any) -> BaseDistribution:
    if isinstance(dist, Choice):
        return CategoricalDistribution(dist.values)
    if isinstance(dist, RandInt):
        return IntDistribution(0, dist.upper - 1)
    if isinstance(dist, (Uniform, QUniform)):
        return FloatDistribution(dist.min_value, dist.max_value)
    if isinstance(dist, (LogUniform, QLogUniform)):
        return FloatDistribution(math.exp(dist.min_value), math.exp(dist.max_value), log=True)
    if isinstance(dist, (Normal, LogNormal, QNormal, QLogNormal)):
        return FloatDistribution(0.0, 1.0)
    raise TypeError(f"not a search-space distribution: {dist!r}")


def _value(dist: Any, latent: Any) -> Any:
    if isinstance(dist, (Choice, RandInt, Uniform, LogUniform)):
        return latent
    if isinstance(dist, (QUniform, QLogUniform)):
        return quantize(latent, dist.q)
    u = min(max(float(latent), _U_EPS), 1 - _U_EPS)
    x = dist.mu + dist.sigma * _STANDARD_NORMAL.inv_cdf(u)
    if isinstance(dist, (LogNormal, QLogNormal)):
        x = math.exp(x)
    return quantize(x, dist.q) if isinstance(dist, (QNormal, QLogNormal)) else x


def _typed(name: str, value: Any) -> Any:
    """Whole floats of integer hyperparameters as ints (a quniform batch size 16.0 -> 16)."""
    hp = hps.BY_NAME.get(name)
    if hp is not None and hp.type is int and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


@dataclass(frozen=True)
class SearchSpace:
    """The entries of a job's search space, with their optuna distributions."""

    entries: tuple[Mapping[str, Any], ...]

    @classmethod
    def of(cls, job: JobSpec) -> SearchSpace:
        return cls(tuple(dict(e) for e in job.search_space))

    @property
    def conditional(self) -> bool:
        return len(self.entries) > 1

    def param_name(self, entry: int, name: str) -> str:
        return f"{entry}:{name}" if self.conditional else name

    def distributions(self, entry: int) -> dict[str, BaseDistribution]:
        """The optuna parameters of one entry (the entry parameter itself not included)."""
        return {self.param_name(entry, k): _latent(v) for k, v in self.entries[entry].items() if is_distribution(v)}

    def entry_distribution(self) -> dict[str, BaseDistribution]:
        return {ENTRY_PARAM: CategoricalDistribution(list(range(len(self.entries))))} if self.conditional else {}

    def values(self, entry: int, latent: Mapping[str, Any]) -> dict[str, Any]:
        """The trial's hyperparameters from an entry and the optuna parameters drawn for it."""
        out = {}
        for k, v in self.entries[entry].items():
            out[k] = _typed(k, _value(v, latent[self.param_name(entry, k)]) if is_distribution(v) else v)
        return out

    def suggest(self, trial) -> tuple[dict[str, Any], dict[str, Any]]:
        """Draw one trial through an optuna ``Trial``: (hyperparameters, optuna parameters)."""
        if not self.entries:
            return {}, {}
        entry = trial.suggest_categorical(ENTRY_PARAM, list(range(len(self.entries)))) if self.conditional else 0
        latent = {name: _suggest(trial, name, dist) for name, dist in self.distributions(entry).items()}
        return self.values(entry, latent), dict(trial.params)


def _suggest(trial, name: str, dist: BaseDistribution) -> Any:
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, list(dist.choices))
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high)
    return trial.suggest_float(name, dist.low, dist.high, log=dist.log)
