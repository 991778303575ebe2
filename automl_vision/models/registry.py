"""The builders of the catalogue's models: ``model_name`` -> a model with a head for the classes.

Each row of ``spec/catalogue.py`` names its builder (``module.function``); the builder's module is
imported on first use, so that importing the registry does not import torch. An unknown name lists
the valid names for the task.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from automl_vision.errors import ConfigError
from automl_vision.spec.catalogue import MODELS, Groups
from automl_vision.spec.hyperparameters import did_you_mean
from automl_vision.spec.tasks import MODEL_TASKS, ImageTask


@dataclass(frozen=True)
class ModelEntry:
    name: str
    tasks: frozenset[ImageTask]
    #: ``builder(num_classes, *, pretrained, **options)``: the row's builder bound to the row.
    builder: Callable[..., Any]
    #: Parameter-name prefixes of each layer group, in order, for ``layers_to_freeze``.
    layer_groups: Groups


def registered_models(task: ImageTask | None = None) -> list[str]:
    return [n for n, tasks in MODEL_TASKS.items() if task is None or task in tasks]


@functools.cache
def _builder(dotted: str) -> Callable[..., Any]:
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def get_entry(name: str, task: ImageTask) -> ModelEntry:
    row = MODELS.get(name)
    if row is None or task not in MODEL_TASKS[name]:
        valid = registered_models(task)
        raise ConfigError(
            f"model_name={name!r} is not available for {task.value}{did_you_mean(name, valid)}; "
            f"available: {', '.join(valid) or 'none yet'}"
        )
    return ModelEntry(name, MODEL_TASKS[name], functools.partial(_builder(row.builder), row), row.layer_groups)


def build_model(name: str, task: ImageTask, num_classes: int, *, pretrained: bool, **options):
    """A model with a head for ``num_classes``; pretrained weights must be found locally (no silent fallback).

    ``options`` go to the builder as they are (classification: ``weights``, a WeightsSource, and
    ``image_size`` for the models whose input size is fixed when built).
    """
    return get_entry(name, task).builder(num_classes, pretrained=pretrained, **options)


def layer_group_prefixes(name: str, task: ImageTask) -> Groups:
    return get_entry(name, task).layer_groups


def freeze_layers(model, name: str, task: ImageTask, count: int) -> list[str]:
    """Freeze the first ``count`` layer groups of ``model`` (a torch module); returns the names of the
    frozen parameters."""
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
