"""Where a job's pods run on a cluster: the Kubernetes shapes a job's ``compute`` and the cluster
settings share (tolerations, a data volume), and the cluster settings themselves (images, the GPU
node pool, the object-store Secret, where Katib trials upload their outputs).

Settings of the cluster, not of the job: the same job runs on any cluster. They are fixed when the
pipeline is compiled (``automl-vision compile --cluster-settings FILE``); the defaults describe an
AKS-style pool of NC/ND-series GPU nodes (see docs/kubeflow.md). Only ``registry`` has no usable
default: a pipeline compiled for a cluster must name images the cluster can pull.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from automl_vision import __version__
from automl_vision.errors import ConfigError

#: The images built from images/ carry the package version in their tag, so a step never runs
#: other library code than the one that compiled the pipeline. Katib trials run the GPU image (the
#: CPU image for CPU trials) unless the job's ``compute.image`` names another (``sweep.katib.trial_placement``).
CPU_IMAGE_NAME, GPU_IMAGE_NAME = "automl-vision-cpu", "automl-vision-gpu"
#: The weights location every step and trial reads (the ``--weights`` default of ``train``).
WEIGHTS_ENV = "AUTOML_VISION_WEIGHTS"
#: The registry the committed pipeline (pipelines/) names: the ``.invalid`` top-level domain never
#: resolves (RFC 2606), so a cluster that runs that file unchanged fails to pull with this name in
#: the error, instead of pulling some other ``automl-vision-cpu`` from Docker Hub.
PLACEHOLDER_REGISTRY = "your-registry.invalid"
#: An example of the ``registry`` key, for the messages that ask for it.
REGISTRY_EXAMPLE = "registry.example.com/ml"

#: The memory-backed /dev/shm every training pod (pipeline step, Katib trial) mounts.
SHM_PATH = "/dev/shm"
#: Kubernetes resource quantities ("4", "500m", "16Gi"), the API server's own pattern.
QUANTITY_PATTERN = r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"
#: A DNS subdomain name (RFC 1123): the names of PersistentVolumeClaims, Secrets, service accounts.
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"
# Kubernetes quantities of the cluster settings: CPU as cores or millicores ("3", "2.5", "500m"), memory
# in bytes with an optional binary or decimal suffix ("16Gi", "512Mi", "8G").
_CPU = r"^(\d+(\.\d+)?|\d+m)$"
_MEMORY = r"^\d+(\.\d+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$"
_SUFFIX = {"": 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9,
           "T": 10**12, "m": Decimal("0.001")}
# Label keys and values (k8s.io/apimachinery validation: IsQualifiedName, IsValidLabelValue).
_NAME_PART = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_DNS_SUBDOMAIN = re.compile(DNS_SUBDOMAIN_PATTERN)


def quantity(value: str) -> Decimal:
    """A Kubernetes quantity as a number: cores for CPU ("500m" -> 0.5), bytes for memory ("1Ki" -> 1024)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([A-Za-z]*)", value)
    if match is None or match.group(2) not in _SUFFIX:
        raise ValueError(f"{value!r} is not a Kubernetes quantity such as 500m, 3, 512Mi or 16Gi")
    return Decimal(match.group(1)) * _SUFFIX[match.group(2)]


def _qualified_name_problem(key: str) -> str | None:
    """Why ``key`` is not a Kubernetes qualified name (``[prefix/]name``), or None."""
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix)):
        return "its prefix (before '/') must be a DNS subdomain such as example.com"
    if len(name) > 63 or not _NAME_PART.fullmatch(name):
        return ("its name (after any prefix/) must be 63 characters or less, of letters, digits, '-', '_' and '.', "
                "beginning and ending with a letter or digit")
    return None


class Toleration(BaseModel):
    """A Kubernetes toleration, so pods may run on tainted (e.g. GPU) nodes; checked as the API server
    checks a pod's tolerations."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str | None = None
    operator: Literal["Equal", "Exists"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _as_kubernetes_checks_it(self) -> Toleration:
        problems = []
        if self.key:
            why = _qualified_name_problem(self.key)
            if why:
                problems.append(f"key={self.key!r} is not a valid taint key: {why}")
        elif self.operator != "Exists":
            problems.append("a toleration without a key matches every taint and needs operator Exists")
        if self.operator == "Exists" and self.value:
            problems.append(f"value={self.value!r}: a toleration with operator Exists takes no value")
        if self.operator == "Equal" and self.value and (len(self.value) > 63 or not _NAME_PART.fullmatch(self.value)):
            problems.append(f"value={self.value!r} is not a valid taint value: 63 characters or less, of letters, "
                            "digits, '-', '_' and '.', beginning and ending with a letter or digit")
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            problems.append("toleration_seconds needs effect NoExecute (only NoExecute taints evict running pods)")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class DataVolume(BaseModel):
    """A PersistentVolumeClaim mounted into the training pods, e.g. the one holding the dataset."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    claim_name: str = Field(pattern=DNS_SUBDOMAIN_PATTERN)
    mount_path: str = Field(pattern=r"^/", description="Absolute path inside the container.")
    read_only: bool = True

    @field_validator("mount_path")
    @classmethod
    def _not_a_path_the_pod_mounts(cls, value: str) -> str:
        # a container's mount paths must be unique, and every training pod mounts its /dev/shm
        if value.rstrip("/") == SHM_PATH:
            raise ValueError(f"{value!r} is a path the training pods mount themselves; mount the data elsewhere, "
                             "e.g. /data")
        return value


