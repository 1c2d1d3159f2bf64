"""Post-processing fitted on out-of-fold (OOF) predictions, per class (SIIM 1st's min-area, Severstal's per-class
minimum pixel counts, nnU-Net's keep-largest-component chosen on CV): a minimum component area, a minimum total area,
keep-largest-component, and hole filling.

A class ``c``'s :class:`Rule` is applied to a predicted class map in two phases. **Removal** (each class alone):
with ``largest`` every 8-connected component of ``c`` smaller than its largest becomes background (0) (components
tied for the largest all stay); else every component with fewer than ``min_area`` pixels does; then, if fewer than
``min_total`` pixels of ``c`` are left in the image, all of them become background. **Filling**, on the map the
removal left: with ``fill``, every hole of ``c`` becomes ``c``: a 4-connected region of background that does not
touch the image's border and whose every 4-neighbour outside it is ``c`` (a region also bordered by another class is
no hole of either). Background itself is never removed; classes touch disjoint pixels and each hole has one
enclosing class, so within a phase the classes' rules commute.

**Fitting from per-image statistics, memory flat.** Moving pixels predicted ``c`` to background changes only two
columns of an image's confusion matrix (rows = truth): column ``c`` loses, column 0 gains, the truth histogram of
the moved pixels. For each image and class the search keeps (:func:`image_stats`), per ``min_area`` candidate (and
keep-largest, the last slot), that histogram and the predicted pixels left; with the histogram of all of ``c``'s
pixels (column ``c`` itself), every removal rule's matrices follow by addition, and any metric of
:func:`pipeline.metrics.score_matrices` with them. Filling moves the truth histogram of ``c``'s holes from column 0
to column ``c``; the holes depend on the removal rules, so they are counted (:func:`hole_stats`) on the map the
chosen removal rules leave, one streamed pass. Nothing but these (N, C, T + 1, C) and (N, C, C) counts is held,
whatever the image size.

**The search** (:func:`fit`, then :func:`fit_fill`): coordinate ascent over the classes (two passes), each class
trying every removal rule of its grid with the others fixed, then each class's filling on or off, keeping a change
only when the metric rises; no change is always a candidate, so on the images it is fitted on the result is never
worse than none.

Worked example: one 1x6 image, truth ``[1 1 1 0 0 0]``, prediction ``[1 1 1 0 1 0]`` (a one-pixel false component of
class 1). ``min_area`` 2 for class 1 removes it, and so does keep-largest: IoU_0 goes from 2/3 to 1 and IoU_1 from
3/4 to 1, so mIoU from (2/3 + 3/4) / 2 = 0.7083 to 1.

>>> truth = np.array([[1, 1, 1, 0, 0, 0]], np.uint8)
>>> pred = np.array([[1, 1, 1, 0, 1, 0]], np.uint8)
>>> apply(pred, {1: Rule(min_area=2)}).tolist(), apply(pred, {1: Rule(largest=True)}).tolist()
([[1, 1, 1, 0, 0, 0]], [[1, 1, 1, 0, 0, 0]])
>>> s = image_stats(pred, truth, 2, areas=(0, 2))
>>> grid = Grid(areas=(0, 2), totals=(0,), largest=False)
>>> rules, before, after = fit([s], grid, "miou")
>>> rules, round(before, 4), round(after, 4)
({1: Rule(min_area=2, min_total=0, largest=False, fill=False)}, 0.7083, 1.0)

Filling: a ring of class 1 around one background pixel that is truly class 1; the hole is filled.

>>> ring = np.array([[0, 0, 0, 0, 0], [0, 1, 1, 1, 0], [0, 1, 0, 1, 0], [0, 1, 1, 1, 0], [0, 0, 0, 0, 0]], np.uint8)
>>> apply(ring, {1: Rule(fill=True)})[2].tolist()
[0, 1, 1, 1, 0]
>>> hole_stats(ring, np.where(ring == 1, 1, 0) | (np.arange(25).reshape(5, 5) == 12), 2)[1].tolist()
[0, 1]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import cv2
import numpy as np

from pipeline.labels import IGNORE_INDEX
from pipeline.metrics import confusion_matrix, score_matrices


class Rule(NamedTuple):
    """One class's post-processing (pixels); ``Rule()`` changes nothing."""

    min_area: int = 0  # components with fewer pixels become background (ignored with ``largest``)
    min_total: int = 0  # then, with fewer pixels of the class left in the image, all of them do
    largest: bool = False  # keep only the largest component(s)
    fill: bool = False  # fill the holes the class alone encloses (after every class's removal)

    @property
    def removes(self) -> bool:
        return self.largest or self.min_area > 0 or self.min_total > 0


