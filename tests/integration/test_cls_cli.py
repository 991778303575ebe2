"""Classification trials for real: real photos from the command line, every model name for both
tasks through `train`, and a two-process data-parallel run under torchrun (gloo on the CPU)."""

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
from automl_vision.spec.tasks import CLASSIFICATION_MODELS, ImageTask
from automl_vision.training.reporter import KATIB_METRIC_RE, read_metrics

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

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


@pytest.mark.parametrize("task", [ImageTask.IMAGE_CLASSIFICATION, ImageTask.IMAGE_CLASSIFICATION_MULTILABEL],
                         ids=["multiclass", "multilabel"])
@pytest.mark.parametrize("model_name", CLASSIFICATION_MODELS)
def test_every_model_trains_from_the_cli(tmp_path, make_dataset, capsys, task, model_name):
    """Each model name, for both classification tasks, through a whole one-epoch ``train`` at 32x32
    (the command a trial pod runs, called in this process)."""
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
