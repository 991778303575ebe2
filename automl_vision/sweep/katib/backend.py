"""The pipeline's Katib backend: the Experiments run with the Katib SDK on a cluster, and what the
trials uploaded read back into the local sweep's run folder.

- :func:`run_katib_sweep`: create (or re-attach to) the Experiments, wait, read the optimal trial; with
  ``limits.budget``, account the device-hours of their trials and stop new trials (and, once it is
  spent, the sweep) within it;
- :func:`run_katib_backend`: the pipeline's sweep step: the sweep, then every trial's record and
  the best trial's model read back from the trial outputs (:func:`collect_trials`).
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from automl_vision.data.storage import download_prefix, list_prefixes
from automl_vision.earlystopping.katib_sdk import import_katib
from automl_vision.errors import AutoMLError, ConfigError
from automl_vision.spec import hyperparameters as hps
from automl_vision.spec.cluster import ClusterSettings
from automl_vision.spec.job import JobSpec, resolved
from automl_vision.sweep.core import TrialRecord
from automl_vision.sweep.katib.checks import as_float, check_experiments
from automl_vision.sweep.katib.experiment import ANNOTATION_PREFIX, experiments_from_job
from automl_vision.sweep.katib.trial import check_trial_outputs, trial_outputs_uri, trial_placement
from automl_vision.training.reporter import read_metrics
from automl_vision.training.runfolder import CONFIG_FILE, METRICS_FILE, OUTPUTS_DIR, SWEEP_FILE

log = logging.getLogger(__name__)


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
    #: With ``limits.budget``: its figures in device-hours (budget, used, left, unit, estimate per trial,
    #: ``stopped_new_trials_at``: what was used when new trials were stopped, the lowered maxTrialCounts,
    #: ``spent``: the sweep ended with trials running). None without a budget.
    budget: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

def katib_client(namespace: str | None = None, client_configuration: Any = None):
    """A ``KatibClient`` (in-cluster or kubeconfig credentials; or ``client_configuration``)."""
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

def _utc(ts) -> datetime | None:
    if ts is None:
        return None
    if isinstance(ts, str):
        ts = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    return ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)

def _created_at(experiment) -> datetime:
    return _utc(experiment.metadata.creation_timestamp) or datetime.now(timezone.utc)

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
            value = as_float(raw)
            if value is not None:
                metrics[m.name] = value
        else:
            latest = as_float(m.latest)
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

    With ``limits.budget`` (device-hours) each poll also lists the Experiments' trials and counts what
    they used (:class:`_Budget`): when the trials Katib still starts and one more would not fit, each
    running Experiment's maxTrialCount is lowered (``edit_experiment_budget``) and no later Experiment
    is created; when the budget is spent while trials run, the sweep ends as at the time limit.
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
    budget = _Budget(job, cluster, echo) if job.limits.budget is not None else None
    started: list[str] = []  # the Experiments created or re-attached to
    spent = False
    for i, wave in enumerate(waves):
        if budget is not None and started:
            budget.read(client, started, namespace, done=started)
            if not budget.allows_another(datetime.now(timezone.utc)):
                echo(f"not creating {', '.join(e['metadata']['name'] for w in waves[i:] for e in w)}: {budget.why}")
                break
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
            started.append(exp_name)
        pending = [e["metadata"]["name"] for e in wave]
        shown: dict[str, str] = {}
        latest: dict[str, Any] = {}
        while pending:
            for exp_name in list(pending):
                exp = latest[exp_name] = client.get_experiment(exp_name, namespace)
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
            if budget is not None:
                budget.read(client, started, namespace, done=[n for n in started if n not in pending])
                spent = budget.poll(client, namespace, {n: latest[n] for n in pending}, datetime.now(timezone.utc))
                if spent:
                    break
            time.sleep(poll_interval_s)
        if result.timed_out or spent:
            break
    if budget is not None:
        budget.read(client, started, namespace, done=started)
        result.budget = budget.to_json(datetime.now(timezone.utc))
    _read_best(client, experiments, namespace, metric, maximize, result)
    if result.timed_out or spent or cleanup:
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

# --- the compute budget on Katib ----------------------------------------------------------------

#: Conditions of a Trial that has ended (Katib's Trial.IsCompleted).
TRIAL_ENDED = frozenset({"Succeeded", "Failed", "Killed", "EarlyStopped", "MetricsUnavailable"})


@dataclass(frozen=True)
class _TrialTime:
    """A Trial's wall time from its status: ``start`` (status.startTime, set when Katib's trial controller
    first sees it) to ``end`` (status.completionTime), ``end`` None while it has not ended."""

    start: datetime | None
    end: datetime | None
    ended: bool

    def seconds(self, now: datetime) -> float:
        if self.start is None:
            return 0.0
        return max(((self.end or now) - self.start).total_seconds(), 0.0)


def _trial_time(trial) -> _TrialTime:
    status = getattr(trial, "status", None)
    if status is None:
        return _TrialTime(None, None, False)
    start = _utc(status.start_time)
    ended = [c for c in status.conditions or [] if c.type in TRIAL_ENDED and str(c.status) == "True"]
    if not ended:
        return _TrialTime(start, None, False)
    end = _utc(status.completion_time)
    if end is None or (start is not None and end < start):
        # an early-stopped trial gets no completionTime from Katib: the time it ended is its condition's
        stamps = [_utc(c.last_transition_time or c.last_update_time) for c in ended]
        known = [t for t in [*stamps, _utc(status.last_reconcile_time)] if t is not None]
        end = max(known) if known else start
    return _TrialTime(start, end, True)


def _api_message(e: Exception) -> str:
    """The API server's message behind an SDK error (the SDK raises its own, naming only the object)."""
    cause = e.__cause__ or e.__context__
    body = getattr(cause, "body", None)
    if body:
        try:
            return json.loads(body)["message"]
        except (ValueError, KeyError, TypeError):
            return f"{e} ({getattr(cause, 'status', '')} {getattr(cause, 'reason', '')})".strip()
    return str(e)


