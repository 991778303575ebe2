"""What Katib's admission webhook (and the suggestion and early-stopping services it consults)
would find wrong in an Experiment, plus our own checks; the embedded trial Job is validated with
``kubernetes-validate``. See docs/katib.md for the list.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from automl_vision.earlystopping import rules as es
from automl_vision.errors import AutoMLError, ConfigError
from automl_vision.sweep.katib.experiment import (
    API_VERSION,
    MAX_NAME_LENGTH,
    SERVICE_DISTRIBUTIONS,
    SUGGESTION_SERVICES,
)
from automl_vision.sweep.katib.trial import METADATA_KEYS, METADATA_REFERENCE, PARAMETER_PLACEHOLDER

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

_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
#: Characters that change meaning when Katib's StdOut collector runs the command through ``sh -c``.
_SHELL_UNSAFE = re.compile(r"[\s'\"`;&|<>()\\*?!#~]|\$(?!\{trialParameters\.)")


def as_float(text: Any) -> float | None:
    """``text`` as a number, or None (Katib sends every value as text)."""
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
            lo, hi, step = as_float(space["min"]), as_float(space["max"]), space.get("step")
            if lo is None or hi is None or not lo < hi:
                problems.append(f"{where}.feasibleSpace: min={space['min']} must be a number < max={space['max']}")
            if ptype == "int" and not all(re.fullmatch(r"[+-]?\d+", str(space[k])) for k in ("min", "max")):
                problems.append(f"{where}.feasibleSpace: int bounds must be whole numbers")
            if step is not None and not ((as_float(step) or 0) > 0):
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
            if ptype == "discrete" and any(as_float(v) is None for v in values):
                problems.append(f"{where}.feasibleSpace.list: discrete values must be numbers, got {values}")
    return problems

def _grid_points(spec: Mapping[str, Any]) -> int | None:
    total = 1
    for p in spec.get("parameters") or []:
        space = p.get("feasibleSpace") or {}
        if p.get("parameterType") in ("categorical", "discrete"):
            total *= len(space.get("list") or [])
        else:
            lo, hi, step = as_float(space.get("min")), as_float(space.get("max")), as_float(space.get("step") or 1)
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
    leftover = PARAMETER_PLACEHOLDER.findall(text)
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
    m = METADATA_REFERENCE.fullmatch(ref)
    if not m:
        return False
    key = m.group(1)
    sub = re.fullmatch(r"(.+)\[(.+)]", key)
    return key in METADATA_KEYS or bool(sub and sub.group(1) in METADATA_KEYS)

def _validate_job(job: Mapping[str, Any]) -> list[str]:
    try:
        import kubernetes_validate  # optional: the katib extra
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
