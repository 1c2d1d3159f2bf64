"""COCO results (``COCO.loadRes``-ready detections) from class masks, for instance-style leaderboards."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

from pipeline import rle
from pipeline.errors import UserError


def to_coco_results(
    image_id: int,
    class_mask: np.ndarray,
    class_to_category_id: Mapping[int, int],
    scores: np.ndarray | None = None,
    connectivity: Literal[4, 8] = 8,
) -> list[dict[str, Any]]:
    """COCO results for one image: one compressed-RLE detection per connected component of each class.

    Args:
        image_id: the COCO image id.
        class_mask: (H, W) integer class indices; 0 is background and is skipped.
        class_to_category_id: class index -> COCO category id, for every class present in the mask.
        scores: optional probabilities, (C, H, W) per class or (H, W) for the predicted class; a component's
            score is their mean over its pixels (class ``c`` reads ``scores[c]``). Without scores it is 1.0.
        connectivity: 4 or 8 neighbours join pixels into one component.

    Returns:
        Dicts with ``image_id``, ``category_id``, ``segmentation`` (``{"size": [H, W], "counts": str}``) and
        ``score``, readable by ``COCO.loadRes``; ordered by class index, then by component (in row-major order
        of each component's first pixel, as ``scipy.ndimage.label`` numbers them).
    """
    from pycocotools import mask as mask_utils
    from scipy import ndimage

    class_mask = np.asarray(class_mask)
    if class_mask.ndim != 2:
        raise ValueError(f"class_mask must be (H, W), got shape {class_mask.shape}")
    height, width = class_mask.shape
    if scores is not None:
        scores = np.asarray(scores, dtype=np.float64)
        if scores.shape[-2:] != class_mask.shape or scores.ndim not in (2, 3):
            raise ValueError(
                f"scores must be (C, H, W) or (H, W) matching the mask {class_mask.shape}, got {scores.shape}"
            )
    structure = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    results = []
    for c in np.unique(class_mask).tolist():
        if c == 0:
            continue
        if c not in class_to_category_id:
            raise UserError(
                f"COCO results: class index {c} has no category id (mapping has {sorted(class_to_category_id)})"
            )
        components, n = ndimage.label(class_mask == c, structure=structure)
        if scores is not None:
            prob = scores[c] if scores.ndim == 3 else scores
            means = np.atleast_1d(ndimage.mean(prob, components, np.arange(1, n + 1)))
        # all components' runs in one column-major pass; a stable sort by component keeps pixel order within each
        values, starts, lengths = rle.encode_class_runs(components, "column")
        keep = values > 0
        values, starts, lengths = values[keep], starts[keep], lengths[keep]
        order = np.argsort(values, kind="stable")
        values, starts, lengths = values[order], starts[order], lengths[order]
        bounds = np.searchsorted(values, np.arange(1, n + 2))
        for k in range(n):
            lo, hi = bounds[k], bounds[k + 1]
            counts = rle.runs_to_counts(starts[lo:hi], lengths[lo:hi], height * width)
            compressed = mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
            results.append(
                {
                    "image_id": image_id,
                    "category_id": int(class_to_category_id[c]),
                    "segmentation": {"size": [height, width], "counts": compressed["counts"].decode("ascii")},
                    "score": float(means[k]) if scores is not None else 1.0,
                }
            )
    return results
