"""Masks -> COCO segmentations, for generators and importers that write a COCO competition.

A binary object mask becomes polygons when polygons reproduce it exactly under pycocotools (they trace pixel
edges, so a hole-free mask usually does), and a compressed RLE otherwise (masks with holes: COCO polygons cannot
express holes). Either way, ``pycocotools`` decodes the annotation back to exactly the input mask.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pycocotools.mask as mask_utils
from scipy import ndimage

# Directed pixel-edge steps in (x, y) with y pointing down. Foreground lies on the right-hand side of each edge,
# so outer boundaries run clockwise on screen.
_RIGHT = (1, 0)
_DOWN = (0, 1)
_LEFT = (-1, 0)
_UP = (0, -1)


def trace_polygons(mask: np.ndarray) -> list[list[float]]:
    """Trace the pixel-edge boundary loops of a binary (H, W) mask as COCO polygons ``[x0, y0, x1, y1, ...]``.

    Vertices sit on pixel corners: pixel (row r, col c) spans x in [c, c+1] and y in [r, r+1]. Where two
    pieces touch only at a corner, the tracer turns towards the current pixel, so each 4-connected piece gets
    its own loop. Collinear vertices are dropped.
    """
    m = np.pad(mask.astype(bool), 1)
    h, w = mask.shape
    # Start vertex -> outgoing edge directions. Coordinates are in the padded frame, shifted back at the end.
    out: dict[tuple[int, int], list[tuple[int, int]]] = {}
    rows, cols = np.nonzero(m)
    for r, c in zip(rows.tolist(), cols.tolist()):
        if not m[r - 1, c]:
            out.setdefault((c, r), []).append(_RIGHT)
        if not m[r, c + 1]:
            out.setdefault((c + 1, r), []).append(_DOWN)
        if not m[r + 1, c]:
            out.setdefault((c + 1, r + 1), []).append(_LEFT)
        if not m[r, c - 1]:
            out.setdefault((c, r + 1), []).append(_UP)
    polygons: list[list[float]] = []
    while out:
        start = next(iter(out))
        loop = [start]
        direction = _take(out, start, None)
        v = (start[0] + direction[0], start[1] + direction[1])
        while v != start or out.get(start):
            if v == start and not out.get(start):
                break
            loop.append(v)
            direction = _take(out, v, direction)
            v = (v[0] + direction[0], v[1] + direction[1])
            if v == start:
                break
        pts = _drop_collinear(loop)
        if len(pts) >= 3:
            poly: list[float] = []
            for x, y in pts:
                # back from the padded frame; clamp keeps vertices on the image (they already are)
                poly += [float(min(max(x - 1, 0), w)), float(min(max(y - 1, 0), h))]
            polygons.append(poly)
    return polygons


def _take(
    out: dict[tuple[int, int], list[tuple[int, int]]], v: tuple[int, int], prev: tuple[int, int] | None
) -> tuple[int, int]:
    """Pop the outgoing edge at ``v``: the sharpest right turn first, so corner-touching pieces stay apart."""
    options = out[v]
    if prev is None or len(options) == 1:
        d = options.pop(0)
    else:
        right = (-prev[1], prev[0])
        left = (prev[1], -prev[0])
        d = next((o for o in (right, prev, left) if o in options), options[0])
        options.remove(d)
    if not options:
        del out[v]
    return d


def _drop_collinear(loop: list[tuple[int, int]]) -> list[tuple[int, int]]:
    n = len(loop)
    keep = []
    for i in range(n):
        a, b, c = loop[i - 1], loop[i], loop[(i + 1) % n]
        if (b[0] - a[0]) * (c[1] - b[1]) - (b[1] - a[1]) * (c[0] - b[0]) != 0:
            keep.append(b)
    return keep


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """Compressed COCO RLE of a binary (H, W) mask, with ``counts`` as a str (JSON-ready)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def has_holes(mask: np.ndarray) -> bool:
    m = mask.astype(bool)
    return bool((ndimage.binary_fill_holes(m) & ~m).any())


def mask_to_segmentation(mask: np.ndarray) -> list[list[float]] | dict[str, Any]:
    """Polygons when they reproduce ``mask`` exactly under pycocotools, else compressed RLE (always for holes)."""
    h, w = mask.shape
    if not has_holes(mask):
        polys = trace_polygons(mask)
        if polys:
            decoded = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polys, h, w)))
            if np.array_equal(decoded.astype(bool), mask.astype(bool)):
                return polys
    return encode_rle(mask)


def annotation(ann_id: int, image_id: int, category_id: int, mask: np.ndarray, iscrowd: int = 0) -> dict[str, Any]:
    """A COCO annotation dict (segmentation, area, bbox) for a binary mask."""
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    seg = encode_rle(mask) if iscrowd else mask_to_segmentation(mask)
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "segmentation": seg,
        "area": int(mask.astype(bool).sum()),
        "bbox": [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1],
        "iscrowd": int(iscrowd),
    }


def patch_annotation(
    ann_id: int,
    image_id: int,
    category_id: int,
    patch: np.ndarray,
    top: int,
    left: int,
    height: int,
    width: int,
) -> dict[str, Any]:
    """:func:`annotation` of a mask that is ``patch`` at (``top``, ``left``) on a ``height`` x ``width`` image.

    Never builds the whole-image mask for polygons, so large images with many small objects stay cheap. The
    polygons are checked on a window of the image one pixel wider than the patch on each side (clipped to the
    image): pycocotools rasterises integer vertices the same way wherever they sit, and the window keeps any
    image border where it really is. Masks with holes, or that polygons miss, become a whole-image RLE.
    """
    ph, pw = patch.shape
    if top < 0 or left < 0 or top + ph > height or left + pw > width:
        raise ValueError(f"patch {ph}x{pw} at ({top}, {left}) does not fit a {height}x{width} image")
    m = patch.astype(bool)
    ys, xs = np.nonzero(m)
    seg: list[list[float]] | dict[str, Any] | None = None
    if not has_holes(m):
        y0, x0 = max(0, top - 1), max(0, left - 1)
        y1, x1 = min(height, top + ph + 1), min(width, left + pw + 1)
        window = np.zeros((y1 - y0, x1 - x0), bool)
        window[top - y0 : top - y0 + ph, left - x0 : left - x0 + pw] = m
        polys = trace_polygons(window)
        if polys:
            decoded = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polys, y1 - y0, x1 - x0)))
            if np.array_equal(decoded.astype(bool), window):
                seg = [[v + (x0 if k % 2 == 0 else y0) for k, v in enumerate(p)] for p in polys]
    if seg is None:
        full = np.zeros((height, width), bool)
        full[top : top + ph, left : left + pw] = m
        seg = encode_rle(full)
    bx0, by0 = left + int(xs.min()), top + int(ys.min())
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "segmentation": seg,
        "area": int(m.sum()),
        "bbox": [bx0, by0, left + int(xs.max()) - bx0 + 1, top + int(ys.max()) - by0 + 1],
        "iscrowd": 0,
    }
