"""Pixel attributions of a classifier for one class: the original product's four methods.

* ``integrated_gradients``: Captum's ``IntegratedGradients`` from a black image (``n_steps``,
  ``approximation_method``).
* ``guided_backprop``: Captum's ``GuidedBackprop``.
* ``guided_gradcam``: Captum's ``GuidedGradCam``: guided backprop times the Grad-CAM map of the layer
  :func:`gradcam_layer` names, upsampled to the image.
* ``xrai``: the ``saliency`` package's XRAI (integrated gradients from a black and a white image,
  summed over Felzenszwalb segments, regions ranked by their attribution density); ``xrai_fast``
  is its ``fast`` algorithm.

Attributions are taken on the model's input, the centre crop of ``valid_crop_size`` the server scores,
as ``[3, crop, crop]``; XRAI's map has one value per pixel and is repeated over the 3 channels.

The explainer works on its own copy of the network, changed in three ways that leave its outputs as
they were: activations do not work in place (backward hooks need their inputs), every rectifier-like
activation is one Captum recognizes as a ReLU (so guided backprop also treats mobilenetv2's ReLU6 and
the ViTs' GELU as rectifiers: negative gradients stop there), and for a ViT the tokens entering its last
block's attention are also shown to Grad-CAM as a ``[D, rows, columns]`` map.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from automl_vision.errors import ConfigError
from automl_vision.explain import params as P

log = logging.getLogger(__name__)


@dataclass
class Attribution:
    """One explained class of one image."""

    target: int
    #: ``[3, H, W]`` float32, on the model's input (the crop).
    values: np.ndarray
    #: ``[H, W]`` what the pictures show: the XRAI map, else the absolute values summed over channels.
    heat: np.ndarray


class _Rectifier(nn.ReLU):
    """An activation Captum's guided backprop hooks as a ReLU; computes what the wrapped one does."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)


_RECTIFIER_LIKE = (nn.ReLU6, nn.GELU, nn.SiLU, nn.Hardswish, nn.LeakyReLU)


class _TokensToMap(nn.Module):
    """``[N, prefix + rows * cols, D]`` tokens -> ``[N, D, rows, cols]`` (the prefix tokens kept aside)."""

    def __init__(self, prefix: int, grid: tuple[int, int]):
        super().__init__()
        self.prefix, self.grid = prefix, grid
        self.kept: torch.Tensor | None = None

    def forward(self, x):
        self.kept = x[:, :self.prefix]
        n, _, d = x.shape
        return x[:, self.prefix:].transpose(1, 2).reshape(n, d, *self.grid)


class _MapToTokens(nn.Module):
    def __init__(self, source: _TokensToMap):
        super().__init__()
        self._source = [source]  # a list: not a submodule twice

    def forward(self, x):
        tokens = x.flatten(2).transpose(1, 2)
        return torch.cat([self._source[0].kept, tokens], dim=1)


def _prepare(model: nn.Module) -> nn.Module:
    model = copy.deepcopy(model).eval()
    for module in model.modules():
        if getattr(module, "inplace", False):
            module.inplace = False
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, _RECTIFIER_LIKE) and not isinstance(child, nn.ReLU):
                setattr(parent, name, _Rectifier(child))
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def gradcam_layer(model: nn.Module) -> tuple[nn.Module, str]:
    """The layer Grad-CAM weighs, and its name, for the catalogue's classifier families (installing the
    token-map adapter on a ViT): a ResNet, ResNeSt or SE-ResNeXt's last stage ``layer4``; MobileNetV2's last
    ``features`` block (the 1x1 convolution to 1280 channels); a ViT's last block's ``norm1`` output
    (the tokens its attention reads; the block's own output reaches the class token only through it)."""
    if hasattr(model, "blocks") and hasattr(model, "patch_embed"):  # timm VisionTransformer
        block = model.blocks[-1]
        norm = block.norm1
        if isinstance(norm, nn.Sequential) and isinstance(norm[1], _TokensToMap):
            return norm[1], "blocks[-1].norm1"
        grid = tuple(model.patch_embed.grid_size)
        to_map = _TokensToMap(int(getattr(model, "num_prefix_tokens", 1)), grid)
        block.norm1 = nn.Sequential(norm, to_map, _MapToTokens(to_map))
        return to_map, "blocks[-1].norm1"
    if isinstance(getattr(model, "layer4", None), nn.Module):
        return model.layer4, "layer4"
    features = getattr(model, "features", None)
    if isinstance(features, nn.Sequential):
        return features[-1], "features[-1]"
    raise ConfigError(f"no Grad-CAM layer is known for {type(model).__name__}; guided_gradcam explains the "
                      "ResNet, ResNeSt, SE-ResNeXt, MobileNetV2 and ViT families")


