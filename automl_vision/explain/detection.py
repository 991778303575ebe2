"""D-RISE (Petsiuk et al., "Black-box explanation of object detectors via saliency maps", CVPR 2021):
a saliency map per detected box for any detector, from its answers alone.

``num_masks`` random masks are drawn: a ``mask_grid_size`` x ``mask_grid_size`` grid of cells, each kept
with probability ``mask_keep_probability``, upsampled bilinearly to one cell more than the image and
shifted by a random fraction of a cell (RISE's smooth masks). The detector runs on each masked image
(hidden pixels black). A mask's weight for an explained box is its best match among the masked image's
detections: IoU with the box x class similarity x the detection's score. Our detectors answer one label
and a score per box rather than a class distribution, so the class similarity is 1 for the box's own label
and 0 for any other, and the score stands for the paper's objectness. The map is the weighted sum of the
masks less the mean weight times each pixel's coverage, over the number of masks and the keep
probability: what keeping a pixel adds to the box's weight (centered: with few masks the paper's plain
weighted mean is mostly the masks' uneven coverage; a detector that ignores its input gets a flat map).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from automl_vision.explain import params as P

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Detection:
    """One box in pixels of the image (``x0, y0, x1, y1``), its label index and score."""

    box: tuple[float, float, float, float]
    label: int
    score: float


#: Runs the detector on images; one list of detections per image.
Detector = Callable[[Sequence[Image.Image]], Sequence[Sequence[Detection]]]


def masks(count: int, height: int, width: int, grid: int, keep: float, generator: torch.Generator) -> torch.Tensor:
    """``[count, height, width]`` float masks in [0, 1] (RISE's construction)."""
    cells = (torch.rand(count, 1, grid, grid, generator=generator) < keep).float()
    cell_h, cell_w = height / grid, width / grid
    up_h, up_w = int(np.ceil((grid + 1) * cell_h)), int(np.ceil((grid + 1) * cell_w))
    big = F.interpolate(cells, size=(up_h, up_w), mode="bilinear", align_corners=False)[:, 0]
    dy = (torch.rand(count, generator=generator) * cell_h).long()
    dx = (torch.rand(count, generator=generator) * cell_w).long()
    rows = (dy[:, None] + torch.arange(height)[None]).clamp(max=up_h - 1)
    cols = (dx[:, None] + torch.arange(width)[None]).clamp(max=up_w - 1)
    return big[torch.arange(count)[:, None, None], rows[:, :, None], cols[:, None, :]]


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x0 = np.maximum(box[0], boxes[:, 0])
    y0 = np.maximum(box[1], boxes[:, 1])
    x1 = np.minimum(box[2], boxes[:, 2])
    y1 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-12)


def similarity(target: Detection, found: Sequence[Detection]) -> float:
    """D-RISE's best match of ``target`` among ``found``: IoU x same label x score."""
    same = [d for d in found if d.label == target.label]
    if not same:
        return 0.0
    boxes = np.asarray([d.box for d in same], dtype=np.float64)
    scores = np.asarray([d.score for d in same], dtype=np.float64)
    return float((_iou(np.asarray(target.box, dtype=np.float64), boxes) * scores).max())


def drise(image: Image.Image, detect: Detector, targets: Sequence[Detection], params: P.ExplainParams, *,
          batch_size: int = 8, progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """``[len(targets), H, W]`` float32 saliency maps of ``targets`` (boxes the detector found on ``image``)."""
    image = image.convert("RGB")
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32))  # H, W, 3
    h, w = pixels.shape[:2]
    saliency = torch.zeros(len(targets), h, w)
    if not targets:
        return saliency.numpy()
    generator = torch.Generator().manual_seed(params.seed)
    t0 = time.monotonic()
    done = 0
    coverage = torch.zeros(h, w)
    total = torch.zeros(len(targets))
    while done < params.num_masks:
        n = min(batch_size, params.num_masks - done)
        batch = masks(n, h, w, params.mask_grid_size, params.mask_keep_probability, generator)
        masked = (pixels[None] * batch[..., None]).round().clamp(0, 255).to(torch.uint8).numpy()
        found = detect([Image.fromarray(m) for m in masked])
        weights = torch.tensor([[similarity(t, dets) for dets in found] for t in targets], dtype=torch.float32)
        saliency += torch.einsum("tn,nhw->thw", weights, batch)
        coverage += batch.sum(0)
        total += weights.sum(1)
        done += n
        if progress is not None:
            progress(done, params.num_masks)
    log.debug("d_rise: %d masks, %d boxes, %.1f s", params.num_masks, len(targets), time.monotonic() - t0)
    n = params.num_masks
    # The mean weight times how often each pixel was kept is what the map would be if the masks did not
    # matter: taking it away leaves what keeping a pixel adds (it differs across pixels by chance alone).
    centered = saliency - (total / n)[:, None, None] * coverage[None]
    return (centered / (n * params.mask_keep_probability)).numpy()
