"""Optimizers and learning-rate schedules built from the resolved hyperparameters."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR

from automl_vision.spec.tasks import ImageTask


def build_optimizer(params: Iterable[torch.nn.Parameter], hp: Mapping[str, Any]) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    name = hp["optimizer"]
    lr, wd = hp["learning_rate"], hp["weight_decay"]
    if name == "sgd":
        nesterov = bool(hp["nesterov"]) and hp["momentum"] > 0
        return torch.optim.SGD(params, lr=lr, momentum=hp["momentum"], nesterov=nesterov, weight_decay=wd)
    betas = (hp["beta1"], hp["beta2"])
    cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
    return cls(params, lr=lr, betas=betas, weight_decay=wd, amsgrad=bool(hp["amsgrad"]))


def lr_multiplier(hp: Mapping[str, Any], steps_per_epoch: int):
    """A function of the optimizer step giving the factor applied to the initial learning rate.

    ``warmup_cosine``: linear warm-up over ``warmup_cosine_lr_warmup_epochs``, then
    ``0.5 * (1 + cos(2 * pi * cycles * progress))``; with the default 0.45 cycles the rate ends
    near 2% of its start instead of rising again. ``step``: times ``step_lr_gamma`` every
    ``step_lr_step_size`` epochs.
    """
    steps_per_epoch = max(1, steps_per_epoch)
    total = max(1, hp["number_of_epochs"] * steps_per_epoch)
    if hp["lr_scheduler"] == "step":
        gamma, size = hp["step_lr_gamma"], hp["step_lr_step_size"]
        return lambda step: gamma ** ((step // steps_per_epoch) // size)
    warmup = min(total - 1, hp["warmup_cosine_lr_warmup_epochs"] * steps_per_epoch)
    cycles = hp["warmup_cosine_lr_cycles"]

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total - warmup)
        return max(0.0, 0.5 * (1.0 + math.cos(2.0 * math.pi * cycles * progress)))

    return f


def build_scheduler(optimizer: torch.optim.Optimizer, hp: Mapping[str, Any], steps_per_epoch: int) -> LambdaLR:
    """Stepped once per optimizer step."""
    return LambdaLR(optimizer, lr_multiplier(hp, steps_per_epoch))


class EarlyStopping:
    """Stops when the primary metric has not improved for ``patience`` evaluations,
    counting only after the first ``delay`` evaluations."""

    def __init__(self, enabled: bool, patience: int, delay: int, maximize: bool = True):
        self.enabled, self.patience, self.delay, self.maximize = enabled, patience, delay, maximize
        self.best: float | None = None
        self.evaluations = 0
        self.stale = 0

    @classmethod
    def for_trial(cls, hp: Mapping[str, Any], task: ImageTask) -> "EarlyStopping":
        """The trial's early stopping: ``early_stopping``, ``_patience``, ``_delay``, in the task's direction."""
        return cls(hp["early_stopping"], hp["early_stopping_patience"], hp["early_stopping_delay"],
                   maximize=task.maximize)

    def improved(self, value: float) -> bool:
        return self.best is None or (value > self.best if self.maximize else value < self.best)

    def update(self, value: float) -> bool:
        """Record one evaluation; True when training should stop."""
        self.evaluations += 1
        if self.improved(value):
            self.best = value
            self.stale = 0
        elif self.evaluations > self.delay:
            self.stale += 1
        return self.enabled and self.evaluations > self.delay and self.stale >= self.patience
