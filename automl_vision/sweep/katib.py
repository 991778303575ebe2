"""Katib: Experiments from a job, the checks Katib's admission webhook makes, the trial contract,
and the pipeline's Katib backend.

- :func:`experiments_from_job`: one Experiment per search-space entry (model family), as plain
  camelCase mappings that ``kubectl apply -f`` takes; :func:`to_yaml` writes them.
- :func:`check_experiment`: the webhook's checks, the suggestion and early-stopping services'
  setting checks, and ours; the embedded trial Job is validated with ``kubernetes-validate``.
- :func:`sample_assignment` / :func:`substitute_trial`: a trial's parameter values drawn as Katib's
  random suggestion draws them, and the trial's Job exactly as Katib's controller builds it.
- :func:`trial_placement` / :func:`trial_job`: the trial pod from the cluster settings, the job's
  ``compute`` overriding them key by key; with ``trial_outputs`` each trial uploads its folder.
- :func:`run_katib_sweep`: create (or re-attach to) the Experiments with the Katib SDK, wait,
  read the optimal trial. Needs the Katib SDK and a cluster.
- :func:`run_katib_backend`: the pipeline's sweep step: the sweep, then every trial's record and
  the best trial's model read back from the trial outputs.

Only this module knows Katib's names; everything below takes and returns validated jobs and
plain values. See docs/katib.md for the mapping and its limits.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import yaml

from automl_vision.earlystopping import rules as es
from automl_vision.errors import AutoMLError, ConfigError
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
from automl_vision.pipeline.settings import ClusterSettings, GpuPool
from automl_vision.spec.job import Compute, DataVolume, JobSpec, Toleration
from automl_vision.spec.policies import MedianStoppingPolicy

log = logging.getLogger(__name__)

API_VERSION = "kubeflow.org/v1beta1"
PRIMARY_CONTAINER = "training-container"
#: The trial container's working directory (an emptyDir); the trial writes ``outputs/`` there.
WORK_DIR = "/tmp/automl-vision"
OUTPUT_DIR = "outputs"
#: Katib's default conditions for a batch Job (GJSON).
SUCCESS_CONDITION = 'status.conditions.#(type=="Complete")#|#(status=="True")#'
FAILURE_CONDITION = 'status.conditions.#(type=="Failed")#|#(status=="True")#'
#: Metrics Katib stores next to the objective (every trainer reports its validation loss).
ADDITIONAL_METRICS = ("loss",)
#: Katib derives longer names from an Experiment's (suggestion service "<name>-<algorithm>", trial
#: Jobs "<name>-<8 chars>"), which must stay valid DNS labels (63 characters).
MAX_NAME_LENGTH = 40
#: Memory a trial's training process needs beside its /dev/shm (Python, torch, the CUDA context, the model,
#: batches in flight); a memory-backed /dev/shm is charged to the container, so memory >= shm + this.
TRIAL_PROCESS_MEMORY = "4Gi"
#: The trial parameter Katib fills with the trial's own name (a metadata reference: no search-space entry).
TRIAL_NAME_PARAMETER = "trialName"
TRIAL_NAME_REFERENCE = "${trialSpec.Name}"
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
#: Settings each suggestion service's ValidateAlgorithmSettings accepts, with the check it makes.
_ALGORITHM_SETTINGS: dict[str, dict[str, Callable[[str], bool]]] = {
    "random": {"random_state": lambda v: int(v) >= 0},
    "tpe": {"random_state": lambda v: int(v) >= 0, "gamma": lambda v: 0 < float(v) < 1,
            "prior_weight": lambda v: float(v) > 0, "n_EI_candidates": lambda v: int(v) > 0},
    "grid": {"random_state": lambda v: int(v) >= 0},
    "bayesianoptimization": {
        "base_estimator": lambda v: v in ("GP", "RF", "ET", "GBRT"),
        "n_initial_points": lambda v: int(v) >= 0,
        "acq_func": lambda v: v in ("gp_hedge", "LCB", "EI", "PI", "EIps", "PIps"),
        "acq_optimizer": lambda v: v in ("auto", "sampling", "lbfgs"),
        "random_state": lambda v: int(v) >= 0,
    },
}
EARLY_STOPPING_ALGORITHMS = frozenset({es.MEDIANSTOP, *es.ALGORITHMS})
_MEDIANSTOP_SETTINGS: dict[str, Callable[[str], bool]] = {
    "min_trials_required": lambda v: int(v) > 0, "start_step": lambda v: int(v) >= 1,
}
PARAMETER_TYPES = frozenset({"double", "int", "discrete", "categorical"})
KATIB_DISTRIBUTIONS = frozenset({"uniform", "logUniform", "normal", "logNormal"})
COLLECTOR_KINDS = frozenset({"StdOut", "File", "TensorFlowEvent", "PrometheusMetric", "Custom", "None", "Push"})
RESUME_POLICIES = frozenset({"", "Never", "LongRunning", "FromVolume"})

_PARAM_REF = re.compile(r"\$\{trialParameters\..+?\}")
_META_REF = re.compile(r"\$\{trialSpec\.(.+?)\}")
_META_KEYS = ("Name", "Namespace", "Kind", "APIVersion", "Labels", "Annotations")
_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
#: Characters that change meaning when Katib's StdOut collector runs the command through ``sh -c``.
_SHELL_UNSAFE = re.compile(r"[\s'\"`;&|<>()\\*?!#~]|\$(?!\{trialParameters\.)")


# --- the search space as Katib parameters -----------------------------------------------------------

def _num(x: float, integer: bool = False) -> str:
    return str(int(round(x))) if integer else repr(float(x))


def _text(value: Any) -> str:
    """A value as the trial command takes it (as ``automl-vision train`` flags: 0/1 for booleans)."""
    if isinstance(value, bool):
        return "1" if value else "0"
    return repr(value) if isinstance(value, float) else str(value)


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
    if isinstance(value, Choice):
        numeric = hp.type in (int, float)
        out.update(parameterType="discrete" if numeric else "categorical",
                   feasibleSpace={"list": [_text(v) for v in value.values]})
        return out
    if isinstance(value, RandInt):
        if value.upper <= MAX_LIST_VALUES:
            out.update(parameterType="discrete", feasibleSpace={"list": [str(i) for i in range(value.upper)]})
        else:
            out.update(parameterType="int", feasibleSpace={"min": "0", "max": str(value.upper - 1)})
        return out
    q = getattr(value, "q", None)
    if isinstance(value, (Uniform, QUniform)):
        lo, hi, dist = value.min_value, value.max_value, "uniform"
    elif isinstance(value, (LogUniform, QLogUniform)):
        lo, hi, dist = math.exp(value.min_value), math.exp(value.max_value), "logUniform"
    elif isinstance(value, (Normal, QNormal)):
        lo, hi, dist = value.mu - 3 * value.sigma, value.mu + 3 * value.sigma, "normal"
    elif isinstance(value, (LogNormal, QLogNormal)):
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


def _entry_models(job: JobSpec, entry: Mapping[str, Any]) -> list[str]:
    m = entry.get("model_name")
    if m is None:
        return [str(job.training_parameters.get("model_name", job.task.default_model))]
    return [str(v) for v in m.values] if isinstance(m, Choice) else [str(m)]


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
                 if is_distribution(v) and not (isinstance(v, Choice) and len(v.values) == 1)}
        fixed = {k: (v.values[0] if isinstance(v, Choice) else v) for k, v in entry.items() if k not in swept}
        size = None
        if all(isinstance(v, Choice) for v in swept.values()):
            size = math.prod(len(v.values) for v in swept.values())
        families.append(Family(i, _entry_models(job, entry), swept, fixed, size))
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

def _check_data_location(job: JobSpec, volume) -> None:
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


@dataclass(frozen=True)
class TrialPlacement:
    """What a trial pod gets: the job's ``compute`` keys where set, the cluster settings elsewhere."""

    image: str
    gpus: int
    gpu_resource: str
    cpu: str
    memory: str
    shm_size: str
    node_selector: dict[str, str]
    tolerations: list[Toleration]
    env: dict[str, str]
    #: the cluster's storage Secret: (Secret name, {key: environment variable}); None without one
    secret_keys: tuple[str, dict[str, str]] | None
    #: a Secret given in the job's compute: all its keys become environment variables
    secret_from: str | None
    data_volume: DataVolume | None
    image_pull_secrets: list[str]
    service_account: str | None


