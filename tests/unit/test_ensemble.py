"""Ensembling on hand-computed arrays: combine in both spaces, weights fitted on OOF mIoU, temperature by NLL."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.ensemble.fit import combine, fit_temperature, fit_weights, temper
from pipeline.ensemble.fit import oof_score as oof_miou


def probs(*columns: list[float]) -> np.ndarray:
    """(C, 1, W) probabilities from one list of C class probabilities per pixel."""
    return np.array(columns, np.float32).T[:, None, :]


def test_combine_in_probability_space_is_the_weighted_mean() -> None:
    a = probs([0.8, 0.2], [0.1, 0.9])
    b = probs([0.4, 0.6], [0.5, 0.5])
    out = combine([a, b], [3, 1], "prob")  # weights are normalised: 0.75 / 0.25
    np.testing.assert_allclose(out, probs([0.7, 0.3], [0.2, 0.8]), atol=1e-6)
    assert out.dtype == np.float32


def test_combine_in_logit_space_is_the_normalised_geometric_mean() -> None:
    a = probs([0.8, 0.2])
    b = probs([0.5, 0.5])
    # sqrt(0.8 * 0.5) : sqrt(0.2 * 0.5) = sqrt(0.4) : sqrt(0.1) = 2 : 1
    np.testing.assert_allclose(combine([a, b], [1, 1], "logit"), probs([2 / 3, 1 / 3]), atol=1e-5)
    # weights 3:1 -> 0.8^0.75 0.5^0.25 : 0.2^0.75 0.5^0.25 = 4^0.75 : 1
    np.testing.assert_allclose(
        combine([a, b], [3, 1], "logit"), probs([4**0.75 / (4**0.75 + 1), 1 / (4**0.75 + 1)]), atol=1e-5
    )


def test_combine_keeps_a_batch_axis_and_reads_float16() -> None:
    a = np.stack([probs([0.8, 0.2]), probs([0.3, 0.7])]).astype(np.float16)  # (B, C, H, W)
    b = np.stack([probs([0.6, 0.4]), probs([0.1, 0.9])]).astype(np.float16)
    for space in ("prob", "logit"):
        out = combine([a, b], [1, 1], space)
        assert out.shape == a.shape and out.dtype == np.float32
        np.testing.assert_allclose(out.sum(1), 1.0, atol=1e-3)
    np.testing.assert_allclose(combine([a, b], [1, 1], "prob")[:, 0, 0, 0], [0.7, 0.2], atol=1e-3)


def test_temper_sharpens_below_one_and_flattens_above() -> None:
    p = probs([0.6, 0.3, 0.1])
    np.testing.assert_allclose(temper(p, 1.0), p)
    sharp, flat = temper(p, 0.5), temper(p, 2.0)
    # T = 0.5 squares the probabilities (then normalises): 0.36 : 0.09 : 0.01
    np.testing.assert_allclose(sharp[:, 0, 0], np.array([0.36, 0.09, 0.01]) / 0.46, atol=1e-5)
    assert flat[0, 0, 0] < 0.6 < sharp[0, 0, 0]


def _models(seed: int = 0, n_images: int = 4, size: int = 16, c: int = 3):
    """Truth masks, a model that is always right but unsure, and a confident model that is right by chance."""
    rng = np.random.default_rng(seed)
    truth, sure, noisy = {}, {}, {}
    for i in range(n_images):
        t = rng.integers(0, c, (size, size))
        onehot = np.eye(c, dtype=np.float32)[t].transpose(2, 0, 1)
        spread = rng.dirichlet(np.ones(c), (size, size)).transpose(2, 0, 1)
        truth[str(i)] = t.astype(np.uint8)
        sure[str(i)] = ((onehot + 0.5 * spread) / 1.5).astype(np.float16)  # truth >= 2/3, others <= 1/3
        noisy[str(i)] = rng.dirichlet(np.full(c, 0.3), (size, size)).transpose(2, 0, 1).astype(np.float16)
    return truth, sure, noisy


@pytest.mark.parametrize("space", ["prob", "logit"])
def test_fit_weights_moves_weight_to_the_better_model(space: str) -> None:
    truth, sure, noisy = _models()
    assert oof_miou([sure], truth, [1.0], space, 3) == 1.0
    assert oof_miou([noisy], truth, [1.0], space, 3) < 0.6
    weights, fitted, equal = fit_weights([noisy, sure], truth, space, 3)
    assert equal == pytest.approx(oof_miou([noisy, sure], truth, [0.5, 0.5], space, 3))
    assert equal < 0.95  # equal weights let the confident noise win some pixels
    assert weights[1] >= 0.8 - 1e-9 and sum(weights) == pytest.approx(1.0)
    assert fitted == 1.0 > equal
    assert oof_miou([noisy, sure], truth, weights, space, 3) == fitted  # the returned score is that of the weights


def test_fit_weights_of_one_model_is_that_model() -> None:
    truth, sure, _ = _models()
    assert fit_weights([sure], truth, "prob", 3) == ([1.0], 1.0, 1.0)


def _calibration_data(scale: float, seed: int = 0, c: int = 4, n_images: int = 3, size: int = 48):
    """Labels drawn from softmax(z); probabilities softmax(scale * z): over-confident for scale > 1."""
    rng = np.random.default_rng(seed)
    probs_, truth = {}, {}
    for i in range(n_images):
        z = rng.normal(0, 1.5, (c, size, size))
        p_true = np.exp(z) / np.exp(z).sum(0)
        u = rng.random((size, size))
        labels = (p_true.cumsum(0) < u).sum(0).clip(max=c - 1).astype(np.uint8)  # one draw per pixel
        labels[:4] = 255  # ignore pixels take no part
        model = np.exp(scale * z) / np.exp(scale * z).sum(0)
        probs_[str(i)], truth[str(i)] = model.astype(np.float32), labels
    return probs_, truth


@pytest.mark.parametrize("scale, expected", [(2.0, 2.0), (1.0, 1.0), (0.5, 0.5)])
def test_fit_temperature_undoes_miscalibration(scale: float, expected: float) -> None:
    # temper(p, T) = softmax(log p / T): probabilities softmax(2 z) need T = 2 to become softmax(z), the true law
    p, truth = _calibration_data(scale)
    t = fit_temperature(p, truth)
    assert t == pytest.approx(expected, rel=0.05)  # ~6,600 labelled pixels: seeds 0-3 land within 2.5%


def test_fit_temperature_samples_every_image_and_matches_the_full_nll() -> None:
    # the first 3 images over-confident (T 2), the last 3 under-confident (T 0.5): a fit on the first pixels only
    # would say ~2; a sample of 6,000 of the 12,400 labelled pixels spread over all 6 must land on the T that
    # minimises the NLL of every pixel, found here by a plain grid search (no sampling, no chunks)
    hot, hot_truth = _calibration_data(2.0, seed=1)
    cold, cold_truth = _calibration_data(0.5, seed=2)
    probs = {**hot, **{str(int(k) + 3): v for k, v in cold.items()}}
    truth = {**hot_truth, **{str(int(k) + 3): v for k, v in cold_truth.items()}}
    logp = np.concatenate([np.log(probs[k] + 1e-6)[:, truth[k] != 255].T for k in truth])  # (N, C)
    labels = np.concatenate([truth[k][truth[k] != 255] for k in truth]).astype(np.int64)

    def full_nll(t: float) -> float:
        z = logp / t
        lse = np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1)
        return float(np.mean(lse - z[np.arange(len(labels)), labels]))

    grid = np.exp(np.linspace(np.log(0.3), np.log(3.0), 400))
    best = grid[np.argmin([full_nll(t) for t in grid])]
    assert 0.6 < best < 1.8  # neither half alone: a fit of the first images only would give ~2
    sampled = fit_temperature(probs, truth, max_pixels=6_000, chunk=97)
    assert sampled == pytest.approx(best, rel=0.05)  # seeds 0-7 land within 2%
    assert fit_temperature(probs, truth, chunk=97) == pytest.approx(best, rel=0.01)  # every pixel, in chunks