class GpuPool(BaseModel):
    """The node pool GPU steps run on, and what they ask of it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    accelerator_type: str = Field("nvidia.com/gpu", description="Extended resource name of the GPU.")
    accelerator_limit: int = Field(1, ge=1, le=16, description="GPUs per GPU step.")
    # AKS labels GPU nodes with their accelerator; NC/ND pools are usually tainted sku=gpu:NoSchedule
    # so that nothing else lands on them, and the NVIDIA device plugin's own taint may be set too.
    node_selector: dict[str, str] = Field(default_factory=lambda: {"kubernetes.azure.com/accelerator": "nvidia"})
    tolerations: list[Toleration] = Field(default_factory=lambda: [
        Toleration(key="sku", operator="Equal", value="gpu", effect="NoSchedule"),
        Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule"),
    ])
    # Requests of every GPU step and Katib trial (Guaranteed/Burstable QoS, never BestEffort); the
    # defaults fit the allocatable capacity of the smallest GPU VM size of docs/kubeflow.md.
    cpu: str = Field("3", pattern=_CPU, description="CPU request of each GPU step and trial.")
    memory: str = Field("16Gi", pattern=_MEMORY, description="Memory request of each GPU step and trial.")
class StepResources(BaseModel):
    """Requests of the CPU steps (ingest, preview, report, package, deploy, and a Katib sweep's launcher)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cpu: str = Field("1", pattern=_CPU)
    memory: str = Field("4Gi", pattern=_MEMORY)


class StorageSecret(BaseModel):
    """The Kubernetes Secret holding the object-store credentials (generated by ``kubectl apply -k manifests/`` from manifests/pipeline/storage.env)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "automl-vision-storage"
    # Secret key -> environment variable; the data layer reads the AWS names.
    keys: dict[str, str] = Field(default_factory=lambda: {
        "AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
        "AWS_ENDPOINT_URL": "AWS_ENDPOINT_URL",
    })


class ClusterSettings(BaseModel):
    """Everything about the cluster the compiled pipeline bakes in."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    registry: str = Field("", pattern=r"^([a-z0-9.\-:]+(/[a-z0-9._\-]+)*)?$",
                          description="Where the images were pushed, e.g. registry.example.com/ml; required to "
                                      "compile for a cluster ('': plain names, which only the local runner takes).")
    gpu: GpuPool | None = Field(default_factory=GpuPool, description="null: every step runs on CPU nodes.")
    storage_secret: StorageSecret | None = Field(default_factory=StorageSecret,
                                                 description="null: the steps get no object-store credentials.")
    data_volume: DataVolume | None = Field(None, description="null: training_data is read from object storage "
                                                             "or a path the image already has.")
    cpu_steps: StepResources = Field(default_factory=StepResources)
    weights: str | None = Field(None, description="Where pretrained weights come from (s3://bucket/prefix, https://... "
                                               "or a folder on the data volume); every step and Katib trial gets it "
                                               "as AUTOML_VISION_WEIGHTS. null: the libraries' own sources.")
    trial_outputs: str | None = Field(None, pattern=r"^s3://[^/]+(/.*)?$",
                                      description="s3://bucket/prefix under which Katib trials upload their outputs "
                                                  "(model, metrics, curves); the sweep step takes the best trial's "
                                                  "model from there.")
    shm_size: str = Field("8Gi", pattern=r"^\d+(Ki|Mi|Gi|Ti)?$",
                          description="Memory-backed /dev/shm of the training steps (DataLoader workers pass "
                                      "batches through it; the container default of 64Mi is too small).")

    @model_validator(mode="after")
    def _shm_fits_the_memory_request(self) -> ClusterSettings:
        # /dev/shm is memory-backed: what the DataLoader workers put there counts against the pod's memory, so a
        # request below it lets a training step use more than it asked for and be evicted first. (Training steps
        # on CPU nodes, gpu null, ask for at least shm_size themselves: configure_step.)
        if self.gpu is not None and quantity(self.shm_size) > quantity(self.gpu.memory):
            raise ValueError(f"shm_size={self.shm_size} is more than gpu.memory={self.gpu.memory}, the memory request "
                             f"of the training steps and trials; /dev/shm is memory-backed and counts against that "
                             f"request: lower shm_size or raise gpu.memory to at least {self.shm_size}")
        return self

    def check_registry(self) -> None:
        """Raise ConfigError unless ``registry`` is set: a pipeline for a cluster must name pullable images."""
        if not self.registry:
            raise ConfigError(
                f"registry is not set, so the pipeline would name the image '{self.cpu_image}', which a cluster "
                f"pulls from Docker Hub, where these images are not published: push the images built from images/ "
                f"to your registry and name it in the cluster settings file (--cluster-settings FILE), e.g. "
                f"'registry: {REGISTRY_EXAMPLE}'", "cluster settings")

    def env(self) -> dict[str, str]:
        """Environment variables of every pipeline step and every Katib trial (besides the Secret's keys)."""
        out = {"PYTHONUNBUFFERED": "1"}  # progress reaches the pod log (and the local runner) at once
        if self.weights:
            out[WEIGHTS_ENV] = self.weights
        return out

    @property
    def cpu_image(self) -> str:
        return cpu_image(self.registry)

    @property
    def cuda_image(self) -> str:
        return cuda_image(self.registry)


def _image(name: str, registry: str) -> str:
    return f"{registry.rstrip('/')}/{name}:{__version__}" if registry else f"{name}:{__version__}"


def cpu_image(registry: str = "") -> str:
    """The CPU image of this package version (images/cpu/Dockerfile)."""
    return _image(CPU_IMAGE_NAME, registry)


def cuda_image(registry: str = "") -> str:
    """The CUDA image of this package version (images/gpu/Dockerfile)."""
    return _image(GPU_IMAGE_NAME, registry)