def trial_placement(compute: Compute | None, cluster: ClusterSettings | None = None) -> TrialPlacement:
    """Resolve a trial's pod settings: a key the job's ``compute`` sets wins, an unset one comes from
    ``cluster`` (default: ``ClusterSettings()``). GPU trials take the GPU pool's image (the CUDA image),
    node selector, tolerations and requests; CPU trials (``gpus: 0``, or a cluster without a GPU pool)
    the CPU image, no GPU placement, and the same requests (a trial trains either way). Raises
    ConfigError for settings a trial cannot run with (more than one GPU, too little memory for
    /dev/shm and the training process)."""
    compute = compute or Compute()
    cluster = cluster or ClusterSettings()
    pool = cluster.gpu
    gpus = compute.gpus if compute.gpus is not None else (1 if pool is not None else 0)
    if gpus > 1:
        raise ConfigError(f"compute.gpus={gpus}: a trial runs one training process on one GPU; "
                          "multi-GPU trials are not supported by the trial template")
    sizes = pool or GpuPool()
    on_pool = gpus > 0 and pool is not None
    placement = TrialPlacement(
        image=compute.image or (cluster.cuda_image if gpus else cluster.cpu_image),
        gpus=gpus,
        gpu_resource=compute.gpu_resource or sizes.accelerator_type,
        cpu=compute.cpu or sizes.cpu,
        memory=compute.memory or sizes.memory,
        shm_size=compute.shm_size or cluster.shm_size,
        node_selector=dict(compute.node_selector if compute.node_selector is not None
                           else pool.node_selector if on_pool else {}),
        tolerations=list(compute.tolerations if compute.tolerations is not None
                         else pool.tolerations if on_pool else []),
        env=cluster.env(),
        secret_keys=None if compute.storage_secret or cluster.storage_secret is None
        else (cluster.storage_secret.name, dict(cluster.storage_secret.keys)),
        secret_from=compute.storage_secret,
        data_volume=compute.data_volume or cluster.data_volume,
        image_pull_secrets=list(compute.image_pull_secrets),
        service_account=compute.service_account,
    )
    _check_memory(placement, compute)
    return placement


def _check_memory(p: TrialPlacement, compute: Compute) -> None:
    from kubernetes.utils import parse_quantity

    memory, shm, process = (parse_quantity(p.memory), parse_quantity(p.shm_size),
                            parse_quantity(TRIAL_PROCESS_MEMORY))
    if memory < shm + process:
        where = "compute.memory" if compute.memory else "the GPU pool's memory (cluster settings)"
        need = _gib(shm + process)
        raise ConfigError(f"{where}={p.memory} is less than the trial's /dev/shm ({p.shm_size}, memory-backed, so "
                          f"charged to the container's memory) plus {TRIAL_PROCESS_MEMORY} for the training process: "
                          f"give at least {need}, or a smaller compute.shm_size")


def _gib(n) -> str:
    gib = n / 2**30
    return f"{int(gib)}Gi" if gib == int(gib) else f"{math.ceil(gib * 1024)}Mi"


def trial_command(job: JobSpec, parameters: Mapping[str, Any], *, gpus: int = 1,
                  upload_to: str | None = None) -> list[str]:
    """The trial container's command: ``automl-vision train --<name>=<value> ...`` with the job's fixed
    ``training_parameters`` and ``parameters`` (values or ``${trialParameters.<name>}`` placeholders);
    with ``upload_to``, the trial uploads its folder there when it ends."""
    from automl_vision.sweep.local import trial_arguments

    args = trial_arguments(job, parameters, OUTPUT_DIR)
    if len(args) % 2 != 1:
        raise AssertionError(f"trial arguments are not flag/value pairs: {args}")
    command = ["automl-vision", args[0]]
    command += [f"{flag}={value}" for flag, value in zip(args[1::2], args[2::2])]
    command.append(f"--device={'cuda' if gpus else 'cpu'}")
    if upload_to:
        command.append(f"--upload-to={upload_to}")
    return command


def trial_outputs_uri(trial_outputs: str, experiment: str, trial: str) -> str:
    """Where a trial uploads its folder: ``<trial_outputs>/<experiment>/<trial>``."""
    return f"{trial_outputs.rstrip('/')}/{experiment}/{trial}"


