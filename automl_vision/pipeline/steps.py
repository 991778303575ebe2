"""What the components call beyond one library function: the sweep step's choice of backend, the ROC
points of the evaluate step's ClassificationMetrics artifact, the validation data evaluate scores (and
the report step reads back), the deploy step's storage URI.

Plain functions without kfp, so that a test calls them as they are; the components in
``components.py`` stay an import, this call and the writing of their outputs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from pydantic import ValidationError

from automl_vision.errors import ConfigError
from automl_vision.spec.cluster import ClusterSettings
from automl_vision.spec.job import parse_job
from automl_vision.sweep.katib import experiment_base_name, run_katib_backend

#: The sweep step's backends: ``local`` runs the trials one after another in the step's own pod;
#: ``katib`` runs them as Katib Experiments (one trial pod each, which uploads its folder to object storage).
SWEEP_BACKENDS = ("local", "katib")
#: At most this many points of an ROC curve go into the ClassificationMetrics artifact: the Pipelines
#: UI draws every point it is given, and the artifact's metadata is stored with the run.
ROC_POINTS = 200


def check_sweep_backend(backend: str) -> str:
    """``backend`` if it is one of ``SWEEP_BACKENDS``; raises ConfigError otherwise."""
    if backend not in SWEEP_BACKENDS:
        raise ConfigError(f"backend={backend!r} is not a sweep backend; use one of: {', '.join(SWEEP_BACKENDS)}",
                          "sweep")
    return backend


def _check_katib_inputs(katib_training_data: str, experiment_name: str, run_id: str, cluster) -> None:
    problems = []
    if not katib_training_data:
        problems.append("backend='katib' needs katib_training_data: a URI of the training JSONL the trial pods "
                        "can read (the pipeline passes its training_data)")
    if not experiment_name and not run_id:
        problems.append("backend='katib' needs experiment_name, or run_id to derive it from "
                        "(the pipeline passes its run's id)")
    if not cluster.trial_outputs:
        problems.append("backend='katib' needs the cluster setting trial_outputs: an s3://bucket/prefix where each "
                        "trial uploads its model, metrics and logs (the sweep step takes the best model from there); "
                        "set it in the cluster settings file (automl-vision compile --cluster-settings FILE)")
    if problems:
        raise ConfigError(problems, "sweep")


def check_compiled_backend(backend: str, compiled_for: str) -> None:
    """Refuse a run whose backend is not the one the pipeline placed its sweep step for when compiled
    (``compiled_for``; '' : not checked): for ``katib`` the step waits on a CPU node with no GPU, for
    ``local`` it trains on the GPU pool."""
    if not compiled_for or backend == compiled_for:
        return
    why = ("its sweep step holds a GPU of the pool, which Katib's trial pods would wait for" if compiled_for == "local"
           else "its sweep step runs on a CPU node without a GPU, where the local backend would train")
    raise ConfigError(f"backend={backend!r}, but this pipeline was compiled for backend {compiled_for!r}: {why}; "
                      f"compile it for {backend} (automl-vision compile --backend {backend}, or "
                      f"compile_pipeline(..., backend={backend!r}))", "sweep")


def cluster_settings(cluster: str | Mapping[str, Any] | None):
    """The ``ClusterSettings`` a step was given, as JSON text (what the pipeline bakes in: a kfp constant
    cannot hold the settings' nulls) or a mapping; empty: the defaults."""
    try:
        data = json.loads(cluster) if isinstance(cluster, str) and cluster.strip() else dict(cluster or {})
    except json.JSONDecodeError as e:
        raise ConfigError(f"not valid JSON: {e}", "sweep: cluster") from None
    try:
        return ClusterSettings.model_validate(data)
    except ValidationError as e:
        raise ConfigError([f"{'.'.join(str(p) for p in err['loc']) or 'cluster'}: {err['msg']}"
                           for err in e.errors(include_url=False)], "sweep: cluster") from None


def run_sweep_step(job: Mapping[str, Any], run_dir: str | os.PathLike, *, backend: str = "local",
                   katib_training_data: str = "", katib_validation_data: str = "", experiment_name: str = "",
                   katib_namespace: str = "", run_id: str = "", device: str = "auto",
                   cluster: str | Mapping[str, Any] | None = None, compiled_for: str = "",
                   poll_interval_s: float = 30.0, echo: Callable[[str], None] = print):
    """The sweep step: ``job`` (the job's keys, ``training_data`` the ingested manifest) swept with
    ``backend`` into ``run_dir``; returns the ``SweepResult`` (leaderboard, ``best_model/``).

    With ``katib``, the Experiments read ``katib_training_data`` / ``katib_validation_data`` (URIs the
    trial pods can read), are named ``experiment_name`` (default: derived from ``run_id``, so a retried
    step re-attaches to them) in ``katib_namespace`` (default: the Katib client's, in a pod its own
    namespace); their trial pods are placed by ``cluster`` (``ClusterSettings`` as JSON or a mapping: images,
    GPU pool, storage Secret, data volume, weights) under the job's ``compute``, and upload their folders
    to its ``trial_outputs``, from where the records and the best model are read back (nothing is
    trained in this step). ``compiled_for``: the backend the pipeline placed this step for.
    """
    settings = cluster_settings(cluster)
    if check_sweep_backend(backend) == "katib":
        _check_katib_inputs(katib_training_data, experiment_name, run_id, settings)
    check_compiled_backend(backend, compiled_for)
    local_job = parse_job(job, source="sweep")
    if backend == "local":
        from automl_vision.sweep.local import run_sweep  # torch: only the local backend trains here

        # onnx: the package step exports the model the evaluate step scored; an AutoMode job is sized by
        # the ingested data there (its space, starting point and final training)
        return run_sweep(local_job, run_dir, device=device, echo=echo, onnx=False)
    if local_job.automode:
        # AutoMode's space from the ingested data, for the Experiments and the run folder alike
        from automl_vision.sweep.automode import describe_space, fingerprint_of, prepare_automode  # reads the data

        automode = prepare_automode(local_job, fingerprint_of(local_job))
        local_job = automode.job
        echo(describe_space(automode))
        job = {**dict(job), "search_space": local_job.to_dict()["search_space"],
               "sweep": local_job.to_dict()["sweep"]}
    katib_job = parse_job({**job, "training_data": katib_training_data,
                           "validation_data": katib_validation_data or None}, source="sweep (katib)")
    return run_katib_backend(katib_job, run_dir, cluster=settings, local_job=local_job,
                             name=experiment_name or experiment_base_name(run_id),
                             namespace=katib_namespace or None, poll_interval_s=poll_interval_s, echo=echo)


#: The held-out split in the ingest step's ``validation`` output (written when no validation data is given).
VALIDATION_SPLIT_FILE = "validation.jsonl"


def validation_jsonl(validation_data: str, validation_split: str | os.PathLike) -> str:
    """The labelled JSONL the evaluate step scores: the job's ``validation_data`` when given, else the
    held-out split in the ingest step's ``validation`` output folder."""
    return validation_data or os.path.join(validation_split, VALIDATION_SPLIT_FILE)


def storage_uri(artifact_uri: str) -> str:
    """Where KServe's storage initializer can fetch an artifact: Kubeflow Pipelines names artifacts in
    its bundled MinIO ``minio://bucket/key``, a scheme the initializer does not know; MinIO speaks S3, so
    that is ``s3://bucket/key`` (the serving account's Secret gives the endpoint). Other URIs pass as they are."""
    return "s3://" + artifact_uri[len("minio://"):] if artifact_uri.startswith("minio://") else artifact_uri


def roc_curve_points(targets: np.ndarray, probs: np.ndarray, max_points: int = ROC_POINTS
                     ) -> tuple[list[float], list[float], list[float]] | None:
    """The micro-averaged one-vs-rest ROC curve of (N, C) 0/1 ``targets`` and ``probs``: every
    (image, class) pair is one binary decision. Returns (fpr, tpr, threshold), at most ``max_points``
    points from (0, 0) to (1, 1), or None when the curve is undefined (no positive or no negative pair).

    The points are scikit-learn's ``roc_curve`` (collinear points already dropped), thinned evenly
    along the curve's length; the first threshold (above every score: infinite) is written as 1.0,
    since the artifact's metadata is JSON and the UI needs a number.
    """
    from sklearn.metrics import roc_curve  # heavy: only the evaluate step draws a curve

    y = np.asarray(targets, dtype=np.float64).ravel() > 0.5
    scores = np.asarray(probs, dtype=np.float64).ravel()
    if y.size == 0 or y.all() or not y.any():
        return None
    fpr, tpr, thresholds = roc_curve(y, scores)
    if len(fpr) > max_points:
        # fpr + tpr grows along the curve from 0 to 2: equal steps of it spread the kept points evenly
        along = fpr + tpr
        keep = np.unique(np.searchsorted(along, np.linspace(0.0, along[-1], max_points), side="left"))
        keep[-1] = len(fpr) - 1
        fpr, tpr, thresholds = fpr[keep], tpr[keep], thresholds[keep]
    thresholds = np.minimum(thresholds, 1.0)
    return [float(x) for x in fpr], [float(x) for x in tpr], [float(x) for x in thresholds]


def classification_roc(task, data: str | os.PathLike, predictions: str | os.PathLike, max_points: int = ROC_POINTS
                       ) -> tuple[list[float], list[float], list[float]] | None:
    """:func:`roc_curve_points` of a classification predictions file (the evaluate step's
    ``predictions.jsonl``) against the labelled ``data``; None for other tasks."""
    from automl_vision.evaluation.scoring import score_classification  # torch: only the evaluate step scores

    if not task.is_classification:
        return None
    _, scores = score_classification(task, data, predictions)
    return roc_curve_points(scores.targets, scores.probs, max_points)
