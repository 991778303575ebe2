"""What a model version records about the run that made it (its custom properties in the registry).

Every value is a string, a number or a boolean (what the registry's custom properties hold): the
hyperparameters are one JSON string; the evaluation's headline metrics are ``metric_<name>``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from automl_vision import __version__
from automl_vision.data.manifest import MANIFEST_FILE
from automl_vision.errors import ConfigError
from automl_vision.models.catalogue import default_model_size, weights_file
from automl_vision.serving.package import load_package
from automl_vision.spec.catalogue import MODELS
from automl_vision.spec.tasks import parse_task

#: In the run folder of a sweep on Katib: its Experiments and the one whose trial won.
KATIB_FILE = "katib.json"
#: A registered model's name: what the registry and Kubernetes labels accept alike.
_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$")


def registered_model_name(name: str, job_name: str = "", task: str = "") -> str:
    """The registered model of a job: ``name`` when given, else the job's name, else ``automl-vision-<task>``."""
    chosen = name or job_name or f"automl-vision-{parse_task(task).value.replace('_', '-')}"
    if not _NAME.match(chosen):
        raise ConfigError(f"registered model name {chosen!r}: up to 63 letters, digits, '.', '_' or '-', starting "
                          "and ending with a letter or digit")
    return chosen


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest_sha256(dataset: str | os.PathLike | None) -> str:
    """The content hash of the ingested data's Parquet manifest (a dataset folder or the file itself);
    '' when there is none to read."""
    if not dataset:
        return ""
    path = Path(dataset)
    path = path / MANIFEST_FILE if path.is_dir() else path
    return file_sha256(path) if path.is_file() else ""


def headline_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The evaluation's finite top-level numbers (per-class tables and curves left out)."""
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def licences(model_name: str, hyperparameters: Mapping[str, Any]) -> dict[str, str]:
    """The licences of the model's code and of the pretrained weights it started from (the catalogue's); the
    weights' file is looked up (torchvision's or timm's tables: torch) only for a fine-tuned model."""
    row = MODELS.get(model_name)
    if row is None:  # a model outside the catalogue: nothing known to state
        return {"code_licence": "unknown", "weights_licence": "unknown"}
    if not hyperparameters.get("pretrained"):
        return {"code_licence": row.code_licence, "weights_licence": "none (trained from scratch)",
                "pretrained_weights": ""}
    f = weights_file(f"{model_name}:{hyperparameters.get('model_size', default_model_size())}" if row.sizes
                     else model_name)
    return {"code_licence": f.code_licence or "unknown", "weights_licence": f.weights_licence or "unknown",
            "pretrained_weights": f.url}


def katib_experiment(run_dir: str | os.PathLike | None) -> str:
    """The Katib Experiment whose trial won ('' for a sweep that did not run on Katib)."""
    path = Path(run_dir) / KATIB_FILE if run_dir else None
    if path is None or not path.is_file():
        return ""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return ""
    return str(doc.get("best_experiment") or ",".join(doc.get("experiments") or []))


def version_metadata(package_dir: str | os.PathLike, *, metrics: Mapping[str, Any], run_id: str,
                     training_data: str = "", validation_data: str = "", dataset: str | os.PathLike | None = None,
                     pipeline_run_id: str = "", run_dir: str | os.PathLike | None = None, image: str = "",
                     job_name: str = "") -> dict[str, str | int | float | bool]:
    """A model version's custom properties: what the model is, how it scored, what data made it, which run."""
    package = load_package(package_dir, verify=False)
    task = package.task
    hyperparameters = {k: v for k, v in package.hyperparameters.items() if k != "preprocessing"}
    numbers = headline_metrics(metrics)
    primary = task.primary_metric
    out: dict[str, str | int | float | bool] = {
        "run_id": run_id,
        "job_name": job_name,
        "task": task.value,
        "model_name": package.model_name,
        "hyperparameters": json.dumps(hyperparameters, sort_keys=True, default=str),
        "primary_metric": primary,
        "primary_metric_value": numbers.get(primary, float("nan")),
        **{f"metric_{k}": v for k, v in sorted(numbers.items())},
        "training_data": training_data,
        "validation_data": validation_data or "(held-out split of training_data)",
        "data_manifest_sha256": manifest_sha256(dataset),
        "pipeline_run_id": pipeline_run_id,
        "katib_experiment": katib_experiment(run_dir),
        "image": image,
        "automl_vision_version": __version__,
        **licences(package.model_name, package.hyperparameters),
    }
    if not math.isfinite(float(out["primary_metric_value"])):
        out.pop("primary_metric_value")
    return out