NONE = Rule()
AREA_SHARES = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)  # min_area candidates as shares of the image's pixels
TOTAL_FACTOR = 4  # min_total candidates: the min_area grid times this


@dataclasses.dataclass(frozen=True)
class Grid:
    """The candidate ``min_area`` and ``min_total`` values (pixels), each starting at 0, whether keep-largest is a
    candidate (with every ``min_total``), and whether hole filling is."""

    areas: tuple[int, ...]
    totals: tuple[int, ...]
    largest: bool = True
    fill: bool = True

    @classmethod
    def for_pixels(cls, pixels: int, shapes: bool = True) -> Grid:
        """The grid for images of ``pixels`` pixels: 0 and :data:`AREA_SHARES` of them, totals 4x those; with
        ``shapes``, keep-largest and hole filling too.

        >>> Grid.for_pixels(96 * 128)
        Grid(areas=(0, 1, 4, 12, 37, 123), totals=(0, 4, 16, 48, 148, 492), largest=True, fill=True)
        """
        areas = tuple(sorted({0} | {max(1, round(pixels * s)) for s in AREA_SHARES}))
        return cls(areas, tuple(a * TOTAL_FACTOR for a in areas), shapes, shapes)

    def removals(self) -> list[Rule]:
        """Every removal rule of the grid, ``Rule()`` first."""
        rules = [Rule(a, t) for a in self.areas for t in self.totals]
        return rules + ([Rule(0, t, largest=True) for t in self.totals] if self.largest else [])

    def slot(self, rule: Rule) -> int:
        """The statistics' area slot of ``rule``: its ``min_area`` candidate, or the last (keep-largest)."""
        return len(self.areas) if rule.largest else self.areas.index(rule.min_area)


def _components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """8-connected components of a bool mask: the (H, W) int32 label map (0 = outside) and each label's area."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    return labels, stats[:, cv2.CC_STAT_AREA].astype(np.int64)  # index 0: the outside


def _removed(comp_area: np.ndarray, rule: Rule) -> np.ndarray:
    """(n,) bool: which components (index 0 the outside, never) ``rule``'s area step removes."""
    out = np.zeros(len(comp_area), bool)
    if len(comp_area) > 1:
        out[1:] = comp_area[1:] < (comp_area[1:].max() if rule.largest else rule.min_area)
    return out


def apply(pred: np.ndarray, rules: Mapping[int, Rule]) -> np.ndarray:
    """``pred`` (H, W) class indices with each class's rule applied (a new array): removal, then filling."""
    out = pred.copy()
    for c, rule in rules.items():
        if c == 0 or not rule.removes:
            continue
        mask = pred == c
        if (rule.largest or rule.min_area > 0) and mask.any():
            labels, areas = _components(mask)
            drop = _removed(areas, rule)[labels]
            out[drop] = 0
            mask &= ~drop
        if rule.min_total > 0 and 0 < int(mask.sum()) < rule.min_total:
            out[mask] = 0
    fills = [c for c, rule in rules.items() if c != 0 and rule.fill]
    if fills:
        labels, enclosing = _holes(out)
        fill = np.isin(enclosing, fills)
        fill[0] = False
        out[fill[labels]] = enclosing[labels][fill[labels]]
    return out


