"""Classification models (spec section 3) from torchvision and timm, head sized to the classes.

Pretrained weights are read from the libraries' normal caches only (``$TORCH_HOME/hub/checkpoints``
for torchvision, the Hugging Face cache for timm). When they are asked for and missing, building
fails at once naming the file expected; nothing is downloaded behind the user's back and random
weights are never substituted.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torchvision
from torch import nn

from automl_vision.errors import ConfigError
from automl_vision.models.registry import register_model
from automl_vision.spec.tasks import CLASSIFICATION_TASKS

RESNET_GROUPS = [("conv1.", "bn1."), "layer1.", "layer2.", "layer3.", "layer4."]
MOBILENET_GROUPS = [f"features.{i}." for i in range(19)]
VIT_GROUPS = ["patch_embed", *[f"blocks.{i}." for i in range(12)]]


def _torchvision_weights_file(weights) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def _torchvision_classifier(arch: str, weights_enum: str, num_classes: int, pretrained: bool) -> nn.Module:
    builder = getattr(torchvision.models, arch)
    if not pretrained:
        model = builder(weights=None)
    else:
        weights = getattr(torchvision.models, weights_enum).DEFAULT
        path = _torchvision_weights_file(weights)
        if not path.is_file():
            raise ConfigError(
                f"pretrained weights for {arch} not found: expected {path} "
                f"(download {weights.url} there, or set TORCH_HOME to a folder holding hub/checkpoints/"
                f"{path.name}); or train from scratch with pretrained: 0"
            )
        model = builder(weights=None)
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    # A new head sized to the classes (random init), whatever the weights.
    if arch.startswith("resnet"):
        model.fc = nn.Linear(model.fc.in_features, num_classes)
    else:
        last = model.classifier[-1]
        model.classifier[-1] = nn.Linear(last.in_features, num_classes)
    return model


def _timm_classifier(timm_name: str, num_classes: int, pretrained: bool) -> nn.Module:
    import timm

    if not pretrained:
        return timm.create_model(timm_name, pretrained=False, num_classes=num_classes)
    # Offline lookup only: with HF_HUB_OFFLINE the hub client reads its cache and fails fast.
    previous = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        return timm.create_model(timm_name, pretrained=True, num_classes=num_classes)
    except Exception as e:  # the hub client raises several types for "not in cache"
        cfg = timm.models.get_pretrained_cfg(timm_name)
        hub = getattr(cfg, "hf_hub_id", None) or timm_name
        raise ConfigError(
            f"pretrained weights for {timm_name} not found in the Hugging Face cache "
            f"({os.environ.get('HF_HOME', '~/.cache/huggingface')}): expected hub repository {hub!r} "
            f"({type(e).__name__}); seed the cache with it, or train from scratch with pretrained: 0"
        ) from None
    finally:
        if previous is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous


def _register_torchvision(name: str, arch: str, weights_enum: str, groups) -> None:
    @register_model(name, tasks=CLASSIFICATION_TASKS, layer_groups=groups)
    def build(num_classes: int, *, pretrained: bool) -> nn.Module:
        return _torchvision_classifier(arch, weights_enum, num_classes, pretrained)


def _register_timm(name: str, timm_name: str, groups) -> None:
    @register_model(name, tasks=CLASSIFICATION_TASKS, layer_groups=groups)
    def build(num_classes: int, *, pretrained: bool) -> nn.Module:
        return _timm_classifier(timm_name, num_classes, pretrained)


_register_torchvision("mobilenetv2", "mobilenet_v2", "MobileNet_V2_Weights", MOBILENET_GROUPS)
for _depth in (18, 34, 50, 101, 152):
    _register_torchvision(f"resnet{_depth}", f"resnet{_depth}", f"ResNet{_depth}_Weights", RESNET_GROUPS)
_register_timm("resnest50", "resnest50d", RESNET_GROUPS)
_register_timm("resnest101", "resnest101e", RESNET_GROUPS)
_register_timm("seresnext", "seresnext50_32x4d", RESNET_GROUPS)
_register_timm("vits16r224", "vit_small_patch16_224", VIT_GROUPS)
_register_timm("vitb16r224", "vit_base_patch16_224", VIT_GROUPS)
_register_timm("vitl16r224", "vit_large_patch16_224", VIT_GROUPS)
