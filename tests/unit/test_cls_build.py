"""Each classification hyperparameter reaches the object it belongs to (asserted on the built objects)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import RandomSampler, SequentialSampler

from automl_vision.errors import ConfigError
from automl_vision.spec.hyperparameters import resolve
from automl_vision.spec.tasks import ImageTask
from automl_vision.training.classification import build_training, train_one_epoch
from automl_vision.training.classification_data import class_weights
from automl_vision.training.optim import lr_multiplier
from automl_vision.training.trial import TrialSettings, default_num_workers

MC = ImageTask.IMAGE_CLASSIFICATION
ML = ImageTask.IMAGE_CLASSIFICATION_MULTILABEL
SMALL = {"pretrained": False, "train_crop_size": 24, "valid_resize_size": 28, "valid_crop_size": 24,
         "model_name": "resnet18"}


pytestmark = pytest.mark.usefixtures("one_thread")


def settings_for(data, tmp_path, task=MC, num_workers=0, **hp) -> TrialSettings:
    values = resolve(task, {**SMALL, **hp})
    return TrialSettings(task=task, training_data=str(data), validation_data=None, hyperparameters=values,
                         output_dir=str(tmp_path / "out"), device="cpu", num_workers=num_workers)


@pytest.fixture
def data(tmp_path, make_dataset):
    # 3 classes x 5 images; split_ratio 0.2 keeps 4 per class for training (12 images)
    return make_dataset(tmp_path / "data", n_per_class=5, classes=("red", "green", "blue"))


def test_loaders(tmp_path, data):
    t = build_training(settings_for(data, tmp_path, training_batch_size=5, validation_batch_size=2,
                                    train_crop_size=20, valid_resize_size=30, valid_crop_size=16, num_workers=1))
    tl, vl = t.train_loader, t.val_loader
    assert (tl.batch_size, vl.batch_size) == (5, 2)
    assert tl.num_workers == vl.num_workers == 1
    assert tl.persistent_workers and tl.prefetch_factor == 4
    assert not tl.pin_memory  # only on CUDA
    assert tl.drop_last and not vl.drop_last
    assert isinstance(tl.sampler, RandomSampler) and isinstance(vl.sampler, SequentialSampler)
    assert (len(tl.dataset), len(vl.dataset)) == (12, 3)
    x, y = tl.dataset[0]
    assert x.shape == (3, 20, 20) and x.dtype == torch.float32  # train_crop_size
    x, y = vl.dataset[0]
    assert x.shape == (3, 16, 16)  # valid_crop_size
    crop = tl.dataset.transform.transform.transforms[0].transforms[1]
    assert tuple(crop.size) == (20, 20)
    resize = vl.dataset.transform.transform.transforms[0].transforms[1]
    assert list(resize.size) == [30]  # valid_resize_size
    assert vl.dataset.draft == 30
    batch_x, batch_y = next(iter(vl))
    assert batch_x.shape == (2, 3, 16, 16) and batch_y.dtype == torch.int64


def test_default_workers_from_the_machine(tmp_path, data):
    t = build_training(settings_for(data, tmp_path, num_workers=None))
    assert t.train_loader.num_workers == default_num_workers()


def test_batch_larger_than_the_data_keeps_the_partial_batch(tmp_path, data):
    t = build_training(settings_for(data, tmp_path, training_batch_size=64))
    assert not t.train_loader.drop_last and len(t.train_loader) == 1


@pytest.mark.parametrize("given, cls, expected", [
    ({"optimizer": "sgd", "learning_rate": 0.03, "momentum": 0.8, "nesterov": True, "weight_decay": 0.002},
     torch.optim.SGD, {"lr": 0.03, "momentum": 0.8, "nesterov": True, "weight_decay": 0.002}),
    ({"optimizer": "sgd", "nesterov": False}, torch.optim.SGD, {"nesterov": False, "momentum": 0.9}),
    ({"optimizer": "adam", "beta1": 0.8, "beta2": 0.99, "amsgrad": True, "weight_decay": 0.01},
     torch.optim.Adam, {"betas": (0.8, 0.99), "amsgrad": True, "weight_decay": 0.01}),
    ({"optimizer": "adamw", "learning_rate": 0.002, "beta1": 0.85, "amsgrad": False},
     torch.optim.AdamW, {"lr": 0.002, "betas": (0.85, 0.999), "amsgrad": False, "weight_decay": 1e-4}),
])
def test_optimizer(tmp_path, data, given, cls, expected):
    t = build_training(settings_for(data, tmp_path, warmup_cosine_lr_warmup_epochs=0, **given))
    assert type(t.optimizer) is cls
    group = t.optimizer.param_groups[0]
    for key, value in expected.items():
        assert (tuple(group[key]) if key == "betas" else group[key]) == value, key
    params = {id(p) for g in t.optimizer.param_groups for p in g["params"]}
    assert params == {id(p) for p in t.module.parameters()}


def test_layers_to_freeze(tmp_path, data):
    t = build_training(settings_for(data, tmp_path, layers_to_freeze=2))
    frozen = {n for n, p in t.module.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _ in t.module.named_parameters() if n.startswith(("conv1.", "bn1.", "layer1."))}
    in_optimizer = {id(p) for g in t.optimizer.param_groups for p in g["params"]}
    assert in_optimizer == {id(p) for p in t.module.parameters() if p.requires_grad}


@pytest.mark.parametrize("batch, accumulate, steps", [(4, 1, 3), (4, 2, 2), (4, 3, 1), (2, 4, 2)])
def test_grad_accumulation_optimizer_steps(tmp_path, data, batch, accumulate, steps):
    t = build_training(settings_for(data, tmp_path, training_batch_size=batch, grad_accumulation_step=accumulate,
                                    lr_scheduler="step"))
    assert t.accumulate == accumulate
    assert t.steps_per_epoch == steps == math.ceil(len(t.train_loader) / accumulate)
    calls = []
    hook = t.optimizer.register_step_post_hook(lambda *a: calls.append(1))
    train_one_epoch(t, t.train_loader, 1, 0)
    hook.remove()
    assert len(calls) == steps
    assert t.scheduler.last_epoch == steps


def test_grad_accumulation_adds_gradients(tmp_path, data):
    """Two micro-batches of 2 with accumulation 2 give the gradient of one batch of 4 (a ViT: no batch norm,
    no dropout, so the two are comparable)."""
    t = build_training(settings_for(data, tmp_path, model_name="vits16r224", train_crop_size=16, valid_crop_size=16,
                                    valid_resize_size=16, grad_accumulation_step=2, training_batch_size=2,
                                    optimizer="sgd", momentum=0.0, weight_decay=0.0))
    x = torch.randn(4, 3, 16, 16)
    y = torch.tensor([0, 1, 2, 0])
    grads = []
    t.optimizer.register_step_pre_hook(lambda *a: grads.append(t.module.head.weight.grad.clone()))
    train_one_epoch(t, [(x[:2], y[:2]), (x[2:], y[2:])], 1, 0)
    t2 = build_training(settings_for(data, tmp_path, model_name="vits16r224", train_crop_size=16, valid_crop_size=16,
                                     valid_resize_size=16, training_batch_size=4))
    loss = t2.criterion(t2.module(x), y)
    loss.backward()
    torch.testing.assert_close(grads[0], t2.module.head.weight.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("given", [
    {"lr_scheduler": "warmup_cosine", "warmup_cosine_lr_warmup_epochs": 1, "warmup_cosine_lr_cycles": 0.3,
     "number_of_epochs": 4, "learning_rate": 0.05},
    {"lr_scheduler": "step", "step_lr_gamma": 0.1, "step_lr_step_size": 1, "number_of_epochs": 4,
     "learning_rate": 0.05},
])
def test_scheduler(tmp_path, data, given):
    t = build_training(settings_for(data, tmp_path, training_batch_size=4, **given))
    f = lr_multiplier(t.hp, t.steps_per_epoch)
    assert t.scheduler.lr_lambdas[0](5) == f(5)
    seen = [t.optimizer.param_groups[0]["lr"]]
    for epoch in (1, 2):
        train_one_epoch(t, t.train_loader, epoch, 0)
        seen.append(t.optimizer.param_groups[0]["lr"])
    spe = t.steps_per_epoch
    assert seen == pytest.approx([0.05 * f(0), 0.05 * f(spe), 0.05 * f(2 * spe)])
    if given["lr_scheduler"] == "step":
        assert seen == pytest.approx([0.05, 0.005, 0.0005])


@pytest.mark.parametrize("mode", [0, 1, 2])
def test_weighted_loss(tmp_path, make_dataset, mode):
    data = make_dataset(tmp_path / "data", n_per_class=2, classes=("red", "green"))
    extra = make_dataset(tmp_path / "data", n_per_class=6, classes=("blue",), seed=1, name="blue.jsonl")
    with data.open("a") as f:  # 2 red, 2 green, 6 blue
        f.write(extra.read_text())
    t = build_training(settings_for(data, tmp_path, weighted_loss=mode, split_ratio=0.3))
    counts = {c: sum(c in s.labels for s in t.train_samples) for c in t.classes}
    assert counts == {"blue": 4, "green": 1, "red": 1}
    if mode == 0:
        assert t.criterion.weight is None
        return
    inverse = torch.tensor([6 / (3 * counts[c]) for c in t.classes])
    torch.testing.assert_close(t.criterion.weight, inverse.sqrt() if mode == 1 else inverse)
    assert t.eval_criterion.weight is None  # the reported loss is unweighted
    torch.testing.assert_close(class_weights(t.train_samples, t.classes, mode), t.criterion.weight)


def test_multilabel_loss_and_targets(tmp_path, make_dataset):
    data = make_dataset(tmp_path / "data", n_per_class=6, multilabel=True)
    t = build_training(settings_for(data, tmp_path, task=ML, weighted_loss=2))
    assert isinstance(t.criterion, torch.nn.BCEWithLogitsLoss) and t.criterion.pos_weight is not None
    _, y = next(iter(t.val_loader))
    assert y.dtype == torch.float32 and y.shape[1] == 2


def test_early_stopping_settings(tmp_path, data):
    t = build_training(settings_for(data, tmp_path, early_stopping=True, early_stopping_patience=3,
                                    early_stopping_delay=7))
    assert (t.stopper.enabled, t.stopper.patience, t.stopper.delay, t.stopper.maximize) == (True, 3, 7, True)
    t = build_training(settings_for(data, tmp_path, early_stopping=False))
    assert not t.stopper.enabled


def test_same_seed_same_start_other_seed_other_start(tmp_path, data):
    def first(seed):
        t = build_training(settings_for(data, tmp_path, seed=seed))
        x, _ = next(iter(t.train_loader))
        return t.module.conv1.weight.detach().clone(), x

    w1, x1 = first(3)
    w2, x2 = first(3)
    w3, x3 = first(4)
    assert torch.equal(w1, w2) and torch.equal(x1, x2)
    assert not torch.equal(w1, w3) and not torch.equal(x1, x3)


def test_cpu_runs_full_precision(tmp_path, data):
    t = build_training(settings_for(data, tmp_path))
    assert t.amp_dtype is None and not t.scaler.is_enabled()
    assert t.train_prepare.jitter is None  # the loader jitters each image on the CPU


@pytest.mark.parametrize("given, message", [
    ({"layers_to_freeze": 6}, "layers_to_freeze=6: resnet18 has 5 layer groups; allowed 0..5"),
    ({"model_name": "vitb16r224", "train_crop_size": 32, "valid_crop_size": 24},
     "vitb16r224 needs valid_crop_size == train_crop_size (got 24 and 32)"),
])
def test_refused_combinations(given, message):
    with pytest.raises(ValueError) as info:
        resolve(MC, {**SMALL, **given})
    assert message in str(info.value)


def test_from_model_must_exist(tmp_path, data):
    settings = settings_for(data, tmp_path)
    settings = TrialSettings(**{**settings.__dict__, "from_model": str(tmp_path / "nowhere")})
    with pytest.raises(ConfigError, match="is not a model package: missing model.safetensors, config.json, labels.json"):
        build_training(settings)


def test_per_image_transforms_run_on_one_thread():
    from automl_vision.models.preprocessing import OneThread

    seen = []
    transform = OneThread(lambda x: seen.append(torch.get_num_threads()) or x + 1)
    torch.set_num_threads(2)
    assert transform(1) == 2
    assert seen == [1] and torch.get_num_threads() == 2  # restored after the image