class _Budget:
    """``limits.budget`` on Katib, in device-hours: each trial's wall time from its Trial object (startTime
    to completionTime, or now while it runs) times the devices it holds (its GPU; a CPU trial counts as
    one). A trial's cost is estimated as the median wall time of the trials that have ended.

    Katib has no budget of its own, and its webhook refuses a maxTrialCount that is not greater than the
    trials an Experiment has created: lowered as far as it goes, an Experiment still starts one more. So
    new trials are stopped as soon as, after those, one more trial would not fit."""

    def __init__(self, job: JobSpec, cluster: ClusterSettings | None, echo: Callable[[str], None]):
        gpus = trial_placement(job.compute, cluster).gpus
        self.hours = float(job.limits.budget)
        self.devices = max(gpus, 1)
        self.unit = "GPU-hours" if gpus else "trial-hours (hours of the CPU trial pods)"
        self.echo = echo
        self.trials: dict[str, list[_TrialTime]] = {}  # Experiment -> its trials, as last listed
        self.settled: set[str] = set()  # ended Experiments whose trials were listed since
        self.stopped_at: float | None = None  # device-seconds used when new trials were stopped
        self.estimate_then: float | None = None
        self.to_lower: list[str] = []  # Experiments whose maxTrialCount is still to be lowered
        self.lowered: dict[str, int] = {}
        self.spent = False
        self.why = ""

    def read(self, client, names: Sequence[str], namespace: str, done: Sequence[str]) -> None:
        """List the trials of the Experiments ``names`` (those ended and listed since: not again)."""
        for name in names:
            if name in self.settled:
                continue
            self.trials[name] = [_trial_time(t) for t in client.list_trials(name, namespace)]
            if name in done:
                self.settled.add(name)

    def figures(self, now: datetime) -> tuple[float, float, float | None, int, int]:
        """(device-seconds used, expected for the running trials until they end, one trial's estimate
        or None, running trials, ended trials)."""
        everything = [t for trials in self.trials.values() for t in trials]
        ended = [t.seconds(now) for t in everything if t.ended and t.start is not None]
        estimate = statistics.median(ended) * self.devices if ended else None
        used = sum(t.seconds(now) for t in everything) * self.devices
        running = [t for t in everything if not t.ended]
        left = sum(max(estimate - t.seconds(now) * self.devices, 0.0) for t in running) if estimate else 0.0
        return used, left, estimate, len(running), len(ended)

    def _created(self, name: str, exp) -> int:
        return max(int(getattr(exp.status, "trials", None) or 0), len(self.trials.get(name, [])))

    def allows_another(self, now: datetime) -> bool:
        """Whether one more trial fits (before a later Experiment is created)."""
        if self.stopped_at is not None:
            self.why = "new trials are stopped by the budget"
            return False
        used, left, estimate, _, _ = self.figures(now)
        budget = self.hours * 3600
        if used < budget and (estimate is None or used + left + estimate <= budget):
            return True
        self.stopped_at, self.estimate_then = used, estimate
        self.why = f"{_h(used)} of the budget of {self.hours:g} {self.unit} used" + (
            f", and a trial takes about {_h(estimate)}" if estimate is not None else "")
        return False

    def poll(self, client, namespace: str, running: Mapping[str, Any], now: datetime) -> bool:
        """One poll over the running Experiments (name -> as just read): stop new trials when one more
        would not fit; True when the budget is spent while trials still run (the sweep ends)."""
        used, left, estimate, busy, ended = self.figures(now)
        budget = self.hours * 3600
        more = busy > 0 or any(sum(t.ended for t in self.trials.get(n, [])) < (e.spec.max_trial_count or 0)
                               for n, e in running.items())
        if used >= budget and more:
            self.spent = True
            self.echo(f"compute budget of {self.hours:g} {self.unit} spent ({_h(used)} used) while trials still "
                      "run; keeping the best trial so far")
            return True
        if self.stopped_at is None and estimate is not None:
            still = [n for n, e in running.items() if self._created(n, e) < (e.spec.max_trial_count or 0)]
            if used + left + (len(still) + 1) * estimate > budget:
                self.stopped_at, self.estimate_then, self.to_lower = used, estimate, still
                after = f"after the {len(still)} trial(s) Katib still starts, " if still else ""
                self.echo(f"compute budget: {_h(used)} of {self.hours:g} {self.unit} used, {_h(left)} more expected "
                          f"for {busy} running trial(s), a trial takes about {_h(estimate)} (median of {ended} "
                          f"ended): {after}another would not fit; stopping new trials")
        for name in list(self.to_lower):
            self._lower(client, namespace, name, running.get(name))
        return False

    def _lower(self, client, namespace: str, name: str, exp) -> None:
        """Lower a running Experiment's maxTrialCount as far as Katib's webhook allows: one more than
        the trials it created (parallelTrialCount and maxFailedTrialCount may not be above it)."""
        if exp is None:  # it ended
            self.to_lower.remove(name)
            return
        spec = exp.spec
        created = self._created(name, exp)
        cap = created + 1
        if cap >= spec.max_trial_count:
            self.to_lower.remove(name)
            self.lowered[name] = spec.max_trial_count
            return
        change: dict[str, int] = {"max_trial_count": cap}
        if spec.parallel_trial_count is not None and spec.parallel_trial_count > cap:
            change["parallel_trial_count"] = cap
        if spec.max_failed_trial_count is not None and spec.max_failed_trial_count > cap:
            change["max_failed_trial_count"] = cap
        try:
            client.edit_experiment_budget(name, namespace, **change)
        except (RuntimeError, TimeoutError) as e:
            self.echo(f"{name}: could not lower maxTrialCount to {cap}: {_api_message(e)}; trying again at the "
                      "next poll")
            return
        self.to_lower.remove(name)
        self.lowered[name] = cap
        self.echo(f"{name}: maxTrialCount lowered from {spec.max_trial_count} to {cap} ({created} trial(s) created; "
                  "Katib takes no less than one more than created)")

    def to_json(self, now: datetime) -> dict[str, Any]:
        used, _, estimate, _, _ = self.figures(now)

        def hours(seconds: float | None) -> float | None:
            return None if seconds is None else round(seconds / 3600, 4)

        return {"budget": self.hours, "unit": self.unit, "used": hours(used),
                "left": hours(max(self.hours * 3600 - used, 0.0)), "devices_per_trial": self.devices,
                "trials": sum(len(t) for t in self.trials.values()), "estimate_per_trial": hours(estimate),
                "stopped_new_trials_at": hours(self.stopped_at), "estimate_when_stopped": hours(self.estimate_then),
                "max_trial_count": dict(self.lowered), "spent": self.spent}


