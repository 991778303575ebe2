"""Classification training on CUDA: mixed precision, channels_last, batch preparation on the GPU,
pinned loaders, divergence found at the right step despite reading the loss back only every few steps."""

from __future__ import annotations

import json

import pytest
import torch

from automl_vision.errors import TrainingDiverged
from automl_vision.spec.hyperparameters import resolve
from automl_vision.spec.tasks import ImageTask
from automl_vision.models.preprocessing import DEFAULT_JITTER, LIGHT_JITTER, BatchPreparer
from automl_vision.training.classification import (CUDA_SYNC_EVERY, build_training, train_classification,
                                                   train_one_epoch)
from automl_vision.training.reporter import read_metrics
from automl_vision.training.trial import TrialSettings

pytestmark = pytest.mark.gpu

MC = ImageTask.IMAGE_CLASSIFICATION
SMALL = {"pretrained": False, "train_crop_size": 32, "valid_resize_size": 32, "valid_crop_size": 32,
         "model_name": "resnet18", "training_batch_size": 4, "warmup_cosine_lr_warmup_epochs": 0,
         "early_stopping": False}


def settings_for(data, out, task=MC, **hp) -> TrialSettings:
    return TrialSettings(task=task, training_data=str(data), validation_data=None,
                         hyperparameters=resolve(task, {**SMALL, **hp}), output_dir=str(out), device="cuda",
                         num_workers=0)


def test_cuda_training_setup(tmp_path, make_dataset):
    data = make_dataset(tmp_path / "data", n_per_class=4, size=32)
    t = build_training(settings_for(data, tmp_path / "out"))
    assert t.device.type == "cuda"
    assert t.amp_dtype in (torch.bfloat16, torch.float16)
    assert t.scaler.is_enabled() == (t.amp_dtype == torch.float16)
    assert t.module.conv1.weight.is_cuda
    assert t.module.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert t.train_loader.pin_memory and t.val_loader.pin_memory
    assert t.train_prepare.jitter == DEFAULT_JITTER  # colour jitter on the GPU
    x, _ = next(iter(t.train_loader))
    assert x.dtype == torch.uint8  # the loader hands over uint8 images
    prepared = t.train_prepare(x)
    assert prepared.is_cuda and prepared.dtype == torch.float32
    assert prepared.is_contiguous(memory_format=torch.channels_last)
    losses, step = [], 0
    for epoch in range(1, 6):
        step, loss = train_one_epoch(t, t.train_loader, epoch, step)
        losses.append(loss)
    assert all(torch.isfinite(torch.tensor(losses)))


@pytest.mark.parametrize("level, jitter", [("light", LIGHT_JITTER), ("none", None)])
def test_the_gpu_jitter_follows_the_augmentation_level(tmp_path, make_dataset, level, jitter):
    data = make_dataset(tmp_path / "data", n_per_class=2, size=32)
    t = build_training(settings_for(data, tmp_path / "out", augmentation=level))
    assert t.train_prepare.jitter == jitter
    x, _ = next(iter(t.train_loader))
    assert x.dtype == torch.uint8 and x.shape[-2:] == (32, 32)


def test_normalization_on_gpu_matches_cpu():
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    cpu = BatchPreparer(torch.device("cpu"))(x)
    gpu = BatchPreparer(torch.device("cuda"))(x.pin_memory()).cpu()
    torch.testing.assert_close(gpu, cpu, atol=1e-5, rtol=1e-5)


def test_non_finite_loss_step_on_gpu(tmp_path, make_dataset):
    data = make_dataset(tmp_path / "data", n_per_class=4, size=32)
    t = build_training(settings_for(data, tmp_path / "out"))
    good = torch.rand(2, 3, 32, 32)
    bad = good.clone()
    bad[:] = float("nan")
    batches = [(good, torch.tensor([0, 1]))] * 3 + [(bad, torch.tensor([0, 1]))] + \
        [(good, torch.tensor([0, 1]))] * (CUDA_SYNC_EVERY + 2)
    with pytest.raises(TrainingDiverged) as info:
        train_one_epoch(t, batches, 2, 100)
    assert info.value.step == 104


def test_whole_trial_on_gpu(tmp_path, make_dataset):
    data = make_dataset(tmp_path / "data", n_per_class=6, size=32, multilabel=True)
    out = tmp_path / "out"
    task = ImageTask.IMAGE_CLASSIFICATION_MULTILABEL
    result = train_classification(settings_for(data, out, task=task, number_of_epochs=2, model_name="vits16r224",
                                               checkpoint_frequency=1))
    assert result.status == "completed"
    assert [r["epoch"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2]
    assert json.loads((out / "outputs" / "config.json").read_text())["model_name"] == "vits16r224"
    assert (out / "checkpoints" / "epoch_0002.pt").is_file()
