"""Classification models (spec section 3) from torchvision and timm, head sized to the classes.

Pretrained weights are read from the libraries' normal caches, or from a folder or ``s3://``
prefix the user seeded (see ``models/weights.py``). When they are asked for and missing,
building fails at once naming the file expected; nothing is downloaded behind the user's back
and random weights are never substituted.
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from automl_vision.models.catalogue import weights_file
from automl_vision.models.weights import WeightsSource, locate
from automl_vision.spec.catalogue import ModelRow


def classifier_head(model: nn.Module) -> nn.Linear:
    """The final linear layer (the one sized to the classes)."""
    if hasattr(model, "get_classifier"):  # timm
        return model.get_classifier()
    if isinstance(getattr(model, "fc", None), nn.Linear):  # torchvision resnets
        return model.fc
    return model.classifier[-1]  # torchvision mobilenet_v2


def _torchvision_classifier(row: ModelRow, num_classes: int, pretrained: bool,
                            weights: WeightsSource | None) -> nn.Module:
    model = getattr(torchvision.models, row.arch)(weights=None)
    if pretrained:
        path = locate(weights_file(row.name), weights)
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    # A new head sized to the classes (random init), whatever the weights.
    if isinstance(getattr(model, "fc", None), nn.Linear):
        model.fc = nn.Linear(model.fc.in_features, num_classes)
    else:
        last = model.classifier[-1]
        model.classifier[-1] = nn.Linear(last.in_features, num_classes)
    return model


def _timm_classifier(row: ModelRow, num_classes: int, pretrained: bool, weights: WeightsSource | None,
                     image_size: int | None) -> nn.Module:
    import timm  # optional heavy dependency, imported when a timm model is built

    kwargs = {"num_classes": num_classes}
    if row.fixed_size and image_size is not None:
        kwargs["img_size"] = image_size  # timm resamples the pretrained position embedding to it
    if not pretrained:
        return timm.create_model(row.arch, pretrained=False, **kwargs)
    path = locate(weights_file(row.name), weights)
    # The head of the file (1000 classes) is dropped by timm because num_classes differs.
    return timm.create_model(row.arch, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs)


def build_classifier(row: ModelRow, num_classes: int, *, pretrained: bool, weights: WeightsSource | None = None,
                     image_size: int | None = None) -> nn.Module:
    """The builder of the catalogue's classification rows; ``image_size`` fixes the input size of the
    models whose size is fixed when built (the ViTs; others take any size)."""
    if row.family == "torchvision":
        return _torchvision_classifier(row, num_classes, pretrained, weights)
    return _timm_classifier(row, num_classes, pretrained, weights, image_size)
