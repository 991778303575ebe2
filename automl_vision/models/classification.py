"""Classification models (spec section 3) from torchvision and timm, head sized to the classes.

Pretrained weights are read from the libraries' normal caches, or from a folder or ``s3://``
prefix the user seeded (see ``models/weights.py``). When they are asked for and missing,
building fails at once naming the file expected; nothing is downloaded behind the user's back
and random weights are never substituted.
"""

from __future__ import annotations

import os

import torch
import torchvision
from torch import nn

from automl_vision.models.registry import register_model
from automl_vision.models.weights import WeightsFile, WeightsSource, locate
from automl_vision.spec.tasks import CLASSIFICATION_TASKS

RESNET_GROUPS = [("conv1.", "bn1."), "layer1.", "layer2.", "layer3.", "layer4."]
MOBILENET_GROUPS = [f"features.{i}." for i in range(19)]
# The position embedding and class token sit beside the patch embedding: they freeze with it.
VIT_GROUPS = [("patch_embed.", "cls_token", "pos_embed", "reg_token"), *[f"blocks.{i}." for i in range(12)]]

#: model_name -> (library, builder name, torchvision weights enum or None)
CLASSIFIERS: dict[str, tuple[str, str, str | None]] = {
    "mobilenetv2": ("torchvision", "mobilenet_v2", "MobileNet_V2_Weights"),
    **{f"resnet{d}": ("torchvision", f"resnet{d}", f"ResNet{d}_Weights") for d in (18, 34, 50, 101, 152)},
    "resnest50": ("timm", "resnest50d", None),
    "resnest101": ("timm", "resnest101e", None),
    "seresnext": ("timm", "seresnext50_32x4d", None),
    "vits16r224": ("timm", "vit_small_patch16_224", None),
    "vitb16r224": ("timm", "vit_base_patch16_224", None),
    "vitl16r224": ("timm", "vit_large_patch16_224", None),
}
#: Models whose input size is fixed when they are built (timm's ``img_size``).
FIXED_SIZE = frozenset({"vits16r224", "vitb16r224", "vitl16r224"})


def weights_file(model_name: str) -> WeightsFile:
    """The pretrained-weights file of a classification model: source, licences and preprocessing."""
    from automl_vision.models.catalogue import (TIMM_CODE, TORCHVISION_CODE, TORCHVISION_IMAGENET,
                                                from_scratch_preprocessing)

    library, arch, enum = CLASSIFIERS[model_name]
    if library == "torchvision":
        weights = getattr(torchvision.models, enum).DEFAULT
        tf = weights.transforms()
        pre = {"mean": list(tf.mean), "std": list(tf.std), "interpolation": tf.interpolation.value,
               "input_size": [3, *tf.crop_size * 2][:3], "resize_size": tf.resize_size[0]}
        return WeightsFile(model_name, os.path.basename(weights.url), weights.url, library,
                           code_licence=TORCHVISION_CODE, weights_licence=TORCHVISION_IMAGENET, preprocessing=pre)
    import timm

    cfg = timm.models.get_pretrained_cfg(arch)
    hub = getattr(cfg, "hf_hub_id", None) or f"timm/{arch}"
    pre = {**from_scratch_preprocessing(), "mean": list(cfg.mean), "std": list(cfg.std),
           "interpolation": cfg.interpolation or "bilinear", "input_size": list(cfg.input_size),
           "crop_pct": cfg.crop_pct}
    return WeightsFile(model_name, f"{hub}/model.safetensors",
                       f"https://huggingface.co/{hub}/resolve/main/model.safetensors", library, hub,
                       code_licence=TIMM_CODE, weights_licence=cfg.license or "not stated in the pretrained cfg",
                       preprocessing=pre)


def preprocessing(model_name: str, pretrained: bool) -> dict:
    """mean, std and interpolation the model expects: its weights' own when pretrained, ImageNet's otherwise."""
    from automl_vision.models.catalogue import from_scratch_preprocessing

    if not pretrained or model_name not in CLASSIFIERS:
        return from_scratch_preprocessing()
    pre = weights_file(model_name).preprocessing
    return {"mean": list(pre["mean"]), "std": list(pre["std"]), "interpolation": pre["interpolation"]}


def classifier_head(model: nn.Module) -> nn.Linear:
    """The final linear layer (the one sized to the classes)."""
    if hasattr(model, "get_classifier"):  # timm
        return model.get_classifier()
    if isinstance(getattr(model, "fc", None), nn.Linear):  # torchvision resnets
        return model.fc
    return model.classifier[-1]  # torchvision mobilenet_v2


def _torchvision_classifier(name: str, num_classes: int, pretrained: bool, weights: WeightsSource | None) -> nn.Module:
    _, arch, _ = CLASSIFIERS[name]
    model = getattr(torchvision.models, arch)(weights=None)
    if pretrained:
        path = locate(weights_file(name), weights)
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    # A new head sized to the classes (random init), whatever the weights.
    if arch.startswith("resnet"):
        model.fc = nn.Linear(model.fc.in_features, num_classes)
    else:
        last = model.classifier[-1]
        model.classifier[-1] = nn.Linear(last.in_features, num_classes)
    return model


def _timm_classifier(name: str, num_classes: int, pretrained: bool, weights: WeightsSource | None,
                     image_size: int | None) -> nn.Module:
    import timm

    _, arch, _ = CLASSIFIERS[name]
    kwargs = {"num_classes": num_classes}
    if name in FIXED_SIZE and image_size is not None:
        kwargs["img_size"] = image_size  # timm resamples the pretrained position embedding to it
    if not pretrained:
        return timm.create_model(arch, pretrained=False, **kwargs)
    path = locate(weights_file(name), weights)
    # The head of the file (1000 classes) is dropped by timm because num_classes differs.
    return timm.create_model(arch, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs)


def _register(name: str, groups) -> None:
    library = CLASSIFIERS[name][0]

    @register_model(name, tasks=CLASSIFICATION_TASKS, layer_groups=groups)
    def build(num_classes: int, *, pretrained: bool, weights: WeightsSource | None = None,
              image_size: int | None = None) -> nn.Module:
        """``image_size`` fixes the input size of the ViT models (others take any size)."""
        if library == "torchvision":
            return _torchvision_classifier(name, num_classes, pretrained, weights)
        return _timm_classifier(name, num_classes, pretrained, weights, image_size)


_register("mobilenetv2", MOBILENET_GROUPS)
for _depth in (18, 34, 50, 101, 152):
    _register(f"resnet{_depth}", RESNET_GROUPS)
_register("resnest50", RESNET_GROUPS)
_register("resnest101", RESNET_GROUPS)
_register("seresnext", RESNET_GROUPS)
_register("vits16r224", VIT_GROUPS)
_register("vitb16r224", VIT_GROUPS)
_register("vitl16r224", VIT_GROUPS)
