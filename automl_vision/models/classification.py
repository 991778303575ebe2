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
    # Look in the Hugging Face cache ourselves: asking timm to load would go to the network
    # (and retry for a long time) when the file is missing.
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(timm_name)
    hub = getattr(cfg, "hf_hub_id", None) or f"timm/{timm_name}"
    for filename in ("model.safetensors", "pytorch_model.bin"):
        path = try_to_load_from_cache(hub, filename)
        if isinstance(path, str):
            return timm.create_model(timm_name, pretrained=True, num_classes=num_classes,
                                     pretrained_cfg_overlay={"file": path})
    cache = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")), "hub")
    raise ConfigError(
        f"pretrained weights for {timm_name} not found: expected model.safetensors of the Hugging Face "
        f"repository {hub!r} in the cache {cache} (seed it with `huggingface-cli download {hub}` on a "
        f"machine with access, then copy the cache); or train from scratch with pretrained: 0"
    )


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
