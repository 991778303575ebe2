"""Polygons <-> masks (XOR of rings, round trip, point limit) and tile geometry and merging on hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest

from automl_vision.models.detections import ImagePredictions
from automl_vision.models.masks import decode_rle, mask_iou, mask_to_polygon, polygon_to_mask, polygon_to_rle
from automl_vision.models.tiling import clip_to_window, merge_tile_predictions, pixel_window, tile_boxes

W, H = 40, 20


def ring(x1, y1, x2, y2):
    """A rectangle ring in normalized coordinates of a W x H image."""
    return [x1 / W, y1 / H, x2 / W, y1 / H, x2 / W, y2 / H, x1 / W, y2 / H]


def test_polygon_rasterized_on_pixel_corners():
    m = polygon_to_mask([ring(5, 4, 15, 12)], W, H)
    assert m.shape == (H, W) and m.sum() == 10 * 8
    ys, xs = np.nonzero(m)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (5, 14, 4, 11)


def test_rings_combine_with_xor():
    outer, hole = ring(2, 2, 22, 18), ring(6, 6, 12, 12)
    m = polygon_to_mask([outer, hole], W, H)
    assert m.sum() == 20 * 16 - 6 * 6
    assert not m[8, 8] and m[3, 3]
    # two overlapping rings: the overlap is removed, the rest kept
    m2 = polygon_to_mask([ring(0, 0, 10, 10), ring(5, 0, 15, 10)], W, H)
    assert m2.sum() == 100 + 100 - 2 * 50


def test_mask_to_polygon_round_trip_with_hole():
    mask = polygon_to_mask([ring(3, 2, 30, 17), ring(10, 6, 18, 12)], W, H)
    rings = mask_to_polygon(mask, max_points=100)
    assert len(rings) == 2  # the outline and the hole
    back = polygon_to_mask(rings, W, H)
    assert (back == mask).mean() == 1.0


def test_mask_to_polygon_of_a_disk_is_close_and_limited():
    yy, xx = np.mgrid[:60, :80]
    disk = (xx - 40) ** 2 + (yy - 30) ** 2 < 20 ** 2
    for limit in (100, 12, 3):
        rings = mask_to_polygon(disk, max_points=limit)
        assert sum(len(r) // 2 for r in rings) <= limit
        assert all(0 <= v <= 1 for r in rings for v in r)
    iou = mask_iou([polygon_to_rle(mask_to_polygon(disk, 100), 80, 60)], [polygon_to_rle(mask_to_polygon(disk, 100), 80, 60)])
    assert iou[0, 0] == 1.0
    from automl_vision.models.masks import encode_mask

    close = mask_iou([polygon_to_rle(mask_to_polygon(disk, 100), 80, 60)], [encode_mask(disk)])[0, 0]
    coarse = mask_iou([polygon_to_rle(mask_to_polygon(disk, 12), 80, 60)], [encode_mask(disk)])[0, 0]
    assert close > 0.97 and 0.85 < coarse < close


def test_empty_mask_gives_no_polygon():
    assert mask_to_polygon(np.zeros((5, 5), bool), 100) == []
    assert not decode_rle(polygon_to_rle([], 5, 5)).any()


@pytest.mark.parametrize("rings, message", [
    ([[0.1, 0.1, 0.5, 0.5]], "a polygon ring needs at least 3 points, got 2"),
])
def test_polygon_errors(rings, message):
    with pytest.raises(ValueError, match=message):
        polygon_to_mask(rings, W, H)


# --- tiling ----------------------------------------------------------------------------------------

def test_tile_geometry_two_by_one():
    tiles = tile_boxes(100, 60, (2, 1), 0.25)
    tw = 100 / (0.25 + 0.75 * 2)
    assert tiles == [pytest.approx((0, 0, tw, 60)), pytest.approx((0.75 * tw, 0, 100, 60))]
    # neighbours overlap by r * tile width
    assert tiles[0][2] - tiles[1][0] == pytest.approx(0.25 * tw)


def test_tile_geometry_three_by_two_half_overlap():
    tiles = tile_boxes(120, 80, (3, 2), 0.5)
    # tile width W / (0.5 + 0.5 * 3) = W / 2, a new tile every W / 4; rows H / 1.5, every H / 3
    xs = [(t[0], t[2]) for t in tiles[:3]]
    assert xs == [pytest.approx((0, 60)), pytest.approx((30, 90)), pytest.approx((60, 120))]
    assert [(t[1], t[3]) for t in tiles[::3]] == [pytest.approx((0, 80 / 1.5)), pytest.approx((80 / 3, 80))]
    assert len(tiles) == 6


def test_no_overlap_tiles_partition_the_image():
    tiles = tile_boxes(90, 30, (3, 1), 0.0)
    assert tiles == [pytest.approx((0, 0, 30, 30)), pytest.approx((30, 0, 60, 30)), pytest.approx((60, 0, 90, 30))]


@pytest.mark.parametrize("args, message", [
    ((100, 100, (0, 2), 0.25), "tile grid 0x2"),
    ((100, 100, (2, 2), 1.0), r"tile_overlap_ratio=1.0 must be in \[0, 1\)"),
])
def test_tile_errors(args, message):
    with pytest.raises(ValueError, match=message):
        tile_boxes(*args)


def test_pixel_window_rounds_and_stays_inside():
    assert pixel_window((42.857, 0, 100.0, 60), 100, 60) == (43, 0, 100, 60)
    assert pixel_window((99.7, 59.8, 100.0, 60.0), 100, 60) == (99, 59, 100, 60)


def test_clip_to_window():
    boxes = np.array([[10, 10, 30, 30],   # inside
                      [50, 10, 70, 30],   # cut by the right border at 60
                      [59.5, 0, 80, 10],  # half a pixel inside: dropped
                      [80, 0, 90, 10]])   # outside
    clipped, kept = clip_to_window(boxes, (5, 0, 60, 40))
    assert kept.tolist() == [0, 1]
    np.testing.assert_allclose(clipped, [[5, 10, 25, 30], [45, 10, 55, 30]])


def _p(boxes, labels, scores):
    return ImagePredictions(np.asarray(boxes, float), labels, scores)


def test_merge_suppresses_duplicates_from_other_sources_only():
    whole = _p([[10, 10, 30, 30], [12, 10, 32, 30]], [0, 0], [0.9, 0.5])  # same source: both stay
    tile = _p([[5, 10, 25, 30], [0, 0, 10, 10], [5, 10, 25, 30]], [0, 0, 1], [0.8, 0.7, 0.6])
    merged = merge_tile_predictions([whole, tile], [(0, 0), (5, 0)], nms_threshold=0.25)
    # the tile's first box is [10, 10, 30, 30] in the image: a duplicate of the whole image's best -> dropped;
    # the tile's second box ([5, 0, 15, 10]) overlaps nothing -> kept; the label-1 box is kept (other label)
    assert merged.scores.tolist() == [0.9, 0.7, 0.6, 0.5]
    np.testing.assert_allclose(merged.boxes, [[10, 10, 30, 30], [5, 0, 15, 10], [10, 10, 30, 30], [12, 10, 32, 30]])
    assert merged.labels.tolist() == [0, 0, 1, 0]


def test_merge_threshold_and_limit():
    a = _p([[0, 0, 10, 10]], [0], [0.9])
    b = _p([[0, 0, 10, 14]], [0], [0.8])  # IoU 10/14 = 0.71 once shifted by (0, 0)
    assert len(merge_tile_predictions([a, b], [(0, 0), (0, 0)], 0.75).labels) == 2
    assert len(merge_tile_predictions([a, b], [(0, 0), (0, 0)], 0.70).labels) == 1
    assert merge_tile_predictions([a, b], [(0, 0), (0, 0)], 0.75, max_detections=1).scores.tolist() == [0.9]
    # a lower-scored box of the whole image is suppressed by a tile's box too
    assert merge_tile_predictions([b, a], [(0, 0), (0, 0)], 0.5).scores.tolist() == [0.9]
