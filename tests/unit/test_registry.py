"""The model registry: names, errors, building, freezing and local-only pretrained weights."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torchvision

from automl_vision.errors import ConfigError
from automl_vision.models.registry import build_model, freeze_layers, get_entry, layer_group_prefixes, registered_models
from automl_vision.spec.catalogue import MODELS, ROWS, index
from automl_vision.spec.tasks import CLASSIFICATION_MODELS, MODEL_TASKS, ImageTask
from weights_testdata import publish_torchvision, torch_bytes

MC = ImageTask.IMAGE_CLASSIFICATION
ML = ImageTask.IMAGE_CLASSIFICATION_MULTILABEL

SPEC_CLASSIFICATION_NAMES = {
    "mobilenetv2", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "resnest50", "resnest101", "seresnext", "vits16r224", "vitb16r224", "vitl16r224",
}


@pytest.mark.parametrize("task", [MC, ML])
def test_all_spec_classification_models_registered(task):
    names = registered_models(task)
    assert set(names) >= SPEC_CLASSIFICATION_NAMES
    assert len(SPEC_CLASSIFICATION_NAMES) == 12
    assert set(CLASSIFICATION_MODELS) == SPEC_CLASSIFICATION_NAMES
    assert len(names) == len(set(names))


def test_classification_models_not_offered_for_detection():
    assert not set(registered_models(ImageTask.IMAGE_OBJECT_DETECTION)) & SPEC_CLASSIFICATION_NAMES


@pytest.mark.parametrize("name,task,fragments", [
    ("resnet19", MC, ["model_name='resnet19' is not available for image_classification",
                      "(did you mean 'resnet18'?)", "available: "]),
    ("mobilenet_v2", MC, ["model_name='mobilenet_v2'", "(did you mean 'mobilenetv2'?)"]),
    ("vitb16", ML, ["is not available for image_classification_multilabel", "(did you mean 'vitb16r224'?)"]),
    ("zzz", MC, ["model_name='zzz' is not available for image_classification; available: "]),
    ("resnet18", ImageTask.IMAGE_OBJECT_DETECTION, ["model_name='resnet18' is not available for image_object_detection"]),
])
def test_unknown_model(name, task, fragments):
    with pytest.raises(ConfigError) as info:
        build_model(name, task, 2, pretrained=False)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message
    if task.is_classification:
        listed = message.split("available: ", 1)[1]
        for valid in SPEC_CLASSIFICATION_NAMES:
            assert valid in listed
    if name == "zzz":
        assert "did you mean" not in message


def test_a_model_declared_twice_raises():
    with pytest.raises(ValueError, match="model 'resnet18' declared twice"):
        index([*ROWS, MODELS["resnet18"]])
    assert get_entry("resnet18", MC).layer_groups[0] == ("conv1.", "bn1.")


def _cheap_options(name: str) -> dict:
    """Build options that keep a build quick: small inputs, the smallest yolov5."""
    row = MODELS[name]
    if row.sizes:
        return {"model_size": next(iter(row.sizes))}
    if row.fixed_size:
        return {"image_size": 32}
    return {}


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("name", list(MODELS))
def test_every_catalogue_row_builds(name):
    """Each row's builder makes a model (random weights, no training) whose layer groups name real
    parameters."""
    task = min(MODEL_TASKS[name], key=lambda t: t.value)
    entry = get_entry(name, task)
    assert entry.layer_groups == MODELS[name].layer_groups
    model = entry.builder(2, pretrained=False, **_cheap_options(name))
    names = [n for n, _ in model.named_parameters()]
    for group in entry.layer_groups:
        assert any(n.startswith(group) for n in names), (name, group)


@pytest.mark.parametrize("name", ["resnet18", "mobilenetv2"])
@pytest.mark.parametrize("num_classes", [3, 7])
def test_build_forward_backward(name, num_classes):
    torch.manual_seed(0)
    model = build_model(name, MC, num_classes, pretrained=False)
    model.train()
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, num_classes)
    loss = torch.nn.functional.cross_entropy(out, torch.tensor([0, num_classes - 1]))
    assert math.isfinite(loss.item())
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_freeze_resnet18_first_group():
    model = build_model("resnet18", MC, 2, pretrained=False)
    frozen = freeze_layers(model, "resnet18", MC, 1)
    assert sorted(frozen) == ["bn1.bias", "bn1.weight", "conv1.weight"]
    for pname, p in model.named_parameters():
        assert p.requires_grad == (pname not in frozen), pname


def test_freeze_resnet18_two_groups():
    model = build_model("resnet18", MC, 2, pretrained=False)
    frozen = freeze_layers(model, "resnet18", MC, 2)
    assert set(frozen) == {n for n, _ in model.named_parameters() if n.startswith(("conv1.", "bn1.", "layer1."))}
    assert not any(n.startswith(("layer2.", "fc.")) for n in frozen)


def test_freeze_mobilenetv2_three_groups():
    model = build_model("mobilenetv2", MC, 2, pretrained=False)
    frozen = freeze_layers(model, "mobilenetv2", MC, 3)
    expected = {n for n, _ in model.named_parameters() if n.split(".")[:2] in (["features", "0"], ["features", "1"],
                                                                             ["features", "2"])}
    assert set(frozen) == expected and expected
    # features.1x (10..18) share the digit but not the group
    assert not any(n.startswith(tuple(f"features.1{d}." for d in "012345678")) for n in frozen)
    for pname, p in model.named_parameters():
        assert p.requires_grad == (pname not in expected), pname


def test_freeze_zero_groups_freezes_nothing():
    model = build_model("mobilenetv2", MC, 2, pretrained=False)
    assert freeze_layers(model, "mobilenetv2", MC, 0) == []
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("name,count,groups", [("resnet18", 6, 5), ("mobilenetv2", 20, 19)])
def test_freeze_too_many_groups(name, count, groups):
    model = build_model(name, MC, 2, pretrained=False)
    with pytest.raises(ConfigError, match=rf"layers_to_freeze={count}: {name} has {groups} layer groups"):
        freeze_layers(model, name, MC, count)
    assert all(p.requires_grad for p in model.parameters())


def test_layer_group_prefixes():
    assert layer_group_prefixes("resnet50", MC) == (("conv1.", "bn1."), ("layer1.",), ("layer2.",), ("layer3.",),
                                                    ("layer4.",))
    assert len(layer_group_prefixes("mobilenetv2", ML)) == 19


def test_pretrained_missing_weights_names_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("AUTOML_VISION_OFFLINE", "1")  # never the real download site from a test
    expected = tmp_path / "hub" / "checkpoints" / os.path.basename(torchvision.models.ResNet18_Weights.DEFAULT.url)
    with pytest.raises(ConfigError) as info:
        build_model("resnet18", MC, 2, pretrained=True)
    message = str(info.value)
    assert f"expected {expected}" in message
    assert "pretrained: 0" in message
    assert torchvision.models.ResNet18_Weights.DEFAULT.url in message
    assert not expected.exists()  # nothing downloaded
    assert list(tmp_path.iterdir()) == []


def test_pretrained_loads_local_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.manual_seed(1)
    source = torchvision.models.resnet18(weights=None)
    data = torch_bytes(source.state_dict())  # named after its own hash, as torchvision names its files
    name = publish_torchvision(monkeypatch, torchvision.models.ResNet18_Weights.DEFAULT, data, "resnet18")
    (tmp_path / "hub" / "checkpoints" / name).write_bytes(data)
    model = build_model("resnet18", MC, 4, pretrained=True)
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    assert model.fc.out_features == 4
