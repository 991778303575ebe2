"""The pipeline's registry work: the evaluate step scores the champion beside the new model, the register
step records the run's version and applies the gate (``automl_vision.registry``).

Where the records go (the pipeline's ``registry`` parameter): an http(s) URL is a Kubeflow Model
Registry; a folder a local registry (what ``automl-vision run`` uses by default, beside the run folder);
'' none: nothing is registered, there is no champion, and every run counts as promoted (a deploy step
deploys it, as before registries).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from automl_vision.errors import ConfigError
from automl_vision.registry.gate import DEFAULT_MARGIN_POINTS, ChampionScore, GateDecision, decide
from automl_vision.registry.records import registered_model_name, version_metadata
from automl_vision.registry.register import (REGISTRATION_FILE, Registration, champion_score, record_deployment,
                                             register_run, resolve_version)
from automl_vision.registry.store import open_registry, read_token
from automl_vision.serving.package import load_package

log = logging.getLogger(__name__)

#: In the evaluate step's output: its metrics (``report.evaluation.METRICS_FILE``; that module loads torch, which
#: the register step does without).
METRICS_FILE = "metrics.json"
#: In the evaluate step's output: the champion's score on the same validation data (and its files in champion/).
CHAMPION_FILE = "champion.json"
CHAMPION_DIR = "champion"
#: The environment variable naming a file with the registry's bearer token (else the client reads the pod's
#: service account token itself).
TOKEN_FILE_ENV = "AUTOML_VISION_REGISTRY_TOKEN_FILE"


def _token() -> str | None:
    return read_token(os.environ.get(TOKEN_FILE_ENV))


def score_champion(registry: str, model: str, data: str | os.PathLike, evaluation_dir: str | os.PathLike,
                   *, task: str, echo: Callable[[str], None] = log.info) -> ChampionScore | None:
    """Score the champion of ``model`` in ``registry`` on ``data`` (what the new model was scored on) into
    ``evaluation_dir/champion/`` and write ``champion.json``; None (and no file) without a registry or a
    champion. The champion must be a model of the same ``task``."""
    if not registry:
        return None
    store = open_registry(registry, token=_token())
    out = Path(evaluation_dir)

    def score(folder: Path) -> tuple[str, float | None]:
        # the serving engine (torch, seconds to import): only to score a champion; the register step needs none
        from automl_vision.pipeline.evaluate import evaluate_model

        package = load_package(folder)
        if package.task.value != task:
            raise ConfigError(f"the champion of the registered model {model!r} is a model for {package.task.value}, "
                              f"this run's is for {task}: register this job under another name (the pipeline's "
                              "registered_model parameter)")
        result = evaluate_model(folder, data, out / CHAMPION_DIR, explain_images=0)
        return package.task.primary_metric, result.primary

    with tempfile.TemporaryDirectory(prefix="champion-") as work:
        found = champion_score(store, model, score, work)
    if found is None:
        echo(f"registry: {model} has no champion in {store.location}; this run's model will be the first")
        return None
    (out / CHAMPION_FILE).write_text(json.dumps({"version": found.version, "metric": found.metric,
                                                 "value": found.value, "uri": found.uri}, indent=2))
    echo(f"registry: the champion, {model} version {found.version}, scores {found.metric} "
         f"{'none' if found.value is None else f'{found.value:.4f}'} on the same data")
    return found


def register_model_step(registry: str, model: str, package_dir: str | os.PathLike,
                        evaluation_dir: str | os.PathLike, out_dir: str | os.PathLike, *, run_id: str,
                        package_uri: str | None = None, margin_points: float = DEFAULT_MARGIN_POINTS,
                        training_data: str = "", validation_data: str = "", dataset: str | None = None,
                        run_dir: str | None = None, image: str = "", job_name: str = "",
                        echo: Callable[[str], None] = log.info) -> dict[str, Any]:
    """The register step: the run's version in ``registry`` with its metadata and the gate's decision
    against the champion the evaluate step scored; writes ``out_dir/registration.json`` and returns it.
    ``package_uri``: the package in the object store (what a Kubeflow Model Registry records); a local
    registry copies ``package_dir``."""
    evaluation_dir = Path(evaluation_dir)
    metrics = json.loads((evaluation_dir / METRICS_FILE).read_text())
    package = load_package(package_dir, verify=False)
    metric = package.task.primary_metric
    value = metrics.get(metric)
    value = float(value) if isinstance(value, (int, float)) else None
    champion_file = evaluation_dir / CHAMPION_FILE
    champion = ChampionScore.from_json(json.loads(champion_file.read_text())) if champion_file.is_file() else None
    decision = decide(metric, value, champion, margin_points)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not registry:
        doc = {"registry": "", "registered_model": model, "version": "", "champion": True,
               "decision": GateDecision(True, "no registry given: nothing registered, no gate", metric, value,
                                        margin_points=margin_points).to_json()}
        echo("registry: none given (the pipeline's registry parameter): nothing registered")
    else:
        store = open_registry(registry, token=_token())
        metadata = version_metadata(package_dir, metrics=metrics, run_id=run_id, training_data=training_data,
                                    validation_data=validation_data, dataset=dataset, pipeline_run_id=run_id,
                                    run_dir=run_dir, image=image, job_name=job_name)
        uri = package_uri if package_uri and not store.local else None
        done: Registration = register_run(store, model, run_id=run_id, package_dir=package_dir, metadata=metadata,
                                          decision=decision, uri=uri, echo=echo)
        doc = done.to_json()
        echo(done.describe())
    tmp = out / (REGISTRATION_FILE + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    os.replace(tmp, out / REGISTRATION_FILE)
    return doc


def deployed_in_registry(registry: str, model: str, version: str, *, name: str, namespace: str,
                         url: str | None) -> None:
    """Record on the version where the deploy step serves it (nothing without a registry)."""
    if not registry or not version:
        return
    store = open_registry(registry, token=_token())
    record = resolve_version(store, model, version)
    record_deployment(store, record, name=name, namespace=namespace, url=url)


__all__ = ["CHAMPION_FILE", "TOKEN_FILE_ENV", "deployed_in_registry", "register_model_step",
           "registered_model_name", "score_champion"]