def _h(seconds: float) -> str:
    return f"{seconds / 3600:.2f}"


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
    # torch (through the local sweep and the trial's files): not loaded where Experiments are only written
    from automl_vision.sweep.local import SweepResult, _write_best_model, write_leaderboard

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
    spend = found.budget
    if spend and (spend["spent"] or spend["stopped_new_trials_at"] is not None):
        stopped = (f"the budget of {spend['budget']:g} {spend['unit']} is spent: {spend['used']:.2f} used"
                   + ("; the trials still running were deleted" if spend["spent"]
                      else f"; no new trials after {spend['stopped_new_trials_at']:.2f}"))
    result = SweepResult(run_dir, task.primary_metric, task.maximize, records, status, stopped)
    shown = local_job or job
    (run_dir / "job.yaml").write_text(shown.to_yaml())
    (run_dir / "resolved_job.json").write_text(json.dumps(resolved(shown), indent=2))
    best = next((r for r in records if r.trial_id == found.best_trial), None)
    doc = {"format": 1, "backend": "katib", "status": status, "stopped_because": stopped,
           "primary_metric": task.primary_metric, "goal": "maximize" if task.maximize else "minimize",
           "best_trial": found.best_trial, "experiments": found.experiments, "namespace": found.namespace,
           "trial_outputs": trial_outputs, "budget": found.budget, "job": job.model_dump(mode="json"),
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
    from automl_vision.training.trial import TrialResult  # torch: as collect_trials

    primary = task.primary_metric
    config = json.loads((folder / CONFIG_FILE).read_text()) if (folder / CONFIG_FILE).is_file() else {}
    values = config.get("hyperparameters", {})
    params = {**fixed, **{k: values[k] for k in swept if k in values}}
    rec = TrialRecord(trial, index, params, model=values.get("model_name") or fixed.get("model_name"))
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
