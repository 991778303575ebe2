"""The classification loop on tiny data: it learns, stops at a non-finite loss naming the step,
resumes exactly, starts from an earlier model package, evaluates and checkpoints when told."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil

import pytest
import torch

from automl_vision.errors import ConfigError, TrainingDiverged
from automl_vision.spec.hyperparameters import resolve
from automl_vision.spec.tasks import ImageTask
from automl_vision.models.package import read_package
from automl_vision.training.classification import (build_classifier, build_training, train_classification,
                                                   train_one_epoch)
from automl_vision.training.loop import Progress, save_model
from automl_vision.training.reporter import KATIB_METRIC_RE, read_metrics
from automl_vision.training.trial import TrialSettings

MC = ImageTask.IMAGE_CLASSIFICATION
ML = ImageTask.IMAGE_CLASSIFICATION_MULTILABEL
SMALL = {"pretrained": False, "train_crop_size": 24, "valid_resize_size": 24, "valid_crop_size": 24,
         "model_name": "resnet18", "training_batch_size": 4, "warmup_cosine_lr_warmup_epochs": 0,
         "early_stopping": False}


pytestmark = pytest.mark.usefixtures("one_thread")


def settings_for(data, out, task=MC, **hp) -> TrialSettings:
    return TrialSettings(task=task, training_data=str(data), validation_data=None,
                         hyperparameters=resolve(task, {**SMALL, **hp}), output_dir=str(out), device="cpu",
                         num_workers=0)


def test_short_run_overfits_a_tiny_set(tmp_path, make_dataset):
    data = make_dataset(tmp_path / "data", n_per_class=4, classes=("red", "green", "blue"))
    t = build_training(settings_for(data, tmp_path / "out", optimizer="adamw", learning_rate=0.003,
                                    number_of_epochs=8, split_ratio=0.25))
    losses, step = [], 0
    for epoch in range(1, 9):
        step, loss = train_one_epoch(t, t.train_loader, epoch, step)
        losses.append(loss)
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("sync_every", [1, 4])
def test_non_finite_loss_names_its_step(tmp_path, make_dataset, sync_every):
    data = make_dataset(tmp_path / "data", n_per_class=4)
    t = build_training(settings_for(data, tmp_path / "out"))
    good = torch.rand(2, 3, 24, 24)
    bad = good.clone()
    bad[0, 0, 0, 0] = float("nan")
    batches = [(good, torch.tensor([0, 1]))] * 2 + [(bad, torch.tensor([0, 1]))] + [(good, torch.tensor([0, 1]))] * 3
    with pytest.raises(TrainingDiverged) as info:
        train_one_epoch(t, batches, 3, 20, sync_every=sync_every)
    assert info.value.step == 23 and info.value.epoch == 3  # the third batch after global step 20
    assert "training diverged: training loss nan at epoch 3, global step 23" in str(info.value)


def test_evaluation_and_checkpoint_frequency(tmp_path, make_dataset):
    data = make_dataset(tmp_path / "data", n_per_class=3)
    out = tmp_path / "out"
    result = train_classification(settings_for(data, out, number_of_epochs=5, evaluation_frequency=2,
                                               checkpoint_frequency=3))
    assert [r["epoch"] for r in read_metrics(out / "metrics.jsonl")] == [2, 4, 5]  # and always the last epoch
    assert [h["epoch"] for h in result.history] == [2, 4, 5]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["epoch_0003.pt"]
    ckpt = torch.load(out / "checkpoints" / "epoch_0003.pt", weights_only=True)
    assert ckpt["epoch"] == 3 and ckpt["global_step"] == 3  # 4 training images, batches of 4: a step an epoch
    assert result.epochs_completed == 5 and result.status == "completed"


def test_early_stopping_ends_the_trial(tmp_path, make_dataset):
    data = make_dataset(tmp_path / "data", n_per_class=3)
    # patience 1, no delay: the first evaluation that does not beat the best so far ends the trial
    result = train_classification(settings_for(data, tmp_path / "out", number_of_epochs=12, learning_rate=0.0,
                                               early_stopping=True, early_stopping_patience=1,
                                               early_stopping_delay=0))
    values = [h["accuracy"] for h in result.history]
    assert result.status == "early_stopped" and result.epochs_completed == len(values) < 12
    assert all(values[i] > max(values[:i]) for i in range(1, len(values) - 1))
    assert values[-1] <= max(values[:-1])
    assert result.best_value == max(values) and result.best_epoch == values.index(max(values)) + 1


def test_resume_continues_exactly(tmp_path, make_dataset):
    data = make_dataset(tmp_path / "data", n_per_class=4)
    full = tmp_path / "full"
    settings = settings_for(data, full, number_of_epochs=4, checkpoint_frequency=1)
    train_classification(settings)
    # A run killed during epoch 3: its folder has the checkpoints of epochs 1-2 and whatever else it wrote.
    cut = tmp_path / "cut"
    shutil.copytree(full, cut)
    for name in ("epoch_0003.pt", "epoch_0004.pt"):
        (cut / "checkpoints" / name).unlink()
    (cut / "result.json").unlink()
    resumed = train_classification(dataclasses.replace(settings, output_dir=str(cut), resume=True))

    def values(folder):
        return [{k: v for k, v in r.items() if k != "timestamp"} for r in read_metrics(folder / "metrics.jsonl")]

    assert [r["epoch"] for r in values(cut)] == [1, 2, 3, 4]
    assert values(cut) == values(full)
    assert resumed.epochs_completed == 4
    assert (cut / "outputs" / "model.safetensors").read_bytes() == (full / "outputs" / "model.safetensors").read_bytes()
    assert len((cut / "evaluations.jsonl").read_text().splitlines()) == 4


def test_resume_refuses_other_hyperparameters(tmp_path, make_dataset):
    data = make_dataset(tmp_path / "data", n_per_class=3)
    out = tmp_path / "out"
    train_classification(settings_for(data, out, number_of_epochs=1, checkpoint_frequency=1))
    with pytest.raises(ConfigError) as info:
        train_classification(dataclasses.replace(
            settings_for(data, out, number_of_epochs=1, checkpoint_frequency=1, learning_rate=0.5), resume=True))
    message = str(info.value)
    assert "cannot resume from" in message and "epoch_0001.pt" in message
    assert "learning_rate: checkpoint 0.01, now 0.5" in message


def test_resume_without_checkpoint_starts_over(tmp_path, make_dataset, caplog):
    data = make_dataset(tmp_path / "data", n_per_class=3)
    with caplog.at_level(logging.INFO, logger="automl_vision"):
        result = train_classification(dataclasses.replace(settings_for(data, tmp_path / "out", number_of_epochs=1),
                                                          resume=True))
    assert result.epochs_completed == 1
    assert "no checkpoint in" in caplog.text


def test_incremental_training_from_a_model_package(tmp_path, make_dataset):
    old_data = make_dataset(tmp_path / "old", n_per_class=3, classes=("red", "green"))
    old_out = tmp_path / "first"
    train_classification(settings_for(old_data, old_out, number_of_epochs=1))
    package = read_package(old_out / "outputs")
    assert package.labels == ["green", "red"]
    saved = package.state_dict()

    hp = resolve(MC, {**SMALL})
    model = build_classifier(hp, MC, ["blue", "green", "red"], from_model=old_out / "outputs")
    state = model.state_dict()
    assert torch.equal(state["layer3.0.conv1.weight"], saved["layer3.0.conv1.weight"])
    assert torch.equal(state["bn1.running_mean"], saved["bn1.running_mean"])
    assert torch.equal(state["fc.weight"][1:], saved["fc.weight"])  # green, red kept by name
    assert torch.equal(state["fc.bias"][1:], saved["fc.bias"])
    assert model.fc.out_features == 3

    # the trial from the command line's point of view: the same classes, all weights taken over
    new_data = make_dataset(tmp_path / "new", n_per_class=3, classes=("red", "green"), seed=5)
    result = train_classification(dataclasses.replace(settings_for(new_data, tmp_path / "second", number_of_epochs=1),
                                                      from_model=str(old_out / "outputs")))
    assert result.status == "completed"


@pytest.mark.parametrize("model_name, crop, message", [
    ("mobilenetv2", 24, "the package holds a resnet18 model, not mobilenetv2; incremental training needs the same "
                        "model_name"),
])
def test_incremental_training_refuses_another_model(tmp_path, make_dataset, model_name, crop, message):
    data = make_dataset(tmp_path / "old", n_per_class=3)
    train_classification(settings_for(data, tmp_path / "first", number_of_epochs=1))
    hp = resolve(MC, {**SMALL, "model_name": model_name, "train_crop_size": crop, "valid_crop_size": crop})
    with pytest.raises(ConfigError, match=message):
        build_classifier(hp, MC, ["green", "red"], from_model=tmp_path / "first" / "outputs")


def test_incremental_vit_needs_the_same_crop_size(tmp_path, make_dataset):
    data = make_dataset(tmp_path / "d", n_per_class=2)
    small = {**SMALL, "model_name": "vits16r224", "train_crop_size": 16, "valid_crop_size": 16,
             "valid_resize_size": 16}
    settings = settings_for(data, tmp_path / "o", **small)
    model = build_classifier(settings.hyperparameters, MC, ["green", "red"])
    save_model(model, tmp_path / "pkg", settings, ["green", "red"], {"accuracy": 0.5}, 1)
    hp = resolve(MC, {**small, "train_crop_size": 32, "valid_crop_size": 32, "valid_resize_size": 32})
    with pytest.raises(ConfigError) as info:
        build_classifier(hp, MC, ["green", "red"], from_model=tmp_path / "pkg")
    message = str(info.value)
    assert "the weights do not fit vits16r224 (the package was trained at train_crop_size 16" in message
    assert "pos_embed has shape (1, 2, 384), the model needs (1, 5, 384)" in message


def test_multilabel_trial(tmp_path, make_dataset):
    data = make_dataset(tmp_path / "data", n_per_class=6, multilabel=True, classes=("red", "green", "blue"))
    out = tmp_path / "out"
    result = train_classification(settings_for(data, out, task=ML, model_name="mobilenetv2", number_of_epochs=2))
    assert result.primary_metric == "iou" and result.status == "completed"
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(0 <= r["iou"] <= 1 and "f1_score_macro" in r and "log_loss" in r for r in rows)
    first = json.loads((out / "evaluations.jsonl").read_text().splitlines()[0])
    assert first["labels"] == ["blue", "green", "red"]
    matrices = first["confusion_matrix"]
    assert len(matrices) == 3 and all(len(m) == 2 and len(m[0]) == 2 for m in matrices)
    n_val = sum(sum(row) for row in matrices[0])
    assert n_val == 4  # every validation image counted once per class (split_ratio 0.2 of 18)
    evaluation = json.loads((out / "outputs" / "evaluation.json").read_text())
    assert set(evaluation["per_class"]) == {"blue", "green", "red"}


def test_multiclass_confusion_matrix_per_evaluation(tmp_path, make_dataset):
    data = make_dataset(tmp_path / "data", n_per_class=5, classes=("red", "green", "blue"))
    out = tmp_path / "out"
    train_classification(settings_for(data, out, number_of_epochs=1))
    row = json.loads((out / "evaluations.jsonl").read_text())
    matrix = row["confusion_matrix"]
    assert len(matrix) == 3 and all(len(r) == 3 for r in matrix)
    assert [sum(r) for r in matrix] == [1, 1, 1]  # one validation image per class (stratified split)
    accuracy = read_metrics(out / "metrics.jsonl")[0]["accuracy"]
    assert accuracy == pytest.approx(sum(matrix[i][i] for i in range(3)) / 3)


def test_progress_lines(caplog):
    progress = Progress(2, 4, every=2, min_interval_s=1e9)
    with caplog.at_level(logging.INFO, logger="automl_vision"):
        progress.start_epoch(1)
        for step in range(4):
            progress.advance(8)
            if progress.due():
                progress.show(0.5 - step / 10, 0.01)
        rate = progress.end_epoch()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert lines[0].startswith("epoch 1/2 step 2/4  loss 0.4000  lr 0.01 ")
    assert lines[1].startswith("epoch 1/2 step 4/4  loss 0.2000")
    assert all("img/s" in ln and "ETA 0:00:0" in ln for ln in lines)
    assert not any(KATIB_METRIC_RE.search(ln) for ln in lines)
    assert rate > 0


def test_progress_bar(capsys):
    progress = Progress(1, 3, bar=True)
    progress.start_epoch(1)
    for _ in range(3):
        progress.advance(4)
    progress.show(0.25, 0.1)
    progress.end_epoch()
    err = capsys.readouterr().err
    assert "epoch 1/1" in err and "3/3" in err
    assert not KATIB_METRIC_RE.search(err)