def trial_job(job: JobSpec, parameters: Mapping[str, Any], cluster: ClusterSettings | None = None, *,
              upload_to: str | None = None) -> dict[str, Any]:
    """The trial template: a batch Job running the training image with :func:`trial_command`, placed
    by :func:`trial_placement` (the job's ``compute`` over ``cluster``)."""
    p = trial_placement(job.compute, cluster)
    # Requests = limits (Guaranteed QoS): a trial is not evicted under node pressure, and one that
    # outgrows its memory is stopped alone instead of starving the training next to it.
    resources: dict[str, Any] = {"requests": {"cpu": p.cpu, "memory": p.memory},
                                 "limits": {"cpu": p.cpu, "memory": p.memory}}
    if p.gpus:
        resources["limits"][p.gpu_resource] = p.gpus
    env = [{"name": k, "value": v} for k, v in p.env.items()]
    if p.secret_keys is not None:
        secret, keys = p.secret_keys
        # optional, as the pipeline's steps get it: without the Secret a trial still starts (public data)
        env += [{"name": var, "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": True}}}
                for key, var in sorted(keys.items())]
    container: dict[str, Any] = {
        "name": PRIMARY_CONTAINER,
        "image": p.image,
        "command": trial_command(job, parameters, gpus=p.gpus, upload_to=upload_to),
        "workingDir": WORK_DIR,
        "env": env,
        "resources": resources,
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}, {"name": "workdir", "mountPath": WORK_DIR}],
    }
    volumes: list[dict[str, Any]] = [
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": p.shm_size}},
        {"name": "workdir", "emptyDir": {}},
    ]
    if p.secret_from:
        container["envFrom"] = [{"secretRef": {"name": p.secret_from}}]
    if p.data_volume is not None:
        v = p.data_volume
        container["volumeMounts"].append({"name": "data", "mountPath": v.mount_path, "readOnly": v.read_only})
        volumes.append({"name": "data", "persistentVolumeClaim": {"claimName": v.claim_name, "readOnly": v.read_only}})
    pod: dict[str, Any] = {"restartPolicy": "Never", "containers": [container], "volumes": volumes}
    if p.node_selector:
        pod["nodeSelector"] = dict(sorted(p.node_selector.items()))
    if p.tolerations:
        pod["tolerations"] = [{_camel(k): v for k, v in t.model_dump(exclude_none=True).items()}
                              for t in p.tolerations]
    if p.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": s} for s in p.image_pull_secrets]
    if p.service_account:
        pod["serviceAccountName"] = p.service_account
    spec: dict[str, Any] = {
        "backoffLimit": 0,  # a retried trial would report its metrics twice
        "template": {
            # Istio's sidecar never exits, so a trial Job with it would never complete.
            "metadata": {"annotations": {"sidecar.istio.io/inject": "false"},
                         "labels": {"app.kubernetes.io/name": "automl-vision", "app.kubernetes.io/component": "trial"}},
            "spec": pod,
        },
    }
    if job.limits.trial_timeout_minutes:
        spec["activeDeadlineSeconds"] = job.limits.trial_timeout_minutes * 60
    return {"apiVersion": "batch/v1", "kind": "Job", "spec": spec}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w.title() for w in rest)


def _early_stopping(job: JobSpec) -> dict[str, Any] | None:
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
    from automl_vision import __version__

    cluster = cluster or ClusterSettings()
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
            swept["model_name"] = Choice(values=fam.models[:1])
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
    return {k: (v.model_dump(mode="json") if is_distribution(v) else v) for k, v in values.items()}


def to_yaml(experiments: Sequence[Mapping[str, Any]]) -> str:
    """Experiments as one multi-document YAML file for ``kubectl apply -f``."""
    return yaml.safe_dump_all([dict(e) for e in experiments], sort_keys=False, width=120)


# --- offline checks -------------------------------------------------------------------------------

def _float(text: Any) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _check_parameters(spec: Mapping[str, Any]) -> list[str]:
    problems = []
    algorithm = (spec.get("algorithm") or {}).get("algorithmName", "")
    service = SUGGESTION_SERVICES.get(algorithm)
    names = set()
    for i, p in enumerate(spec.get("parameters") or []):
        where = f"spec.parameters[{i}]"
        name, ptype = p.get("name", ""), p.get("parameterType", "")
        if not name:
            problems.append(f"{where}.name: must be specified")
        elif name in names:
            problems.append(f"{where}.name: {name!r} is defined twice")
        names.add(name)
        if ptype not in PARAMETER_TYPES:
            problems.append(f"{where}.parameterType: {ptype!r} is not supported")
        space = p.get("feasibleSpace") or {}
        dist = space.get("distribution", "")
        if dist and dist not in KATIB_DISTRIBUTIONS:
            problems.append(f"{where}.feasibleSpace.distribution: {dist!r} is not supported")
        if not space:
            problems.append(f"{where}.feasibleSpace: must be specified")
            continue
        if ptype in ("double", "int"):
            if space.get("list"):
                problems.append(f"{where}.feasibleSpace.list: not supported for parameterType {ptype}")
            if not space.get("min") or not space.get("max"):
                problems.append(f"{where}.feasibleSpace: min and max must be specified for parameterType {ptype}")
                continue
            lo, hi, step = _float(space["min"]), _float(space["max"]), space.get("step")
            if lo is None or hi is None or not lo < hi:
                problems.append(f"{where}.feasibleSpace: min={space['min']} must be a number < max={space['max']}")
            if ptype == "int" and not all(re.fullmatch(r"[+-]?\d+", str(space[k])) for k in ("min", "max")):
                problems.append(f"{where}.feasibleSpace: int bounds must be whole numbers")
            if step is not None and not ((_float(step) or 0) > 0):
                problems.append(f"{where}.feasibleSpace.step={step}: must be a number > 0")
            if dist in ("logUniform", "logNormal") and lo is not None and lo <= 0:
                problems.append(f"{where}.feasibleSpace.min={space['min']}: {dist} needs min > 0")
            used = dist or "uniform"
            if service in SERVICE_DISTRIBUTIONS and used not in SERVICE_DISTRIBUTIONS[service]:
                problems.append(f"{where}: the {service} suggestion service ({algorithm}) does not support "
                                f"the {used} distribution")
            if service == "skopt" and step is not None:
                problems.append(f"{where}.feasibleSpace.step: the skopt suggestion service ignores steps")
            if service == "optuna" and algorithm == "grid" and ptype == "double" and step is None:
                problems.append(f"{where}.feasibleSpace.step: grid needs a step for double parameters")
        elif ptype in ("categorical", "discrete"):
            if any(k in space for k in ("min", "max", "step")):
                problems.append(f"{where}.feasibleSpace: min, max and step are not supported for {ptype}")
            values = space.get("list") or []
            if not values:
                problems.append(f"{where}.feasibleSpace.list: must not be empty")
            if len(set(values)) != len(values):
                problems.append(f"{where}.feasibleSpace.list: duplicate values {values}")
            if ptype == "discrete" and any(_float(v) is None for v in values):
                problems.append(f"{where}.feasibleSpace.list: discrete values must be numbers, got {values}")
    return problems


