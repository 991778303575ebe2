"""A job as Katib Experiments: one per search-space entry (model family), as plain camelCase
mappings that ``kubectl apply -f`` takes.

- :func:`katib_parameter`: one swept hyperparameter as a Katib ``ParameterSpec``;
- :func:`plan_families`: the entries with the trials and concurrency each Experiment gets;
- :func:`experiments_from_job` / :func:`to_yaml`: the Experiments, their trial template built by
  :mod:`automl_vision.sweep.katib.trial`.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from automl_vision import __version__
from automl_vision.earlystopping import rules as es
from automl_vision.errors import ConfigError
from automl_vision.spec import distributions as dists
from automl_vision.spec import hyperparameters as hps
from automl_vision.spec.cluster import ClusterSettings, DataVolume
from automl_vision.spec.job import JobSpec, entry_models
from automl_vision.spec.policies import MedianStoppingPolicy
from automl_vision.sweep.automode import prepare_automode
from automl_vision.sweep.command import format_argument
from automl_vision.sweep.katib.trial import (
    PRIMARY_CONTAINER,
    TRIAL_NAME_PARAMETER,
    TRIAL_NAME_REFERENCE,
    trial_job,
    trial_outputs_uri,
    trial_placement,
)

API_VERSION = "kubeflow.org/v1beta1"
#: Katib's default conditions for a batch Job (GJSON).
SUCCESS_CONDITION = 'status.conditions.#(type=="Complete")#|#(status=="True")#'
FAILURE_CONDITION = 'status.conditions.#(type=="Failed")#|#(status=="True")#'
#: Metrics Katib stores next to the objective (every trainer reports its validation loss).
ADDITIONAL_METRICS = ("loss",)
#: Katib derives longer names from an Experiment's (suggestion service "<name>-<algorithm>", trial
#: Jobs "<name>-<8 chars>"), which must stay valid DNS labels (63 characters).
MAX_NAME_LENGTH = 40
#: Above this many values, a quantized range is sent as a range, not as a list.
MAX_LIST_VALUES = 1000

ANNOTATION_PREFIX = "automl-vision/"

#: sampling_algorithm -> Katib algorithm. random: hyperopt's random search (every distribution);
#: grid: optuna's grid sampler over the choices; bayesian: skopt's Gaussian-process optimizer.
ALGORITHMS = {"random": "random", "grid": "grid", "bayesian": "bayesianoptimization"}
#: Katib algorithm -> the suggestion service serving it (katib-config 0.19 defaults).
SUGGESTION_SERVICES = {
    "random": "hyperopt", "tpe": "hyperopt", "grid": "optuna", "multivariate-tpe": "optuna",
    "bayesianoptimization": "skopt", "cmaes": "goptuna", "sobol": "goptuna", "hyperband": "hyperband",
    "enas": "enas", "darts": "darts", "pbt": "pbt",
}
#: Distributions each suggestion service builds a search space from (others raise in the service).
SERVICE_DISTRIBUTIONS = {
    "hyperopt": frozenset({"uniform", "logUniform", "normal", "logNormal"}),
    "optuna": frozenset({"uniform", "logUniform"}),
    "skopt": frozenset({"uniform", "logUniform"}),
}


# --- the search space as Katib parameters -----------------------------------------------------------

def _num(x: float, integer: bool = False) -> str:
    return str(int(round(x))) if integer else repr(float(x))

def _integral(*xs: float) -> bool:
    return all(float(x).is_integer() for x in xs)

def _quantized(lo: float, hi: float, q: float, integer: bool) -> list[str]:
    first, last = round(lo / q), round(hi / q)
    if last - first + 1 > MAX_LIST_VALUES:
        return []
    return [_num(k * q, integer) if integer else repr(round(k * q, 12)) for k in range(first, last + 1)]

def katib_parameter(name: str, value: Any, algorithm: str) -> dict[str, Any]:
    """One swept hyperparameter as a Katib ``ParameterSpec`` for ``algorithm`` (a Katib algorithm name).

    choice -> categorical (text, 0/1) or discrete (numbers) list; randint -> the list of its
    integers; uniform/loguniform -> double range with that distribution (loguniform's natural-log
    bounds become e^min, e^max); q* -> the same with ``step`` q; normal/lognormal(mu, sigma) -> the
    range mu -/+ 3 sigma (or its e^ for lognormal), which Katib turns back into mu and sigma. For
    skopt (bayesian), which ignores ``step``, quniform becomes the list of its multiples of q.
    """
    hp = hps.BY_NAME[name]
    integer = hp.type is int
    out: dict[str, Any] = {"name": name}
    if isinstance(value, dists.Choice):
        numeric = hp.type in (int, float)
        out.update(parameterType="discrete" if numeric else "categorical",
                   feasibleSpace={"list": [format_argument(v) for v in value.values]})
        return out
    if isinstance(value, dists.RandInt):
        if value.upper <= MAX_LIST_VALUES:
            out.update(parameterType="discrete", feasibleSpace={"list": [str(i) for i in range(value.upper)]})
        else:
            out.update(parameterType="int", feasibleSpace={"min": "0", "max": str(value.upper - 1)})
        return out
    q = getattr(value, "q", None)
    if isinstance(value, (dists.Uniform, dists.QUniform)):
        lo, hi, dist = value.min_value, value.max_value, "uniform"
    elif isinstance(value, (dists.LogUniform, dists.QLogUniform)):
        lo, hi, dist = math.exp(value.min_value), math.exp(value.max_value), "logUniform"
    elif isinstance(value, (dists.Normal, dists.QNormal)):
        lo, hi, dist = value.mu - 3 * value.sigma, value.mu + 3 * value.sigma, "normal"
    elif isinstance(value, (dists.LogNormal, dists.QLogNormal)):
        lo, hi = math.exp(value.mu - 3 * value.sigma), math.exp(value.mu + 3 * value.sigma)
        dist = "logNormal"
    else:
        raise TypeError(f"not a distribution: {value!r}")
    if q is not None and SUGGESTION_SERVICES.get(algorithm) == "skopt":
        values = _quantized(lo, hi, q, integer and _integral(q))
        if not values:
            raise ConfigError(f"search_space.{name}: {value.type} has more than {MAX_LIST_VALUES} multiples of "
                              f"q={q:g}; Katib's bayesian optimization (skopt) ignores steps, so it would need "
                              "them as a list; use a larger q or random sampling")
        out.update(parameterType="discrete", feasibleSpace={"list": values})
        return out
    as_int = integer and _integral(lo, hi) and (q is None or _integral(q))
    space = {"min": _num(lo, as_int), "max": _num(hi, as_int), "distribution": dist}
    if q is not None:
        space["step"] = _num(q, as_int)
    out.update(parameterType="int" if as_int else "double", feasibleSpace=space)
    return out


# --- planning: one Experiment per search-space entry ------------------------------------------------

@dataclass(frozen=True)
class Family:
    """One search-space entry and the Experiment it becomes."""

    index: int
    models: list[str]
    swept: dict[str, Any]  # name -> distribution
    fixed: dict[str, Any]  # name -> value, baked into the trial command
    size: int | None  # points of a grid over its choices (None: not a finite grid)
    max_trials: int = 0
    parallel: int = 0

def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]

def plan_families(job: JobSpec) -> list[Family]:
    """The search-space entries with the trials and concurrency each Experiment gets.

    random: ``max_trials`` split evenly over the entries (the first ones get the remainder), an
    entry with nothing to sweep gets one trial; grid: each entry's points in turn until
    ``max_trials`` (as the local grid); bayesian: one entry. ``max_concurrent_trials`` is split the
    same way (at least one each). Entries left with no trial are dropped.
    """
    families = []
    for i, entry in enumerate(job.search_space or [{}]):
        swept = {k: v for k, v in entry.items()
                 if dists.is_distribution(v) and not (isinstance(v, dists.Choice) and len(v.values) == 1)}
        fixed = {k: (v.values[0] if isinstance(v, dists.Choice) else v) for k, v in entry.items() if k not in swept}
        size = None
        if all(isinstance(v, dists.Choice) for v in swept.values()):
            size = math.prod(len(v.values) for v in swept.values())
        families.append(Family(i, entry_models(job, entry), swept, fixed, size))
    n = job.limits.max_trials
    if job.sweep.sampling_algorithm == "grid":
        budgets, left = [], n
        for f in families:
            budgets.append(min(f.size or 0, left))
            left -= budgets[-1]
    else:
        budgets = _split(n, len(families))
        budgets = [min(b, 1) if not f.swept else b for b, f in zip(budgets, families)]
    kept = [(f, b) for f, b in zip(families, budgets) if b > 0]
    concurrent = job.limits.max_concurrent_trials
    # Fewer concurrent trials than Experiments: one trial at a time each (the backend runs them in turn).
    parallel = _split(concurrent, len(kept)) if concurrent >= len(kept) else [1] * len(kept)
    parallel = [max(1, min(p, b)) for p, (_, b) in zip(parallel, kept)]
    return [Family(f.index, f.models, f.swept, f.fixed, f.size, b, p) for (f, b), p in zip(kept, parallel)]


# --- the Experiment ------------------------------------------------------------------------------

def _check_data_location(job: JobSpec, volume: DataVolume | None) -> None:
    problems = []
    for key in ("training_data", "validation_data"):
        path = getattr(job, key)
        if path is None or "://" in path:
            continue
        if volume is not None and (path + "/").startswith(volume.mount_path.rstrip("/") + "/"):
            continue
        problems.append(f"{key}={path!r} is a path on this machine, which a trial pod cannot read; give an "
                        f"object-store URI (s3://bucket/key; on the command line --{key}) or mount a volume "
                        "holding it (compute.data_volume, or the cluster settings' data_volume) and give its path "
                        "there")
    if problems:
        raise ConfigError(problems)

def _early_stopping(job: JobSpec) -> dict[str, Any] | None:
    """The Experiment's ``earlyStopping``: median_stopping as Katib's own ``medianstop``; bandit,
    truncation_selection, asha and hyperband as our service's algorithms (``es.katib_settings``)."""
    policy = job.sweep.early_termination
    if policy is None:
        return None
    if isinstance(policy, MedianStoppingPolicy):
        settings = [("min_trials_required", "1"), ("start_step", str(es.first_evaluation_step(policy)))]
        name = es.MEDIANSTOP
    else:
        try:
            name, settings = es.katib_settings(policy)
        except ValueError as e:
            raise ConfigError(f"sweep.early_termination: {e}") from None
    return {"algorithmName": name, "algorithmSettings": [{"name": k, "value": v} for k, v in settings]}

