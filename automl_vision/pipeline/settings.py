"""The cluster settings file the pipeline is compiled with, and the node sizes its defaults must fit.

The settings themselves (``ClusterSettings``: images, the GPU node pool, the object-store Secret)
are declared in :mod:`automl_vision.spec.cluster`, beside the Kubernetes shapes a job's
``compute`` shares with them; see docs/kubeflow.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import yaml
from pydantic import ValidationError

from automl_vision.errors import ConfigError
from automl_vision.spec.cluster import ClusterSettings


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


# --- Where the defaults must fit ---------------------------------------------------------------------

@dataclass(frozen=True)
class NodeSize:
    """A VM size and what Kubernetes can give pods on it (allocatable = capacity - reserved - eviction)."""

    name: str
    vcpus: int
    memory_gib: int
    source: str

    @property
    def allocatable_cpu(self) -> Decimal:
        """Cores left to pods: the vCPUs less AKS's kube-reserved CPU for that core count."""
        return Decimal(self.vcpus) - Decimal(AKS_KUBE_RESERVED_CPU_MILLICORES[self.vcpus]) / 1000

    @property
    def allocatable_memory(self) -> Decimal:
        """Bytes left to pods under AKS 1.29+ reservations with the most pods a node may have (the worst case):
        kube-reserved min(20 MB x max pods + 50 MB, 25% of memory), plus the eviction threshold; MB read as MiB,
        the larger reading."""
        total = Decimal(self.memory_gib) * 2**30
        reserved = min(Decimal(20 * AKS_MAX_PODS + 50) * 2**20, total / 4)
        return total - reserved - AKS_EVICTION_MEMORY


#: AKS node resource reservations, https://learn.microsoft.com/azure/aks/node-resource-reservations (read
#: 2026-12): kube-reserved CPU by the host's core count; memory on AKS 1.29 and later: kube-reserved
#: min(20 MB x max pods per node + 50 MB, 25% of the memory), plus the kubelet's eviction threshold
#: memory.available<100Mi (before 1.29 a regressive rate and 750Mi, which reserves less on these sizes).
AKS_KUBE_RESERVED_CPU_MILLICORES = {1: 60, 2: 100, 4: 140, 8: 180, 16: 260, 32: 420, 64: 740}
AKS_EVICTION_MEMORY = Decimal(100 * 2**20)
#: The largest max-pods setting of an AKS node pool (and the Azure CNI Overlay default): the most memory reserved.
AKS_MAX_PODS = 250
#: The smallest GPU VM size the defaults of ``GpuPool`` must fit on (docs/kubeflow.md). On AKS:
#:
#:   | VM size              | vCPU | memory | kube-reserved CPU | kube-reserved memory | eviction | allocatable        |
#:   | Standard_NC4as_T4_v3 | 4    | 28 GiB | 140m              | 5050 MB (250 pods)   | 100Mi    | 3860m, ~23522 MiB  |
SMALLEST_GPU_NODE = NodeSize("Standard_NC4as_T4_v3", vcpus=4, memory_gib=28,
                             source="https://learn.microsoft.com/azure/virtual-machines/sizes/gpu-accelerated/"
                                    "ncast4v3-series (4 vCPU, 28 GiB, one NVIDIA T4)")