_FOUR = ((0, 1), (1, 0))  # 4-neighbour offsets, each pair of neighbours seen once


def _holes(pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The holes of a class map: the (H, W) label map of its 4-connected background regions (0 = not background) and
    each region's enclosing class (0: none, at the border or bordered by two classes; index 0 unused)."""
    n, labels = cv2.connectedComponents((pred == 0).astype(np.uint8), connectivity=4)
    # region x class: how often the region borders the class (4-neighbours, both directions)
    touch = np.zeros(n * 256, np.int64)
    for dy, dx in _FOUR:
        a, b = labels[: labels.shape[0] - dy, : labels.shape[1] - dx], labels[dy:, dx:]
        pa, pb = pred[: pred.shape[0] - dy, : pred.shape[1] - dx], pred[dy:, dx:]
        for la, pn in ((a, pb), (b, pa)):  # a background pixel beside a pixel of a class
            sel = (la > 0) & (pn != 0)
            touch += np.bincount(la[sel].astype(np.int64) * 256 + pn[sel], minlength=n * 256)
    touch = touch.reshape(n, 256)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    alone = (touch > 0).sum(1) == 1
    alone[border] = False
    alone[0] = False
    return labels, np.where(alone, touch.argmax(1), 0)


def hole_stats(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) int64: per enclosing class (row), the truth histogram of the pixels in its holes in ``pred`` (valid
    truth only, 255 = ignore); filling class ``c``'s holes moves row ``c`` from matrix column 0 to column ``c``."""
    labels, enclosing = _holes(pred)
    valid = (truth != IGNORE_INDEX) & (labels > 0)
    cls = enclosing[labels[valid]]
    keep = cls > 0
    return np.bincount(
        cls[keep] * num_classes + truth[valid][keep].astype(np.int64), minlength=num_classes * num_classes
    ).reshape(num_classes, num_classes)


@dataclasses.dataclass(frozen=True)
class ImageStats:
    """What the removal search needs of one image (C classes, T ``min_area`` candidates, + 1 keep-largest slot)."""

    matrix: np.ndarray  # (C, C) int64 confusion matrix of the prediction (rows = truth)
    moved: np.ndarray  # (C, T + 1, C) int64: per class and area slot, truth histogram of the pixels it removes
    left: np.ndarray  # (C, T + 1) int64: per class and area slot, the class's predicted pixels left (ignore included)


def image_stats(pred: np.ndarray, truth: np.ndarray, num_classes: int, areas: Sequence[int]) -> ImageStats:
    """Per-image statistics of ``pred`` against ``truth`` (255 = ignore) for the ``min_area`` candidates ``areas``
    and keep-largest (the last slot)."""
    C, T = num_classes, len(areas)
    valid = truth != IGNORE_INDEX
    t = np.where(valid, truth, 0).astype(np.int64)
    moved = np.zeros((C, T + 1, C), np.int64)
    left = np.zeros((C, T + 1), np.int64)
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
        slots = [Rule(min_area=a) for a in areas] + [Rule(largest=True)]
        gone = np.stack([_removed(comp_area, r)[1:] for r in slots]).astype(np.int64)  # (T + 1, n - 1)
        moved[c] = gone @ hist[1:]
        left[c] = total - gone @ comp_area[1:]
    return ImageStats(confusion_matrix(pred, truth, C).numpy().astype(np.int64), moved, left)


class Stack:
    """Every image's statistics stacked, and the (N, C, C) matrices of any per-class choice of rules."""

    def __init__(self, stats: Sequence[ImageStats], grid: Grid) -> None:
        self.grid = grid
        self.matrices = np.stack([s.matrix for s in stats])  # (N, C, C)
        self.moved = np.stack([s.moved for s in stats])  # (N, C, T + 1, C)
        self.left = np.stack([s.left for s in stats])  # (N, C, T + 1)

    @property
    def num_classes(self) -> int:
        return int(self.matrices.shape[1])

    def class_moved(self, c: int, rule: Rule) -> np.ndarray:
        """(N, C) truth histogram of the pixels of class ``c`` that ``rule`` moves to background, per image."""
        ti = self.grid.slot(rule)
        by_area = self.moved[:, c, ti]  # (N, C)
        if rule.min_total <= 0:
            return by_area
        gone = (self.left[:, c, ti] < rule.min_total)[:, None]  # the rest of the class goes too
        return np.where(gone, self.matrices[:, :, c], by_area)

    def matrices_for(
        self, rules: Mapping[int, Rule], where: np.ndarray | None = None, holes: np.ndarray | None = None
    ) -> np.ndarray:
        """(N, C, C) matrices after ``rules`` (of the images where ``where``, when given). ``holes``: the (N, C, C)
        :func:`hole_stats` of the map the rules' removal leaves, needed when a rule fills."""
        m = self.matrices.copy()
        for c, rule in rules.items():
            if rule.removes:
                mv = self.class_moved(c, rule)
                m[:, :, c] -= mv
                m[:, :, 0] += mv
            if rule.fill:
                if holes is None:
                    raise ValueError("a rule fills holes: matrices_for needs the hole statistics")
                m[:, :, 0] -= holes[:, c]
                m[:, :, c] += holes[:, c]
        return m if where is None else m[where]


def fit(
    stats: Sequence[ImageStats] | Stack,
    grid: Grid,
    metric: str,
    where: np.ndarray | None = None,
    passes: int = 2,
) -> tuple[dict[int, Rule], float, float]:
    """Coordinate ascent of the metric over each foreground class's removal rule; returns the rules that change
    something, the metric without post-processing and with the rules (on the images where ``where``)."""
    stack = stats if isinstance(stats, Stack) else Stack(stats, grid)
    rules: dict[int, Rule] = {c: NONE for c in range(1, stack.num_classes)}

    def score(r: Mapping[int, Rule]) -> float:
        return score_matrices(metric, stack.matrices_for(r, where))

    before = best = score(rules)
    candidates = grid.removals()
    for _ in range(passes):
        changed = False
        for c in range(1, stack.num_classes):
            for rule in candidates:
                if rule == rules[c]:
                    continue
                s = score({**rules, c: rule})
                if s > best + 1e-12:
                    best, rules[c], changed = s, rule, True
        if not changed:
            break
    return {c: r for c, r in rules.items() if r != NONE}, before, best


def fit_fill(
    stack: Stack, removal: Mapping[int, Rule], holes: np.ndarray, metric: str, where: np.ndarray | None = None
) -> tuple[dict[int, Rule], float]:
    """``removal`` (from :func:`fit`) with hole filling turned on for each class where it raises the metric (one
    pass over the classes; ``holes``: the (N, C, C) :func:`hole_stats` of the map ``removal`` leaves); returns the
    rules and the metric with them."""
    rules = dict(removal)

    def score(r: Mapping[int, Rule]) -> float:
        return score_matrices(metric, stack.matrices_for(r, where, holes))

    best = score(rules)
    for c in range(1, stack.num_classes):
        if not holes[:, c].any():
            continue
        trial = {**rules, c: rules.get(c, NONE)._replace(fill=True)}
        s = score(trial)
        if s > best + 1e-12:
            best, rules = s, trial
    return rules, best


def describe(rules: Mapping[int, Rule], classes: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, int | bool]]:
    """The rules by class name, for metrics/infer.json and the ledger (``largest`` and ``fill`` only when on)."""
    names = {int(c["index"]): str(c["name"]) for c in classes}
    out: dict[str, dict[str, int | bool]] = {}
    for c, r in sorted(rules.items()):
        entry: dict[str, int | bool] = {"min_area": r.min_area, "min_total": r.min_total}
        entry.update({k: True for k in ("largest", "fill") if getattr(r, k)})
        out[names.get(c, str(c))] = entry
    return out
