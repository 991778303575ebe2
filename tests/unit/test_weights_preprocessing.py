"""Each pretrained file's own preprocessing (mean, std, interpolation) is what training, the model package
and serving use; models trained from scratch keep ImageNet's statistics. The package's README states the
licences of the code and of the weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from automl_vision.errors import ConfigError
from automl_vision.models.preprocessing import BatchPreparer, normalization, valid_transform
from automl_vision.serving.export import package_model
from automl_vision.serving.package import load_package
from automl_vision.serving.settings import resolve_settings
from automl_vision.spec.tasks import ImageTask
from serve_testdata import save_random_trial

MC = ImageTask.IMAGE_CLASSIFICATION
GREY = Image.fromarray(np.full((40, 40, 3), 200, dtype=np.uint8))

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name, pretrained, mean, interpolation", [
    ("vitb16r224", True, [0.5, 0.5, 0.5], "bicubic"),
    ("seresnext", True, [0.485, 0.456, 0.406], "bicubic"),
    ("resnet50", True, [0.485, 0.456, 0.406], "bilinear"),
    ("vitb16r224", False, [0.485, 0.456, 0.406], "bilinear"),
])
def test_the_weights_own_statistics(name, pretrained, mean, interpolation):
    norm = normalization({"model_name": name, "pretrained": pretrained})
    assert norm["mean"] == pytest.approx(mean) and norm["interpolation"] == interpolation


def test_validation_transform_normalizes_with_the_weights_statistics():
    hp = {"model_name": "vits16r224", "pretrained": True, "valid_resize_size": 32, "valid_crop_size": 32}
    x = valid_transform(hp)(GREY)
    assert x.shape == (3, 32, 32)
    assert torch.allclose(x, torch.full_like(x, (200 / 255 - 0.5) / 0.5), atol=1e-5)
    scratch = valid_transform({**hp, "pretrained": False})(GREY)
    assert torch.allclose(scratch[0], torch.full_like(scratch[0], (200 / 255 - 0.485) / 0.229), atol=1e-5)


def test_batch_preparer_takes_mean_and_std():
    prep = BatchPreparer(torch.device("cpu"), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    out = prep(torch.full((1, 3, 2, 2), 255, dtype=torch.uint8))
    assert torch.allclose(out, torch.ones_like(out))


def test_package_and_serving_settings_carry_the_trained_preprocessing(tmp_path):
    outputs = save_random_trial(tmp_path / "trial", MC, "vits16r224", pretrained=True)
    config = json.loads((outputs / "config.json").read_text())
    assert config["preprocessing"] == {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bicubic"}
    result = package_model(outputs, tmp_path / "best", onnx=False)
    saved = json.loads((result.path / "settings.json").read_text())
    assert saved["preprocessing"] == config["preprocessing"]
    settings = load_package(result.path).settings()
    assert settings["mean"] == [0.5, 0.5, 0.5] and settings["interpolation"] == "bicubic"
    x = valid_transform(dict(settings.model))(GREY)  # what the serving engine runs
    assert torch.allclose(x, torch.full_like(x, (200 / 255 - 0.5) / 0.5), atol=1e-5)
    readme = (result.path / "README.md").read_text()
    assert "## Licences" in readme and "timm, licence Apache-2.0" in readme
    assert "timm/vit_small_patch16_224." in readme and "licence: apache-2.0" in readme


def test_a_model_trained_from_scratch_says_so_in_its_readme(tmp_path):
    outputs = save_random_trial(tmp_path / "trial", MC, "resnet18")
    result = package_model(outputs, tmp_path / "best", onnx=False)
    readme = (result.path / "README.md").read_text()
    assert "torchvision, licence BSD-3-Clause" in readme and "random initialization" in readme
    assert load_package(result.path).settings()["mean"] == [0.485, 0.456, 0.406]


def test_preprocessing_settings_are_checked():
    with pytest.raises(ConfigError, match="std=.*expected three numbers"):
        resolve_settings(MC, "resnet18", {"pretrained": True}, [("--settings", {"std": [0.2, 0.0, 0.1]})])
    with pytest.raises(ConfigError, match="interpolation='lanczos'"):
        resolve_settings(MC, "resnet18", {"pretrained": True}, [("--settings", {"interpolation": "lanczos"})])
