"""The model package: what package_model adds, what load_package refuses, what an engine answers."""

from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image
from serve_testdata import save_random_trial

from automl_vision.errors import ConfigError
from automl_vision.serving.engine import load_engine
from automl_vision.serving.package import find_weights, load_package, package_model
from automl_vision.spec.tasks import ImageTask

MC, ML = ImageTask.IMAGE_CLASSIFICATION, ImageTask.IMAGE_CLASSIFICATION_MULTILABEL


@pytest.fixture(scope="module")
def trial_outputs(tmp_path_factory):
    return save_random_trial(tmp_path_factory.mktemp("trial"), MC, "resnet18", classes=("can", "carton", "milk"))


def test_package_model_adds_settings_manifest_and_readme(trial_outputs, tmp_path):
    result = package_model(trial_outputs, tmp_path / "best_model", onnx=False)
    files = {p.name for p in result.path.iterdir()}
    assert {"model.safetensors", "config.json", "labels.json", "metrics.json", "settings.json", "package.json",
            "README.md"} <= files
    settings = json.loads((result.path / "settings.json").read_text())
    assert settings["model_settings"] == {"valid_resize_size": 32, "valid_crop_size": 32}
    assert settings["serving"]["max_batch_size"] is None  # by device: 1 on the CPU, 16 on a GPU
    manifest = json.loads((result.path / "package.json").read_text())
    assert manifest["files"]["weights"] == "model.safetensors" and manifest["onnx"] == {"file": None,
                                                                                       "reason": "not requested"}
    readme = (result.path / "README.md").read_text()
    assert "automl-vision serve --model" in readme and '"input_data"' in readme and "No ONNX export" in readme


def test_the_trial_folder_is_packaged_in_place(trial_outputs, tmp_path):
    folder = shutil.copytree(trial_outputs, tmp_path / "outputs")
    package_model(folder, folder, onnx=False)
    assert (folder / "settings.json").is_file() and len(list(folder.glob("*.safetensors"))) == 1


def test_settings_json_changes_the_served_settings(trial_outputs, tmp_path):
    pkg = package_model(trial_outputs, tmp_path / "p", onnx=False).path
    (pkg / "settings.json").write_text(json.dumps({"valid_resize_size": 40, "max_batch_size": 3}))
    settings = load_package(pkg).settings(("--settings", {"max_batch_size": 5}))
    assert settings["valid_resize_size"] == 40 and settings.max_batch_size == 5


@pytest.mark.parametrize("change, message", [
    (lambda d: (d / "model.safetensors").unlink(), "no weights file (expected one model.safetensors"),
    (lambda d: shutil.copy(d / "model.safetensors", d / "extra.pt"), "2 weights files (extra.pt, model.safetensors)"),
    (lambda d: (d / "config.json").unlink(), "config.json missing"),
    (lambda d: (d / "labels.json").write_text('["a"]'), "config.json says num_classes=3 but labels.json has 1"),
    (lambda d: (d / "labels.json").write_text("{}"), "labels.json: expected a non-empty list of class names"),
    (lambda d: (d / "config.json").write_text('{"task": "image_classification"}'),
     "config.json: key 'model_name' missing"),
])
def test_load_package_refuses(trial_outputs, tmp_path, change, message):
    folder = shutil.copytree(trial_outputs, tmp_path / "pkg")
    change(folder)
    with pytest.raises(ConfigError) as e:
        load_package(folder)
    assert message in str(e.value)


def test_find_weights_missing_folder(tmp_path):
    with pytest.raises(ConfigError, match="model folder not found"):
        find_weights(tmp_path / "nope")


def test_a_pickled_checkpoint_is_refused(trial_outputs, tmp_path):
    import torch

    folder = shutil.copytree(trial_outputs, tmp_path / "pkg")
    (folder / "model.safetensors").unlink()
    torch.save({"model": object()}, folder / "model.pt")  # not plain tensors: needs unpickling code
    with pytest.raises(ConfigError, match="not loadable as plain tensors"):
        load_engine(load_package(folder), load_package(folder).settings())


@pytest.mark.parametrize("task", [MC, ML])
def test_engine_answers_in_the_original_format(tmp_path, task):
    outputs = save_random_trial(tmp_path, task, "mobilenetv2", classes=("a", "b", "c"))
    package = load_package(outputs)
    engine = load_engine(package, package.settings())
    assert engine.runtime == "pytorch"  # runtime auto, and a trial's outputs have no model.onnx
    images = [Image.new("RGB", (50, 30), c) for c in ("red", "blue")]
    answers = engine.infer([engine.preparer(im) for im in images])
    assert [set(a) for a in answers] == [{"probs", "labels"}] * 2
    assert all(a["labels"] == ["a", "b", "c"] and len(a["probs"]) == 3 for a in answers)
    if task is MC:
        assert all(abs(sum(a["probs"]) - 1) < 1e-6 for a in answers)
    assert all(0 <= p <= 1 for a in answers for p in a["probs"])


def test_onnx_runtime_needs_the_export(trial_outputs):
    package = load_package(trial_outputs)
    with pytest.raises(ConfigError, match="runtime='onnx' but .* has no model.onnx"):
        load_engine(package, package.settings(("--settings", {"runtime": "onnx"})))
