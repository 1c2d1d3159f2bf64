"""The foreground probability threshold of a binary task, fitted on out-of-fold (OOF) predictions (SIIM 1st's
threshold; ``infer.threshold: fit``).

A binary competition (background + one class; softmax or ``head: sigmoid``) predicts the class where its probability
is over ``t`` instead of taking the argmax (``t = 0.5``). :func:`decide` is the one place a class map is made from
probabilities, for infer, the OOF planner, pseudo-labelling and the ablation alike, so the threshold is applied
identically everywhere; with ``None`` it is the argmax, unchanged.

**Fitting from per-image counts, memory flat.** For each OOF image, :func:`image_counts` keeps, per candidate
threshold, how many pixels of each truth class (0 or 1) have a probability over it: a (2, T) array. The image's
confusion matrix at threshold ``t_j`` follows from these and the truth totals (:func:`matrices`), so every candidate
is scored in the competition metric without another pass over the probabilities. The argmax (``None``) is always a
candidate: where no threshold beats it, nothing changes.

Worked example: one 1x4 image, truth ``[0 0 1 1]``, probabilities of the class ``[0.1 0.4 0.45 0.9]``. The argmax
predicts ``[0 0 0 1]`` (mIoU (2/3 + 1/2) / 2 = 0.5833); over 0.3 it predicts ``[0 1 1 1]`` (mIoU (1/2 + 2/3) / 2,
the same), over 0.42 it predicts ``[0 0 1 1]``, exact.

>>> probs = np.array([[[0.9, 0.6, 0.55, 0.1]], [[0.1, 0.4, 0.45, 0.9]]], np.float32)
>>> truth = np.array([[0, 0, 1, 1]], np.uint8)
>>> decide(probs, None).tolist(), decide(probs, 0.42).tolist()
([[0, 0, 0, 1]], [[0, 0, 1, 1]])
>>> counts, totals = image_counts(probs, truth, (0.3, 0.42))
>>> counts.tolist(), totals.tolist()
([[1, 0], [2, 2]], [2, 2])
>>> t, before, after = fit([(counts, totals)], (0.3, 0.42), "miou", lambda: [_cm(probs.argmax(0), truth)])
>>> t, round(before, 4), round(after, 4)
(0.42, 0.5833, 1.0)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from pipeline.labels import IGNORE_INDEX, decode, planes
from pipeline.metrics import score_matrices

THRESHOLDS = tuple(round(0.05 * k, 2) for k in range(2, 19))  # 0.10 ... 0.90: the candidates of ``fit``


def decide(probs: Any, threshold: float | None, multilabel: bool = False) -> Any:
    """The (..., H, W) int64 class map of (..., C, H, W) probabilities (numpy or torch): the argmax over C, or, with
    a ``threshold``, class 1 where its probability is over it (binary tasks only: C == 2). ``multilabel``: the
    (..., H, W) bit field of each class's own sigmoid probability over ``threshold`` (``None``: 0.5;
    :func:`pipeline.labels.decode`)."""
    if multilabel:
        return decode(probs, 0.5 if threshold is None else threshold)
    if threshold is None:
        return probs.argmax(-3)
    if probs.shape[-3] != 2:
        raise ValueError(f"a probability threshold needs 2 classes, got {probs.shape[-3]}")
    p1 = probs[..., 1, :, :]
    if isinstance(p1, np.ndarray):  # compared in float32, as torch compares a float32 tensor and as the counts do
        return (p1.astype(np.float32) > np.float32(threshold)).astype(np.int64)
    return (p1.float() > threshold).long()


def image_counts(probs: np.ndarray, truth: np.ndarray, thresholds: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """One image's (2, T) counts of truth-c pixels whose class-1 probability is over each threshold, and its (2,)
    truth totals; ignore pixels (255) are left out, as the confusion matrix leaves them."""
    p1 = probs[1].astype(np.float32)
    counts = np.zeros((2, len(thresholds)), np.int64)
    totals = np.zeros(2, np.int64)
    for c in (0, 1):
        values = np.sort(p1[truth == c])
        totals[c] = values.size
        counts[c] = values.size - np.searchsorted(values, np.asarray(thresholds, np.float32), side="right")
    return counts, totals


def matrices(stats: Sequence[tuple[np.ndarray, np.ndarray]], j: int) -> np.ndarray:
    """(N, 2, 2) confusion matrices (rows: truth) of every image at the ``j``-th threshold."""
    out = np.zeros((len(stats), 2, 2), np.int64)
    for n, (counts, totals) in enumerate(stats):
        out[n, :, 1] = counts[:, j]
        out[n, :, 0] = totals - counts[:, j]
    return out


def fit(
    stats: Sequence[tuple[np.ndarray, np.ndarray]],
    thresholds: Sequence[float],
    metric: str,
    argmax_matrices: Callable[[], Any],
) -> tuple[float | None, float, float]:
    """The threshold (or ``None``: the argmax) that maximises ``metric`` over ``stats``' images; with the metric of
    the argmax (``argmax_matrices()``: its (N, 2, 2) matrices) and of the choice. Ties keep the argmax, then the
    threshold nearest 0.5."""
    before = score_matrices(metric, np.asarray(argmax_matrices()))
    best: tuple[float | None, float] = (None, before)
    for j in sorted(range(len(thresholds)), key=lambda j: abs(thresholds[j] - 0.5)):
        score = score_matrices(metric, matrices(stats, j))
        if score > best[1] + 1e-12:
            best = (float(thresholds[j]), score)
    return best[0], before, best[1]


def _cm(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """One image's 2x2 confusion matrix (rows: truth), ignore left out: the doctest's independent argmax figure."""
    keep = truth != IGNORE_INDEX
    return np.bincount(2 * truth[keep].astype(np.int64) + pred[keep], minlength=4).reshape(2, 2)


# --------------------------------------------------------------------------------------------------------------------
# Multilabel masks: one threshold per class, by coordinate ascent


def class_sweep(
    probs: np.ndarray, truth: np.ndarray, j: int, current: Sequence[float], thresholds: Sequence[float]
) -> np.ndarray:
    """(T, C, 2, 2) one-vs-rest matrices of one image's multilabel prediction when class ``j``'s threshold takes each
    of ``thresholds`` and every other class k keeps ``current[k - 1]``: class j's from its own probabilities, "no
    class" (plane 0) from the pixels where no other class is predicted, the others fixed. Ignore pixels never count.

    >>> p = np.array([[[0.0, 0.0]], [[0.3, 0.8]], [[0.6, 0.1]]])  # two pixels; classes 1 and 2
    >>> m = class_sweep(p, np.array([[1, 2]], np.uint8), 1, (0.5, 0.5), (0.2, 0.5))
    >>> m[0, 1].tolist(), m[1, 1].tolist()  # class 1 at 0.2: both pixels (one right); at 0.5: the second (wrong)
    ([[0, 1], [0, 1]], [[0, 1], [1, 0]])
    """
    c = probs.shape[0]
    valid = truth != IGNORE_INDEX
    t_planes = planes(truth, c)
    t = np.asarray(thresholds, np.float32)
    others = np.zeros(truth.shape, bool)
    out = np.zeros((len(t), c, 2, 2), np.int64)
    n = int(valid.sum())
    for k in range(1, c):
        if k == j:
            continue
        pred = (probs[k].astype(np.float32) > np.float32(current[k - 1])) & valid
        others |= pred
        out[:, k] = _binary(t_planes[k], pred, n)
    pj = probs[j].astype(np.float32)
    over = _over(pj, t)  # (T, pixels) counts are taken below by truth
    out[:, j, 1, 1] = over(t_planes[j])
    out[:, j, 0, 1] = over(valid & ~t_planes[j])
    out[:, j, 1, 0] = int(t_planes[j].sum()) - out[:, j, 1, 1]
    out[:, j, 0, 0] = n - out[:, j].sum(axis=(-2, -1))
    free = valid & ~others  # no other class predicted here: no class where class j is not over its threshold
    none_true, none_false = free & t_planes[0], free & ~t_planes[0]
    out[:, 0, 1, 1] = int(none_true.sum()) - over(none_true)
    out[:, 0, 0, 1] = int(none_false.sum()) - over(none_false)
    out[:, 0, 1, 0] = int(t_planes[0].sum()) - out[:, 0, 1, 1]
    out[:, 0, 0, 0] = n - out[:, 0].sum(axis=(-2, -1))
    return out


def _binary(truth: np.ndarray, pred: np.ndarray, n: int) -> np.ndarray:
    """[[TN, FP], [FN, TP]] of two bool masks over ``n`` counted pixels (``pred`` already inside them)."""
    tp, t, p = int((truth & pred).sum()), int(truth.sum()), int(pred.sum())
    return np.array([[n - t - p + tp, p - tp], [t - tp, tp]], np.int64)


def _over(p: np.ndarray, thresholds: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """``where -> (T,)`` pixels of ``where`` whose probability is over each threshold."""

    def count(where: np.ndarray) -> np.ndarray:
        values = np.sort(p[where])
        return values.size - np.searchsorted(values, thresholds, side="right")

    return count


def fit_multilabel(
    sweep: Callable[[int, tuple[float, ...]], np.ndarray],
    num_classes: int,
    metric: str,
    keep: np.ndarray,
    thresholds: Sequence[float] = THRESHOLDS,
    rounds: int = 2,
) -> tuple[tuple[float, ...], float, float]:
    """Per-class thresholds of a multilabel prediction maximising ``metric`` on the images where ``keep``: from 0.5
    for every class, each class in turn takes its best candidate with the others fixed (``sweep(j, current)``: the
    (T, N, C, 2, 2) matrices of :func:`class_sweep` over every image), ``rounds`` times or until nothing moves. A tie
    keeps the current value, then the one nearest 0.5. Returns (thresholds, the metric at 0.5, at them)."""
    current = tuple(0.5 for _ in range(num_classes - 1))
    order = sorted(range(len(thresholds)), key=lambda i: abs(thresholds[i] - 0.5))
    before = best = None
    for _ in range(rounds):
        moved = False
        for j in range(1, num_classes):
            mats = sweep(j, current)[:, keep]
            at = {float(thresholds[i]): score_matrices(metric, mats[i]) for i in range(len(thresholds))}
            if before is None:
                before = best = at[0.5]
            pick = current[j - 1]
            for i in order:
                if at[float(thresholds[i])] > at[pick] + 1e-12:
                    pick = float(thresholds[i])
            if pick != current[j - 1]:
                current, moved, best = (*current[: j - 1], pick, *current[j:]), True, at[pick]
        if not moved:
            break
    return current, float(before), float(best)  # type: ignore[arg-type]
