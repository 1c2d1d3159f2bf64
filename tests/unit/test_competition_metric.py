"""The competition metrics (``metric.name``) on hand-computed tables, their properties, and OOF cross-fitting on
hand-made candidates (pipeline/metrics.py ``score_matrices``, pipeline/oof.py)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pipeline.errors import UserError
from pipeline.metrics import METRICS, confusion_matrix, image_dice, score_matrices
from pipeline.oof import ImageMatrices, Memo, cross_fit


def stack(*pairs: tuple[list[list[int]], list[list[int]]], c: int) -> np.ndarray:
    """(N, C, C) per-image matrices of (prediction, truth) pairs of small label maps."""
    return np.concatenate([confusion_matrix(np.array(p), np.array(t), c, per_image=True).numpy() for p, t in pairs])


# (pred, truth) images, C, then miou / image_miou / image_dice computed by hand in the comments
TABLE = [
    # A: truth 1 1, pred 1 0;  B: truth 0 0, pred 0 0 (the metrics.score_matrices docstring example)
    # miou: IoU_0 = 2/(2+3-2) = 2/3, IoU_1 = 1/(2+1-1) = 1/2 -> 7/12
    # image_miou: A mean(0, 1/2) = 1/4, B 1 -> 5/8;  image_dice: A 2/3, B 1 -> 5/6
    ([([[1, 0]], [[1, 1]]), ([[0, 0]], [[0, 0]])], 2, 7 / 12, 5 / 8, 5 / 6),
    # one 2x2 image, 3 classes: truth [[1, 1], [2, 0]], pred [[1, 2], [2, 0]]
    # IoU_0 = 1, IoU_1 = 1/2, IoU_2 = 1/2 -> miou = image_miou = 2/3
    # Dice_1 = 2/(2+1) = 2/3, Dice_2 = 2/(1+2) = 2/3 (background out) -> 2/3
    ([([[1, 2], [2, 0]], [[1, 1], [2, 0]])], 3, 2 / 3, 2 / 3, 2 / 3),
    # a class in one image only: image 1 truth 2 2 pred 2 2; image 2 truth 1 1 pred 0 0 (C = 3)
    # dataset: IoU_0 = 0/2 = 0, IoU_1 = 0/2 = 0, IoU_2 = 1 -> 1/3
    # image_miou: image 1 mean(IoU_2 = 1) = 1; image 2 mean(IoU_0 = 0, IoU_1 = 0) = 0 -> 1/2
    # image_dice: image 1 (Dice_1 empty = 1, Dice_2 = 1) = 1; image 2 (Dice_1 = 0, Dice_2 empty = 1) = 1/2 -> 3/4
    ([([[2, 2]], [[2, 2]]), ([[0, 0]], [[1, 1]])], 3, 1 / 3, 1 / 2, 3 / 4),
    # missed everything, single class (binary): truth 1 1 1 0, pred 0 0 0 0
    # IoU_0 = 1/4, IoU_1 = 0 -> 1/8 both ways;  Dice_1 = 0
    ([([[0, 0, 0, 0]], [[1, 1, 1, 0]])], 2, 1 / 8, 1 / 8, 0.0),
    # an all-empty image scores Dice 1 (empty vs empty) and IoU 1 for background: truth 0 0, pred 0 0; plus an
    # image with a false positive: truth 0 0, pred 1 0 -> Dice_1 = 0, IoU_0 = 1/2, IoU_1 = 0
    # dataset: IoU_0 = 3/4, IoU_1 = 0 -> 3/8;  image_miou: mean(1, 1/4) = 5/8;  image_dice: mean(1, 0) = 1/2
    ([([[0, 0]], [[0, 0]]), ([[1, 0]], [[0, 0]])], 2, 3 / 8, 5 / 8, 1 / 2),
]


@pytest.mark.parametrize(("pairs", "c", "miou", "image_miou", "image_dice"), TABLE)
def test_hand_computed_table(pairs: list, c: int, miou: float, image_miou: float, image_dice: float) -> None:
    m = stack(*pairs, c=c)
    assert score_matrices("miou", m) == pytest.approx(miou, abs=1e-12)
    assert score_matrices("image_miou", m) == pytest.approx(image_miou, abs=1e-12)
    assert score_matrices("image_dice", m) == pytest.approx(image_dice, abs=1e-12)


def test_ignore_pixels_and_all_ignore_images() -> None:
    # truth 255 under a wrong prediction changes nothing; an all-ignore image has no score in either per-image metric
    a = stack(([[1, 0, 1]], [[1, 255, 255]]), c=2)
    assert score_matrices("image_dice", a) == 1.0 and score_matrices("image_miou", a) == 1.0
    empty = stack(([[1, 1]], [[255, 255]]), c=2)
    assert np.isnan(image_dice(empty)[0])
    assert score_matrices("image_dice", np.concatenate([a, empty])) == 1.0


def test_unknown_metric_is_a_user_error() -> None:
    with pytest.raises(UserError, match="metric 'dice' is not one of miou, image_miou, image_dice"):
        score_matrices("dice", np.zeros((1, 2, 2), np.int64))


@st.composite
def label_maps(draw: st.DrawFn) -> tuple[int, np.ndarray, np.ndarray]:
    c = draw(st.integers(2, 4))
    shape = draw(st.tuples(st.integers(1, 3), st.integers(1, 5), st.integers(1, 5)))
    pred = draw(hnp.arrays(np.int64, shape, elements=st.integers(0, c - 1)))
    truth = draw(hnp.arrays(np.int64, shape, elements=st.integers(0, c - 1)))
    return c, pred, truth


@settings(max_examples=60, deadline=None)
@given(label_maps(), st.integers(0, 2**31 - 1))
def test_properties_perfect_is_one_and_ignore_never_counts(data: tuple[int, np.ndarray, np.ndarray], seed: int) -> None:
    c, pred, truth = data
    for name in METRICS:
        assert score_matrices(name, confusion_matrix(truth, truth, c, per_image=True)) == 1.0
    rng = np.random.default_rng(seed)
    ignored = rng.random(truth.shape) < 0.3
    ignored[:, 0, 0] = False  # every image keeps a counted pixel
    masked = np.where(ignored, 255, truth)
    other = np.where(ignored, rng.integers(0, c, truth.shape), pred)  # any prediction under ignore
    for name in METRICS:
        a = score_matrices(name, confusion_matrix(pred, masked, c, per_image=True))
        b = score_matrices(name, confusion_matrix(other, masked, c, per_image=True))
        assert a == b


def test_image_dice_matches_a_direct_pairwise_computation() -> None:
    rng = np.random.default_rng(3)
    pred, truth = rng.integers(0, 4, (6, 5, 7)), rng.integers(0, 4, (6, 5, 7))
    truth[2] = 0  # an image without foreground in truth
    pairs = []
    for p, t in zip(pred, truth):
        for k in range(1, 4):
            tp, ts, ps = ((p == k) & (t == k)).sum(), (t == k).sum(), (p == k).sum()
            pairs.append(1.0 if ts + ps == 0 else 2 * tp / (ts + ps))
    m = confusion_matrix(pred, truth, 4, per_image=True)
    assert score_matrices("image_dice", m) == pytest.approx(np.mean(pairs), abs=1e-12)


# --------------------------------------------------------------------------------------------------------------
# Cross-fitting


def _candidates() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Four images in folds 0, 0, 1, 1 and two candidates, per-image matrices by hand (C = 2): a is right on images
    0, 1, 3 and wrong on 2; b is wrong on 0, 1 and right on 2, 3."""
    right = np.array([[1, 0], [0, 1]])  # one background, one foreground pixel, both right: mIoU 1
    wrong = np.array([[0, 1], [1, 0]])  # both wrong: mIoU 0
    a = np.stack([right, right, wrong, right])
    b = np.stack([wrong, wrong, right, right])
    return np.array([0, 0, 1, 1]), {"a": a, "b": b}


