"""A Python API with the original SDK's names, convertible to and from the YAML job.

    config = AutoMLImageConfig(
        task=ImageTask.IMAGE_CLASSIFICATION,
        training_data="train.jsonl",
        hyperparameter_sampling=RandomParameterSampling({
            "model_name": choice("resnet18", "mobilenetv2"),
            "learning_rate": uniform(0.001, 0.01),
        }),
        early_termination_policy=BanditPolicy(evaluation_interval=2, slack_factor=0.2),
        iterations=4, max_concurrent_iterations=2,
        arguments=["--number_of_epochs", 3],
    )
    job = config.to_job()          # a validated JobSpec
    AutoMLImageConfig.from_job(job) == config

A conditional space is written as the original SDK did, a ``choice`` of dicts under ``"model"``:
``{"model": choice({"model_name": choice("yolov5"), ...}, {"model_name": choice("fasterrcnn_resnet50_fpn"), ...})}``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from automl_vision.errors import ConfigError
from automl_vision.spec.distributions import Choice
from automl_vision.spec.job import JobSpec, parse_job
from automl_vision.spec.policies import (
    AshaPolicy,
    BanditPolicy,
    EarlyTerminationPolicy,
    HyperbandPolicy,
    MedianStoppingPolicy,
    TruncationSelectionPolicy,
)
from automl_vision.spec.tasks import ImageTask

__all__ = [
    "AutoMLImageConfig",
    "RandomParameterSampling",
    "GridParameterSampling",
    "BayesianParameterSampling",
    "BanditPolicy",
    "MedianStoppingPolicy",
    "TruncationSelectionPolicy",
    "AshaPolicy",
    "HyperbandPolicy",
]

CONDITIONAL_KEY = "model"


@dataclass
class _Sampling:
    parameter_space: dict[str, Any]
    seed: int = 0
    algorithm = "random"

    def search_space(self) -> list[dict[str, Any]]:
        space = dict(self.parameter_space)
        nested = space.pop(CONDITIONAL_KEY, None)
        if nested is None:
            return [space] if space else []
        if not isinstance(nested, Choice) or not all(isinstance(v, dict) for v in nested.values):
            raise ConfigError(f"parameter_space[{CONDITIONAL_KEY!r}] must be choice({{...}}, {{...}}) of dicts, "
                              "one per model family")
        return [{**space, **entry} for entry in nested.values]

    @classmethod
    def from_search_space(cls, entries: list[dict[str, Any]], seed: int = 0) -> "_Sampling":
        if len(entries) == 1:
            return cls(dict(entries[0]), seed)
        return cls({CONDITIONAL_KEY: Choice(values=[dict(e) for e in entries])} if entries else {}, seed)


@dataclass
class RandomParameterSampling(_Sampling):
    algorithm = "random"


@dataclass
class GridParameterSampling(_Sampling):
    algorithm = "grid"


@dataclass
class BayesianParameterSampling(_Sampling):
    algorithm = "bayesian"


_SAMPLINGS = {c.algorithm: c for c in (RandomParameterSampling, GridParameterSampling, BayesianParameterSampling)}


@dataclass
class AutoMLImageConfig:
    """The original SDK's job object; ``to_job()`` validates it into a JobSpec."""

    task: ImageTask | str
    training_data: str
    validation_data: str | None = None
    hyperparameter_sampling: _Sampling | None = None
    early_termination_policy: EarlyTerminationPolicy | None = None
    iterations: int = 1
    max_concurrent_iterations: int = 1
    experiment_timeout_hours: float | None = None
    #: Ours: the compute budget in device-hours (``limits.budget``); with it, ``iterations`` bounds the
    #: trials only when above 1. Without a sampling either, the job is AutoMode.
    budget_hours: float | None = None
    arguments: list[Any] = field(default_factory=list)
    primary_metric: str | None = None
    name: str | None = None

    def __post_init__(self):
        self.task = ImageTask(self.task) if not isinstance(self.task, ImageTask) else self.task

    def training_parameters(self) -> dict[str, Any]:
        """``arguments=["--early_stopping", 1, ...]`` as a mapping."""
        args = list(self.arguments)
        if len(args) % 2:
            raise ConfigError(f"arguments must alternate '--name', value; got an odd count: {args!r}")
        out = {}
        for flag, value in zip(args[::2], args[1::2]):
            if not isinstance(flag, str) or not flag.startswith("--"):
                raise ConfigError(f"arguments: {flag!r} must be a flag such as '--learning_rate'")
            out[flag[2:]] = value
        return out

    def to_dict(self) -> dict[str, Any]:
        sampling = self.hyperparameter_sampling
        limits: dict[str, Any] = {"max_trials": self.iterations, "max_concurrent_trials": self.max_concurrent_iterations}
        if self.budget_hours is not None:
            limits["budget"] = self.budget_hours
            if self.iterations == 1:
                del limits["max_trials"]  # the budget alone bounds the trials
        if self.experiment_timeout_hours is not None:
            limits["timeout_minutes"] = round(self.experiment_timeout_hours * 60)
        sweep: dict[str, Any] = {}
        if sampling is not None:
            sweep = {"sampling_algorithm": sampling.algorithm, "seed": sampling.seed}
        if self.early_termination_policy is not None:
            sweep["early_termination"] = self.early_termination_policy
        data: dict[str, Any] = {
            "task": self.task.value,
            "training_data": self.training_data,
            "limits": limits,
            "sweep": sweep,
            "search_space": sampling.search_space() if sampling is not None else [],
            "training_parameters": self.training_parameters(),
        }
        for key in ("validation_data", "primary_metric", "name"):
            if getattr(self, key) is not None:
                data[key] = getattr(self, key)
        return data

    def to_job(self) -> JobSpec:
        return parse_job(self.to_dict(), source="AutoMLImageConfig")

    @classmethod
    def from_job(cls, job: JobSpec) -> "AutoMLImageConfig":
        sampling = None
        if job.search_space:
            sampling = _SAMPLINGS[job.sweep.sampling_algorithm].from_search_space(job.search_space, job.sweep.seed)
        arguments: list[Any] = []
        for k, v in job.training_parameters.items():
            arguments += [f"--{k}", v]
        return cls(
            task=job.task,
            training_data=job.training_data,
            validation_data=job.validation_data,
            hyperparameter_sampling=sampling,
            early_termination_policy=job.sweep.early_termination,
            iterations=job.limits.max_trials,
            max_concurrent_iterations=job.limits.max_concurrent_trials,
            experiment_timeout_hours=job.limits.timeout_minutes / 60,
            budget_hours=job.limits.budget,
            arguments=arguments,
            primary_metric=job.primary_metric,
            name=job.name,
        )
