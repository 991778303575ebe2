"""Tiling for small objects (spec section 9): tile geometry, clipped ground truth, merging.

For a grid of ``gx`` columns and overlap ratio ``r``, a tile is ``W / (r + (1 - r) * gx)`` wide
and tiles start every ``(1 - r)`` tile widths, so the last tile ends exactly at the image's right
edge (rows likewise). The whole image and every tile go through the model; the boxes found in a
tile are shifted back to image coordinates and all boxes are merged by a non-maximum suppression
between boxes of the same label coming from *different* sources (the whole image or a tile),
at IoU threshold ``tile_predictions_nms_thresh``. Boxes from one source were already suppressed
against each other by the model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from automl_vision.models.detections import ImagePredictions, box_iou

Tile = tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels


def tile_boxes(width: float, height: float, grid: tuple[int, int], overlap: float) -> list[Tile]:
    """The tiles of a ``width x height`` image, row by row, left to right."""
    gx, gy = grid
    if gx < 1 or gy < 1:
        raise ValueError(f"tile grid {gx}x{gy}: both sizes must be >= 1")
    if not 0 <= overlap < 1:
        raise ValueError(f"tile_overlap_ratio={overlap} must be in [0, 1)")
    tw = width / (overlap + (1 - overlap) * gx)
    th = height / (overlap + (1 - overlap) * gy)
    tiles = []
    for j in range(gy):
        y1 = j * (1 - overlap) * th
        for i in range(gx):
            x1 = i * (1 - overlap) * tw
            # the last tile ends exactly at the border (no rounding drift)
            x2 = width if i == gx - 1 else x1 + tw
            y2 = height if j == gy - 1 else y1 + th
            tiles.append((x1, y1, x2, y2))
    return tiles


def pixel_window(tile: Tile, width: int, height: int) -> tuple[int, int, int, int]:
    """Integer crop window of a tile (rounded to the nearest pixel, at least 1 px)."""
    x1, y1 = int(round(tile[0])), int(round(tile[1]))
    x2, y2 = int(round(tile[2])), int(round(tile[3]))
    x1, y1 = min(max(x1, 0), width - 1), min(max(y1, 0), height - 1)
    return x1, y1, max(min(x2, width), x1 + 1), max(min(y2, height), y1 + 1)


def clip_to_window(boxes: np.ndarray, window: tuple[int, int, int, int], min_size: float = 1.0
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Boxes cut to ``window`` and shifted into its coordinates, and the indices of those kept:
    a box is kept when at least ``min_size`` pixels of its width and of its height lie inside."""
    x1, y1, x2, y2 = window
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    clipped = np.stack([np.clip(b[:, 0], x1, x2), np.clip(b[:, 1], y1, y2),
                        np.clip(b[:, 2], x1, x2), np.clip(b[:, 3], y1, y2)], axis=1) if len(b) else b
    keep = np.nonzero((clipped[:, 2] - clipped[:, 0] >= min_size) & (clipped[:, 3] - clipped[:, 1] >= min_size))[0]
    return clipped[keep] - (x1, y1, x1, y1), keep


def merge_tile_predictions(sources: Sequence[ImagePredictions], offsets: Sequence[tuple[float, float]],
                           nms_threshold: float, max_detections: int | None = None) -> ImagePredictions:
    """Merge the detections of the whole image and of its tiles.

    ``sources[k]`` holds boxes in the coordinates of source ``k``, whose top-left corner lies at
    ``offsets[k]`` in the image (``(0, 0)`` for the whole image). Per label, boxes are visited by
    decreasing score (ties: source order, then the source's own order); a box is dropped when a
    box already kept *from another source* overlaps it with IoU above ``nms_threshold``.
    At most ``max_detections`` boxes are kept, the highest scores first. Boxes only: tiling is
    offered for object detection, not for instance segmentation.
    """
    boxes, labels, scores, origin = [], [], [], []
    for k, (src, (dx, dy)) in enumerate(zip(sources, offsets)):
        boxes.append(src.boxes + (dx, dy, dx, dy))
        labels.append(src.labels)
        scores.append(src.scores)
        origin.append(np.full(len(src.labels), k))
    if not boxes:
        return ImagePredictions.empty()
    b, lab, s, o = np.concatenate(boxes), np.concatenate(labels), np.concatenate(scores), np.concatenate(origin)
    kept: list[int] = []
    for c in np.unique(lab):
        idx = np.nonzero(lab == c)[0]
        idx = idx[np.argsort(-s[idx], kind="stable")]
        ious = box_iou(b[idx], b[idx])
        chosen: list[int] = []
        for pos in range(len(idx)):
            if any(o[idx[q]] != o[idx[pos]] and ious[pos, q] > nms_threshold for q in chosen):
                continue
            chosen.append(pos)
        kept += [int(idx[q]) for q in chosen]
    kept.sort(key=lambda i: (-s[i], i))
    if max_detections is not None:
        kept = kept[:max_detections]
    return ImagePredictions(b[kept], lab[kept], s[kept])
