"""Masks -> COCO segmentations: pycocotools decodes every one back to exactly the input mask."""

from __future__ import annotations

from typing import Any

import numpy as np
import pycocotools.mask as mask_utils
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pipeline.data.coco_write import annotation, encode_rle, has_holes, mask_to_segmentation, trace_polygons


def decode(seg: Any, h: int, w: int) -> np.ndarray:
    """The way pycocotools' COCO.annToMask decodes an annotation."""
    if isinstance(seg, list):
        return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(seg, h, w)))
    return mask_utils.decode({"size": seg["size"], "counts": seg["counts"]})


masks = st.tuples(st.integers(1, 12), st.integers(1, 12)).flatmap(lambda hw: arrays(np.bool_, hw))


def solid_blob(draw: st.DrawFn) -> np.ndarray:
    """A random 4-connected, hole-free blob: a union of rectangles grown from a seed, holes then filled."""
    from scipy import ndimage

    h, w = draw(st.integers(2, 14)), draw(st.integers(2, 14))
    mask = np.zeros((h, w), bool)
    y, x = draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))
    mask[y, x] = True
    for _ in range(draw(st.integers(0, 5))):
        ys, xs = np.nonzero(mask)
        i = draw(st.integers(0, len(ys) - 1))
        dy, dx = draw(st.integers(-3, 3)), draw(st.integers(-3, 3))
        y0, y1 = sorted((int(ys[i]), min(max(int(ys[i]) + dy, 0), h - 1)))
        x0, x1 = sorted((int(xs[i]), min(max(int(xs[i]) + dx, 0), w - 1)))
        mask[y0 : y1 + 1, x0 : x1 + 1] = True  # contains the chosen pixel, so the blob stays connected
    return ndimage.binary_fill_holes(mask)


blobs = st.composite(lambda draw: solid_blob(draw))()


@settings(max_examples=300, deadline=None)
@given(masks)
def test_any_mask_round_trips_exactly_through_pycocotools(mask: np.ndarray) -> None:
    seg = mask_to_segmentation(mask)
    h, w = mask.shape
    np.testing.assert_array_equal(decode(seg, h, w), mask.astype(np.uint8))
    if has_holes(mask):
        assert isinstance(seg, dict)  # COCO polygons cannot express holes


@settings(max_examples=200, deadline=None)
@given(blobs)
def test_hole_free_blobs_become_polygons(mask: np.ndarray) -> None:
    assert not has_holes(mask)
    seg = mask_to_segmentation(mask)
    assert isinstance(seg, list) and len(seg) == 1  # one blob, one outline
    assert all(len(p) >= 8 and len(p) % 2 == 0 for p in seg)  # at least 4 corners, (x, y) pairs
    np.testing.assert_array_equal(decode(seg, *mask.shape), mask.astype(np.uint8))


@settings(max_examples=200, deadline=None)
@given(masks)
def test_rle_round_trips_and_is_json_ready(mask: np.ndarray) -> None:
    rle = encode_rle(mask)
    assert isinstance(rle["counts"], str) and rle["size"] == list(mask.shape)
    np.testing.assert_array_equal(decode(rle, *mask.shape), mask.astype(np.uint8))


def test_masks_with_holes_give_rle() -> None:
    ring = np.ones((7, 7), bool)
    ring[3, 3] = False
    assert has_holes(ring)
    seg = mask_to_segmentation(ring)
    assert isinstance(seg, dict) and isinstance(seg["counts"], str)
    np.testing.assert_array_equal(decode(seg, 7, 7), ring.astype(np.uint8))


def test_rectangle_traces_to_its_four_corners() -> None:
    mask = np.zeros((10, 12), bool)
    mask[2:5, 3:8] = True  # rows 2..4, cols 3..7: corners on pixel edges x in {3, 8}, y in {2, 5}
    polys = trace_polygons(mask)
    assert len(polys) == 1
    corners = list(zip(polys[0][::2], polys[0][1::2], strict=True))
    assert sorted(corners) == [(3.0, 2.0), (3.0, 5.0), (8.0, 2.0), (8.0, 5.0)]
    assert mask_to_segmentation(mask) == polys


def test_full_image_and_single_pixel_trace_to_their_corners() -> None:
    full = np.ones((3, 4), bool)
    assert sorted(zip(*[iter(trace_polygons(full)[0])] * 2, strict=True)) == [(0, 0), (0, 3), (4, 0), (4, 3)]
    dot = np.zeros((5, 5), bool)
    dot[4, 4] = True
    assert sorted(zip(*[iter(trace_polygons(dot)[0])] * 2, strict=True)) == [(4, 4), (4, 5), (5, 4), (5, 5)]


def test_pieces_touching_at_a_corner_get_separate_outlines() -> None:
    mask = np.zeros((4, 4), bool)
    mask[0:2, 0:2] = True
    mask[2:4, 2:4] = True
    polys = trace_polygons(mask)
    assert len(polys) == 2 and all(len(p) == 8 for p in polys)
    np.testing.assert_array_equal(decode(mask_to_segmentation(mask), 4, 4), mask.astype(np.uint8))


def test_empty_mask_gives_an_empty_rle() -> None:
    empty = np.zeros((3, 5), bool)
    assert trace_polygons(empty) == []
    seg = mask_to_segmentation(empty)
    assert isinstance(seg, dict) and decode(seg, 3, 5).sum() == 0


def test_annotation_fields() -> None:
    mask = np.zeros((6, 8), bool)
    mask[1:4, 2:7] = True
    mask[2, 4] = False  # a hole
    ann = annotation(7, 3, 5, mask)
    assert {k: ann[k] for k in ("id", "image_id", "category_id", "area", "bbox", "iscrowd")} == {
        "id": 7,
        "image_id": 3,
        "category_id": 5,
        "area": 14,
        "bbox": [2, 1, 5, 3],
        "iscrowd": 0,
    }
    assert isinstance(ann["segmentation"], dict)
    crowd = annotation(8, 3, 5, ~np.zeros((2, 2), bool), iscrowd=1)
    assert isinstance(crowd["segmentation"], dict) and crowd["iscrowd"] == 1  # crowd regions are always RLE