def _grid_points(spec: Mapping[str, Any]) -> int | None:
    total = 1
    for p in spec.get("parameters") or []:
        space = p.get("feasibleSpace") or {}
        if p.get("parameterType") in ("categorical", "discrete"):
            total *= len(space.get("list") or [])
        else:
            lo, hi, step = _float(space.get("min")), _float(space.get("max")), _float(space.get("step") or 1)
            if lo is None or hi is None or not step:
                return None
            total *= int(math.floor((hi - lo) / step + 1e-9)) + 1
    return total


def _check_settings(where: str, settings: Sequence[Mapping[str, str]],
                    allowed: Mapping[str, Callable[[str], bool]], algorithm: str) -> list[str]:
    problems = []
    for s in settings:
        name, value = s.get("name", ""), s.get("value", "")
        check = allowed.get(name)
        if check is None:
            problems.append(f"{where}: unknown setting {name!r} for algorithm {algorithm}"
                            + (f"; allowed: {', '.join(allowed)}" if allowed else ""))
            continue
        try:
            ok = check(value)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            problems.append(f"{where}: {name}={value!r} is not valid for algorithm {algorithm}")
    return problems


def _check_trial_template(exp: Mapping[str, Any]) -> list[str]:
    spec = exp.get("spec") or {}
    tt = spec.get("trialTemplate")
    where = "spec.trialTemplate"
    if not tt:
        return [f"{where}: must be specified"]
    problems = []
    primary = tt.get("primaryContainerName", "")
    if not primary:
        problems.append(f"{where}.primaryContainerName: must be specified")
    if not tt.get("successCondition") or not tt.get("failureCondition"):
        problems.append(f"{where}: successCondition and failureCondition must be specified")
    trial_params = tt.get("trialParameters")
    if trial_params is None:
        return problems + [f"{where}.trialParameters: must be specified"]
    trial_spec = tt.get("trialSpec")
    if trial_spec is None:
        return problems + [f"{where}: trialSpec must be specified (configMap templates are not generated)"]
    text = json.dumps(trial_spec, sort_keys=True, separators=(",", ":"))
    parameter_names = [p.get("name") for p in spec.get("parameters") or []]
    seen_names, seen_refs = set(), set()
    for i, tp in enumerate(trial_params):
        name, ref = tp.get("name", ""), tp.get("reference", "")
        if not name or not ref or "{" in name or "}" in name:
            problems.append(f"{where}.trialParameters[{i}]: name and reference must be specified and the name "
                            "must not contain '{' or '}'")
            continue
        if name in seen_names:
            problems.append(f"{where}.trialParameters[{i}].name: {name!r} is defined twice")
            continue
        if ref in seen_refs:
            problems.append(f"{where}.trialParameters[{i}].reference: {ref!r} is used twice")
            continue
        seen_names.add(name)
        seen_refs.add(ref)
        if parameter_names and not _is_meta_reference(ref) and ref not in parameter_names:
            problems.append(f"{where}.trialParameters[{i}].reference: {ref!r} is not in spec.parameters")
        placeholder = f"${{trialParameters.{name}}}"
        if placeholder not in text:
            problems.append(f"{where}.trialParameters[{i}].name: {placeholder} does not appear in the trialSpec")
            return problems
        text = text.replace(placeholder, "test-value")
    leftover = _PARAM_REF.findall(text)
    if leftover:
        problems.append(f"{where}.trialSpec: {', '.join(sorted(set(leftover)))} not defined in trialParameters")
    # Ours: what the controller needs to build a trial, and swept values the trial would never see.
    referenced = {tp.get("reference") for tp in trial_params}
    for name in parameter_names:
        if name not in referenced:
            problems.append(f"spec.parameters: {name!r} is swept but no trialParameter references it")
    plain = [tp for tp in trial_params if not _is_meta_reference(tp.get("reference", ""))]
    if len(plain) != len(parameter_names):
        problems.append(f"{where}.trialParameters: {len(plain)} parameter reference(s) for {len(parameter_names)} "
                        "parameter(s); Katib's controller needs one per parameter")
    try:
        run_spec = json.loads(text)
    except json.JSONDecodeError as e:
        return problems + [f"{where}.trialSpec: not valid JSON after substitution: {e}"]
    metadata = run_spec.get("metadata") or {}
    if metadata.get("name") or metadata.get("namespace"):
        problems.append(f"{where}.trialSpec: metadata.name and metadata.namespace must be omitted")
    if not run_spec.get("apiVersion") or not run_spec.get("kind"):
        problems.append(f"{where}.trialSpec: apiVersion and kind must be specified")
    if run_spec.get("apiVersion") == "batch/v1" and run_spec.get("kind") == "Job":
        problems += _validate_job(run_spec)
        pod = ((run_spec.get("spec") or {}).get("template") or {}).get("spec") or {}
        containers = {c.get("name"): c for c in pod.get("containers") or []}
        if primary and primary not in containers:
            problems.append(f"{where}.primaryContainerName: {primary!r} is not a container of the trialSpec "
                            f"({', '.join(map(str, containers)) or 'none'})")
        collector = ((spec.get("metricsCollectorSpec") or {}).get("collector") or {}).get("kind", "StdOut")
        container = containers.get(primary) or {}
        if collector in ("StdOut", "File") and primary in containers and not container.get("command"):
            problems.append(f"{where}: the {collector} metrics collector wraps the primary container's command, "
                            "which must be given")
        if collector == "StdOut":
            for c in (((trial_spec.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers", []):
                if c.get("name") != primary:
                    continue
                for token in [*c.get("command", []), *c.get("args", [])]:
                    if _SHELL_UNSAFE.search(str(token)):
                        problems.append(f"{where}: command token {token!r} is not safe in the `sh -c` line Katib's "
                                        "StdOut collector runs")
    return problems


def _is_meta_reference(ref: str) -> bool:
    m = _META_REF.fullmatch(ref)
    if not m:
        return False
    key = m.group(1)
    sub = re.fullmatch(r"(.+)\[(.+)]", key)
    return key in _META_KEYS or bool(sub and sub.group(1) in _META_KEYS)


def _validate_job(job: Mapping[str, Any]) -> list[str]:
    try:
        import kubernetes_validate
    except ImportError:
        raise AutoMLError("validating a trial Job needs kubernetes-validate: pip install 'automl-vision[katib]'") \
            from None
    try:
        kubernetes_validate.validate(dict(job), kubernetes_validate.latest_version(), strict=True)
    except kubernetes_validate.ValidationError as e:
        path = ".".join(str(p) for p in getattr(e, "path", ())) or "(root)"
        return [f"spec.trialTemplate.trialSpec.{path}: {getattr(e, 'message', e)} (kubernetes-validate, batch/v1 Job)"]
    return []


def check_experiment(exp: Mapping[str, Any]) -> list[str]:
    """Every problem Katib's admission webhook (and the services it consults) would find in ``exp``,
    plus ours; an empty list when it would be accepted. See docs/katib.md for the list."""
    problems = []
    if exp.get("apiVersion") != API_VERSION or exp.get("kind") != "Experiment":
        problems.append(f"apiVersion/kind: expected {API_VERSION} Experiment, got "
                        f"{exp.get('apiVersion')} {exp.get('kind')}")
    name = (exp.get("metadata") or {}).get("name", "")
    if not _DNS_LABEL.fullmatch(name or ""):
        problems.append(f"metadata.name={name!r}: lower case letters, digits and '-', starting with a letter and "
                        "ending with a letter or digit")
    elif len(name) > MAX_NAME_LENGTH:
        problems.append(f"metadata.name={name!r}: at most {MAX_NAME_LENGTH} characters (Katib derives longer "
                        "names from it)")
    spec = exp.get("spec") or {}
    max_trials, parallel, max_failed = (spec.get("maxTrialCount"), spec.get("parallelTrialCount"),
                                        spec.get("maxFailedTrialCount"))
    if max_failed is not None and max_failed < 0:
        problems.append(f"spec.maxFailedTrialCount={max_failed}: should not be less than 0")
    if max_trials is not None and max_trials <= 0:
        problems.append(f"spec.maxTrialCount={max_trials}: must be greater than 0")
    if parallel is not None and parallel <= 0:
        problems.append(f"spec.parallelTrialCount={parallel}: must be greater than 0")
    if max_failed is not None and max_trials is not None and max_failed > max_trials:
        problems.append(f"spec.maxFailedTrialCount={max_failed}: should be <= spec.maxTrialCount={max_trials}")
    if parallel is not None and max_trials is not None and parallel > max_trials:
        problems.append(f"spec.parallelTrialCount={parallel}: should be <= spec.maxTrialCount={max_trials}")

    objective = spec.get("objective")
    if not objective:
        return problems + ["spec.objective: must be specified"]
    if objective.get("type") not in ("minimize", "maximize"):
        problems.append(f"spec.objective.type={objective.get('type')!r}: must be minimize or maximize")
    metric = objective.get("objectiveMetricName", "")
    if not metric:
        problems.append("spec.objective.objectiveMetricName: must be specified")
    if metric in (objective.get("additionalMetricNames") or []):
        problems.append("spec.objective.additionalMetricNames: should not contain the objectiveMetricName")
    for s in objective.get("metricStrategies") or []:
        if s.get("value") not in ("min", "max", "latest"):
            problems.append(f"spec.objective.metricStrategies: {s.get('name')}={s.get('value')!r} is not min, "
                            "max or latest")

    algorithm = spec.get("algorithm") or {}
    algo_name = algorithm.get("algorithmName", "")
    if not algorithm:
        problems.append("spec.algorithm: must be specified")
    elif algo_name not in SUGGESTION_SERVICES:
        problems.append(f"spec.algorithm.algorithmName={algo_name!r}: not an algorithm of katib-config; known: "
                        f"{', '.join(SUGGESTION_SERVICES)}")
    elif algo_name in _ALGORITHM_SETTINGS:
        problems += _check_settings("spec.algorithm.algorithmSettings", algorithm.get("algorithmSettings") or [],
                                    _ALGORITHM_SETTINGS[algo_name], algo_name)
    if algo_name == "grid" and max_trials is not None:
        points = _grid_points(spec)
        if points is not None and max_trials > points:
            problems.append(f"spec.maxTrialCount={max_trials}: more than the {points} point(s) of the grid")

    early = spec.get("earlyStopping")
    if early is not None:
        es_name = early.get("algorithmName", "")
        settings = early.get("algorithmSettings") or []
        if es_name not in EARLY_STOPPING_ALGORITHMS:
            problems.append(f"spec.earlyStopping.algorithmName={es_name!r}: not an early-stopping algorithm of "
                            f"katib-config; known: {', '.join(sorted(EARLY_STOPPING_ALGORITHMS))}")
        elif es_name == es.MEDIANSTOP:
            problems += _check_settings("spec.earlyStopping.algorithmSettings", settings, _MEDIANSTOP_SETTINGS,
                                        es_name)
        else:
            try:
                es.policy_from_settings(es_name, {s.get("name", ""): s.get("value", "") for s in settings})
            except ValueError as e:
                problems.append(f"spec.earlyStopping.algorithmSettings: {e}")
        collector = ((spec.get("metricsCollectorSpec") or {}).get("collector") or {}).get("kind", "StdOut")
        if collector not in ("StdOut", "File"):
            problems.append(f"spec.earlyStopping: needs the StdOut or File metrics collector, not {collector}")

    if spec.get("resumePolicy", "") not in RESUME_POLICIES:
        problems.append(f"spec.resumePolicy={spec.get('resumePolicy')!r}: not a resume policy")
    problems += _check_trial_template(exp)
    if not spec.get("parameters") and not spec.get("nasConfig"):
        problems.append("spec: spec.parameters or spec.nasConfig must be specified")
    problems += _check_parameters(spec)
    kind = ((spec.get("metricsCollectorSpec") or {}).get("collector") or {}).get("kind", "StdOut")
    if kind not in COLLECTOR_KINDS:
        problems.append(f"spec.metricsCollectorSpec.collector.kind={kind!r}: not a metrics collector kind")
    return problems


def check_experiments(experiments: Sequence[Mapping[str, Any]]) -> None:
    """Raise ConfigError with every problem of every Experiment (each prefixed by its name)."""
    problems = []
    for exp in experiments:
        name = (exp.get("metadata") or {}).get("name", "?")
        problems += [f"Experiment {name}: {p}" for p in check_experiment(exp)]
    if problems:
        raise ConfigError(problems, "generated Katib Experiment")


# --- the trial contract ----------------------------------------------------------------------------

def sample_assignment(experiment: Mapping[str, Any], rng: np.random.Generator) -> dict[str, str]:
    """One assignment of the Experiment's parameters, drawn as Katib's random suggestion (hyperopt)
    draws it and formatted as Katib sends it (text)."""
    out = {}
    for p in experiment["spec"]["parameters"]:
        space, ptype = p["feasibleSpace"], p["parameterType"]
        if ptype in ("categorical", "discrete"):
            out[p["name"]] = space["list"][int(rng.integers(len(space["list"])))]
            continue
        lo, hi = float(space["min"]), float(space["max"])
        step = float(space["step"]) if space.get("step") else None
        dist = space.get("distribution") or "uniform"
        if dist == "uniform":
            x = rng.uniform(lo, hi)
        elif dist == "logUniform":
            x = math.exp(rng.uniform(math.log(lo), math.log(hi)))
        elif dist == "normal":
            x = rng.normal((lo + hi) / 2, (hi - lo) / 6)
        else:
            mu, sigma = (math.log(lo) + math.log(hi)) / 2, (math.log(hi) - math.log(lo)) / 6
            x = math.exp(rng.normal(mu, sigma))
        if step:
            x = round(x / step) * step
        elif ptype == "int":
            x = round(x)
        out[p["name"]] = str(int(x)) if ptype == "int" else repr(float(x))
    return out


def substitute_trial(experiment: Mapping[str, Any], assignment: Mapping[str, str], trial_name: str,
                     namespace: str) -> dict[str, Any]:
    """The run spec Katib's controller creates for one trial: the trialSpec serialized to JSON, each
    ``${trialParameters.<name>}`` replaced by the assignment of its reference, or for a metadata
    reference (``${trialSpec.Name}``, ``Namespace``, ``Kind``, ``APIVersion``, ``Labels[k]``,
    ``Annotations[k]``) by the trial's own value, parsed back, named (as the controller's
    ``GetRunSpecWithHyperParameters`` in pkg/controller.v1beta1/experiment/manifest/generator.go)."""
    tt = experiment["spec"]["trialTemplate"]
    params = tt["trialParameters"]
    trial_spec = tt["trialSpec"]
    metadata = trial_spec.get("metadata") or {}
    meta_values = {"Name": trial_name, "Namespace": namespace, "Kind": trial_spec.get("kind", ""),
                   "APIVersion": trial_spec.get("apiVersion", "")}
    values: dict[str, str] = {}
    plain = 0
    for p in params:
        ref = p["reference"]
        meta = _META_REF.fullmatch(ref)
        if meta is None:
            if ref not in assignment:
                raise ValueError(f"no assignment for parameter {ref!r}: {dict(assignment)}")
            values[p["name"]] = str(assignment[ref])
            plain += 1
            continue
        key = meta.group(1)
        indexed = re.fullmatch(r"(.+)\[(.+)]", key)
        if indexed and indexed.group(1) in ("Labels", "Annotations"):
            source = metadata.get(indexed.group(1).lower()) or {}
            if indexed.group(2) not in source:
                raise ValueError(f"illegal reference of trial metadata: {ref}")
            values[p["name"]] = source[indexed.group(2)]
        elif key in meta_values:
            values[p["name"]] = meta_values[key]
        else:
            raise ValueError(f"illegal reference of trial metadata: {ref}")
    if len(assignment) != plain:
        raise ValueError(f"{len(assignment)} assignment(s) for {plain} trial parameter(s)")
    text = json.dumps(trial_spec, sort_keys=True, separators=(",", ":"))
    for name, value in values.items():
        text = text.replace(f"${{trialParameters.{name}}}", value)
    run_spec = json.loads(text)
    run_spec.setdefault("metadata", {}).update(name=trial_name, namespace=namespace)
    return run_spec


def primary_container(run_spec: Mapping[str, Any], name: str = PRIMARY_CONTAINER) -> dict[str, Any]:
    for c in run_spec["spec"]["template"]["spec"]["containers"]:
        if c["name"] == name:
            return c
    raise KeyError(f"no container {name!r} in the trial spec")


# --- the pipeline's Katib backend --------------------------------------------------------------------

@dataclass
class KatibSweepResult:
    """What a Katib sweep hands on: the best trial's parameters and metrics."""

    primary_metric: str
    experiments: list[str]
    namespace: str
    best_experiment: str | None = None
    best_trial: str | None = None
    best_value: float | None = None
    #: The best trial's swept and search-space values (the job's training_parameters not included).
    parameters: dict[str, Any] = field(default_factory=dict)
    #: Objective (by its strategy) and additional metrics of the best trial.
    metrics: dict[str, float] = field(default_factory=dict)
    timed_out: bool = False
    deleted: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def katib_client(namespace: str | None = None, client_configuration: Any = None):
    """A ``KatibClient`` (in-cluster or kubeconfig credentials; or ``client_configuration``)."""
    from automl_vision.earlystopping.katib_sdk import import_katib

    katib = import_katib()
    kwargs: dict[str, Any] = {}
    if namespace:
        kwargs["namespace"] = namespace
    if client_configuration is not None:
        kwargs["client_configuration"] = client_configuration
    return katib.KatibClient(**kwargs)


def _conditions(experiment) -> set[str]:
    status = getattr(experiment, "status", None)
    return {c.type for c in (getattr(status, "conditions", None) or []) if str(c.status) == "True"}


def _created_at(experiment) -> datetime:
    ts = experiment.metadata.creation_timestamp
    if ts is None:
        return datetime.now(timezone.utc)
    if isinstance(ts, str):
        ts = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    return ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)


def _progress(exp, metric: str, maximize: bool) -> str:
    s = exp.status
    if s is None:
        return "waiting for the controller"
    parts = [f"{s.trials_succeeded or 0}/{exp.spec.max_trial_count} succeeded", f"{s.trials_running or 0} running"]
    for label, n in (("failed", s.trials_failed), ("early stopped", s.trials_early_stopped)):
        if n:
            parts.append(f"{n} {label}")
    best = _optimal(exp, metric, maximize)
    if best is not None:
        parts.append(f"best {metric} {best[1]:.4f} ({best[0]})")
    return ", ".join(parts)


def _optimal(exp, metric: str, maximize: bool) -> tuple[str, float, dict[str, float], dict[str, str]] | None:
    """(trial, objective value, metrics, assignments) of an Experiment's current optimal trial."""
    status = exp.status
    opt = getattr(status, "current_optimal_trial", None) if status is not None else None
    if opt is None or not opt.best_trial_name or opt.observation is None or not opt.observation.metrics:
        return None
    metrics: dict[str, float] = {}
    value = None
    for m in opt.observation.metrics:
        if m.name == metric:
            raw = m.max if maximize else m.min
            value = _float(raw)
            if value is not None:
                metrics[m.name] = value
        else:
            latest = _float(m.latest)
            if latest is not None:
                metrics[m.name] = latest
    if value is None:
        return None
    assignments = {a.name: a.value for a in opt.parameter_assignments or []}
    return opt.best_trial_name, value, metrics, assignments


def run_katib_sweep(job: JobSpec, *, name: str | None = None, namespace: str | None = None, client: Any = None,
                    cluster: ClusterSettings | None = None, poll_interval_s: float = 30.0, cleanup: bool = False,
                    echo: Callable[[str], None] = log.info) -> KatibSweepResult:
    """Run the job's sweep as Katib Experiments and return the best trial.

    Creates each Experiment, or re-attaches to it when one of that name with the same spec exists
    (a retried pipeline step); an Experiment of that name with another spec is an error. Waits
    until every Experiment succeeded or failed. ``limits.timeout_minutes`` counts from the first
    Experiment's creation (so a retry gets no fresh budget): when it is up, the best trial so far is
    read and the Experiments are deleted so no more trials start. When more entries than
    ``max_concurrent_trials`` exist, the Experiments run one after another. ``cleanup`` deletes them
    after reading the result.
    """
    experiments = experiments_from_job(job, name=name, namespace=namespace, cluster=cluster)
    check_experiments(experiments)
    client = client if client is not None else katib_client(namespace)
    namespace = namespace or client.namespace
    for exp in experiments:
        exp["metadata"]["namespace"] = namespace
    metric, maximize = job.task.primary_metric, job.task.maximize
    names = [e["metadata"]["name"] for e in experiments]
    total_parallel = sum(e["spec"]["parallelTrialCount"] for e in experiments)
    waves = [experiments] if total_parallel <= job.limits.max_concurrent_trials else [[e] for e in experiments]
    result = KatibSweepResult(metric, names, namespace)
    deadline: datetime | None = None
    timeout = job.limits.timeout_minutes * 60
    for wave in waves:
        existing = {e.metadata.name: e for e in client.list_experiments(namespace)}
        for exp in wave:
            exp_name = exp["metadata"]["name"]
            found = existing.get(exp_name)
            if found is not None:
                theirs = (found.metadata.annotations or {}).get(f"{ANNOTATION_PREFIX}spec-hash")
                if theirs != exp["metadata"]["annotations"][f"{ANNOTATION_PREFIX}spec-hash"]:
                    raise ConfigError(f"an Experiment {namespace}/{exp_name} exists and is not this job's (its spec "
                                      f"differs); delete it (kubectl delete experiment -n {namespace} {exp_name}) "
                                      "or choose another name")
                echo(f"{exp_name}: re-attaching to the existing Experiment")
            else:
                client.create_experiment(exp, namespace)
                echo(f"{exp_name}: created ({exp['spec']['maxTrialCount']} trials, "
                     f"{exp['spec']['parallelTrialCount']} at once, {exp['spec']['algorithm']['algorithmName']})")
        pending = [e["metadata"]["name"] for e in wave]
        shown: dict[str, str] = {}
        while pending:
            for exp_name in list(pending):
                exp = client.get_experiment(exp_name, namespace)
                created = _created_at(exp)
                deadline = created if deadline is None else min(deadline, created)
                line = _progress(exp, metric, maximize)
                if shown.get(exp_name) != line:
                    echo(f"{exp_name}: {line}")
                    shown[exp_name] = line
                done = _conditions(exp) & {"Succeeded", "Failed"}
                if done:
                    pending.remove(exp_name)
                    if "Failed" in done:
                        reason = next((c.message for c in exp.status.conditions if c.type == "Failed"), "")
                        echo(f"{exp_name}: failed: {reason}")
            if not pending:
                break
            if deadline is not None and (datetime.now(timezone.utc) - deadline).total_seconds() >= timeout:
                result.timed_out = True
                echo(f"sweep time limit of {job.limits.timeout_minutes} min reached; keeping the best trial so far")
                break
            time.sleep(poll_interval_s)
        if result.timed_out:
            break
    _read_best(client, experiments, namespace, metric, maximize, result)
    if result.timed_out or cleanup:
        for exp_name in names:
            if any(e.metadata.name == exp_name for e in client.list_experiments(namespace)):
                client.delete_experiment(exp_name, namespace)
        result.deleted = True
        echo(f"deleted {', '.join(names)}")
    if result.best_trial is None:
        raise AutoMLError(f"no trial of {', '.join(names)} reported {metric}; see kubectl get trials -n {namespace} "
                          f"-l katib.kubeflow.org/experiment={names[0]}")
    echo(f"best trial: {result.best_trial} ({result.best_experiment}), {metric} {result.best_value:.4f}")
    return result


def _read_best(client, experiments, namespace: str, metric: str, maximize: bool, result: KatibSweepResult) -> None:
    present = {e.metadata.name: e for e in client.list_experiments(namespace)}
    for exp_dict in experiments:
        exp_name = exp_dict["metadata"]["name"]
        if exp_name not in present:
            continue  # never started (a later wave after the time limit)
        best = _optimal(client.get_experiment(exp_name, namespace), metric, maximize)
        if best is None:
            continue
        trial, value, metrics, assignments = best
        better = result.best_value is None or (value > result.best_value if maximize else value < result.best_value)
        if not better:
            continue
        fixed = json.loads(exp_dict["metadata"]["annotations"][f"{ANNOTATION_PREFIX}fixed-parameters"])
        params = dict(fixed)
        for k, v in assignments.items():
            params[k] = hps.BY_NAME[k].coerce(v) if k in hps.BY_NAME else v
        result.best_experiment, result.best_trial, result.best_value = exp_name, trial, value
        result.parameters, result.metrics = params, metrics


# --- the pipeline's sweep step on Katib -----------------------------------------------------------

def experiment_base_name(text: str, prefix: str = "automl-") -> str:
    """A short Experiment name from any text (e.g. a pipeline run id): the same text gives the same name,
    so a retried step finds its Experiments again."""
    cleaned = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    digest = hashlib.sha256(text.encode()).hexdigest()[:6]
    return f"{prefix}{cleaned[:24].strip('-')}-{digest}" if cleaned else f"{prefix}{digest}"


def check_trial_outputs(cluster: ClusterSettings) -> str:
    """The cluster's ``trial_outputs``; raises ConfigError when it is not set (the Katib backend needs it)."""
    if not cluster.trial_outputs:
        raise ConfigError("the Katib backend needs the cluster setting trial_outputs: an s3://bucket/prefix where "
                          "each trial uploads its model, metrics and logs (the sweep step takes the best model from "
                          "there); set it in the cluster settings file (automl-vision compile --cluster-settings "
                          "FILE)", "sweep")
    return cluster.trial_outputs


def run_katib_backend(katib_job: JobSpec, run_dir, *, cluster: ClusterSettings, local_job: JobSpec | None = None,
                      name: str | None = None, namespace: str | None = None, client: Any = None,
                      poll_interval_s: float = 30.0, cleanup: bool = False, echo: Callable[[str], None] = print):
    """The pipeline's sweep step with the Katib backend: :func:`run_katib_sweep` over ``katib_job`` (whose
    data the trial pods read, placed by ``cluster``), whose trials upload their folders to
    ``<cluster.trial_outputs>/<experiment>/<trial>``; then every trial's record (result, config, metrics,
    logs) is downloaded into ``run_dir/trials/<trial>/`` and the best trial's model package into
    ``run_dir/best_model/``. Nothing is trained here. The run folder is the local sweep's (``job.yaml``
    of ``local_job``, default ``katib_job``; ``sweep.json``, the leaderboard) plus ``katib.json``.
    Returns the ``SweepResult``."""
    from pathlib import Path

    trial_outputs = check_trial_outputs(cluster)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    found = run_katib_sweep(katib_job, name=name, namespace=namespace, client=client, cluster=cluster,
                            poll_interval_s=poll_interval_s, cleanup=cleanup, echo=echo)
    (run_dir / "katib.json").write_text(json.dumps(found.to_json(), indent=2))
    experiments = experiments_from_job(katib_job, name=name, namespace=namespace, cluster=cluster)
    return collect_trials(katib_job, experiments, found, trial_outputs, run_dir, local_job=local_job, echo=echo)


def collect_trials(job: JobSpec, experiments: Sequence[Mapping[str, Any]], found: KatibSweepResult,
                   trial_outputs: str, run_dir, *, local_job: JobSpec | None = None,
                   echo: Callable[[str], None] = print):
    """Read back what the trials uploaded under ``trial_outputs``: each trial's record into
    ``run_dir/trials/<trial>/`` (not its model), the best trial's whole folder, its model packaged
    into ``run_dir/best_model/``; write ``job.yaml``, ``sweep.json`` and the leaderboard. Returns the
    ``SweepResult``."""
    from pathlib import Path

    from automl_vision.data.storage import download_prefix, list_prefixes
    from automl_vision.spec.job import resolved
    from automl_vision.sweep.local import SWEEP_FILE, SweepResult, _write_best_model, write_leaderboard
    from automl_vision.training.trial import OUTPUTS_DIR

    run_dir = Path(run_dir)
    task = job.task
    records = []
    for exp in experiments:
        exp_name = exp["metadata"]["name"]
        fixed = json.loads(exp["metadata"]["annotations"][f"{ANNOTATION_PREFIX}fixed-parameters"])
        swept = [p["name"] for p in exp["spec"]["parameters"]]
        where = trial_outputs_uri(trial_outputs, exp_name, "").rstrip("/")
        for trial in list_prefixes(where):
            folder = run_dir / "trials" / trial
            best = trial == found.best_trial
            download_prefix(f"{where}/{trial}", folder,
                            skip=None if best else (lambda rel: rel.startswith(f"{OUTPUTS_DIR}/")))
            records.append(_trial_record(trial, len(records), folder, task, fixed, swept))
    echo(f"read {len(records)} trial(s) back from {trial_outputs}")
    status = "finished"
    stopped = f"timeout_minutes={job.limits.timeout_minutes} reached" if found.timed_out else ""
    result = SweepResult(run_dir, task.primary_metric, task.maximize, records, status, stopped)
    shown = local_job or job
    (run_dir / "job.yaml").write_text(shown.to_yaml())
    (run_dir / "resolved_job.json").write_text(json.dumps(resolved(shown), indent=2))
    best = next((r for r in records if r.trial_id == found.best_trial), None)
    doc = {"format": 1, "backend": "katib", "status": status, "stopped_because": stopped,
           "primary_metric": task.primary_metric, "goal": "maximize" if task.maximize else "minimize",
           "best_trial": found.best_trial, "experiments": found.experiments, "namespace": found.namespace,
           "trial_outputs": trial_outputs, "job": job.model_dump(mode="json"),
           "trials": [t.to_json(task.primary_metric) for t in records]}
    (run_dir / SWEEP_FILE).write_text(json.dumps(doc, indent=1))
    write_leaderboard(result)
    source = trial_outputs_uri(trial_outputs, found.best_experiment or "", found.best_trial or "")
    if best is None or not _write_best_model(result, best):
        raise AutoMLError(f"Katib's best trial {found.best_trial} left no model package in {source}/{OUTPUTS_DIR}/ "
                          "(see its train.log there, and kubectl logs of its pod)")
    echo(f"best model: {found.best_trial} ({task.primary_metric} {found.best_value:.4f}) from {source}")
    return result


def _trial_record(trial: str, index: int, folder, task, fixed: Mapping[str, Any], swept: Sequence[str]):
    """A leaderboard record of one Katib trial from its downloaded folder."""
    from automl_vision.sweep.core import TrialRecord
    from automl_vision.training.reporter import read_metrics
    from automl_vision.training.trial import CONFIG_FILE, METRICS_FILE, TrialResult

    primary = task.primary_metric
    config = json.loads((folder / CONFIG_FILE).read_text()) if (folder / CONFIG_FILE).is_file() else {}
    values = config.get("hyperparameters", {})
    params = {**fixed, **{k: values[k] for k in swept if k in values}}
    rec = TrialRecord(trial, index, params)
    for row in read_metrics(folder / METRICS_FILE):
        if primary in row:
            rec.values.append(float(row[primary]))
            rec.epochs.append(int(row.get("epoch", len(rec.values))))
            rec.losses.append(row.get("loss"))
    result = TrialResult.read(folder)
    if result is None:
        rec.status, rec.reason = "failed", "the trial wrote no result.json (see its train.log)"
        return rec
    rec.status = result.status
    rec.best_value, rec.best_epoch = result.best_value, result.best_epoch
    rec.epochs_completed, rec.duration_s = result.epochs_completed, result.duration_s
    rec.reason = {"completed": f"completed its {result.epochs_completed} epoch(s)",
                  "early_stopped": f"stopped by its own early stopping after {result.epochs_completed} epoch(s)",
                  "terminated": f"stopped by Katib's early stopping after {result.epochs_completed} epoch(s)",
                  }.get(result.status, result.message)
    return rec