def experiment_names(job: JobSpec, name: str | None, count: int) -> list[str]:
    base = name or job.name or "automl-vision"
    return [base] if count == 1 else [f"{base}-{i}" for i in range(count)]

def spec_hash(experiment: Mapping[str, Any]) -> str:
    """A digest of an Experiment's spec, stored in its annotations to recognize it when re-attaching."""
    text = json.dumps(experiment["spec"], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]

def experiments_from_job(job: JobSpec, *, name: str | None = None, namespace: str | None = None,
                         cluster: ClusterSettings | None = None) -> list[dict[str, Any]]:
    """The Katib Experiments of a job, one per search-space entry (Katib has no conditional search
    space), as mappings ready for ``kubectl apply`` (camelCase keys). The trial pods are placed by the
    job's ``compute`` over ``cluster`` (default: ``ClusterSettings()``; :func:`trial_placement`); with
    ``cluster.trial_outputs`` each trial uploads its folder to ``<trial_outputs>/<experiment>/<trial>``.
    Raises ConfigError when the job cannot run on Katib (data on this machine, exclude_finished_jobs, ...)."""
    cluster = cluster or ClusterSettings()
    if job.automode:
        # the sweep step fills AutoMode's space from the data first; here the data is not read
        job = prepare_automode(job).job
    _check_data_location(job, trial_placement(job.compute, cluster).data_volume)
    algorithm = ALGORITHMS[job.sweep.sampling_algorithm]
    early_stopping = _early_stopping(job)
    families = plan_families(job)
    names = experiment_names(job, name, len(families))
    task = job.task
    primary = task.primary_metric
    strategy = "max" if task.maximize else "min"
    out = []
    for fam, exp_name in zip(families, names):
        swept = dict(fam.swept)
        fixed = dict(fam.fixed)
        if not swept:
            # Katib needs at least one parameter: the model becomes a parameter with one value.
            fixed.pop("model_name", None)
            swept["model_name"] = dists.Choice(values=fam.models[:1])
        parameters = [katib_parameter(k, v, algorithm) for k, v in swept.items()]
        placeholders = {k: f"${{trialParameters.{k}}}" for k in swept}
        # Katib puts each trial's own name in for ${trialSpec.Name}, so a trial knows where to upload
        upload_to = (trial_outputs_uri(cluster.trial_outputs, exp_name, f"${{trialParameters.{TRIAL_NAME_PARAMETER}}}")
                     if cluster.trial_outputs else None)
        template_job = trial_job(job, {**fixed, **placeholders}, cluster, upload_to=upload_to)
        trial_parameters = [{"name": k, "reference": k, "description": hps.BY_NAME[k].help} for k in swept]
        if upload_to:
            trial_parameters.append({"name": TRIAL_NAME_PARAMETER, "reference": TRIAL_NAME_REFERENCE,
                                     "description": "The trial's name: its outputs go to --upload-to under it."})
        spec: dict[str, Any] = {
            "objective": {
                "type": "maximize" if task.maximize else "minimize",
                "objectiveMetricName": primary,
                "additionalMetricNames": list(ADDITIONAL_METRICS),
                "metricStrategies": [{"name": primary, "value": strategy},
                                     *({"name": m, "value": "latest"} for m in ADDITIONAL_METRICS)],
            },
            "algorithm": {"algorithmName": algorithm,
                          "algorithmSettings": [{"name": "random_state", "value": str(job.sweep.seed)}]},
            **({"earlyStopping": early_stopping} if early_stopping is not None else {}),
            "parallelTrialCount": fam.parallel,
            "maxTrialCount": fam.max_trials,
            "metricsCollectorSpec": {"collector": {"kind": "StdOut"}},
            "parameters": parameters,
            "trialTemplate": {
                "primaryContainerName": PRIMARY_CONTAINER,
                "successCondition": SUCCESS_CONDITION,
                "failureCondition": FAILURE_CONDITION,
                "trialParameters": trial_parameters,
                "trialSpec": template_job,
            },
        }
        if job.limits.max_failed_trials is not None:
            spec["maxFailedTrialCount"] = min(job.limits.max_failed_trials, fam.max_trials)
        metadata: dict[str, Any] = {
            "name": exp_name,
            "labels": {"app.kubernetes.io/name": "automl-vision", "app.kubernetes.io/version": __version__,
                       f"{ANNOTATION_PREFIX}task": task.value},
            "annotations": {
                f"{ANNOTATION_PREFIX}search-space-entry": str(fam.index),
                f"{ANNOTATION_PREFIX}models": ",".join(fam.models),
                f"{ANNOTATION_PREFIX}fixed-parameters": json.dumps(_jsonable(fixed), sort_keys=True),
            },
        }
        if namespace:
            metadata["namespace"] = namespace
        experiment = {"apiVersion": API_VERSION, "kind": "Experiment", "metadata": metadata, "spec": spec}
        metadata["annotations"][f"{ANNOTATION_PREFIX}spec-hash"] = spec_hash(experiment)
        out.append(experiment)
    return out

def _jsonable(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (v.model_dump(mode="json") if dists.is_distribution(v) else v) for k, v in values.items()}

def to_yaml(experiments: Sequence[Mapping[str, Any]]) -> str:
    """Experiments as one multi-document YAML file for ``kubectl apply -f``."""
    return yaml.safe_dump_all([dict(e) for e in experiments], sort_keys=False, width=120)

def experiment_base_name(text: str, prefix: str = "automl-") -> str:
    """A short Experiment name from any text (e.g. a pipeline run id): the same text gives the same name,
    so a retried step finds its Experiments again."""
    cleaned = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    digest = hashlib.sha256(text.encode()).hexdigest()[:6]
    return f"{prefix}{cleaned[:24].strip('-')}-{digest}" if cleaned else f"{prefix}{digest}"
