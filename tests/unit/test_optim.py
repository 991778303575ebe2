"""Optimizers, learning-rate schedules and early stopping built from resolved hyperparameters."""

from __future__ import annotations

import math

import pytest
import torch

from automl_vision.spec.hyperparameters import defaults
from automl_vision.spec.tasks import ImageTask
from automl_vision.training.optim import EarlyStopping, build_optimizer, build_scheduler, lr_multiplier


def hp(**overrides):
    out = defaults(ImageTask.IMAGE_CLASSIFICATION, "resnet18")
    out.update(overrides)
    return out


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))


# --- build_optimizer -------------------------------------------------------------------------------

def test_sgd_hyperparameters_on_the_object():
    opt = build_optimizer(_model().parameters(),
                          hp(optimizer="sgd", learning_rate=0.03, momentum=0.8, nesterov=True, weight_decay=0.002))
    assert type(opt) is torch.optim.SGD
    (group,) = opt.param_groups
    assert group["lr"] == 0.03
    assert group["momentum"] == 0.8
    assert group["nesterov"] is True
    assert group["weight_decay"] == 0.002


def test_sgd_nesterov_off_when_asked():
    opt = build_optimizer(_model().parameters(), hp(optimizer="sgd", momentum=0.9, nesterov=False))
    assert opt.param_groups[0]["nesterov"] is False
    assert opt.param_groups[0]["momentum"] == 0.9


def test_sgd_nesterov_turned_off_when_momentum_is_zero():
    # torch refuses nesterov with zero momentum; the builder must not pass it through
    opt = build_optimizer(_model().parameters(), hp(optimizer="sgd", momentum=0.0, nesterov=True))
    assert opt.param_groups[0]["nesterov"] is False
    assert opt.param_groups[0]["momentum"] == 0.0


@pytest.mark.parametrize("name,cls", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)])
@pytest.mark.parametrize("amsgrad", [True, False])
def test_adam_family_hyperparameters_on_the_object(name, cls, amsgrad):
    opt = build_optimizer(_model().parameters(), hp(optimizer=name, learning_rate=0.0025, beta1=0.85,
                                                    beta2=0.995, amsgrad=amsgrad, weight_decay=0.05))
    assert type(opt) is cls
    (group,) = opt.param_groups
    assert group["lr"] == 0.0025
    assert tuple(group["betas"]) == (0.85, 0.995)
    assert group["amsgrad"] is amsgrad
    assert group["weight_decay"] == 0.05


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_frozen_parameters_excluded(name):
    model = _model()
    for p in model[0].parameters():
        p.requires_grad_(False)
    opt = build_optimizer(model.parameters(), hp(optimizer=name))
    got = {id(p) for g in opt.param_groups for p in g["params"]}
    assert got == {id(p) for p in model[2].parameters()}
    assert len(got) == 2


def test_optimizer_actually_steps():
    model = _model()
    opt = build_optimizer(model.parameters(), hp(optimizer="sgd", learning_rate=0.1))
    before = model[2].weight.detach().clone()
    model(torch.ones(5, 4)).sum().backward()
    opt.step()
    assert not torch.equal(before, model[2].weight)


# --- lr_multiplier ---------------------------------------------------------------------------------

def test_warmup_cosine_by_hand():
    # 10 epochs x 4 steps = 40 steps; warm-up 2 epochs = 8 steps; 0.45 cycles
    f = lr_multiplier(hp(lr_scheduler="warmup_cosine", number_of_epochs=10, warmup_cosine_lr_warmup_epochs=2,
                         warmup_cosine_lr_cycles=0.45), steps_per_epoch=4)
    # linear rise over 8 steps: (step + 1) / 9
    warm = [f(s) for s in range(8)]
    assert warm == pytest.approx([(s + 1) / 9 for s in range(8)])
    diffs = [b - a for a, b in zip(warm, warm[1:])]
    assert diffs == pytest.approx([1 / 9] * 7)  # linear
    assert f(0) > 0
    # then 0.5 * (1 + cos(2 pi * 0.45 * progress)), progress = (step - 8) / 32
    assert f(8) == pytest.approx(1.0)
    for step in (8, 12, 16, 24, 30, 39):
        progress = (step - 8) / 32
        assert f(step) == pytest.approx(0.5 * (1 + math.cos(2 * math.pi * 0.45 * progress))), step
    assert f(24) == pytest.approx(0.5 * (1 + math.cos(0.45 * math.pi)))  # half-way
    assert f(40) == pytest.approx(0.5 * (1 + math.cos(0.9 * math.pi)))  # the end: about 2.4%
    assert 0.02 < f(40) < 0.03
    after = [f(s) for s in range(8, 41)]
    assert all(b <= a for a, b in zip(after, after[1:]))  # decreasing, no rise with 0.45 cycles


def test_warmup_cosine_without_warmup():
    f = lr_multiplier(hp(lr_scheduler="warmup_cosine", number_of_epochs=2, warmup_cosine_lr_warmup_epochs=0,
                         warmup_cosine_lr_cycles=0.5), steps_per_epoch=5)
    assert f(0) == pytest.approx(1.0)
    assert f(5) == pytest.approx(0.5 * (1 + math.cos(2 * math.pi * 0.5 * 0.5)))  # = 0.5
    assert f(5) == pytest.approx(0.5)
    assert f(10) == pytest.approx(0.0, abs=1e-12)


