"""Registering a run's model, promoting it, finding a version again, recording where it is deployed.

A registration is a sequence of requests that may fail anywhere; it is made safe to retry, never to
leave two versions for one run or a champion without a model:

1. the version of the run (found by its external id, else created with the run's metadata);
2. its model artifact (the package's URI; a local registry first copies the package in), unless it has one;
3. the gate's decision, stored on the version; a retry keeps the decision the first attempt stored;
4. when promoted, the registered model's champion and the version's label.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from automl_vision.data.storage import download_prefix
from automl_vision.errors import ConfigError
from automl_vision.serving.package import FORMAT_VERSION
from automl_vision.registry.gate import ChampionScore, GateDecision
from automl_vision.registry.store import CHAMPION_LABEL, Registry, RegistryError, VersionRecord, now_iso

log = logging.getLogger(__name__)

#: The registration's record in a run (the register step's output, read by the report).
REGISTRATION_FILE = "registration.json"


@dataclass
class Registration:
    """The outcome of registering one run."""

    registry: str
    record: VersionRecord
    decision: GateDecision
    created: bool  # False: the run's version existed (a retry, or the same run registered again)

    def to_json(self) -> dict[str, Any]:
        return {"registry": self.registry, "registered_model": self.record.model, "version": self.record.version,
                "uri": self.record.uri, "created": self.created, "champion": self.decision.promote,
                "decision": self.decision.to_json(), "metadata": self.record.metadata}

    def describe(self) -> str:
        verb = "registered" if self.created else "already registered"
        return (f"{self.record.model} version {self.record.version} {verb} in {self.registry}; "
                f"{'promoted to champion' if self.decision.promote else 'not promoted'}: {self.decision.reason}")


def register_run(registry: Registry, model: str, *, run_id: str, package_dir: str | os.PathLike,
                 metadata: Mapping[str, Any], decision: GateDecision, uri: str | None = None,
                 author: str = "automl-vision", override: bool = False,
                 echo: Callable[[str], None] = log.info) -> Registration:
    """Register the package of run ``run_id`` as a version of ``model`` and apply ``decision`` (the gate's,
    made against the champion the evaluate step scored). ``uri``: where the package is for those who deploy
    it (the object store); None: a local registry keeps a copy of ``package_dir``. ``override``: the
    decision replaces one an earlier registration of the run stored (a promotion by hand)."""
    if not run_id:
        raise ConfigError("registering needs the run's id (one version per run)")
    record = registry.find_run(model, run_id)
    created = record is None
    if uri is None and not registry.local and (record is None or not record.complete):
        raise ConfigError(f"the model registry {registry.location} records where a model is, it does not store it: "
                          "the package's URI in an object store is needed")
    if record is None:
        description = f"run {run_id}: {metadata.get('model_name', '')} for {metadata.get('task', '')}"
        record = registry.create_version(model, run_id, {**metadata, "run_id": run_id, "registered_at": now_iso()},
                                         author=author, description=description)
        echo(f"registry: created {model} version {record.version} for run {run_id}")
    if not record.complete:
        if uri is None:
            uri = registry.store_package(record, Path(package_dir))
        record = registry.attach_model(record, uri, str(FORMAT_VERSION))
        echo(f"registry: {model} version {record.version} holds the model at {record.uri}")
    kept = None if override else GateDecision.from_properties(record.metadata, decision.metric, decision.value)
    if kept is not None:
        decision = kept  # a retry: the gate decided in the first attempt, against the champion of that time
    else:
        current = registry.champion(model)
        if decision.promote and decision.champion_version and (current is None or current.version !=
                                                              decision.champion_version):
            now = f"version {current.version}" if current is not None else "none"
            decision = GateDecision(False, f"the champion changed while this run was evaluated (it compared with "
                                           f"version {decision.champion_version}; the champion is now {now}): not "
                                           "promoted; run the evaluation again to compare with it",
                                    decision.metric, decision.value, decision.champion_version,
                                    decision.champion_value, decision.margin_points)
        elif decision.promote and not override and not decision.champion_version and current is not None and \
                current.version != record.version:
            decision = GateDecision(False, f"a champion (version {current.version}) appeared while this run was "
                                           "evaluated: not promoted; run the evaluation again to compare with it",
                                    decision.metric, decision.value, margin_points=decision.margin_points)
        record = registry.update_metadata(record, decision.properties())
    if decision.promote and (not record.champion or CHAMPION_LABEL not in record.metadata):
        registry.set_champion(record)
        record = registry.get(model, record.version) or record
        echo(f"registry: {model} version {record.version} is the champion")
    return Registration(registry.location, record, decision, created)


def resolve_version(registry: Registry, model: str, which: str = "champion") -> VersionRecord:
    """The version ``which`` of ``model``: a version name, ``latest`` (the newest complete one) or
    ``champion``. Raises RegistryError naming what exists."""
    versions = registry.versions(model)
    if not versions:
        raise RegistryError(f"{registry.location} holds no registered model {model!r}")
    complete = [v for v in versions if v.complete]
    names = ", ".join(v.version + (" (champion)" if v.champion else "") for v in complete) or "none complete"
    if which == "latest":
        found = complete[-1] if complete else None
    elif which == "champion":
        found = next((v for v in complete if v.champion), None)
    else:
        found = next((v for v in complete if v.version == which), None)
    if found is None:
        raise RegistryError(f"{registry.location}: {model!r} has no {which!r} version (versions: {names})")
    return found


def record_deployment(registry: Registry, record: VersionRecord, *, name: str, namespace: str,
                      url: str | None) -> VersionRecord:
    """Note on the version where it is served (the InferenceService and its URL)."""
    return registry.update_metadata(record, {"deployed_inference_service": f"{namespace}/{name}",
                                             "deployed_url": url or "", "deployed_at": now_iso()})


def fetch_model(uri: str, dest: str | os.PathLike) -> Path:
    """A local folder holding the package at ``uri``: a local path as it is, an s3:// prefix downloaded
    into ``dest``."""
    if uri.startswith("s3://"):
        files = download_prefix(uri, dest)
        if not files:
            raise RegistryError(f"the registered model at {uri} is gone: nothing under that prefix")
        return Path(dest)
    if uri.startswith("minio://"):
        return fetch_model("s3://" + uri[len("minio://"):], dest)
    if "://" in uri and not uri.startswith("file://"):
        raise RegistryError(f"cannot read the registered model at {uri}: only s3:// URIs and local folders are read")
    path = Path(uri[len("file://"):] if uri.startswith("file://") else uri)
    if not path.is_dir():
        raise RegistryError(f"the registered model at {uri} is gone: no such folder")
    return path


def champion_score(registry: Registry, model: str, score: Callable[[Path], tuple[str, float | None]],
                   workdir: str | os.PathLike) -> ChampionScore | None:
    """Score the current champion of ``model`` with ``score(package folder) -> (metric, value)``; None
    without a champion."""
    champion = registry.champion(model)
    if champion is None:
        return None
    if not champion.uri:
        raise RegistryError(f"{registry.location}: the champion of {model!r} (version {champion.version}) has no "
                            "model artifact")
    folder = fetch_model(champion.uri, Path(workdir) / f"champion-{champion.version}")
    metric, value = score(folder)
    return ChampionScore(champion.version, metric, value, champion.uri)

