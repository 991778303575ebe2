"""Where the pipeline's steps run on a cluster: images, the GPU node pool, the object-store Secret.

Settings of the cluster, not of the job: the same job runs on any cluster. They are fixed when the
pipeline is compiled (``automl-vision compile --cluster-settings FILE``); the defaults describe an
AKS-style pool of NC/ND-series GPU nodes (see docs/kubeflow.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from automl_vision import __version__
from automl_vision.errors import ConfigError
# One declaration of each Kubernetes shape: the job's compute (Katib trials) and the pipeline's steps share them.
from automl_vision.spec.job import DataVolume, Toleration

#: The images built from images/ carry the package version in their tag, so a step never runs
#: other library code than the one that compiled the pipeline. The GPU image is the one Katib
#: trials run too (``Compute.image_ref``).
CPU_IMAGE_NAME, GPU_IMAGE_NAME = "automl-vision-cpu", "automl-vision-gpu"
#: The weights location every step and trial reads (the ``--weights`` default of ``train``).
WEIGHTS_ENV = "AUTOML_VISION_WEIGHTS"


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
    cpu: str = Field("3", description="CPU request of each GPU step and trial.")
    memory: str = Field("16Gi", description="Memory request of each GPU step and trial.")


class StepResources(BaseModel):
    """Requests of the CPU steps (ingest, preview, report, package, deploy, and a Katib sweep's launcher)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cpu: str = "1"
    memory: str = "4Gi"


class StorageSecret(BaseModel):
    """The Kubernetes Secret holding the object-store credentials (manifests/base/storage-secret.yaml)."""

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
                          description="Where the images were pushed, e.g. registry.example.com/ml ('' : no prefix).")
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


def load_cluster_settings(path: str | Path | None) -> ClusterSettings:
    """Read a cluster settings YAML file (None: the defaults); raises ConfigError naming every problem."""
    if path is None:
        return ClusterSettings()
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as e:
        raise ConfigError(f"cannot read cluster settings: {e.strerror}", str(path)) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"not valid YAML: {e}", str(path)) from None
    try:
        return ClusterSettings.model_validate(data)
    except ValidationError as e:
        problems = [f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
                    for err in e.errors(include_url=False)]
        raise ConfigError(problems, str(path)) from None
