"""Batch preparation on the training device: uint8 -> float, colour jitter per image, normalization.

The data loader only decodes, crops and flips (cheap work on uint8 images); the colour jitter,
which costs about ten times as much per image on a CPU (the hue shift converts to HSV and back),
runs here on whole batches, on the GPU when there is one. Each image still gets its own random
brightness, contrast, saturation and hue factors, with torchvision's ``ColorJitter`` formulas,
applied in that fixed order. Moving uint8 batches also cuts host-to-device traffic by four.
"""

from __future__ import annotations

import torch

from automl_vision.models.catalogue import IMAGENET_MEAN, IMAGENET_STD
#: The spec's training colour jitter: brightness, contrast, saturation, hue (torchvision ColorJitter ranges).
DEFAULT_JITTER = (0.4, 0.4, 0.4, 0.05)
_GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


def _expand(f: torch.Tensor) -> torch.Tensor:
    return f.view(-1, 1, 1, 1)


def _gray(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    return (_GRAY[0] * r + _GRAY[1] * g + _GRAY[2] * b).unsqueeze(1)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``x``: (N, 3, H, W) floats in [0, 1]; one factor per image."""
    return (x * _expand(factor)).clamp_(0, 1)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
    f = _expand(factor)
    return (f * x + (1 - f) * mean).clamp_(0, 1)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    f = _expand(factor)
    return (f * x + (1 - f) * _gray(x)).clamp_(0, 1)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of each image by ``shift`` (fractions of a turn, in [-0.5, 0.5])."""
    r, g, b = x.unbind(1)
    maxc, _ = x.max(dim=1)
    minc, _ = x.min(dim=1)
    delta = maxc - minc
    eqc = delta == 0
    s = delta / torch.where(eqc, torch.ones_like(maxc), maxc)
    d = torch.where(eqc, torch.ones_like(delta), delta)
    rc, gc, bc = (maxc - r) / d, (maxc - g) / d, (maxc - b) / d
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(eqc, torch.zeros_like(h), h)  # in sixths of a turn, (-1, 5)
    h6 = torch.remainder(h + 6.0 * shift.view(-1, 1, 1), 6.0).unsqueeze(1)
    # back to RGB: channel c = v - v * s * clamp(min(k, 4 - k), 0, 1) with k = (n_c + h6) mod 6, n = 5, 3, 1
    n = torch.arange(5.0, 0.0, -2.0, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)  # made on the device: no copy
    k = torch.remainder(n + h6, 6.0)
    vs = (maxc * s).unsqueeze(1)
    return (maxc.unsqueeze(1) - vs * torch.minimum(k, 4.0 - k).clamp_(0, 1)).clamp_(0, 1)



class BatchPreparer:
    """uint8 (N, 3, H, W) batch on any device -> normalized float batch on ``device``.

    ``mean``/``std``: the pretrained weights' own statistics (``models.classification.preprocessing``);
    ImageNet's by default, which is also what models trained from scratch use.

    ``jitter``: (brightness, contrast, saturation, hue) ranges as in torchvision's ColorJitter, or
    None (validation). ``channels_last``: the memory format convolutions run fastest in on GPUs.
    """

    def __init__(self, device: torch.device, *, jitter: tuple[float, float, float, float] | None = None,
                 channels_last: bool = False, mean: tuple[float, ...] = IMAGENET_MEAN,
                 std: tuple[float, ...] = IMAGENET_STD):
        self.device = device
        self.jitter = jitter if jitter and any(jitter) else None
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        std = torch.tensor(tuple(std), device=device, dtype=torch.float32).view(1, 3, 1, 1)
        mean = torch.tensor(tuple(mean), device=device, dtype=torch.float32).view(1, 3, 1, 1)
        # (x / 255 - mean) / std == x * scale + shift
        self.scale = 1.0 / (255.0 * std)
        self.shift = -mean / std
        self.std, self.mean = std, mean

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if x.dtype != torch.uint8:  # already float (e.g. tensors prepared elsewhere): used as they are
            return x.contiguous(memory_format=self.memory_format)
        if self.jitter is None:
            out = torch.addcmul(self.shift, x.float(), self.scale)
            return out.contiguous(memory_format=self.memory_format)
        x = x.float().div_(255.0)
        n = x.shape[0]
        b, c, s, h = self.jitter
        if b:
            x = adjust_brightness(x, _factors(n, b, x.device))
        if c:
            x = adjust_contrast(x, _factors(n, c, x.device))
        if s:
            x = adjust_saturation(x, _factors(n, s, x.device))
        if h:
            x = adjust_hue(x, torch.empty(n, device=x.device).uniform_(-h, h))
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=self.memory_format)


def _factors(n: int, amount: float, device: torch.device) -> torch.Tensor:
    lo = max(0.0, 1.0 - amount)
    return torch.empty(n, device=device).uniform_(lo, 1.0 + amount)