def test_cross_fit_chooses_on_the_other_folds() -> None:
    folds, cands = _candidates()

    def choose(held_out: int | None) -> str:
        fit = folds != held_out
        return max(cands, key=lambda k: (score_matrices("image_miou", cands[k][fit]), k == "a"))

    cf = cross_fit(folds, choose, cands.__getitem__, "image_miou")
    # in-sample: a scores (1 + 1 + 0 + 1) / 4 = 3/4 > b's 2/4 on all images
    assert cf.choice == "a" and cf.in_sample == pytest.approx(0.75)
    # without fold 0: fold 1 alone has a = 1/2, b = 1 -> b scores fold 0: images 0, 1 wrong (0, 0)
    # without fold 1: fold 0 alone has a = 1, b = 0 -> a scores fold 1: images 2, 3 (0, 1)
    assert cf.fold_choices == {0: "b", 1: "a"}
    assert cf.cross_fitted == pytest.approx((0 + 0 + 0 + 1) / 4)
    # dataset mIoU of the pooled matrices (wrong, wrong, wrong, right): summed [[1, 3], [3, 1]], IoU = 1 / (4+4-1)
    assert cf.cross_fitted_miou == pytest.approx(1 / 7)
    assert cf.figures() == {
        "metric": "image_miou",
        "oof_in_sample": cf.in_sample,
        "oof_cross_fitted": cf.cross_fitted,
        "oof_mIoU_cross_fitted": cf.cross_fitted_miou,
    }


def test_cross_fit_of_one_fold_has_no_cross_fitted_figure_and_memo_computes_once() -> None:
    calls = []
    memo: Memo[np.ndarray] = Memo(lambda k: calls.append(k) or np.stack([np.eye(2, dtype=np.int64)]))
    cf = cross_fit(np.array([0]), lambda k: "x", memo, "miou")
    assert cf.in_sample == 1.0 and cf.cross_fitted is None and cf.fold_choices == {}
    memo("x")
    assert calls == ["x"]


def test_image_matrices_score_subsets() -> None:
    m = stack(([[1, 0]], [[1, 1]]), ([[0, 0]], [[0, 0]]), c=2)
    im = ImageMatrices(np.array([7, 9]), np.array([0, 1]), m)
    assert im.score("image_dice") == pytest.approx(5 / 6)
    assert im.score("image_dice", im.folds == 0) == pytest.approx(2 / 3)
    assert im.take(im.folds == 1).ids.tolist() == [9]
    assert im.scores("image_miou") == {"metric": "image_miou", "score": 5 / 8, "mIoU": pytest.approx(7 / 12)}
