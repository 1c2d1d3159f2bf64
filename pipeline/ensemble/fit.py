"""Ensembling: weighted averages of model outputs in probability or logit space, weights and temperatures
fitted on out-of-fold predictions only (never on test truth).

Out-of-fold (OOF) predictions are stored as float16 probabilities; ``log(p)`` serves as logits (it differs from
the model's logits by a per-pixel constant, which changes neither softmax nor argmax).

Weight fitting: coordinate ascent on the probability simplex. Starting from equal weights, each round tries
moving ``step`` of weight from one model to another for every ordered pair, keeps the move that raises the OOF
metric most, and stops when no move helps (or after ``max_rounds``). It is deterministic and needs no gradients, which
suits a metric (mIoU of an argmax) that has none.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar

from pipeline.labels import IGNORE_INDEX
from pipeline.metrics import ConfusionMatrix, score_matrices

EPS = 1e-6


def combine(
    outputs: Sequence[np.ndarray], weights: Sequence[float], space: str = "prob", multilabel: bool = False
) -> np.ndarray:
    """Weighted average of per-model (C, H, W) (or (B, C, H, W)) probabilities, in ``prob`` or ``logit`` space.

    Returns probabilities (float32) in both cases (logit space: softmax of the averaged log-probabilities; with
    ``multilabel``, each class's sigmoid of the averaged logits ``log(p / (1 - p))``).
    """
    w = np.asarray(weights, np.float32)
    w = w / w.sum()
    if space == "prob":
        return sum(wi * o.astype(np.float32) for wi, o in zip(w, outputs))  # type: ignore[return-value]
    if multilabel:
        z = sum(wi * _logit(o.astype(np.float32)) for wi, o in zip(w, outputs))
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)  # type: ignore[union-attr]
    logits = sum(wi * np.log(o.astype(np.float32) + EPS) for wi, o in zip(w, outputs))
    return softmax(logits, axis=-3)  # type: ignore[arg-type]


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def temper(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Re-scale probabilities by a temperature: softmax(log(p) / T) over the class axis (-3)."""
    if temperature == 1.0:
        return probs.astype(np.float32)
    return softmax(np.log(probs.astype(np.float32) + EPS) / temperature, axis=-3)


def ensemble_matrices(
    per_model: Sequence[dict[str, np.ndarray]],
    truth: dict[str, np.ndarray],
    weights: Sequence[float],
    space: str,
    num_classes: int,
) -> np.ndarray:
    """(N, C, C) per-image confusion matrices of the weighted ensemble, one per ``truth`` key in its order."""
    cm = ConfusionMatrix(num_classes, per_image=True)
    for key, mask in truth.items():
        cm.update(combine([m[key] for m in per_model], weights, space).argmax(0), mask)
    return cm.image_matrices


def oof_score(
    per_model: Sequence[dict[str, np.ndarray]],
    truth: dict[str, np.ndarray],
    weights: Sequence[float],
    space: str,
    num_classes: int,
    metric: str = "miou",
) -> float:
    """The metric (:func:`pipeline.metrics.score_matrices`) of the weighted ensemble over the ``truth`` images."""
    return score_matrices(metric, ensemble_matrices(per_model, truth, weights, space, num_classes))


def ascend_weights(
    score: Callable[[list[float]], float], n: int, step: float = 0.1, max_rounds: int = 20
) -> tuple[list[float], float, float]:
    """Coordinate ascent of ``score(weights)`` on the simplex from equal weights; (weights, best, equal score)."""
    w = [1.0 / n] * n
    equal = best = score(w)
    if n == 1:
        return w, best, equal
    for _ in range(max_rounds):
        move = None
        for i in range(n):
            for j in range(n):
                if i == j or w[i] < step - 1e-9:
                    continue
                cand = list(w)
                cand[i] -= step
                cand[j] += step
                s = score(cand)
                if s > best + 1e-6:
                    best, move = s, cand
        if move is None:
            break
        w = move
    return [round(x, 6) for x in w], best, equal


def fit_weights(
    per_model: Sequence[dict[str, np.ndarray]],
    truth: dict[str, np.ndarray],
    space: str,
    num_classes: int,
    step: float = 0.1,
    max_rounds: int = 20,
    metric: str = "miou",
) -> tuple[list[float], float, float]:
    """Fit ensemble weights on OOF predictions; return (weights, OOF metric with them, OOF metric with equal)."""
    return ascend_weights(
        lambda w: oof_score(per_model, truth, w, space, num_classes, metric), len(per_model), step, max_rounds
    )


def fit_temperature(
    probs: Mapping[Any, np.ndarray],
    truth: Mapping[Any, np.ndarray],
    max_pixels: int = 1_000_000,
    chunk: int = 65_536,
    seed: int = 0,
) -> float:
    """Temperature T minimising the pixel NLL of softmax(log p / T) on OOF predictions (ignore pixels left out).

    Memory is flat in the number of images: each image gives at most ``ceil(max_pixels / images)`` of its labelled
    pixels (drawn with ``seed``; all of them when it has fewer), so the sample spreads over every image and holds at
    most ``max_pixels`` (+ one per image) rows of C log-probabilities; the NLL is summed ``chunk`` rows at a time.
    """
    per_image = -(-max_pixels // max(1, len(truth)))
    rng = np.random.default_rng(seed)
    logp, labels = [], []
    for key, mask in truth.items():
        flat = np.flatnonzero(mask.reshape(-1) != IGNORE_INDEX)
        if len(flat) > per_image:
            flat = np.sort(rng.choice(flat, per_image, replace=False))
        pr = probs[key]
        pr = pr.reshape(pr.shape[0], -1)  # (C, H*W)
        logp.append(np.log(pr[:, flat].astype(np.float32).T + EPS))  # (n, C)
        labels.append(mask.reshape(-1)[flat].astype(np.int64))
    x, y = np.concatenate(logp), np.concatenate(labels)

    def nll(log_t: float) -> float:
        inv_t, total = float(np.exp(-log_t)), 0.0
        for s in range(0, len(y), chunk):
            z = x[s : s + chunk] * inv_t
            z -= z.max(1, keepdims=True)
            total += float(np.sum(np.log(np.exp(z).sum(1)) - z[np.arange(len(z)), y[s : s + chunk]]))
        return total / max(1, len(y))

    res = minimize_scalar(nll, bounds=(-3.0, 3.0), method="bounded")
    return float(np.exp(res.x))
