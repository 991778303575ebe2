"""The trial contract: what a Katib trial pod is and does.

- :func:`trial_placement` / :func:`trial_job`: the trial pod from the cluster settings, the job's
  ``compute`` overriding them key by key; :func:`trial_command` is the command it runs (the local
  sweep's ``automl-vision train``, its metrics printed for Katib's StdOut collector); with
  ``trial_outputs`` each trial uploads its folder to :func:`trial_outputs_uri`.
- :func:`sample_assignment` / :func:`substitute_trial`: a trial's parameter values drawn as Katib's
  random suggestion draws them, and the trial's Job exactly as Katib's controller builds it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from automl_vision.errors import ConfigError
from automl_vision.spec.cluster import SHM_PATH, ClusterSettings, DataVolume, GpuPool, Toleration
from automl_vision.spec.job import Compute, JobSpec
from automl_vision.sweep.command import trial_arguments

PRIMARY_CONTAINER = "training-container"
#: The trial container's working directory (an emptyDir); the trial writes ``outputs/`` there.
WORK_DIR = "/tmp/automl-vision"
OUTPUT_DIR = "outputs"
#: Memory a trial's training process needs beside its /dev/shm (Python, torch, the CUDA context, the model,
#: batches in flight); a memory-backed /dev/shm is charged to the container, so memory >= shm + this.
TRIAL_PROCESS_MEMORY = "4Gi"
#: The trial parameter Katib fills with the trial's own name (a metadata reference: no search-space entry).
TRIAL_NAME_PARAMETER = "trialName"
TRIAL_NAME_REFERENCE = "${trialSpec.Name}"
#: A trial parameter's placeholder in the trialSpec, and a reference to the trial's own metadata.
PARAMETER_PLACEHOLDER = re.compile(r"\$\{trialParameters\..+?\}")
METADATA_REFERENCE = re.compile(r"\$\{trialSpec\.(.+?)\}")
METADATA_KEYS = ("Name", "Namespace", "Kind", "APIVersion", "Labels", "Annotations")


# --- the trial pod ---------------------------------------------------------------------------------

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
    volume = placement.data_volume
    if volume is not None and volume.mount_path.rstrip("/") == WORK_DIR:
        raise ConfigError(f"data_volume.mount_path={volume.mount_path!r} is the trial's working directory; mount the "
                          "data elsewhere, e.g. /data")
    return placement

def _check_memory(p: TrialPlacement, compute: Compute) -> None:
    from kubernetes.utils import parse_quantity  # optional: the katib extra

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

def check_trial_outputs(cluster: ClusterSettings) -> str:
    """The cluster's ``trial_outputs``; raises ConfigError when it is not set (the Katib backend needs it)."""
    if not cluster.trial_outputs:
        raise ConfigError("the Katib backend needs the cluster setting trial_outputs: an s3://bucket/prefix where "
                          "each trial uploads its model, metrics and logs (the sweep step takes the best model from "
                          "there); set it in the cluster settings file (automl-vision compile --cluster-settings "
                          "FILE)", "sweep")
    return cluster.trial_outputs

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
        "volumeMounts": [{"name": "dshm", "mountPath": SHM_PATH}, {"name": "workdir", "mountPath": WORK_DIR}],
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


# --- what Katib does with it ---------------------------------------------------------------------

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
        meta = METADATA_REFERENCE.fullmatch(ref)
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
