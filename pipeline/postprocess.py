"""Post-processing fitted on out-of-fold (OOF) predictions: per class, a minimum component area and a minimum total
area (Severstal's per-class minimum pixel counts, SIIM 1st's min-area, nnU-Net's component removal chosen on CV).

For a class ``c`` with knobs ``(min_area, min_total)``, applied to a predicted class map: every 8-connected component
of ``c`` with fewer than ``min_area`` pixels becomes background (0); then, if fewer than ``min_total`` pixels of ``c``
are left in the image, all of them become background. Background itself is never changed, and classes touch
disjoint pixels, so the classes' rules commute.

**Fitting from per-image statistics, memory flat.** Moving pixels predicted ``c`` to background changes only two
columns of an image's confusion matrix (rows = truth): column ``c`` loses, column 0 gains, the truth histogram of
the moved pixels. For each image and class the search keeps (:func:`image_stats`), per ``min_area`` candidate, that
histogram and the predicted pixels left; with the histogram of all of ``c``'s pixels (column ``c`` itself), every
``(min_area, min_total)`` pair's matrices follow by addition, and any metric of
:func:`pipeline.metrics.score_matrices` with them. Nothing but these (N, C, T, C) counts is held, whatever the
image size.

**The search** (:func:`fit`): coordinate ascent over the classes (two passes), each class trying every pair of its
grid with the others fixed, keeping a change only when the metric rises; ``(0, 0)`` (no change) is always a
candidate, so on the images it is fitted on the result is never worse than none.

Worked example: one 1x6 image, truth ``[1 1 1 0 0 0]``, prediction ``[1 1 1 0 1 0]`` (a one-pixel false component of
class 1). ``min_area`` 2 for class 1 removes it: IoU_0 goes from 2/3 to 1 and IoU_1 from 3/4 to 1, so mIoU from
(2/3 + 3/4) / 2 = 0.7083 to 1.

>>> truth = np.array([[1, 1, 1, 0, 0, 0]], np.uint8)
>>> pred = np.array([[1, 1, 1, 0, 1, 0]], np.uint8)
>>> apply(pred, {1: (2, 0)}).tolist()
[[1, 1, 1, 0, 0, 0]]
>>> s = image_stats(pred, truth, 2, areas=(0, 2))
>>> grid = Grid(areas=(0, 2), totals=(0,))
>>> rules, before, after = fit([s], grid, "miou")
>>> rules, round(before, 4), round(after, 4)
({1: (2, 0)}, 0.7083, 1.0)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np

from pipeline.labels import IGNORE_INDEX
from pipeline.metrics import confusion_matrix, score_matrices

Rule = tuple[int, int]  # (min_area, min_total) in pixels; (0, 0) changes nothing
AREA_SHARES = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)  # min_area candidates as shares of the image's pixels
TOTAL_FACTOR = 4  # min_total candidates: the min_area grid times this


@dataclasses.dataclass(frozen=True)
class Grid:
    """The candidate ``min_area`` and ``min_total`` values (pixels), each starting at 0."""

    areas: tuple[int, ...]
    totals: tuple[int, ...]

    @classmethod
    def for_pixels(cls, pixels: int) -> Grid:
        """The grid for images of ``pixels`` pixels: 0 and :data:`AREA_SHARES` of them, totals 4x those.

        >>> Grid.for_pixels(96 * 128)
        Grid(areas=(0, 1, 4, 12, 37, 123), totals=(0, 4, 16, 48, 148, 492))
        """
        areas = tuple(sorted({0} | {max(1, round(pixels * s)) for s in AREA_SHARES}))
        return cls(areas, tuple(a * TOTAL_FACTOR for a in areas))


def _components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """8-connected components of a bool mask: the (H, W) int32 label map (0 = outside) and each label's area."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    return labels, stats[:, cv2.CC_STAT_AREA].astype(np.int64)  # index 0: the outside


def apply(pred: np.ndarray, rules: Mapping[int, Rule]) -> np.ndarray:
    """``pred`` (H, W) class indices with each class's ``(min_area, min_total)`` applied (a new array)."""
    out = pred.copy()
    for c, (min_area, min_total) in rules.items():
        if c == 0 or (min_area <= 0 and min_total <= 0):
            continue
        mask = pred == c
        if min_area > 0 and mask.any():
            labels, areas = _components(mask)
            small = areas < min_area
            small[0] = False
            drop = small[labels]
            out[drop] = 0
            mask &= ~drop
        if min_total > 0 and 0 < int(mask.sum()) < min_total:
            out[mask] = 0
    return out


