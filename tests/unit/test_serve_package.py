"""The model package: what package_model adds, what load_package refuses, what an engine answers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image
from serve_testdata import save_random_trial

from automl_vision.errors import ConfigError
from automl_vision.models.package import find_weights
from automl_vision.serving.engine import load_engine
from automl_vision.serving.export import package_model
from automl_vision.serving.package import load_package
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


def _refused(package: Path, tmp_path: Path, change, message: str) -> None:
    """A copy of ``package`` changed by ``change`` is refused with ``message``."""
    folder = shutil.copytree(package, tmp_path / "pkg")
    change(folder)
    with pytest.raises(ConfigError) as e:
        load_package(folder)
    assert message in str(e.value)


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
    _refused(trial_outputs, tmp_path, change, message)


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


@pytest.fixture(scope="module")
def packaged(trial_outputs, tmp_path_factory):
    return package_model(trial_outputs, tmp_path_factory.mktemp("packaged") / "p", onnx=False).path


def _other_weights(path):
    """The same architecture with other values: loads fine, answers differently."""
    from safetensors.torch import load_file, save_file

    state = load_file(str(path))
    save_file({k: v + 1 if v.is_floating_point() else v for k, v in state.items()}, str(path))


def test_the_manifest_records_a_hash_of_every_file_a_load_uses(packaged, tmp_path):
    manifest = json.loads((packaged / "package.json").read_text())
    assert set(manifest["sha256"]) == {"model.safetensors", "config.json", "labels.json"}
    assert manifest["sha256"]["model.safetensors"] == manifest["weights_sha256"]
    load_package(packaged)  # as written: verified and accepted
    folder = shutil.copytree(packaged, tmp_path / "pkg")
    (folder / "settings.json").write_text(json.dumps({"valid_resize_size": 40}))  # meant to be edited
    assert load_package(folder).settings()["valid_resize_size"] == 40
    _other_weights(folder / "model.safetensors")
    package_model(folder, folder, onnx=False)  # packaging again records the new weights
    assert json.loads((folder / "package.json").read_text())["sha256"]["model.safetensors"] != \
        manifest["sha256"]["model.safetensors"]
    load_package(folder)


@pytest.mark.parametrize("change, message", [
    (lambda d: _other_weights(d / "model.safetensors"), "model.safetensors has changed since the package was made"),
    (lambda d: (d / "labels.json").write_text('["can", "carton", "juice"]'),
     "labels.json has changed since the package was made"),
    (lambda d: (d / "model.onnx").write_bytes(b"not in the manifest"),
     "model.onnx is not in package.json's list of files, so it cannot be checked"),
    (lambda d: (d / "config.json").unlink(), "config.json is listed in package.json but missing"),
])
def test_a_changed_package_file_is_refused_by_name(packaged, tmp_path, change, message):
    _refused(packaged, tmp_path, change, message)


def test_a_package_with_only_the_weights_hash_still_checks_the_weights(packaged, tmp_path):
    folder = shutil.copytree(packaged, tmp_path / "pkg")
    manifest = json.loads((folder / "package.json").read_text())
    del manifest["sha256"]  # as packages made before per-file hashes are
    (folder / "package.json").write_text(json.dumps(manifest))
    load_package(folder)
    _other_weights(folder / "model.safetensors")
    with pytest.raises(ConfigError, match="model.safetensors has changed since the package was made"):
        load_package(folder)


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "not a readable safetensors file"),
    (lambda p: p.write_bytes(b"\x00" * 64), "not a readable safetensors file"),
])
def test_a_corrupt_weights_file_is_a_clear_load_error(trial_outputs, tmp_path, damage, message):
    folder = shutil.copytree(trial_outputs, tmp_path / "pkg")
    damage(folder / "model.safetensors")
    package = load_package(folder)
    with pytest.raises(ConfigError) as e:
        load_engine(package, package.settings())
    assert message in str(e.value) and "model.safetensors" in str(e.value)


def test_a_corrupt_onnx_file_is_a_clear_load_error(trial_outputs, tmp_path):
    folder = shutil.copytree(trial_outputs, tmp_path / "pkg")
    (folder / "model.onnx").write_bytes(b"\x08\x07garbage" * 10)
    package = load_package(folder)
    with pytest.raises(ConfigError, match=r"model.onnx: ONNX Runtime cannot load it .*corrupt or truncated"):
        load_engine(package, package.settings(("--settings", {"runtime": "onnx"})))


def test_an_overlong_class_name_is_refused(trial_outputs, tmp_path):
    folder = shutil.copytree(trial_outputs, tmp_path / "pkg")
    (folder / "labels.json").write_text(json.dumps(["can", "x" * 10_000, "milk"]))
    with pytest.raises(ConfigError, match="labels.json: class name 1 has 10,000 characters, over the limit of 256"):
        load_package(folder)


def test_package_files_are_renamed_into_place_not_rewritten(packaged, tmp_path):
    """A reader that opened a file before re-packaging keeps reading a whole file: the new one is
    written beside it and renamed over it (a new inode), never truncated in place."""
    folder = shutil.copytree(packaged, tmp_path / "pkg")
    names = ["settings.json", "package.json", "README.md", "config.json", "labels.json", "model.safetensors"]
    before = {n: (folder / n).stat().st_ino for n in names}
    package_model(packaged, folder, onnx=False)
    after = {n: (folder / n).stat().st_ino for n in names}
    assert all(before[n] != after[n] for n in names), (before, after)
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_best_model_is_replaced_without_a_moment_without_one(tmp_path):
    from automl_vision.training.runfolder import replace_folder

    target, new = tmp_path / "best_model", tmp_path / "best_model.tmp"
    target.mkdir()
    (target / "model.safetensors").write_text("old")
    with pytest.raises(OSError):
        replace_folder(tmp_path / "missing.tmp", target)  # the new one cannot be moved in
    assert (target / "model.safetensors").read_text() == "old"  # the old one is still served
    new.mkdir()
    (new / "model.safetensors").write_text("new")
    replace_folder(new, target)
    assert (target / "model.safetensors").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best_model"]
