"""bench/postprocess_levers.py's threshold lever, cross-fitted, against a brute-force fit written here."""

from __future__ import annotations

import numpy as np
from helpers import load_bench

from pipeline import threshold as thr

bench = load_bench("postprocess_levers.py", "bench_postprocess_levers")


def dataset_miou(preds: list[np.ndarray], truths: list[np.ndarray]) -> float:
    cm = np.zeros((2, 2), np.int64)
    for p, t in zip(preds, truths):
        keep = t != 255
        np.add.at(cm, (t[keep].astype(np.int64), p[keep].astype(np.int64)), 1)
    inter = np.diag(cm).astype(float)
    return float(np.mean(inter / (cm.sum(0) + cm.sum(1) - inter)))


def brute_threshold(p1s: list[np.ndarray], truths: list[np.ndarray]) -> float | None:
    """The candidate (None: the argmax) with the best dataset mIoU; ties keep the argmax, then the nearest 0.5."""
    best: tuple[float, float | None] = (dataset_miou([(p > 0.5).astype(np.uint8) for p in p1s], truths), None)
    for t in sorted(thr.THRESHOLDS, key=lambda t: abs(t - 0.5)):
        score = dataset_miou([(p > t).astype(np.uint8) for p in p1s], truths)
        if score > best[0] + 1e-12:
            best = (score, t)
    return best[1]


def test_threshold_lever_equals_a_brute_force_cross_fit() -> None:
    rng = np.random.default_rng(3)
    truths, p1s = [], []
    for _ in range(10):
        t = (rng.random((12, 16)) < 0.4).astype(np.uint8)
        t[0, :3] = 255  # ignore pixels are left out everywhere
        p1 = np.clip(0.3 * t + rng.random((12, 16)) * 0.6, 0.0, 1.0).astype(np.float32)  # overlapping classes
        truths.append(t)
        p1s.append(p1)
    preds = [(p > 0.5).astype(np.uint8) for p in p1s]  # the argmax of (1 - p, p)
    counts = [thr.image_counts(np.stack([1 - p, p]), t, thr.THRESHOLDS) for p, t in zip(p1s, truths)]
    groups = np.arange(10) % 2
    cross, in_sample, chosen = bench.score_threshold(preds, truths, groups, counts, "miou")

    assert chosen == brute_threshold(p1s, truths) and chosen not in (None, 0.5)  # a threshold, not the argmax
    pooled_preds, pooled_truths = [], []
    for k in (0, 1):
        t_k = brute_threshold([p for p, g in zip(p1s, groups) if g != k], [t for t, g in zip(truths, groups) if g != k])
        for p, t, g in zip(p1s, truths, groups):
            if g == k:
                pooled_preds.append((p > (0.5 if t_k is None else t_k)).astype(np.uint8))
                pooled_truths.append(t)
    assert abs(cross - dataset_miou(pooled_preds, pooled_truths)) < 1e-9
    assert abs(in_sample - dataset_miou([(p > chosen).astype(np.uint8) for p in p1s], truths)) < 1e-9
