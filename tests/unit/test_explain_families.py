"""Every classifier family of the catalogue is explained by every method: the explainer's copy of the network
answers as the network does, Grad-CAM weighs the documented layer, and each method returns finite
``[3, H, W]`` attributions on the real architectures (random weights, small inputs: the sanity of the
attributions themselves is tests/integration/test_explain_sanity.py's)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from automl_vision.explain import params as P
from automl_vision.explain.classification import ClassifierExplainer, explained_classes
from automl_vision.models.registry import build_model
from automl_vision.spec.catalogue import IMAGENET_MEAN, IMAGENET_STD
from automl_vision.spec.tasks import ImageTask

pytestmark = pytest.mark.usefixtures("one_thread")

IC = ImageTask.IMAGE_CLASSIFICATION
#: One model of each family, and the layer docs/serving.md names for it.
FAMILIES = {
    "resnet18": "layer4",
    "mobilenetv2": "features[-1]",
    "resnest50": "layer4",
    "seresnext": "layer4",
    "vits16r224": "blocks[-1].norm1",
}
SIZE = 32


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request):
    torch.manual_seed(0)
    name = request.param
    model = build_model(name, IC, 3, pretrained=False, image_size=SIZE).eval()
    return name, model, ClassifierExplainer(model, IMAGENET_MEAN, IMAGENET_STD)


def test_the_copy_answers_as_the_network_and_grad_cam_uses_the_documented_layer(family):
    name, model, explainer = family
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        assert torch.allclose(model(x), explainer.model(x), atol=1e-5)
    assert explainer.layer_name == FAMILIES[name]
    assert explainer.model is not model  # the served network is left as it is
    assert all(p.requires_grad for p in model.parameters())


def _explains(explainer: ClassifierExplainer, method: str) -> None:
    given = {"xai_algorithm": method, **({"n_steps": 2} if method in (P.XRAI, P.INTEGRATED_GRADIENTS) else {})}
    params = P.parse_params(given, IC)
    x = torch.randn(3, SIZE, SIZE)
    (a, b) = explainer.explain(x, [0, 2], params)
    for r, target in ((a, 0), (b, 2)):
        assert r.target == target
        assert r.values.shape == (3, SIZE, SIZE) and r.heat.shape == (SIZE, SIZE)
        assert np.isfinite(r.values).all() and np.isfinite(r.heat).all()
    if method != P.GUIDED_GRADCAM:  # a random network's Grad-CAM may be all zero (its ReLU cuts negative maps)
        # (a random mobilenetv2's gradients are about 1e-12: compared relatively)
        assert np.abs(a.values).sum() > 0 and not np.allclose(a.values, b.values, rtol=1e-3, atol=0)


@pytest.mark.parametrize("method", [P.INTEGRATED_GRADIENTS, P.GUIDED_GRADCAM, P.GUIDED_BACKPROP])
def test_every_method_explains_every_family(family, method):
    _explains(family[2], method)


def test_xrai_explains_a_vit():
    # XRAI sees the network only through input gradients, as integrated gradients does: one family covers it
    # (its segmentation costs seconds an image)
    torch.manual_seed(0)
    model = build_model("vits16r224", IC, 3, pretrained=False, image_size=SIZE).eval()
    _explains(ClassifierExplainer(model, IMAGENET_MEAN, IMAGENET_STD), P.XRAI)


def test_explained_classes():
    assert explained_classes([0.2, 0.7, 0.1], multilabel=False, threshold=0.5) == [1]
    assert explained_classes([0.6, 0.9, 0.1], multilabel=True, threshold=0.5) == [1, 0]
    assert explained_classes([0.2, 0.3], multilabel=True, threshold=0.5) == []
    assert explained_classes([0.2, 0.3], multilabel=True, threshold=0.0) == [1, 0]
