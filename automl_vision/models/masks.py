"""Instance masks and polygons (spec sections 2 and 9).

JSONL polygons are lists of rings in normalized coordinates; the rings of one instance are
combined with XOR (a ring inside another is a hole). Pixel coordinates follow COCO's convention
(pixel ``(i, j)`` covers ``[i, i + 1) x [j, j + 1)``) so that a polygon rasterized here and by
pycocotools gives the same mask.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from pycocotools import mask as mask_utils

Polygon = Sequence[Sequence[float]]  # rings of [x1, y1, x2, y2, ...]

# Contours are traced on the mask upsampled by this factor so that a ring runs along the pixel
# edges (within 1/(2 * factor) px) instead of through the boundary pixels' centres, which would
# shrink every object by half a pixel on each side.
_UPSAMPLE = 4


def polygon_to_mask(polygon: Polygon, width: int, height: int) -> np.ndarray:
    """A (height, width) bool mask: the XOR of the rings, each given in normalized coordinates."""
    out = np.zeros((height, width), dtype=bool)
    for ring in polygon:
        pts = np.asarray(ring, dtype=np.float64).reshape(-1, 2) * (width, height)
        if len(pts) < 3:
            raise ValueError(f"a polygon ring needs at least 3 points, got {len(pts)}")
        # pycocotools treats a 4-number list as a box: give it at least 3 points (6 numbers).
        rle = mask_utils.frPyObjects([pts.ravel().tolist()], height, width)
        out ^= mask_utils.decode(rle)[:, :, 0].astype(bool)
    return out


def polygon_to_rle(polygon: Polygon, width: int, height: int) -> dict:
    """The COCO run-length encoding of :func:`polygon_to_mask`."""
    return encode_mask(polygon_to_mask(polygon, width, height))


def encode_mask(mask: np.ndarray) -> dict:
    """COCO RLE of a (height, width) bool mask, with ``counts`` as text (JSON-safe)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def decode_rle(rle: dict) -> np.ndarray:
    r = dict(rle)
    if isinstance(r["counts"], str):
        r["counts"] = r["counts"].encode("ascii")
    return mask_utils.decode(r).astype(bool)


def _simplify(rings: list[np.ndarray], max_points: int) -> list[np.ndarray]:
    """Douglas-Peucker with the smallest tolerance (binary search) that brings the total to ``max_points``."""
    if sum(len(r) for r in rings) <= max_points:
        return rings

    def approx(eps: float) -> list[np.ndarray]:
        out = []
        for r in rings:
            a = cv2.approxPolyDP(r.astype(np.float32).reshape(-1, 1, 2), eps, True).reshape(-1, 2)
            if len(a) >= 3:
                out.append(a)
        return out

    lo, hi = 0.0, 1.0
    while sum(len(r) for r in approx(hi)) > max_points and hi < 1e6:
        lo, hi = hi, hi * 2
    for _ in range(30):
        mid = (lo + hi) / 2
        if sum(len(r) for r in approx(mid)) > max_points:
            lo = mid
        else:
            hi = mid
    best = approx(hi)
    # Still too many rings of 3+ points: keep the largest rings that fit.
    best.sort(key=lambda r: -abs(cv2.contourArea(r.astype(np.float32))))
    kept, total = [], 0
    for r in best:
        if total + len(r) <= max_points:
            kept.append(r)
            total += len(r)
    return kept


def mask_to_polygon(mask: np.ndarray, max_points: int) -> list[list[float]]:
    """Normalized rings (outer boundaries and holes, to be combined with XOR) of a bool mask,
    with at most ``max_points`` points in all; an empty mask gives ``[]``."""
    if max_points < 3:
        raise ValueError(f"max_number_of_polygon_points={max_points} must be >= 3")
    height, width = mask.shape
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return []
    x0, y0 = xs.min(), ys.min()
    crop = mask[y0:ys.max() + 1, x0:xs.max() + 1].astype(np.uint8)
    crop = np.pad(crop, 1)
    big = np.repeat(np.repeat(crop, _UPSAMPLE, 0), _UPSAMPLE, 1)
    contours, _ = cv2.findContours(big, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    rings = []
    for c in contours:
        pts = c.reshape(-1, 2).astype(np.float64)
        if len(pts) < 3:
            continue
        # back to pixel-corner coordinates of the full image
        pts = (pts + 0.5) / _UPSAMPLE - 1 + (x0, y0)
        rings.append(pts)
    rings = _simplify(rings, max_points)
    out = []
    for r in rings:
        r = np.clip(r / (width, height), 0.0, 1.0)
        out.append([round(float(v), 6) for v in r.ravel()])
    return out


def mask_iou(a: Sequence[dict], b: Sequence[dict], crowd: Sequence[bool] | None = None) -> np.ndarray:
    """(len(a), len(b)) IoU matrix of RLE masks (``crowd`` as in pycocotools: only for ``b``)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    flags = [int(bool(c)) for c in crowd] if crowd is not None else [0] * len(b)
    return np.asarray(mask_utils.iou(list(_bytes(a)), list(_bytes(b)), flags), dtype=np.float64).reshape(len(a), len(b))


def _bytes(rles: Sequence[dict]):
    for r in rles:
        if isinstance(r["counts"], str):
            r = {"size": r["size"], "counts": r["counts"].encode("ascii")}
        yield r


def rle_area(rle: dict) -> float:
    return float(mask_utils.area(next(_bytes([rle]))))