@dataclasses.dataclass(frozen=True)
class ImageStats:
    """What the search needs of one image (C classes, T ``min_area`` candidates)."""

    matrix: np.ndarray  # (C, C) int64 confusion matrix of the prediction (rows = truth)
    moved: np.ndarray  # (C, T, C) int64: per class and min_area, truth histogram of the pixels it removes
    left: np.ndarray  # (C, T) int64: per class and min_area, the class's predicted pixels left (ignore included)


def image_stats(pred: np.ndarray, truth: np.ndarray, num_classes: int, areas: Sequence[int]) -> ImageStats:
    """Per-image statistics of ``pred`` against ``truth`` (255 = ignore) for the ``min_area`` candidates ``areas``."""
    C, T = num_classes, len(areas)
    thresholds = np.asarray(areas, np.int64)
    valid = truth != IGNORE_INDEX
    t = np.where(valid, truth, 0).astype(np.int64)
    moved = np.zeros((C, T, C), np.int64)
    left = np.zeros((C, T), np.int64)
    for c in range(1, C):
        mask = pred == c
        total = int(mask.sum())
        left[c] = total
        if total == 0:
            continue
        labels, comp_area = _components(mask)
        n = len(comp_area)
        # truth histogram of each component (valid pixels only): (n, C)
        hist = np.bincount(labels[valid] * C + t[valid], minlength=n * C).reshape(n, C)
        small = comp_area[None, 1:] < thresholds[:, None]  # (T, n - 1): component j + 1 removed at threshold i
        moved[c] = small.astype(np.int64) @ hist[1:]
        left[c] = total - small.astype(np.int64) @ comp_area[1:]
    return ImageStats(confusion_matrix(pred, truth, C).numpy().astype(np.int64), moved, left)


class Stack:
    """Every image's statistics stacked, and the (N, C, C) matrices of any per-class choice of rules."""

    def __init__(self, stats: Sequence[ImageStats], grid: Grid) -> None:
        self.grid = grid
        self.matrices = np.stack([s.matrix for s in stats])  # (N, C, C)
        self.moved = np.stack([s.moved for s in stats])  # (N, C, T, C)
        self.left = np.stack([s.left for s in stats])  # (N, C, T)

    @property
    def num_classes(self) -> int:
        return int(self.matrices.shape[1])

    def class_moved(self, c: int, rule: Rule) -> np.ndarray:
        """(N, C) truth histogram of the pixels of class ``c`` that ``rule`` moves to background, per image."""
        ti = self.grid.areas.index(rule[0])
        by_area = self.moved[:, c, ti]  # (N, C)
        if rule[1] <= 0:
            return by_area
        gone = (self.left[:, c, ti] < rule[1])[:, None]  # the rest of the class goes too
        return np.where(gone, self.matrices[:, :, c], by_area)

    def matrices_for(self, rules: Mapping[int, Rule], where: np.ndarray | None = None) -> np.ndarray:
        """(N, C, C) matrices after ``rules`` (of the images where ``where``, when given)."""
        m = self.matrices.copy()
        for c, rule in rules.items():
            if rule == (0, 0):
                continue
            mv = self.class_moved(c, rule)
            m[:, :, c] -= mv
            m[:, :, 0] += mv
        return m if where is None else m[where]


def fit(
    stats: Sequence[ImageStats] | Stack,
    grid: Grid,
    metric: str,
    where: np.ndarray | None = None,
    passes: int = 2,
) -> tuple[dict[int, Rule], float, float]:
    """Coordinate ascent of the metric over each foreground class's ``(min_area, min_total)``; returns the rules that
    change something, the metric without post-processing and with the rules (on the images where ``where``)."""
    stack = stats if isinstance(stats, Stack) else Stack(stats, grid)
    rules: dict[int, Rule] = {c: (0, 0) for c in range(1, stack.num_classes)}

    def score(r: Mapping[int, Rule]) -> float:
        return score_matrices(metric, stack.matrices_for(r, where))

    before = best = score(rules)
    for _ in range(passes):
        changed = False
        for c in range(1, stack.num_classes):
            for rule in ((a, t) for a in grid.areas for t in grid.totals):
                if rule == rules[c]:
                    continue
                s = score({**rules, c: rule})
                if s > best + 1e-12:
                    best, rules[c], changed = s, rule, True
        if not changed:
            break
    return {c: r for c, r in rules.items() if r != (0, 0)}, before, best


def describe(rules: Mapping[int, Rule], classes: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    """The rules by class name, for metrics/infer.json and the ledger."""
    names = {int(c["index"]): str(c["name"]) for c in classes}
    return {names.get(c, str(c)): {"min_area": a, "min_total": t} for c, (a, t) in sorted(rules.items())}
