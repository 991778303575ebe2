"""Search-space distributions (spec section 7), as typed models and SDK-style constructors.

Each distribution knows how to draw a value from a numpy Generator and, for ``choice``, how to
enumerate its values for grid sampling. Bounds of ``loguniform``/``qloguniform`` are natural-log
exponents, as in the original product: ``loguniform(-10, -2)`` draws from [e^-10, e^-2].
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Dist(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def sample(self, rng: np.random.Generator) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def bounds(self) -> tuple[float, float] | None:
        """Smallest and largest value a draw can take, where finite."""
        return None


def _q(x: float, q: float) -> float:
    return round(x / q) * q


class Choice(_Dist):
    type: Literal["choice"] = "choice"
    values: list[Any] = Field(min_length=1)

    def sample(self, rng):
        return self.values[int(rng.integers(len(self.values)))]


class RandInt(_Dist):
    type: Literal["randint"] = "randint"
    upper: int = Field(ge=1)

    def sample(self, rng):
        return int(rng.integers(self.upper))

    def bounds(self):
        return (0, self.upper - 1)


class _Ranged(_Dist):
    min_value: float
    max_value: float

    @model_validator(mode="after")
    def _ordered(self):
        if not self.min_value < self.max_value:
            raise ValueError(f"min_value={self.min_value} must be < max_value={self.max_value}")
        return self


class Uniform(_Ranged):
    type: Literal["uniform"] = "uniform"

    def sample(self, rng):
        return float(rng.uniform(self.min_value, self.max_value))

    def bounds(self):
        return (self.min_value, self.max_value)


class LogUniform(_Ranged):
    type: Literal["loguniform"] = "loguniform"

    def sample(self, rng):
        return float(math.exp(rng.uniform(self.min_value, self.max_value)))

    def bounds(self):
        return (math.exp(self.min_value), math.exp(self.max_value))


class QUniform(_Ranged):
    type: Literal["quniform"] = "quniform"
    q: float = Field(gt=0)

    def sample(self, rng):
        return _q(rng.uniform(self.min_value, self.max_value), self.q)

    def bounds(self):
        return (_q(self.min_value, self.q), _q(self.max_value, self.q))


class QLogUniform(_Ranged):
    type: Literal["qloguniform"] = "qloguniform"
    q: float = Field(gt=0)

    def sample(self, rng):
        return _q(math.exp(rng.uniform(self.min_value, self.max_value)), self.q)

    def bounds(self):
        return (_q(math.exp(self.min_value), self.q), _q(math.exp(self.max_value), self.q))


class _Gauss(_Dist):
    mu: float
    sigma: float = Field(gt=0)


class Normal(_Gauss):
    type: Literal["normal"] = "normal"

    def sample(self, rng):
        return float(rng.normal(self.mu, self.sigma))


class LogNormal(_Gauss):
    type: Literal["lognormal"] = "lognormal"

    def sample(self, rng):
        return float(math.exp(rng.normal(self.mu, self.sigma)))


class QNormal(_Gauss):
    type: Literal["qnormal"] = "qnormal"
    q: float = Field(gt=0)

    def sample(self, rng):
        return _q(rng.normal(self.mu, self.sigma), self.q)


class QLogNormal(_Gauss):
    type: Literal["qlognormal"] = "qlognormal"
    q: float = Field(gt=0)

    def sample(self, rng):
        return _q(math.exp(rng.normal(self.mu, self.sigma)), self.q)


Distribution = Annotated[
    Union[Choice, RandInt, Uniform, LogUniform, QUniform, QLogUniform, Normal, LogNormal, QNormal, QLogNormal],
    Field(discriminator="type"),
]

DISTRIBUTION_TYPES: dict[str, type[_Dist]] = {
    cls.model_fields["type"].default: cls
    for cls in (Choice, RandInt, Uniform, LogUniform, QUniform, QLogUniform, Normal, LogNormal, QNormal, QLogNormal)
}
#: Distributions whose draws are rounded to a multiple of q (or are integers): usable for int hyperparameters.
INTEGER_DISTRIBUTIONS = frozenset({"choice", "randint", "quniform", "qloguniform", "qnormal", "qlognormal"})
#: Distributions that need positive values only.
LOG_DISTRIBUTIONS = frozenset({"loguniform", "qloguniform", "lognormal", "qlognormal"})


def is_distribution(value: Any) -> bool:
    return isinstance(value, _Dist)


# SDK-style constructors, with the original SDK's names and argument order.
def choice(*values: Any) -> Choice:
    if len(values) == 1 and isinstance(values[0], (list, tuple)):
        values = tuple(values[0])
    return Choice(values=list(values))


def randint(upper: int) -> RandInt:
    return RandInt(upper=upper)


def uniform(min_value: float, max_value: float) -> Uniform:
    return Uniform(min_value=min_value, max_value=max_value)


def loguniform(min_value: float, max_value: float) -> LogUniform:
    return LogUniform(min_value=min_value, max_value=max_value)


def quniform(min_value: float, max_value: float, q: float) -> QUniform:
    return QUniform(min_value=min_value, max_value=max_value, q=q)


def qloguniform(min_value: float, max_value: float, q: float) -> QLogUniform:
    return QLogUniform(min_value=min_value, max_value=max_value, q=q)


def normal(mu: float, sigma: float) -> Normal:
    return Normal(mu=mu, sigma=sigma)


def lognormal(mu: float, sigma: float) -> LogNormal:
    return LogNormal(mu=mu, sigma=sigma)


def qnormal(mu: float, sigma: float, q: float) -> QNormal:
    return QNormal(mu=mu, sigma=sigma, q=q)


def qlognormal(mu: float, sigma: float, q: float) -> QLogNormal:
    return QLogNormal(mu=mu, sigma=sigma, q=q)
