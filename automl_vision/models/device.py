"""The device a model runs on: training and serving pick it the same way."""

from __future__ import annotations

import os

import torch

from automl_vision.errors import ConfigError


def available_cpus() -> int:
    """The cores this process may run on: its CPU affinity (what a container's CPU set or ``taskset``
    leaves it), else the machine's count."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def pick_device(requested: str) -> torch.device:
    """``auto``: CUDA when there is a GPU, else the CPU; any other value names a torch device
    (``cuda`` where CUDA is not available is refused with a clear message)."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={requested!r} but CUDA is not available on this machine")
    return device
