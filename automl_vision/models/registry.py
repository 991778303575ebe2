"""The registry of model builders.

    @register_model("resnet18", tasks=CLASSIFICATION_TASKS, layer_groups=RESNET_GROUPS)
    def resnet18(num_classes: int, *, pretrained: bool) -> nn.Module: ...

A duplicate name raises; an unknown name lists the valid names for the task.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

from automl_vision.errors import ConfigError
from automl_vision.spec.hyperparameters import did_you_mean
from automl_vision.spec.tasks import ImageTask


@dataclass(frozen=True)
class ModelEntry:
    name: str
    tasks: frozenset[ImageTask]
    builder: Callable[..., nn.Module]
    #: Parameter-name prefixes of each layer group, in order, for ``layers_to_freeze``.
    layer_groups: tuple[tuple[str, ...], ...]


_REGISTRY: dict[str, ModelEntry] = {}
# Backend adapter modules; imported on first lookup so that importing the registry stays cheap.
_BACKENDS = ("automl_vision.models.classification", "automl_vision.models.detection", "automl_vision.models.yolo")
_loaded = False


def register_model(name: str, *, tasks: frozenset[ImageTask], layer_groups: Sequence[Sequence[str] | str]):
    groups = tuple((g,) if isinstance(g, str) else tuple(g) for g in layer_groups)

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = ModelEntry(name, frozenset(tasks), fn, groups)
        return fn

    return wrap


def _load_backends() -> None:
    global _loaded
    if not _loaded:
        for module in _BACKENDS:
            importlib.import_module(module)
        _loaded = True


def registered_models(task: ImageTask | None = None) -> list[str]:
    _load_backends()
    return [n for n, e in _REGISTRY.items() if task is None or task in e.tasks]


def get_entry(name: str, task: ImageTask) -> ModelEntry:
    _load_backends()
    entry = _REGISTRY.get(name)
    if entry is None or task not in entry.tasks:
        valid = registered_models(task)
        raise ConfigError(
            f"model_name={name!r} is not available for {task.value}{did_you_mean(name, valid)}; "
            f"available: {', '.join(valid) or 'none yet'}"
        )
    return entry


def build_model(name: str, task: ImageTask, num_classes: int, *, pretrained: bool, **options) -> nn.Module:
    """A model with a head for ``num_classes``; pretrained weights must be found locally (no silent fallback).

    ``options`` go to the builder as they are (classification: ``weights``, a WeightsSource, and
    ``image_size`` for the models whose input size is fixed when built).
    """
    return get_entry(name, task).builder(num_classes, pretrained=pretrained, **options)


def layer_group_prefixes(name: str, task: ImageTask) -> tuple[tuple[str, ...], ...]:
    return get_entry(name, task).layer_groups


def freeze_layers(model: nn.Module, name: str, task: ImageTask, count: int) -> list[str]:
    """Freeze the first ``count`` layer groups; returns the names of the frozen parameters."""
    groups = layer_group_prefixes(name, task)
    if count > len(groups):
        raise ConfigError(f"layers_to_freeze={count}: {name} has {len(groups)} layer groups")
    prefixes = tuple(p for g in groups[:count] for p in g)
    frozen = []
    for pname, param in model.named_parameters():
        if pname.startswith(prefixes):
            param.requires_grad_(False)
            frozen.append(pname)
    return frozen
