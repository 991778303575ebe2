"""Batch colour jitter and normalization against torchvision's per-image functions."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms.v2 import functional as F

from automl_vision.models.preprocessing import (DEFAULT_JITTER, IMAGENET_MEAN, IMAGENET_STD, BatchPreparer,
                                                adjust_brightness, adjust_contrast, adjust_hue, adjust_saturation)


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 3, 12, 10, generator=g)
    x[0, :, :3] = 0.5  # grey: no hue
    x[1, :, :3] = 0.0  # black
    x[2, 0] = x[2, 1]  # red == green ties
    x[3, :, -2:] = 1.0  # white
    return x


FACTORS = torch.tensor([0.6, 1.0, 1.4, 0.8, 1.2])


@pytest.mark.parametrize("ours, theirs", [
    (adjust_brightness, F.adjust_brightness),
    (adjust_contrast, F.adjust_contrast),
    (adjust_saturation, F.adjust_saturation),
])
def test_per_image_factor_matches_torchvision(images, ours, theirs):
    expected = torch.stack([theirs(im, float(f)) for im, f in zip(images, FACTORS)])
    got = ours(images.clone(), FACTORS)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("shift", [0.05, -0.05, 0.25, -0.5, 0.0])
def test_hue_matches_torchvision(images, shift):
    expected = torch.stack([F.adjust_hue(im, shift) for im in images])
    got = adjust_hue(images, torch.full((len(images),), shift))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_hue_shift_per_image(images):
    shifts = torch.tensor([0.05, -0.05, 0.1, 0.0, -0.1])
    expected = torch.stack([F.adjust_hue(im, float(s)) for im, s in zip(images, shifts)])
    torch.testing.assert_close(adjust_hue(images, shifts), expected, atol=1e-5, rtol=0)


def test_normalize_only_matches_torchvision():
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    got = BatchPreparer(torch.device("cpu"))(x)
    expected = F.normalize(x.float() / 255, IMAGENET_MEAN, IMAGENET_STD)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert got.dtype == torch.float32


def test_channels_last_and_float_passthrough():
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    got = BatchPreparer(torch.device("cpu"), channels_last=True)(x)
    assert got.is_contiguous(memory_format=torch.channels_last)
    already = torch.randn(2, 3, 8, 8)
    assert torch.equal(BatchPreparer(torch.device("cpu"))(already), already)


def test_jitter_differs_per_image_and_stays_in_range():
    torch.manual_seed(0)
    one = torch.full((1, 3, 16, 16), 90, dtype=torch.uint8)
    batch = one.repeat(8, 1, 1, 1)
    batch[:, 0] = 150  # a reddish colour, so saturation and hue change it
    out = BatchPreparer(torch.device("cpu"), jitter=DEFAULT_JITTER)(batch)
    per_image = out.flatten(1)
    assert len({tuple(v.tolist()) for v in per_image[:, :3]}) == 8  # eight different draws
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    pixels = out * std + mean
    assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6
    # seeded: the same draws again
    torch.manual_seed(0)
    torch.testing.assert_close(BatchPreparer(torch.device("cpu"), jitter=DEFAULT_JITTER)(batch), out)


def test_no_jitter_when_all_zero():
    prep = BatchPreparer(torch.device("cpu"), jitter=(0, 0, 0, 0))
    assert prep.jitter is None