def test_warmup_cosine_never_negative():
    f = lr_multiplier(hp(lr_scheduler="warmup_cosine", number_of_epochs=4, warmup_cosine_lr_warmup_epochs=0,
                         warmup_cosine_lr_cycles=0.75), steps_per_epoch=1)
    assert all(f(s) >= 0.0 for s in range(10))


def test_warmup_longer_than_training_is_clamped():
    # warm-up of 5 epochs in a 1-epoch run of 4 steps: warm-up is clamped to total - 1 = 3 steps
    f = lr_multiplier(hp(lr_scheduler="warmup_cosine", number_of_epochs=1, warmup_cosine_lr_warmup_epochs=5),
                      steps_per_epoch=4)
    assert [f(s) for s in range(3)] == pytest.approx([0.25, 0.5, 0.75])
    assert f(3) == pytest.approx(1.0)


def test_step_scheduler_by_hand():
    f = lr_multiplier(hp(lr_scheduler="step", number_of_epochs=20, step_lr_gamma=0.5, step_lr_step_size=5),
                      steps_per_epoch=4)
    # 5 epochs x 4 steps = 20 steps per decay
    assert [f(s) for s in (0, 1, 19)] == [1.0, 1.0, 1.0]
    assert [f(s) for s in (20, 39)] == [0.5, 0.5]
    assert [f(s) for s in (40, 59)] == [0.25, 0.25]
    assert f(60) == 0.125


def test_step_scheduler_zero_steps_per_epoch_counts_as_one():
    f = lr_multiplier(hp(lr_scheduler="step", step_lr_gamma=0.1, step_lr_step_size=2), steps_per_epoch=0)
    assert f(1) == 1.0 and f(2) == pytest.approx(0.1) and f(4) == pytest.approx(0.01)


# --- build_scheduler on a real optimizer -----------------------------------------------------------

def _drive(params, steps):
    model = _model()
    opt = build_optimizer(model.parameters(), params)
    sched = build_scheduler(opt, params, steps_per_epoch=4)
    seen = [opt.param_groups[0]["lr"]]
    for _ in range(steps):
        opt.zero_grad()
        model(torch.ones(2, 4)).sum().backward()
        opt.step()
        sched.step()
        seen.append(opt.param_groups[0]["lr"])
    return seen


def test_build_scheduler_step_changes_lr():
    params = hp(optimizer="sgd", learning_rate=0.2, lr_scheduler="step", number_of_epochs=10,
                step_lr_gamma=0.1, step_lr_step_size=1)
    seen = _drive(params, 12)
    # one decay per epoch of 4 steps
    assert seen[:4] == pytest.approx([0.2] * 4)
    assert seen[4:8] == pytest.approx([0.02] * 4)
    assert seen[8:12] == pytest.approx([0.002] * 4)
    assert seen[12] == pytest.approx(0.0002)


def test_build_scheduler_warmup_cosine_changes_lr():
    params = hp(optimizer="adamw", learning_rate=0.01, lr_scheduler="warmup_cosine", number_of_epochs=10,
                warmup_cosine_lr_warmup_epochs=2, warmup_cosine_lr_cycles=0.45)
    seen = _drive(params, 40)
    f = lr_multiplier(params, 4)
    assert seen == pytest.approx([0.01 * f(s) for s in range(41)])
    assert seen[0] == pytest.approx(0.01 / 9)
    assert seen[8] == pytest.approx(0.01)
    assert max(seen) == pytest.approx(0.01)


# --- EarlyStopping ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,values,stops", [
    # patience 2, no delay: two evaluations without improvement
    (dict(enabled=True, patience=2, delay=0), [0.5, 0.6, 0.6, 0.55], [False, False, False, True]),
    # an improvement resets the count
    (dict(enabled=True, patience=2, delay=0), [0.5, 0.4, 0.6, 0.4, 0.4], [False, False, False, False, True]),
    # patience 1 stops at the first stale evaluation
    (dict(enabled=True, patience=1, delay=0), [0.5, 0.5], [False, True]),
    # delay 3: nothing counts during the first three evaluations
    (dict(enabled=True, patience=1, delay=3), [0.5, 0.4, 0.4, 0.4, 0.4], [False, False, False, True, True]),
    (dict(enabled=True, patience=2, delay=3), [0.5, 0.4, 0.4, 0.4, 0.4], [False, False, False, False, True]),
    # minimize: lower is better
    (dict(enabled=True, patience=2, delay=0, maximize=False), [1.0, 0.9, 0.95, 0.95],
     [False, False, False, True]),
    (dict(enabled=True, patience=2, delay=0, maximize=False), [1.0, 1.1, 1.2, 0.5],
     [False, False, True, False]),
    # disabled never stops
    (dict(enabled=False, patience=1, delay=0), [0.5, 0.4, 0.3, 0.2, 0.1], [False] * 5),
], ids=["patience", "reset", "patience1", "delay-p1", "delay-p2", "minimize", "minimize-rise", "disabled"])
def test_early_stopping(kwargs, values, stops):
    es = EarlyStopping(**kwargs)
    assert [es.update(v) for v in values] == stops
    assert es.evaluations == len(values)


def test_early_stopping_tracks_best():
    es = EarlyStopping(enabled=True, patience=5, delay=0)
    for v in (0.3, 0.7, 0.5):
        es.update(v)
    assert es.best == 0.7 and es.stale == 1
    mn = EarlyStopping(enabled=False, patience=5, delay=0, maximize=False)
    for v in (0.3, 0.7, 0.1, 0.2):
        mn.update(v)
    assert mn.best == 0.1
    assert mn.improved(0.05) and not mn.improved(0.1)
