"""The job spec: one typed model mirroring the original's YAML job (spec section 10).

``load_job(path)`` / ``parse_job(mapping)`` validate a job and report every problem at once:
unknown keys (with the nearest valid one), out-of-range values, hyperparameters that do not
apply to the task or model, distributions the sampling algorithm refuses, a wrong primary metric.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from automl_vision.errors import ConfigError
from automl_vision.spec import hyperparameters as hps
from automl_vision.spec.automode import MAX_TRIALS
from automl_vision.spec.cluster import DNS_SUBDOMAIN_PATTERN, QUANTITY_PATTERN, DataVolume, Toleration
from automl_vision.spec.distributions import (
    DISTRIBUTION_TYPES,
    INTEGER_DISTRIBUTIONS,
    Choice,
    is_distribution,
)
from automl_vision.spec.hyperparameters import did_you_mean
from automl_vision.spec.policies import POLICY_TYPES, EarlyTerminationPolicy
from automl_vision.spec.tasks import ImageTask

SEVEN_DAYS = 7 * 24 * 60
SIXTY_DAYS = 60 * 24 * 60

#: What the original's samplers accept (spec section 7).
GRID_DISTRIBUTIONS = frozenset({"choice"})
BAYESIAN_DISTRIBUTIONS = frozenset({"choice", "uniform", "quniform"})


class Limits(BaseModel):
    """How much a sweep may spend."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_trials: int = Field(1, ge=1, le=1000, description="Trials in the sweep (the original's iterations).")
    max_concurrent_trials: int = Field(
        1, ge=1, le=100, description="Trials running at once (capped at max_trials)."
    )
    timeout_minutes: int = Field(SEVEN_DAYS, ge=1, le=SIXTY_DAYS, description="Wall-clock limit of the sweep.")
    trial_timeout_minutes: int | None = Field(None, ge=1, description="Wall-clock limit of one trial.")
    max_failed_trials: int | None = Field(
        None, ge=0, description="The sweep stops after this many failed trials (unset: never)."
    )
    budget: float | None = Field(
        None, gt=0, le=100000,
        description="Compute the sweep may use, in device-hours: the hours of the GPUs its trials hold (one per "
                    "trial, or compute.gpus on Katib); for trials on CPUs, locally the hours of this machine's "
                    "cores they hold, on Katib their pods' hours. No trial starts that its estimated cost would "
                    "take past it. Without max_trials, trials start until it is spent.")

    @model_validator(mode="after")
    def _cap_concurrency(self):
        if self.budget is not None and "max_trials" not in self.model_fields_set:
            # a budget alone bounds the sweep: as many trials as it pays for
            object.__setattr__(self, "max_trials", MAX_TRIALS)
        # The original caps concurrency at the number of trials (spec section 7).
        if self.max_concurrent_trials > self.max_trials:
            object.__setattr__(self, "max_concurrent_trials", self.max_trials)
        return self


class Sweep(BaseModel):
    """How trials are chosen and stopped early."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sampling_algorithm: Literal["random", "grid", "bayesian"] = "random"
    early_termination: EarlyTerminationPolicy | None = None
    seed: int = Field(0, ge=0, description="Seed of the sampler (ours; the original had none).")
    warm_start: list[str] = Field(
        default_factory=list,
        description="Earlier run folders, or object-store prefixes holding them (s3://bucket/prefix), whose best "
                    "settings an AutoMode sweep on a similar dataset tries first.")


class Compute(BaseModel):
    """Where trials run on a cluster (Katib trials): image, resources, placement, storage access.

    Ignored by local runs. Every key is optional: an unset (null) key takes its value from the
    cluster settings (``ClusterSettings``: the GPU pool, the storage Secret, the data volume, the
    images), a set key replaces that value for this job's trials (a list or mapping as a whole).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    image: str | None = Field(None, description="Training image (default: the cluster's CUDA image, its CPU image "
                                                "for CPU trials).")
    image_pull_secrets: list[str] = Field(default_factory=list)
    gpus: int | None = Field(None, ge=0, le=16, description="GPUs per trial (0: CPU only; default: 1 when the "
                                                            "cluster has a GPU pool, else 0).")
    gpu_resource: str | None = Field(None, description="Extended resource name of a GPU (default: the GPU "
                                                       "pool's accelerator_type).")
    cpu: str | None = Field(None, description="CPU request and limit of a trial (default: the GPU pool's cpu).")
    memory: str | None = Field(None, description="Memory request and limit of a trial (default: the GPU pool's "
                                                 "memory); it holds /dev/shm too.")
    shm_size: str | None = Field(None, description="Size of /dev/shm (DataLoader workers share it; default: the "
                                                   "cluster's shm_size).")
    node_selector: dict[str, str] | None = Field(None, description="default: the GPU pool's (none for CPU trials)")
    tolerations: list[Toleration] | None = Field(None, description="default: the GPU pool's (none for CPU trials)")
    service_account: str | None = Field(None, pattern=DNS_SUBDOMAIN_PATTERN)
    storage_secret: str | None = Field(
        None, pattern=DNS_SUBDOMAIN_PATTERN,
        description="Secret whose keys all become environment variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
                    "AWS_ENDPOINT_URL_S3, ...) so trials can read s3:// data (default: the cluster's storage "
                    "Secret, its keys mapped as the pipeline's steps get them).")
    data_volume: DataVolume | None = Field(None, description="default: the cluster's data volume")

    @field_validator("cpu", "memory", "shm_size")
    @classmethod
    def _quantity(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(QUANTITY_PATTERN, value):
            raise ValueError("not a Kubernetes quantity (e.g. '4', '500m', '16Gi')")
        return value


SearchSpaceEntry = dict[str, Any]


class JobSpec(BaseModel):
    """A whole AutoML job. Build one with ``parse_job``/``load_job`` or the SDK classes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: ImageTask
    training_data: str
    validation_data: str | None = None
    name: str | None = Field(None, pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    primary_metric: str | None = None
    limits: Limits = Limits()
    sweep: Sweep = Sweep()
    search_space: list[SearchSpaceEntry] = Field(default_factory=list)
    training_parameters: dict[str, Any] = Field(default_factory=dict)
    compute: Compute | None = None

    @field_validator("search_space", mode="before")
    @classmethod
    def _parse_distributions(cls, value: Any) -> Any:
        if not isinstance(value, list):
            return value
        out, errors = [], []
        for i, entry in enumerate(value):
            if not isinstance(entry, Mapping):
                raise ValueError("each search_space entry must be a mapping of hyperparameter -> distribution")
            parsed = {}
            for k, v in entry.items():
                # Errors keep their place (search_space[i].name...), so messages say which entry is wrong.
                try:
                    parsed[k] = _as_distribution(v)
                except ValidationError as e:
                    errors += [{"type": d["type"], "loc": (i, k, v["type"], *d["loc"]), "input": d["input"],
                                **({"ctx": d["ctx"]} if "ctx" in d else {})} for d in e.errors()]
                except ValueError as e:
                    errors.append({"type": "value_error", "loc": (i, k), "input": v, "ctx": {"error": e}})
            out.append(parsed)
        if errors:
            raise ValidationError.from_exception_data("search_space", errors)
        return out

    @model_validator(mode="after")
    def _check(self, info):
        if info.context and info.context.get("structure_only"):
            return self
        problems = check_job(self)
        if problems:
            raise ValueError("\n".join(problems))
        if self.primary_metric is None:
            object.__setattr__(self, "primary_metric", self.task.primary_metric)
        # Store values in their declared types ("true" -> True, "800" -> 800), so equal jobs compare equal.
        object.__setattr__(self, "training_parameters",
                           {k: hps.BY_NAME[k].coerce(v) for k, v in self.training_parameters.items()})
        object.__setattr__(self, "search_space", [{k: _normalize(k, v) for k, v in e.items()}
                                                  for e in self.search_space])
        return self

    # -- derived views ---------------------------------------------------------------------------

    @property
    def automode(self) -> bool:
        """AutoMode: several trials (or a budget) and no search space; the sweep gets AutoMode's own
        space (:mod:`automl_vision.spec.automode`)."""
        return not self.search_space and self.limits.max_trials > 1

    def candidate_models(self) -> list[str]:
        """Every model a trial of this job may train, in search-space order."""
        models: list[str] = []
        for entry in self.search_space or [{}]:
            for m in entry_models(self, entry):
                if m not in models:
                    models.append(m)
        return models

    def to_dict(self) -> dict[str, Any]:
        """A plain mapping that ``parse_job`` turns back into an equal job."""
        return _type_first(self.model_dump(mode="json", exclude_none=True))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _type_first(value: Any) -> Any:
    """Dumped distributions and policies read best with their ``type`` key first."""
    if isinstance(value, dict):
        out = {"type": value["type"]} if isinstance(value.get("type"), str) and len(value) > 1 else {}
        out.update({k: _type_first(v) for k, v in value.items() if k not in out})
        return out
    if isinstance(value, list):
        return [_type_first(v) for v in value]
    return value


def _normalize(name: str, value: Any) -> Any:
    hp = hps.BY_NAME[name]
    if isinstance(value, Choice):
        return Choice(values=[hp.coerce(v) for v in value.values])
    return value if is_distribution(value) else hp.coerce(value)


def _as_distribution(value: Any) -> Any:
    if is_distribution(value):
        return value
    if isinstance(value, Mapping):
        kind = value.get("type")
        if kind not in DISTRIBUTION_TYPES:
            allowed = ", ".join(DISTRIBUTION_TYPES)
            raise ValueError(f"type={kind!r} is not a distribution{did_you_mean(str(kind), DISTRIBUTION_TYPES)}; "
                             f"allowed: {allowed}")
        return DISTRIBUTION_TYPES[kind].model_validate(dict(value))
    if isinstance(value, list):
        raise ValueError(f"{value!r}: write a list of values as {{type: choice, values: [...]}}")
    return value  # a fixed value: one trial setting


def entry_models(job: JobSpec, entry: Mapping[str, Any]) -> list[str]:
    """The models a search-space entry trains: its ``model_name`` values, else the job's model."""
    m = entry.get("model_name")
    if m is None:
        return [str(job.training_parameters.get("model_name", job.task.default_model))]
    if isinstance(m, Choice):
        return [str(v) for v in m.values]
    return [str(m)]


# --- hyperparameter checks over the whole job -----------------------------------------------------

def check_job(job: JobSpec) -> list[str]:
    """Every problem of the job's hyperparameters, search space and sweep, one text each."""
    task = job.task
    problems: list[str] = []

    if job.primary_metric is not None and job.primary_metric != task.primary_metric:
        problems.append(
            f"primary_metric={job.primary_metric!r}: the primary metric of {task.value} is fixed to "
            f"{task.primary_metric!r}"
        )

    searched_models = any("model_name" in e for e in job.search_space)
    models = job.candidate_models()
    bad_models = [m for m in models if m not in task.models]
    for m in bad_models:
        problems.append(
            f"model_name={m!r} is not a model for {task.value}{did_you_mean(m, task.models)}; "
            f"allowed: {', '.join(task.models)}"
        )
    models = [m for m in models if m in task.models]

    # training_parameters: fixed for every trial, so they must apply to every candidate model. AutoMode
    # picks its models after (only those every fixed setting applies to): the task is what must fit.
    tp = job.training_parameters
    if job.automode and "model_name" not in tp:
        models = []
        for name in tp:
            hp = hps.BY_NAME.get(name)
            if hp is not None and not hp.applies_to(task):
                problems.append(f"training_parameters.{name}: {hps.why_not(hp, task, task.default_model)}")
    if "model_name" in tp and searched_models:
        problems.append("training_parameters.model_name: the model is also chosen in search_space; keep one")
    for name, value in tp.items():
        where = f"training_parameters.{name}"
        hp = _known(name, where, problems)
        if hp is None:
            continue
        for m in models:
            if not hp.applies_to(task, m):
                hint = len(models) > 1 and hp.applies_to(task)
                problems.append(f"{where}: {hps.why_not(hp, task, m)}"
                                + ("; set it in the search_space entry of the models it applies to" if hint else ""))
                break
        else:
            if name == "model_name":
                continue  # checked with the candidate models above
            try:
                hp.coerce(value, models[0] if len(models) == 1 else None)
            except ValueError as e:
                problems.append(f"{where}={_short(value)}: {_rule(e)}")

    # search_space: each entry applies to its own models.
    for i, entry in enumerate(job.search_space):
        candidates = [m for m in entry_models(job, entry) if m in task.models]
        for name, value in entry.items():
            where = f"search_space[{i}].{name}"
            hp = _known(name, where, problems)
            if hp is None:
                continue
            if name in tp:
                problems.append(f"{where}: also set in training_parameters; keep one")
                continue
            if not hp.sweepable:
                problems.append(f"{where}: {name} is fixed for a whole job; set it in training_parameters")
                continue
            if name != "model_name":
                outside = [m for m in candidates if not hp.applies_to(task, m)]
                if outside:
                    problems.append(f"{where}: {hps.why_not(hp, task, outside[0])}")
                    continue
            problems += _check_distribution(where, hp, value, job.sweep.sampling_algorithm,
                                            candidates[0] if len(candidates) == 1 else None, candidates)

    # the sampling algorithm's own rules
    algo = job.sweep.sampling_algorithm
    if job.automode and algo != "random":
        problems.append(f"sweep.sampling_algorithm={algo}: AutoMode (max_trials > 1 or a budget, and no "
                        "search_space) samples its own space at random; write a search_space to use "
                        f"{algo} sampling, or remove sampling_algorithm")
    if job.sweep.warm_start and algo != "random":
        problems.append(f"sweep.warm_start: a {algo} sweep cannot start from earlier runs' settings (it chooses "
                        "every trial itself); use random sampling or remove warm_start")
    if algo == "bayesian":
        if len(job.search_space) > 1:
            problems.append("sweep.sampling_algorithm=bayesian does not support a conditional search space "
                            f"({len(job.search_space)} entries); use random or grid, or one entry")
        if job.sweep.early_termination is not None:
            problems.append("sweep.early_termination: bayesian sampling does not support early termination "
                            "(each trial informs the next); remove it or use random sampling")

    # cross-field rules that only fixed values can break (an AutoMode job's, once its space is written in)
    if not problems and not (job.automode and "model_name" not in tp):
        problems += _cross_check_fixed(job)
    return problems


def _check_distribution(where: str, hp: hps.HyperParameter, value: Any, algo: str, model: str | None,
                        models: list[str] = ()) -> list[str]:
    if not is_distribution(value):
        try:
            hp.coerce(value, model)
        except ValueError as e:
            return [f"{where}={_short(value)}: {_rule(e)}"]
        return []
    kind = value.type
    if algo == "grid" and kind not in GRID_DISTRIBUTIONS:
        return [f"{where}: grid sampling takes only choice distributions, not {kind}"]
    if algo == "bayesian" and kind not in BAYESIAN_DISTRIBUTIONS:
        return [f"{where}: bayesian sampling takes only choice, uniform and quniform, not {kind}"]
    if kind == "choice":
        out = []
        for v in value.values:
            try:
                hp.coerce(v, model)
            except ValueError as e:
                out.append(f"{where}: choice value {_short(v)}: {_rule(e)}")
        return out
    if hp.type in (str, bool):
        return [f"{where}: {hp.name} takes a choice of values, not a {kind} distribution"]
    if hp.type is int and kind not in INTEGER_DISTRIBUTIONS:
        return [f"{where}: {hp.name} is an integer; use choice, randint, quniform, qloguniform, qnormal or "
                f"qlognormal, not {kind}"]
    if hp.type is int and getattr(value, "q", 1) != int(getattr(value, "q", 1)):
        return [f"{where}: {hp.name} is an integer; q={value.q} must be a whole number"]
    bounds = value.bounds()
    if bounds is not None:
        out = []
        for b in bounds:
            if not hp._in_range(hp.type(b)):
                out.append(f"{where}: {kind} can draw {b:g}, outside what {hp.name} allows ({hp.allowed()})")
            elif hp.check is not None:  # model-specific limits (layers_to_freeze: the model's layer groups)
                problem = next(filter(None, (hp.check(hp.type(b), m) for m in models or [model or ""])), None)
                if problem:
                    out.append(f"{where}: {kind} can draw {b:g}: {problem}")
        return out[:1]
    # normal-family draws are unbounded: a draw out of range fails that trial's own validation
    return []


def _cross_check_fixed(job: JobSpec) -> list[str]:
    problems: list[str] = []
    for i, entry in enumerate(job.search_space or [{}]):
        swept = {k for k, v in entry.items() if is_distribution(v) and not (isinstance(v, Choice) and len(v.values) == 1)}
        fixed = {k: (v.values[0] if isinstance(v, Choice) else v) for k, v in entry.items() if k not in swept}
        for m in entry_models(job, entry):
            given = {**job.training_parameters, **fixed, "model_name": m}
            try:
                hps.resolve(job.task, given)
            except ValueError as e:
                for line in str(e).splitlines():
                    involved = [k for k in swept if k in line]
                    if not involved:
                        where = f"search_space[{i}]" if job.search_space else "training_parameters"
                        problems.append(f"{where} ({m}): {line}")
    return sorted(set(problems), key=problems.index)


def _rule(e: ValueError) -> str:
    """The rule part of a coerce() message (drops its leading 'name=value')."""
    text = str(e)
    head, sep, rest = text.partition(" ")
    return rest if sep and "=" in head else text


def _known(name: str, where: str, problems: list[str]) -> hps.HyperParameter | None:
    """The hyperparameter ``name``, or None with the problem (and the nearest name) added to ``problems``."""
    hp = hps.BY_NAME.get(name)
    if hp is None:
        problems.append(f"{where}: unknown hyperparameter {name!r}{did_you_mean(name, hps.BY_NAME)}")
    return hp


def _short(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --- parsing with every problem collected -----------------------------------------------------

_SECTION_FIELDS: dict[tuple[str, ...], list[str]] = {
    (): list(JobSpec.model_fields),
    ("limits",): list(Limits.model_fields),
    ("sweep",): list(Sweep.model_fields),
    ("compute",): list(Compute.model_fields),
    ("compute", "tolerations", "*"): list(Toleration.model_fields),
    ("compute", "data_volume"): list(DataVolume.model_fields),
}
for _kind, _cls in POLICY_TYPES.items():
    _SECTION_FIELDS[("sweep", "early_termination", _kind)] = list(_cls.model_fields)
for _kind, _cls in DISTRIBUTION_TYPES.items():
    _SECTION_FIELDS[("search_space", "*", "*", _kind)] = list(_cls.model_fields)


def _pydantic_problems(err: ValidationError) -> list[str]:
    out = []
    for e in err.errors(include_url=False):
        loc = tuple(e["loc"])
        where = _loc_text(loc)
        if e["type"] == "extra_forbidden":
            key = str(loc[-1])
            parent = tuple("*" if isinstance(p, int) else p for p in loc[:-1])
            if parent[:1] == ("search_space",):
                parent = ("search_space", "*", "*") + parent[3:]
            fields = _SECTION_FIELDS.get(parent, [])
            hint = did_you_mean(key, fields)
            out.append(f"{where}: unknown key {key!r}{hint}" + ("" if hint or not fields else
                                                               f"; allowed: {', '.join(fields)}"))
            continue
        msg = e["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        if e["type"] == "missing":
            out.append(f"{where}: required key missing")
        elif e["type"] == "enum" and loc == ("task",):
            out.append(f"task={e['input']!r} is not a task{did_you_mean(str(e['input']), [t.value for t in ImageTask])}; "
                       f"allowed: {', '.join(t.value for t in ImageTask)}")
        elif "input" in e and not isinstance(e["input"], (dict, list)):
            out.append(f"{where}={_short(e['input'])}: {msg}")
        else:
            out.append(f"{where}: {msg}" if where else msg)
    return out


def _loc_text(loc: tuple) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part in POLICY_TYPES or part in DISTRIBUTION_TYPES:
            continue  # discriminator tags pydantic inserts
        else:
            text += f".{part}" if text else str(part)
    return text


def parse_job(data: Any, source: str = "job", base_dir: str | os.PathLike | None = None) -> JobSpec:
    """Validate ``data`` (a mapping, e.g. loaded YAML) into a JobSpec.

    Relative data paths are resolved against ``base_dir`` (the job file's folder) when given.
    Raises ConfigError listing every problem.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"a job must be a mapping of keys, got {type(data).__name__}", source)
    data = dict(data)
    problems: list[str] = []
    for key in ("training_data", "validation_data"):
        # The original's job files give data as an input: {path: ..., type: mltable}; the path is what we read.
        value = data.get(key)
        if isinstance(value, Mapping):
            kind, path = value.get("type", "mltable"), value.get("path")
            extra = sorted(set(value) - {"type", "path", "mode"})
            if kind != "mltable" or not isinstance(path, str) or not path or extra:
                problems.append(f"{key}: {dict(value)!r}: as a mapping it must be {{path: <MLTable folder>, type: "
                                "mltable}} (the original's job input; optional mode); or give the JSONL file or "
                                "MLTable folder as a string")
            else:
                data[key] = path
    if base_dir is not None:
        for key in ("training_data", "validation_data"):
            value = data.get(key)
            if isinstance(value, str) and "://" not in value and not os.path.isabs(value):
                data[key] = str(Path(base_dir, value))
    try:
        structured = JobSpec.model_validate(data, context={"structure_only": True})
    except ValidationError as e:
        problems += _pydantic_problems(e)
        structured = None
        # Check hyperparameters too when only other sections are wrong, so every problem shows at once.
        partial = _partial_job(data)
        if partial is not None:
            problems += check_job(partial)
    if structured is not None:
        problems += check_job(structured)
    if problems:
        raise ConfigError(_dedupe(problems), source)
    return JobSpec.model_validate(data)


def _partial_job(data: dict) -> JobSpec | None:
    """The job with its broken sections dropped, if task and hyperparameters parse at all."""
    keys = ("task", "training_data", "primary_metric", "search_space", "training_parameters", "sweep")
    keep = {k: data[k] for k in keys if k in data}
    keep["training_data"] = "-"
    sweep = data.get("sweep")
    algo = sweep.get("sampling_algorithm") if isinstance(sweep, Mapping) else None
    fallback_sweep = {"sampling_algorithm": algo} if algo in ("random", "grid", "bayesian") else {}
    primary = data.get("primary_metric")
    if not isinstance(primary, str):
        keep.pop("primary_metric", None)
    for attempt in (keep, {**keep, "sweep": fallback_sweep}):
        try:
            return JobSpec.model_validate(attempt, context={"structure_only": True})
        except ValidationError:
            continue
    return None


def _dedupe(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def load_job(path: str | os.PathLike) -> JobSpec:
    """Read and validate a YAML (or JSON) job file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read job file: {e.strerror}", str(path)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"not valid YAML: {getattr(e, 'problem', e)}", where) from None
    return parse_job(data, source=str(path), base_dir=path.parent)


# --- the resolved view ------------------------------------------------------------------------

def resolved(job: JobSpec) -> dict[str, Any]:
    """The job with every default filled in, and per candidate model the full hyperparameter set
    (swept values shown as their distribution)."""
    out = job.model_dump(mode="json")
    if job.automode:
        # the models and their settings are AutoMode's, chosen from the data when the sweep starts
        # (validate-job and the run folder's resolved_job.json show them once chosen)
        out["hyperparameters_by_model"] = {}
        return out
    per_model: dict[str, dict[str, Any]] = {}
    for entry in job.search_space or [{}]:
        for m in entry_models(job, entry):
            fixed = {**job.training_parameters, "model_name": m}
            values = hps.resolve(job.task, {k: v for k, v in fixed.items()})
            for k, v in entry.items():
                if k == "model_name":
                    continue
                values[k] = v.model_dump(mode="json") if is_distribution(v) else v
            per_model.setdefault(m, values)
    out["hyperparameters_by_model"] = per_model
    return out


def grid_size(job: JobSpec) -> int:
    """Number of distinct trials a grid sweep over this job has."""
    total = 0
    for entry in job.search_space or [{}]:
        sizes = [len(v.values) for v in entry.values() if isinstance(v, Choice)]
        total += int(_prod(sizes))
    return total


def _prod(xs: list[int]) -> int:
    out = 1
    for x in xs:
        out *= x
    return out


def grid_points(job: JobSpec) -> list[dict[str, Any]]:
    """Every point of a grid sweep, in a fixed order (search-space entries in turn)."""
    points = []
    for entry in job.search_space or [{}]:
        keys = list(entry)
        axes = [entry[k].values if isinstance(entry[k], Choice) else [entry[k]] for k in keys]
        for combo in itertools.product(*axes):
            points.append(dict(zip(keys, combo)))
    return points
