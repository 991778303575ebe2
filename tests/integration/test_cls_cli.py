"""Classification trials for real: real photos from the command line, one model of each model family
for both tasks through a whole `train` (the other models built as a trial builds them and stepped once),
and a two-process data-parallel run under torchrun (gloo on the CPU)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from automl_vision.cli import main
from automl_vision.models.classification import classifier_head
from automl_vision.spec import hyperparameters as hps
from automl_vision.spec.tasks import CLASSIFICATION_MODELS, ImageTask
from automl_vision.training.classification import build_classifier, build_criterion
from automl_vision.training.optim import build_optimizer
from automl_vision.training.reporter import KATIB_METRIC_RE, read_metrics

pytestmark = pytest.mark.usefixtures("one_thread")

TASKS = {ImageTask.IMAGE_CLASSIFICATION: "multiclass", ImageTask.IMAGE_CLASSIFICATION_MULTILABEL: "multilabel"}
# A whole `train` for one model of each family and head kind, per task: torchvision with an `fc` head
# (resnets) or a `classifier` head (mobilenetv2), timm convolutional (resnest, seresnext) and timm ViT
# (fixed input size). The other models take one training step in test_every_other_model_takes_a_training_step.
TRAINED = {ImageTask.IMAGE_CLASSIFICATION: ("resnet18", "seresnext", "vits16r224"),
           ImageTask.IMAGE_CLASSIFICATION_MULTILABEL: ("mobilenetv2", "resnest50", "vits16r224")}
# building these takes more than a few seconds
LARGE = {"resnet101", "resnet152", "resnest101", "vitb16r224", "vitl16r224"}


def _trained() -> list:
    return [pytest.param(task, model, id=f"{model}-{name}", marks=pytest.mark.slow)
            for model in CLASSIFICATION_MODELS for task, name in TASKS.items() if model in TRAINED[task]]


def _stepped() -> list:
    """``(model_name, tasks)`` of every model for the tasks it has no whole run of."""
    stepped = [(model, tuple(t for t in TASKS if model not in TRAINED[t])) for model in CLASSIFICATION_MODELS]
    return [pytest.param(model, tasks, id=model, marks=[pytest.mark.slow] if model in LARGE else [])
            for model, tasks in stepped if tasks]


FRIDGE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "fridge_small150"
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ")
# One intra-op thread per process: on a busy 2-core machine spinning threads slow small models a lot.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "automl_vision", *args], capture_output=True, text=True,
                          timeout=timeout, env=ENV)


def fridge_jsonl(folder: Path) -> Path:
    images = sorted(FRIDGE.glob("*.jpg"))
    assert len(images) == 134, "the fridge_small150 photos are expected in ../shared/data"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "fridge.jsonl"
    path.write_text("".join(json.dumps({"image_url": str(p), "label": p.stem.rsplit("_", 1)[0]}) + "\n"
                            for p in images))
    return path


@pytest.mark.slow
def test_fridge_photos_from_the_command_line(tmp_path):
    data = fridge_jsonl(tmp_path / "data")
    out = tmp_path / "trial"
    p = cli("train", "--task", "image_classification", "--training_data", str(data), "--model_name", "mobilenetv2",
            "--pretrained", "0", "--number_of_epochs", "3", "--train_crop_size", "64", "--valid_resize_size", "72",
            "--valid_crop_size", "64", "--training_batch_size", "16", "--optimizer", "adamw",
            "--learning_rate", "0.002", "--warmup_cosine_lr_warmup_epochs", "0", "--num_workers", "1",
            "--output-dir", str(out))
    assert p.returncode == 0, p.stderr[-3000:]
    metric_lines = [ln for ln in (p.stdout + p.stderr).splitlines() if KATIB_METRIC_RE.search(ln)]
    assert len(metric_lines) == 3 and all(TIMESTAMP.match(ln) for ln in metric_lines), metric_lines
    assert "img/s" in p.stderr and "ETA" in p.stderr  # progress lines in a non-interactive log
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    for r in rows:
        for key in ("accuracy", "balanced_accuracy", "matthews_correlation", "log_loss", "AUC_macro",
                    "average_precision_score_weighted", "f1_score_micro", "precision_score_macro",
                    "recall_score_weighted", "train_loss", "loss"):
            assert key in r, key
        assert 0 <= r["accuracy"] <= 1
    evaluation = json.loads((out / "outputs" / "evaluation.json").read_text())
    assert evaluation["labels"] == ["can", "carton", "milk_bottle", "water_bottle"]
    matrix = evaluation["confusion_matrix"]
    assert sum(map(sum, matrix)) == 26  # 20% of 134 photos, per class
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "completed"
    assert result["best_value"] == pytest.approx(max(r["accuracy"] for r in rows), abs=1e-6)


def test_every_model_is_trained_or_stepped():
    assert set(TRAINED[ImageTask.IMAGE_CLASSIFICATION]) | set(TRAINED[ImageTask.IMAGE_CLASSIFICATION_MULTILABEL]) \
        <= set(CLASSIFICATION_MODELS)
    covered = [tuple(p.values) for p in _trained()]
    covered += [(task, p.values[0]) for p in _stepped() for task in p.values[1]]
    assert sorted(covered, key=str) == sorted(((t, m) for m in CLASSIFICATION_MODELS for t in TASKS), key=str)


@pytest.mark.parametrize("task, model_name", _trained())
def test_every_model_family_trains_from_the_cli(tmp_path, make_dataset, capsys, task, model_name):
    """One model of each family, for both classification tasks, through a whole one-epoch ``train`` at
    32x32 (the command a trial pod runs, called in this process)."""
    multilabel = task is ImageTask.IMAGE_CLASSIFICATION_MULTILABEL
    data = make_dataset(tmp_path / "data", n_per_class=3, size=32, multilabel=multilabel)
    out = tmp_path / "out"
    code = main(["train", "--task", task.value, "--training_data", str(data), "--model_name", model_name,
                 "--pretrained", "0", "--number_of_epochs", "1", "--train_crop_size", "32",
                 "--valid_resize_size", "32", "--valid_crop_size", "32", "--training_batch_size", "4",
                 "--validation_batch_size", "4", "--learning_rate", "0.001", "--device", "cpu",
                 "--num_workers", "0", "--output-dir", str(out)])
    assert code == 0, capsys.readouterr().err[-2000:]
    metric_lines = [ln for ln in capsys.readouterr().out.splitlines() if KATIB_METRIC_RE.search(ln)]
    assert len(metric_lines) == 1 and f"{task.primary_metric}=" in metric_lines[0]
    row = read_metrics(out / "metrics.jsonl")[0]
    assert 0 <= row[task.primary_metric] <= 1 and row["loss"] >= 0
    assert json.loads((out / "result.json").read_text())["status"] == "completed"
    config = json.loads((out / "outputs" / "config.json").read_text())
    assert config["model_name"] == model_name and config["num_classes"] == 2 and config["task"] == task.value


@pytest.mark.parametrize("model_name, tasks", _stepped())
def test_every_other_model_takes_a_training_step(model_name, tasks):
    """The models of the families trained above, built as a trial builds them (the hyperparameters
    `train` resolves at 32x32, random init, a head for 2 classes), take one optimizer step on a batch
    for each task they have no whole run of (one model for both: the build is the same)."""
    model = None
    for task in tasks:
        hp = hps.resolve(task, {"model_name": model_name, "pretrained": False, "train_crop_size": 32,
                                "valid_resize_size": 32, "valid_crop_size": 32, "training_batch_size": 4,
                                "validation_batch_size": 4, "learning_rate": 0.001})
        if model is None:
            torch.manual_seed(0)
            model = build_classifier(hp, task, ["green", "red"]).train()
        images = torch.randn(4, 3, 32, 32)
        if task is ImageTask.IMAGE_CLASSIFICATION_MULTILABEL:
            targets = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 1.0]])
        else:
            targets = torch.tensor([0, 1, 0, 1])
        optimizer = build_optimizer(model.parameters(), hp)
        optimizer.zero_grad()
        logits = model(images)
        assert logits.shape == (4, 2) and torch.isfinite(logits).all()
        loss = build_criterion(task, None)(logits, targets)
        assert loss.item() >= 0
        loss.backward()
        head = classifier_head(model)
        assert head.weight.shape[0] == 2 and head.weight.grad is not None
        assert torch.isfinite(head.weight.grad).all() and head.weight.grad.abs().sum() > 0
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        before = head.weight.detach().clone()
        optimizer.step()
        assert not torch.equal(before, head.weight.detach())


@pytest.mark.slow
def test_data_parallel_under_torchrun(tmp_path, make_dataset):
    data = make_dataset(tmp_path / "data", n_per_class=8)
    out = tmp_path / "trial"
    p = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "automl_vision", "train", "--task", "image_classification", "--training_data", str(data),
         "--model_name", "resnet18", "--pretrained", "0", "--number_of_epochs", "2", "--train_crop_size", "24",
         "--valid_resize_size", "24", "--valid_crop_size", "24", "--training_batch_size", "4",
         "--checkpoint_frequency", "1", "--device", "cpu", "--num_workers", "0", "--output-dir", str(out)],
        capture_output=True, text=True, timeout=600, env=ENV)
    assert p.returncode == 0, p.stderr[-3000:]
    metric_lines = [ln for ln in p.stdout.splitlines() if KATIB_METRIC_RE.search(ln)]
    assert len(metric_lines) == 2  # the first process reports; the other only trains
    assert "2 processes" in p.stderr
    assert [r["epoch"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2]
    assert sorted(x.name for x in (out / "checkpoints").iterdir()) == ["epoch_0001.pt", "epoch_0002.pt"]
    # 12 training images over 2 processes in batches of 4: 1 step per process per epoch
    assert torch.load(out / "checkpoints" / "epoch_0002.pt", weights_only=True)["global_step"] == 2
    assert json.loads((out / "result.json").read_text())["status"] == "completed"
