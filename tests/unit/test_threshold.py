"""The binary probability threshold (pipeline/threshold.py): its per-image counts give the confusion matrices of
thresholded maps, checked against maps thresholded and counted directly; the fit against a brute-force search."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline import threshold as thr
from pipeline.labels import IGNORE_INDEX
from pipeline.metrics import score_matrices


def _direct(probs: np.ndarray, truth: np.ndarray, t: float | None) -> np.ndarray:
    """One image's 2x2 confusion matrix (rows: truth) of its map thresholded at ``t`` (argmax for None), by hand."""
    pred = probs.argmax(0) if t is None else thr.decide(probs, t)
    cm = np.zeros((2, 2), np.int64)
    for a in (0, 1):
        for b in (0, 1):
            cm[a, b] = int(((truth == a) & (pred == b)).sum())
    return cm


def _images(seed: int, n: int = 6) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        h, w = rng.integers(3, 12, 2)
        p1 = rng.random((h, w)).astype(np.float32)
        p1[rng.random((h, w)) < 0.2] = 0.5  # exact ties with a candidate
        p1[rng.random((h, w)) < 0.1] = np.float32(0.35)  # a candidate float32 rounds below: ties it in float32
        truth = (rng.random((h, w)) < p1).astype(np.uint8)
        truth[rng.random((h, w)) < 0.1] = IGNORE_INDEX
        out.append((np.stack([1 - p1, p1]), truth))
    return out


@pytest.mark.parametrize("seed", range(5))
def test_counts_give_the_matrices_of_maps_thresholded_directly(seed: int) -> None:
    images = _images(seed)
    stats = [thr.image_counts(p, t, thr.THRESHOLDS) for p, t in images]
    for j, t in enumerate(thr.THRESHOLDS):
        expected = np.stack([_direct(p, truth, t) for p, truth in images])
        np.testing.assert_array_equal(thr.matrices(stats, j), expected)


@pytest.mark.parametrize(("seed", "metric"), [(s, m) for s in range(4) for m in ("miou", "image_dice")])
def test_fit_is_the_brute_force_best_and_keeps_the_argmax_unless_beaten(seed: int, metric: str) -> None:
    images = _images(seed)
    stats = [thr.image_counts(p, t, thr.THRESHOLDS) for p, t in images]
    argmax = np.stack([_direct(p, truth, None) for p, truth in images])
    t, before, after = thr.fit(stats, thr.THRESHOLDS, metric, lambda: argmax)
    scores = {c: score_matrices(metric, np.stack([_direct(p, tr, c) for p, tr in images])) for c in thr.THRESHOLDS}
    assert before == score_matrices(metric, argmax)
    assert after == max(before, *scores.values())
    assert (t is None) == (max(scores.values()) <= before + 1e-12)
    if t is not None:
        assert scores[t] == after


def test_decide_is_the_argmax_or_the_threshold_for_numpy_and_torch() -> None:
    probs = np.array([[[0.8, 0.6, 0.3]], [[0.2, 0.4, 0.7]]], np.float32)
    assert thr.decide(probs, None).tolist() == [[0, 0, 1]]
    assert thr.decide(probs, 0.35).tolist() == [[0, 1, 1]] and thr.decide(probs, 0.35).dtype == np.int64
    batch = torch.from_numpy(np.stack([probs, probs]))
    assert thr.decide(batch, 0.35).tolist() == [[[0, 1, 1]]] * 2 and thr.decide(batch, 0.35).dtype == torch.int64
    assert torch.equal(thr.decide(batch, None), batch.argmax(1))
    with pytest.raises(ValueError, match="needs 2 classes, got 3"):
        thr.decide(np.ones((3, 2, 2)), 0.5)
