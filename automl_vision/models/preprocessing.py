"""Image preprocessing shared by training and serving.

Per image (in the data loader or the predictor): decode, resize or random-resized-crop, flip
(uint8). Per batch (on the training device): uint8 -> float, colour jitter per image,
normalization with the pretrained weights' statistics (:class:`BatchPreparer`). The colour
jitter costs about ten times as much per image on a CPU as the rest (the hue shift converts to
HSV and back), so on a GPU it runs there on whole batches; each image still gets its own random
brightness, contrast, saturation and hue factors, with torchvision's ``ColorJitter`` formulas,
applied in that fixed order. Moving uint8 batches also cuts host-to-device traffic by four.

The ``augmentation`` hyperparameter picks how much of it a trial gets (``train_image_transform``,
``train_jitter``): ``default`` the spec's, ``light`` a milder crop and jitter, ``none`` no random
operation at all.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from PIL import Image
from torchvision.transforms import v2

from automl_vision.models.catalogue import preprocessing
from automl_vision.spec.catalogue import IMAGENET_MEAN, IMAGENET_STD
from automl_vision.spec.hyperparameters import augmentation_level

__all__ = ["DEFAULT_JITTER", "IMAGENET_MEAN", "IMAGENET_STD", "LIGHT_CROP_SCALE", "LIGHT_JITTER", "BatchPreparer",
           "OneThread", "normalization", "train_image_transform", "train_jitter", "train_transform",
           "valid_image_transform", "valid_transform"]

#: The spec's training colour jitter: brightness, contrast, saturation, hue (torchvision ColorJitter ranges).
DEFAULT_JITTER = (0.4, 0.4, 0.4, 0.05)
#: ``augmentation: light``: a milder jitter without hue shift, and crops of at least half the image's area.
LIGHT_JITTER = (0.1, 0.1, 0.1, 0.0)
LIGHT_CROP_SCALE = (0.5, 1.0)
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


# --- per image ---------------------------------------------------------------------------------------

def normalization(hp: Mapping[str, Any]) -> dict[str, Any]:
    """mean, std and interpolation of the model's input: the pretrained weights' own (timm's pretrained cfg,
    torchvision's weights transforms), ImageNet's and bilinear for models trained from scratch. Given
    explicitly (``mean``/``std``/``interpolation`` keys, as a model package's settings carry them), they are
    used as they are."""
    if "mean" in hp and "std" in hp:
        return {"mean": list(hp["mean"]), "std": list(hp["std"]), "interpolation": hp.get("interpolation", "bilinear")}
    return preprocessing(str(hp.get("model_name", "")), bool(hp.get("pretrained")))


def _interpolation(hp: Mapping[str, Any]) -> v2.InterpolationMode:
    return v2.InterpolationMode(normalization(hp)["interpolation"])


def train_image_transform(hp: dict[str, Any]) -> v2.Transform:
    """The part of the training augmentation run per image in the loader (uint8), by ``augmentation``:
    default (spec section 6): random resized crop and horizontal flip; light: random resized crop of scale
    [0.5, 1] and horizontal flip; none: resize the shorter side to train_crop_size and centre crop."""
    level = augmentation_level(hp)
    size = hp["train_crop_size"]
    if level == "none":
        return v2.Compose([
            v2.PILToTensor(),
            v2.Resize(size, interpolation=_interpolation(hp), antialias=True),
            v2.CenterCrop(size),
        ])
    crop = {"scale": LIGHT_CROP_SCALE} if level == "light" else {}  # default: torchvision's (0.08, 1)
    return v2.Compose([
        v2.PILToTensor(),
        v2.RandomResizedCrop(size, interpolation=_interpolation(hp), antialias=True, **crop),
        v2.RandomHorizontalFlip(),
    ])


def train_jitter(hp: dict[str, Any]) -> tuple[float, float, float, float] | None:
    """The colour jitter (brightness, contrast, saturation, hue) of ``augmentation``: default: the spec's;
    light: a milder one without hue shift; none: no jitter (None)."""
    return {"default": DEFAULT_JITTER, "light": LIGHT_JITTER, "none": None}[augmentation_level(hp)]


def valid_image_transform(hp: dict[str, Any]) -> v2.Transform:
    """Resize and centre crop (uint8); normalization happens on the device."""
    return v2.Compose([
        v2.PILToTensor(),
        v2.Resize(hp["valid_resize_size"], interpolation=_interpolation(hp), antialias=True),
        v2.CenterCrop(hp["valid_crop_size"]),
    ])


class _PrepareOnCpu:
    """Colour jitter and normalization of one image on the CPU (loaders feeding a CPU model)."""

    def __init__(self, jitter, norm: Mapping[str, Any] | None = None):
        norm = norm or normalization({})
        self.prepare = BatchPreparer(torch.device("cpu"), jitter=jitter, mean=norm["mean"], std=norm["std"])
        self.norm = norm

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return self.prepare(image.unsqueeze(0)).squeeze(0)

    def __repr__(self) -> str:
        b, c, s, h = self.prepare.jitter or (0, 0, 0, 0)
        jitter = f"ColorJitter(brightness {b}, contrast {c}, saturation {s}, hue {h}), " if self.prepare.jitter else ""
        return f"{jitter}Normalize(mean {self.norm['mean']}, std {self.norm['std']})"


class OneThread:
    """Runs a per-image transform with one intra-op thread.

    Ops on a single image are too small to gain from threads, and when the cores are busy (the
    training itself, other pods, a CPU quota) every parallel op waits for a second thread to be
    scheduled: measured here, 1 ms per image with one thread against 170 ms with two on a loaded
    2-core machine. DataLoader workers already run single-threaded; this covers the main process
    (``num_workers`` 0) and inference.
    """

    def __init__(self, transform: Callable):
        self.transform = transform

    def __call__(self, image):
        threads = torch.get_num_threads()
        if threads == 1:
            return self.transform(image)
        torch.set_num_threads(1)
        try:
            return self.transform(image)
        finally:
            torch.set_num_threads(threads)

    def __repr__(self) -> str:
        return repr(self.transform)


def train_transform(hp: dict[str, Any]) -> Callable[[Image.Image], torch.Tensor]:
    """The whole training augmentation of one image, ending in a normalized float tensor, by ``augmentation``:
    default: random resized crop, horizontal flip, colour jitter (brightness, contrast, saturation 0.4, hue 0.05);
    light: random resized crop of scale [0.5, 1], horizontal flip, colour jitter (brightness, contrast,
    saturation 0.1, no hue); none: resize and centre crop to train_crop_size, no flip, no jitter. Then the
    normalization of the model's weights (ImageNet's for models trained from scratch)."""
    return OneThread(v2.Compose([train_image_transform(hp), _PrepareOnCpu(train_jitter(hp), normalization(hp))]))


def valid_transform(hp: dict[str, Any]) -> Callable[[Image.Image], torch.Tensor]:
    """Validation and inference: resize, centre crop, normalize (a float tensor)."""
    return OneThread(v2.Compose([valid_image_transform(hp), _PrepareOnCpu(None, normalization(hp))]))
