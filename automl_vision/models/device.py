"""The device a model runs on: training and serving pick it the same way."""

from __future__ import annotations

import torch

from automl_vision.errors import ConfigError


def pick_device(requested: str) -> torch.device:
    """``auto``: CUDA when there is a GPU, else the CPU; any other value names a torch device
    (``cuda`` where CUDA is not available is refused with a clear message)."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={requested!r} but CUDA is not available on this machine")
    return device
