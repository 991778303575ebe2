"""Detection trials through the one epoch loop, in process on tiny data: a killed run resumes from its
latest checkpoint to the same end (torchvision and yolov5), incremental training starts from an
earlier package (both), and the one package reader reads what training writes for every task."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch
from det_testdata import make_detection_dataset

from automl_vision.models.package import read_package
from automl_vision.spec.hyperparameters import resolve
from automl_vision.spec.tasks import ImageTask
from automl_vision.training.detection import train_detection
from automl_vision.training.loop import latest_checkpoint
from automl_vision.training.reporter import read_metrics
from automl_vision.training.trial import TrialSettings

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

OD = ImageTask.IMAGE_OBJECT_DETECTION
TORCHVISION = {"model_name": "fasterrcnn_resnet18_fpn", "pretrained": False, "min_size": 64, "max_size": 96,
               "box_score_thresh": 0.01, "training_batch_size": 3, "early_stopping": False}
YOLO = {"model_name": "yolov5", "model_size": "small", "pretrained": False, "img_size": 64,
        "training_batch_size": 3, "validation_batch_size": 3, "early_stopping": False}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("det")
    return make_detection_dataset(root / "train", n=6, seed=0), make_detection_dataset(root / "val", n=3, seed=1)


def settings_for(data, out, **hp) -> TrialSettings:
    train, val = data
    return TrialSettings(task=OD, training_data=str(train), validation_data=str(val),
                         hyperparameters=resolve(OD, hp), output_dir=str(out), device="cpu", num_workers=0)


def _rows(folder):
    return [{k: v for k, v in r.items() if k != "timestamp"} for r in read_metrics(folder / "metrics.jsonl")]


def _kill_after(full, cut, epoch: int) -> None:
    """``cut``: the folder of ``full``'s run as if killed during epoch ``epoch + 1``."""
    shutil.copytree(full, cut)
    for path in (cut / "checkpoints").glob("epoch_*.pt"):
        if int(path.stem.split("_")[1]) > epoch:
            path.unlink()
    (cut / "result.json").unlink()


def test_torchvision_detector_resumes_exactly(data, tmp_path):
    full = tmp_path / "full"
    settings = settings_for(data, full, **TORCHVISION, number_of_epochs=2, checkpoint_frequency=1)
    done = train_detection(settings)
    assert done.epochs_completed == 2 and latest_checkpoint(full).name == "epoch_0002.pt"
    ckpt = torch.load(full / "checkpoints" / "epoch_0001.pt", weights_only=True)
    assert ckpt["format"] == 1 and ckpt["epoch"] == 1 and {"model", "optimizer", "scheduler", "rng"} <= set(ckpt)

    cut = tmp_path / "cut"
    _kill_after(full, cut, 1)
    resumed = train_detection(dataclasses.replace(settings, output_dir=str(cut), resume=True))
    assert resumed.epochs_completed == 2 and resumed.status == "completed"
    assert [r["epoch"] for r in _rows(cut)] == [1, 2]
    assert _rows(cut) == _rows(full)
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    assert len((cut / "per_label_metrics.jsonl").read_text().splitlines()) == 2
    assert (cut / "outputs" / "model.safetensors").read_bytes() == (full / "outputs" / "model.safetensors").read_bytes()


def test_detection_incremental_training_from_a_package(data, tmp_path):
    first = tmp_path / "first"
    train_detection(settings_for(data, first, **TORCHVISION, number_of_epochs=1))
    old = read_package(first / "outputs").state_dict()
    settings = dataclasses.replace(settings_for(data, tmp_path / "second", **TORCHVISION, number_of_epochs=1,
                                                learning_rate=0.0), from_model=str(first / "outputs"))
    result = train_detection(settings)
    assert result.status == "completed"
    new = read_package(tmp_path / "second" / "outputs").state_dict()
    # learning rate 0: every weight is the earlier package's (batch norm statistics move on)
    weights = [k for k in old if "running_" not in k and "num_batches_tracked" not in k]
    assert weights and all(torch.equal(new[k], old[k]) for k in weights)


def test_yolo_resumes_from_its_checkpoint(data, tmp_path):
    full = tmp_path / "full"
    settings = settings_for(data, full, **YOLO, number_of_epochs=2, checkpoint_frequency=1)
    train_detection(settings)
    ckpt = torch.load(full / "checkpoints" / "epoch_0001.pt", weights_only=True)
    assert ckpt["epoch"] == 1 and "ema" in ckpt["task"]

    cut = tmp_path / "cut"
    _kill_after(full, cut, 1)
    resumed = train_detection(dataclasses.replace(settings, output_dir=str(cut), resume=True))
    assert resumed.epochs_completed == 2 and resumed.status == "completed"
    assert [r["epoch"] for r in _rows(cut)] == [1, 2]
    assert _rows(cut)[0] == _rows(full)[0]  # the first epoch's report kept as it was
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    assert read_package(cut / "outputs").epoch == resumed.best_epoch

    # incremental training from the resumed trial's package: learning rate 0 keeps its convolutions
    again = dataclasses.replace(settings_for(data, tmp_path / "again", **YOLO, number_of_epochs=1, learning_rate=0.0),
                                from_model=str(cut / "outputs"))
    assert train_detection(again).status == "completed"
    old, new = (read_package(f / "outputs").state_dict() for f in (cut, tmp_path / "again"))
    assert torch.equal(new["model.0.conv.weight"], old["model.0.conv.weight"])


@pytest.mark.parametrize("task, model_name", [
    (ImageTask.IMAGE_CLASSIFICATION, "resnet18"),
    (ImageTask.IMAGE_OBJECT_DETECTION, "fasterrcnn_resnet18_fpn"),
    (ImageTask.IMAGE_INSTANCE_SEGMENTATION, "maskrcnn_resnet18_fpn"),
    (ImageTask.IMAGE_OBJECT_DETECTION, "yolov5"),
])
def test_the_package_reader_reads_what_training_writes(tmp_path, task, model_name):
    from serve_testdata import save_random_trial

    from automl_vision.serving.export import package_model
    from automl_vision.serving.package import build_torch_model, load_package

    outputs = save_random_trial(tmp_path / "trial", task, model_name)
    package = read_package(outputs)
    assert (package.task, package.model_name, package.labels, package.epoch) == (task, model_name, ["blue", "red"], 1)
    config = json.loads((outputs / "config.json").read_text())
    assert ("preprocessing" if task.is_classification else "model_settings") in config
    # the serving reader and the model loaders take the same folder, packaged or not
    packaged = package_model(outputs, tmp_path / "package", onnx=False).path
    for folder in (outputs, packaged):
        served = load_package(folder)
        assert served.labels == package.labels and served.model_name == model_name
        if model_name == "yolov5":
            from automl_vision.models.yolo import load_yolo

            assert load_yolo(folder).classes == ["blue", "red"]
        elif task.is_classification:
            assert build_torch_model(served) is not None
        else:
            from automl_vision.models.detection import load_detector

            assert load_detector(folder).classes == ["blue", "red"]
