"""Every classification model builds, trains one step and freezes its layer groups; pretrained
weights come from a folder or an s3:// prefix (fetching from the sources: tests/integration/test_weights_fetch.py)."""

from __future__ import annotations

import math

import pytest
import torch

from automl_vision.errors import ConfigError
from automl_vision.models.catalogue import torchvision_weights, weights_file
from automl_vision.models.classification import classifier_head
from automl_vision.models.registry import build_model, freeze_layers, layer_group_prefixes
from automl_vision.models.weights import WeightsSource, locate, s3_endpoint_from_env
from automl_vision.spec.catalogue import MODELS
from automl_vision.spec.tasks import CLASSIFICATION_MODELS, FIXED_SIZE_MODELS, LAYER_GROUPS, ImageTask
from weights_testdata import publish_torchvision, s3, torch_bytes  # noqa: F401 (s3: a fixture)

MC = ImageTask.IMAGE_CLASSIFICATION
ML = ImageTask.IMAGE_CLASSIFICATION_MULTILABEL


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", CLASSIFICATION_MODELS)
def test_build_step_and_freeze_every_model(name):
    """Random weights, one forward/backward at 32x32 (ViTs built for that size), finite loss and
    gradients; every layer group names real parameters and freezing them all leaves the head trainable."""
    torch.manual_seed(0)
    model = build_model(name, MC, 3, pretrained=False, image_size=32)
    assert classifier_head(model).out_features == 3
    model.train()
    logits = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 3)
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 2]))
    assert math.isfinite(loss.item())
    loss.backward()
    head = classifier_head(model)
    assert head.weight.grad is not None and torch.isfinite(head.weight.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)

    groups = layer_group_prefixes(name, MC)
    assert len(groups) == LAYER_GROUPS[name]
    names = [n for n, _ in model.named_parameters()]
    for group in groups:
        assert any(n.startswith(group) for n in names), (name, group)
    frozen = set(freeze_layers(model, name, MC, len(groups)))
    assert frozen == {n for n in names if n.startswith(tuple(p for g in groups for p in g))}
    assert all(p.requires_grad for n, p in model.named_parameters() if n not in frozen)
    assert head.weight.requires_grad


