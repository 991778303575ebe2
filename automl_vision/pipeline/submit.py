"""Sending the pipeline to a Kubeflow Pipelines endpoint: one run, or a recurring run for retraining.

What is sent is the package ``compile`` writes (with the given cluster settings) and the job's
values as the run's parameters, so the run page in the Pipelines UI shows the job key by key.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

from automl_vision.errors import ConfigError
from automl_vision.pipeline.settings import ClusterSettings
from automl_vision.spec.job import JobSpec

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "automl-vision"
# robfig/cron (the scheduler behind recurring runs) also takes these descriptors
_DESCRIPTORS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
_FIELD = re.compile(r"^[0-9A-Za-z*?/,\-LW#]+$")
_FIELD_NAMES = ("second", "minute", "hour", "day of month", "month", "day of week")


@dataclass(frozen=True)
class Submitted:
    """What the endpoint answered."""

    kind: str  # run | recurring run
    id: str
    experiment_id: str
    url: str


def check_cron(expression: str) -> str:
    """A six-field cron expression (seconds first), as recurring runs take it; raises ConfigError otherwise."""
    text = " ".join(expression.split())
    if text in _DESCRIPTORS or text.startswith("@every "):
        return text
    fields = text.split(" ") if text else []
    if len(fields) != 6:
        hint = f"; for '{text}' at second 0 write '0 {text}'" if len(fields) == 5 else ""
        raise ConfigError(f"schedule={expression!r} has {len(fields)} field(s); a recurring run's cron has 6, "
                          f"seconds first ({', '.join(_FIELD_NAMES)}), e.g. '0 0 2 * * *' for 02:00 every day"
                          + hint, "--schedule")
    bad = [f"{name} {value!r}" for name, value in zip(_FIELD_NAMES, fields) if not _FIELD.match(value)]
    if bad:
        raise ConfigError(f"schedule={expression!r}: not a cron field: {', '.join(bad)}", "--schedule")
    return text


def run_name(job: JobSpec) -> str:
    return job.name or f"automl-vision-{job.task.value.replace('_', '-')}"


def submit(job: JobSpec, host: str, *, namespace: str | None = None, schedule: str | None = None,
           experiment: str = DEFAULT_EXPERIMENT, settings: ClusterSettings | None = None,
           service_account: str | None = None, device: str = "auto", backend: str = "local",
           inference_service: str | None = None) -> Submitted:
    """Compile the pipeline and start it on ``host`` (a run, or with ``schedule`` a recurring run);
    ``backend`` runs the sweep's trials in its pod (local) or as Katib Experiments (katib),
    ``inference_service`` deploys the packaged model as that KServe InferenceService."""
    from automl_vision.pipeline.pipeline import compile_pipeline, pipeline_arguments

    cron = check_cron(schedule) if schedule is not None else None
    for key in ("training_data", "validation_data"):
        value = getattr(job, key)
        if value and "://" not in value:
            log.warning("%s is a path on this machine (%s): the pipeline's pods read it as it is, so it must be "
                        "on the data volume of the cluster settings or in the image", key, value)
    arguments = pipeline_arguments(job, device=device, backend=backend, inference_service=inference_service)
    with tempfile.TemporaryDirectory(prefix="automl-vision-") as folder:
        package = str(compile_pipeline(Path(folder) / "pipeline.yaml", settings=settings))
        # kfp.Client prints links and warns about server versions; we say what happened ourselves.
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore", FutureWarning)
            client = _client(host, namespace)
            exp = client.create_experiment(experiment, namespace=namespace)
            if cron is None:
                run = client.run_pipeline(experiment_id=exp.experiment_id, job_name=run_name(job),
                                          pipeline_package_path=package, params=arguments,
                                          service_account=service_account)
                return Submitted("run", run.run_id, exp.experiment_id, f"{host.rstrip('/')}/#/runs/details/{run.run_id}")
            recurring = client.create_recurring_run(
                experiment_id=exp.experiment_id, job_name=run_name(job), cron_expression=cron,
                pipeline_package_path=package, params=arguments, max_concurrency=1, no_catchup=True,
                service_account=service_account)
    return Submitted("recurring run", recurring.recurring_run_id, exp.experiment_id,
                     f"{host.rstrip('/')}/#/recurringrun/details/{recurring.recurring_run_id}")


def _client(host: str, namespace: str | None):
    from kfp import Client

    # Client reads ~/.config/kfp/context.json for a namespace only when none is given
    return Client(host=host, namespace=namespace) if namespace else Client(host=host)