class ClassifierExplainer:
    """Explains one classifier. ``mean`` and ``std`` are its input normalization (the inputs given to
    :meth:`explain` are normalized crops, as the serving engine prepares them)."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]):
        self.model = _prepare(model)
        self.layer, self.layer_name = gradcam_layer(self.model)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device) -> ClassifierExplainer:
        self.model.to(device)
        return self

    def pixels(self, x: torch.Tensor) -> torch.Tensor:
        """The normalized crop ``x`` as the image it was, ``[3, H, W]`` in [0, 1]."""
        return (x.detach().float().to(self.device) * self.std.to(self.device) + self.mean.to(self.device)).clamp(0, 1)

    def explain(self, x: torch.Tensor, targets: Sequence[int], params: P.ExplainParams) -> list[Attribution]:
        """Attributions of the normalized crop ``x`` (``[3, H, W]``) for each class in ``targets``."""
        x = x.detach().float().to(self.device)
        out = []
        with warnings.catch_warnings():
            # Captum says it sets and removes hooks on ReLUs, each call.
            warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")
            for target in targets:
                out.append(self._one(x, int(target), params))
        return out

    def _one(self, x: torch.Tensor, target: int, params: P.ExplainParams) -> Attribution:
        from captum.attr import GuidedBackprop, GuidedGradCam, IntegratedGradients  # only to explain

        method = params.algorithm
        inputs = x.unsqueeze(0).clone().requires_grad_(True)
        if method == P.XRAI:
            heat = self._xrai(x, target, params)
            return Attribution(target, np.repeat(heat[None], 3, axis=0).astype(np.float32), heat)
        if method == P.INTEGRATED_GRADIENTS:
            baseline = ((0.0 - self.mean) / self.std).to(self.device).expand_as(x).unsqueeze(0)
            attr = IntegratedGradients(self.model).attribute(
                inputs, baselines=baseline, target=target, n_steps=params.n_steps,
                method=params.approximation_method, internal_batch_size=min(params.n_steps, 16))
        elif method == P.GUIDED_BACKPROP:
            attr = GuidedBackprop(self.model).attribute(inputs, target=target)
        elif method == P.GUIDED_GRADCAM:
            attr = GuidedGradCam(self.model, self.layer).attribute(inputs, target=target, interpolate_mode="bilinear")
        else:
            raise ConfigError(f"xai_algorithm={method!r}; allowed: {', '.join(P.CLASSIFICATION_METHODS)}")
        values = attr[0].detach().float().cpu().numpy()
        return Attribution(target, values, np.abs(values).sum(axis=0))

    def _xrai(self, x: torch.Tensor, target: int, params: P.ExplainParams) -> np.ndarray:
        import saliency.core as saliency  # only to explain

        mean, std = self.mean.to(self.device), self.std.to(self.device)
        image = self.pixels(x).permute(1, 2, 0).cpu().numpy().astype(np.float64)
        model = self.model

        def gradients(batch, call_model_args=None, expected_keys=None):
            t = torch.as_tensor(np.asarray(batch), dtype=torch.float32, device=mean.device)
            t = t.permute(0, 3, 1, 2).requires_grad_(True)
            scores = model((t - mean) / std)[:, target]
            (grad,) = torch.autograd.grad(scores.sum(), t)
            return {saliency.INPUT_OUTPUT_GRADIENTS: grad.permute(0, 2, 3, 1).cpu().numpy()}

        xrai = saliency.XRAI()
        extra = saliency.XRAIParameters(steps=params.n_steps, algorithm="fast" if params.xrai_fast else "full")
        baselines = [np.zeros_like(image), np.ones_like(image)]
        heat = xrai.GetMask(image, gradients, extra_parameters=extra, baselines=baselines,
                            batch_size=min(params.n_steps, 16))
        return np.asarray(heat, dtype=np.float32)


def explained_classes(probs: Sequence[float], multilabel: bool, threshold: float) -> list[int]:
    """The classes to explain: the most probable one; multi-label: every class at or above ``threshold``
    (the original's ``confidence_score_threshold_multilabel``), most probable first."""
    probs = np.asarray(probs, dtype=np.float64)
    if not multilabel:
        return [int(np.argmax(probs))]
    order = np.argsort(-probs, kind="stable")
    return [int(i) for i in order if probs[i] >= threshold]