def test_vit_image_size_sets_the_position_embedding():
    model = build_model("vits16r224", ML, 5, pretrained=False, image_size=48)
    assert model.pos_embed.shape[1] == 1 + (48 // 16) ** 2
    assert model(torch.randn(1, 3, 48, 48)).shape == (1, 5)
    with pytest.raises(AssertionError):  # timm refuses another size: the crop sizes must be equal
        model(torch.randn(1, 3, 32, 32))


# --- pretrained weights --------------------------------------------------------------------------

def test_weights_files():
    assert weights_file("resnet18").relpath == "resnet18-f37072fd.pth"
    assert weights_file("resnet18").url == "https://download.pytorch.org/models/resnet18-f37072fd.pth"
    vit = weights_file("vitb16r224")
    assert vit.relpath == f"{vit.hub_id}/model.safetensors" and vit.hub_id.startswith("timm/vit_base_patch16_224")
    assert vit.url == f"https://huggingface.co/{vit.hub_id}/resolve/main/model.safetensors"
    assert {MODELS[m].family for m in CLASSIFICATION_MODELS} == {"torchvision", "timm"}


def _seed_torchvision(folder, monkeypatch, name="resnet18"):
    """A random state dict published under a name carrying its own hash, as torchvision names its files."""
    import torchvision

    torch.manual_seed(1)
    source = getattr(torchvision.models, MODELS[name].arch)(weights=None)
    data = torch_bytes(source.state_dict())
    member = torchvision_weights(MODELS[name])
    path = folder / publish_torchvision(monkeypatch, member, data, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return source, path


def _seed_timm(folder, name):
    import timm
    from safetensors.torch import save_file

    path = folder / weights_file(name).relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(2)
    source = timm.create_model(MODELS[name].arch, pretrained=False)  # 1000 classes, as published
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    return source, path


def test_torchvision_weights_from_folder(tmp_path, monkeypatch):
    source, _ = _seed_torchvision(tmp_path, monkeypatch)
    model = build_model("resnet18", MC, 4, pretrained=True, weights=WeightsSource(str(tmp_path)))
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    assert torch.equal(model.layer4[1].bn2.running_var, source.layer4[1].bn2.running_var)
    assert model.fc.out_features == 4


def test_timm_weights_from_folder(tmp_path):
    source, _ = _seed_timm(tmp_path, "seresnext")
    model = build_model("seresnext", ML, 3, pretrained=True, weights=WeightsSource(str(tmp_path)))
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    assert model.get_classifier().out_features == 3


def test_vit_pretrained_at_another_size(tmp_path):
    source, _ = _seed_timm(tmp_path, "vits16r224")
    model = build_model("vits16r224", MC, 2, pretrained=True, weights=WeightsSource(str(tmp_path)), image_size=32)
    assert torch.equal(model.patch_embed.proj.weight, source.patch_embed.proj.weight)
    assert torch.equal(model.cls_token, source.cls_token)
    assert model.pos_embed.shape == (1, 5, 384)  # resampled from 14x14 to 2x2
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 2)


@pytest.mark.parametrize("name, fragments", [
    ("resnet50", ["pretrained weights for resnet50 not found: expected {dir}/resnet50-11ad3fa6.pth",
                  "automl-vision weights fetch --models resnet50 --to DIR_OR_S3",
                  "download https://download.pytorch.org/models/resnet50-11ad3fa6.pth to that path",
                  "or train from scratch with pretrained: 0"]),
    ("vitb16r224", ["pretrained weights for vitb16r224 not found: expected {dir}/timm/vit_base_patch16_224.",
                    "/model.safetensors", "automl-vision weights fetch --models vitb16r224",
                    "or train from scratch with pretrained: 0"]),
])
def test_missing_weights_in_folder(tmp_path, name, fragments):
    with pytest.raises(ConfigError) as info:
        build_model(name, MC, 2, pretrained=True, weights=WeightsSource(str(tmp_path)))
    for fragment in fragments:
        assert fragment.format(dir=tmp_path) in str(info.value)
    assert list(tmp_path.iterdir()) == []  # nothing downloaded


def test_torchvision_file_in_a_folder_must_match_the_hash_in_its_name(tmp_path):
    path = tmp_path / weights_file("resnet18").relpath
    torch.save({"w": torch.zeros(2)}, path)
    with pytest.raises(ConfigError, match="fails verification .*does not start with f37072fd"):
        build_model("resnet18", MC, 2, pretrained=True, weights=WeightsSource(str(tmp_path)))


def test_missing_timm_weights_in_hf_cache_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("AUTOML_VISION_OFFLINE", "1")
    with pytest.raises(ConfigError) as info:
        build_model("resnest50", MC, 2, pretrained=True)
    message = str(info.value)
    assert f"expected {tmp_path}/models--timm--resnest50d.in1k/snapshots/<commit>/model.safetensors" in message
    assert "offline: AUTOML_VISION_OFFLINE is set" in message and "pretrained: 0" in message
    assert "huggingface-cli download timm/resnest50d.in1k model.safetensors" in message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("env, expected", [
    ({}, None),
    ({"AWS_ENDPOINT_URL": "http://minio:9000"}, "http://minio:9000"),
    ({"S3_ENDPOINT": "minio:9000", "S3_USE_HTTPS": "0"}, "http://minio:9000"),
    ({"S3_ENDPOINT": "minio:9000"}, "https://minio:9000"),
    ({"AWS_ENDPOINT_URL_S3": "http://a:1", "AWS_ENDPOINT_URL": "http://b:2"}, "http://a:1"),
])
def test_s3_endpoint_from_env(env, expected):
    assert s3_endpoint_from_env(env) == expected


# --- s3:// prefix, against a real S3 server on 127.0.0.1 ----------------------------------------------

def test_weights_from_s3(tmp_path, s3, monkeypatch):
    client, endpoint = s3
    source, path = _seed_torchvision(tmp_path / "seed", monkeypatch)
    client.fput_object("models", f"zoo/v1/{path.name}", str(path))
    cache = tmp_path / "cache"
    where = WeightsSource("s3://models/zoo/v1", endpoint, str(cache))
    model = build_model("resnet18", MC, 3, pretrained=True, weights=where)
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    local = cache / "models" / "zoo" / "v1" / path.name
    assert local.read_bytes() == path.read_bytes()
    assert locate(weights_file("resnet18"), where) == local  # the cached copy is used again


def test_missing_weights_in_s3(tmp_path, s3):
    _, endpoint = s3
    where = WeightsSource("s3://models/zoo", endpoint, str(tmp_path))
    with pytest.raises(ConfigError) as info:
        build_model("mobilenetv2", MC, 2, pretrained=True, weights=where)
    message = str(info.value)
    assert "pretrained weights for mobilenetv2 not found: expected s3://models/zoo/mobilenet_v2-7ebf99e0.pth" in message
    assert "automl-vision weights fetch --models mobilenetv2" in message
    assert "aws s3 cp mobilenet_v2-7ebf99e0.pth s3://models/zoo/mobilenet_v2-7ebf99e0.pth" in message
    assert list(tmp_path.iterdir()) == []


def test_fixed_size_models_are_the_vits():
    assert set(FIXED_SIZE_MODELS) == {"vits16r224", "vitb16r224", "vitl16r224"}
