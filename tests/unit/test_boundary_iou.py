"""Boundary IoU: reference values and agreement with the official implementation's procedure."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from pipeline.errors import UserError
from pipeline.metrics import (
    BoundaryIoU,
    ConfusionMatrix,
    boundary_counts,
    boundary_dilation,
    class_iou,
    label_boundary,
    mask_boundary,
)


def official_mask_to_boundary(mask: np.ndarray, dilation_ratio: float = 0.02) -> np.ndarray:
    """What boundary-iou-api's ``mask_to_boundary`` does: pad with zeros, erode d times with 3x3, subtract."""
    h, w = mask.shape
    dilation = max(1, int(round(dilation_ratio * np.sqrt(h**2 + w**2))))
    padded = cv2.copyMakeBorder(mask, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    eroded = cv2.erode(padded, np.ones((3, 3), dtype=np.uint8), iterations=dilation)[1 : h + 1, 1 : w + 1]
    return mask - eroded


def official_boundary_iou(gt: np.ndarray, dt: np.ndarray, dilation_ratio: float = 0.02) -> float:
    """IoU of the two boundary bands (each already inside its own mask), as the official evaluation does."""
    gb = official_mask_to_boundary(gt.astype(np.uint8), dilation_ratio).astype(bool)
    db = official_mask_to_boundary(dt.astype(np.uint8), dilation_ratio).astype(bool)
    union = (gb | db).sum()
    return float((gb & db).sum() / union) if union else math.nan


def rect(h: int, w: int, rows: slice, cols: slice) -> np.ndarray:
    m = np.zeros((h, w), np.int64)
    m[rows, cols] = 1
    return m


def disk(radius: float, size: int = 512, centre: float = 256.0) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return (np.sqrt((yy - centre) ** 2 + (xx - centre) ** 2) <= radius).astype(np.int64)


def scores(pred: np.ndarray, target: np.ndarray, num_classes: int = 2, **kwargs: float) -> np.ndarray:
    b = BoundaryIoU(num_classes, **kwargs)
    b.update(pred, target)
    return b.scores()


def mask_iou(pred: np.ndarray, target: np.ndarray) -> float:
    cm = ConfusionMatrix(2)
    cm.update(pred, target)
    return float(class_iou(cm)[1])


# --------------------------------------------------------------------------------------------------------------------
# reference values


def test_dilation_width() -> None:
    assert boundary_dilation(64, 84) == 2  # 0.02 * 105.6
    assert boundary_dilation(512, 512) == 14  # 0.02 * 724.1
    assert boundary_dilation(10, 10) == 1  # never below one pixel
    assert boundary_dilation(512, 512, 0.05) == 36


def test_shifted_rectangle() -> None:
    truth = rect(64, 84, slice(10, 41), slice(20, 61))
    pred = rect(64, 84, slice(12, 43), slice(22, 63))
    assert mask_boundary(truth).sum() == 272
    assert scores(pred, truth)[1] == pytest.approx(0.014925, abs=5e-7)
    assert mask_iou(pred, truth) == pytest.approx(0.801559, abs=5e-7)


def test_rectangle_touching_the_border_has_a_boundary_there() -> None:
    assert mask_boundary(rect(64, 84, slice(0, 20), slice(0, 30))).sum() == 184


def test_full_image_is_a_frame() -> None:
    assert mask_boundary(np.ones((64, 84), np.int64)).sum() == 576


def test_disks() -> None:
    truth, pred = disk(100), disk(105)
    assert mask_boundary(truth).sum() == 10364
    assert mask_boundary(pred).sum() == 10924
    assert scores(pred, truth)[1] == pytest.approx(0.568986, abs=5e-7)
    assert mask_iou(pred, truth) == pytest.approx(0.907455, abs=5e-7)


# --------------------------------------------------------------------------------------------------------------------
# agreement with the official procedure


def structured_masks() -> list[np.ndarray]:
    ring = disk(40, size=120, centre=60.0) - disk(25, size=120, centre=60.0)
    stripes = np.zeros((50, 70), np.int64)
    stripes[:, ::6] = 1
    tiny = np.zeros((3, 5), np.int64)
    tiny[1, 2] = 1
    return [ring, stripes, tiny, rect(40, 90, slice(5, 40), slice(0, 1))]


def random_masks(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(20):
        h, w = rng.integers(1, 90, size=2)
        block = int(rng.integers(1, 12))
        coarse = rng.random((h // block + 1, w // block + 1)) < rng.uniform(0.2, 0.8)
        out.append(np.kron(coarse, np.ones((block, block)))[:h, :w].astype(np.int64))
    return out


@pytest.mark.parametrize("ratio", [0.02, 0.05, 0.2])
def test_mask_boundary_matches_official(ratio: float) -> None:
    for mask in structured_masks() + random_masks(0):
        expected = official_mask_to_boundary(mask.astype(np.uint8), ratio).astype(bool)
        np.testing.assert_array_equal(mask_boundary(mask, ratio), expected, err_msg=f"shape {mask.shape}")


@pytest.mark.parametrize("seed", [1, 2])
def test_boundary_iou_matches_official_on_random_pairs(seed: int) -> None:
    truths, preds = random_masks(seed), random_masks(seed + 100)
    checked = 0
    for truth in truths:
        pred = np.roll(truth, shift=(1, 2), axis=(0, 1)) if truth.size > 4 else truth
        for p in (pred, preds[checked % len(preds)][: truth.shape[0], : truth.shape[1]]):
            if p.shape != truth.shape:
                continue
            expected = official_boundary_iou(truth, p)
            got = scores(p, truth)[1]
            if math.isnan(expected):
                assert math.isnan(got)
            else:
                assert got == pytest.approx(expected, abs=1e-6)
            checked += 1
    assert checked >= 20


def test_structured_pairs_match_official() -> None:
    for truth in structured_masks():
        for pred in (np.roll(truth, 3, axis=1), 1 - truth, np.flipud(truth).copy()):
            expected = official_boundary_iou(truth, pred)
            got = scores(pred, truth)[1]
            assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected, abs=1e-6)


def test_multiclass_batch_sums_official_counts_per_class() -> None:
    rng = np.random.default_rng(5)
    c = 4
    target = np.kron(rng.integers(0, c, (3, 8, 10)), np.ones((1, 6, 6), np.int64))  # (3, 48, 60)
    pred = np.roll(target, 2, axis=2)
    pred[1] = np.kron(rng.integers(0, c, (8, 10)), np.ones((6, 6), np.int64))
    inter, union = np.zeros(c), np.zeros(c)
    for i in range(3):
        for k in range(c):
            gb = official_mask_to_boundary((target[i] == k).astype(np.uint8)).astype(bool)
            pb = official_mask_to_boundary((pred[i] == k).astype(np.uint8)).astype(bool)
            inter[k] += (gb & pb).sum()
            union[k] += (gb | pb).sum()
    b = BoundaryIoU(c)
    b.update(torch.from_numpy(pred), torch.from_numpy(target))  # one (B, H, W) batch
    assert b.intersection.tolist() == inter.tolist()
    assert b.union.tolist() == union.tolist()
    np.testing.assert_allclose(b.scores(), inter / union, atol=1e-12)


# --------------------------------------------------------------------------------------------------------------------
# streaming, absent classes and ignored pixels


def test_label_boundary_of_a_small_image_is_everything() -> None:
    assert label_boundary(np.zeros((4, 9), np.int64), 2).all()  # 2d + 1 = 5 rows do not fit in 4
    five = label_boundary(np.zeros((5, 5), np.int64), 2)[0]  # only the centre's 5x5 window fits
    assert not five[2, 2] and five.sum() == 24


def test_image_without_the_class_adds_nothing() -> None:
    truth = rect(64, 84, slice(10, 41), slice(20, 61))
    pred = rect(64, 84, slice(12, 43), slice(22, 63))
    alone = BoundaryIoU(3)
    alone.update(pred, truth)
    with_empty = BoundaryIoU(3)
    with_empty.update(pred, truth)
    with_empty.update(np.zeros((64, 84), np.int64), np.zeros((64, 84), np.int64))  # class 1 absent from both
    assert with_empty.intersection[1] == alone.intersection[1]
    assert with_empty.union[1] == alone.union[1]
    assert with_empty.scores()[1] == alone.scores()[1]
    assert math.isnan(with_empty.scores()[2])  # class 2 absent everywhere
    assert with_empty.mean() == pytest.approx(np.nanmean(with_empty.scores()[:2]))


def test_merge_equals_one_accumulator() -> None:
    rng = np.random.default_rng(6)
    t = np.kron(rng.integers(0, 3, (4, 5, 5)), np.ones((1, 4, 4), np.int64))
    p = np.roll(t, 1, axis=1)
    a, b, both = BoundaryIoU(3), BoundaryIoU(3), BoundaryIoU(3)
    a.update(p[:2], t[:2])
    b.update(p[2:], t[2:])
    both.update(p, t)
    merged = a + b
    assert merged.intersection.tolist() == both.intersection.tolist()
    assert merged.union.tolist() == both.union.tolist()
    with pytest.raises(ValueError, match="different settings"):
        a.merge(BoundaryIoU(3, dilation_ratio=0.05))


def test_ignored_pixels_never_count_and_their_prediction_changes_nothing() -> None:
    rng = np.random.default_rng(7)
    t = np.kron(rng.integers(0, 3, (2, 6, 6)), np.ones((1, 5, 5), np.int64))  # (2, 30, 30)
    p = np.roll(t, 2, axis=2)
    t[:, 10:20, 5:15] = 255
    inter, union = boundary_counts(p, t, 3)
    p2 = p.copy()
    p2[t == 255] = rng.integers(0, 3, int((t == 255).sum()))
    inter2, union2 = boundary_counts(p2, t, 3)
    assert inter.tolist() == inter2.tolist() and union.tolist() == union2.tolist()
    # an all-ignored image counts nothing at all
    none_i, none_u = boundary_counts(p[:1], np.full((1, 30, 30), 255), 3)
    assert none_i.tolist() == [0, 0, 0] and none_u.tolist() == [0, 0, 0]
    # at most the non-ignored pixels of each band count
    assert int(union.sum()) <= int(2 * (t != 255).sum())


def test_perfect_prediction_scores_one() -> None:
    t = np.kron(np.random.default_rng(8).integers(0, 3, (7, 9)), np.ones((5, 5), np.int64))
    t[:5, :5] = 255
    s = scores(np.where(t == 255, 0, t), t, num_classes=4)
    assert s[:3].tolist() == [1.0, 1.0, 1.0] and math.isnan(s[3])


def test_bad_inputs() -> None:
    with pytest.raises(UserError, match="target holds value 9"):
        boundary_counts(np.zeros((4, 4), int), np.full((4, 4), 9), 3)
    with pytest.raises(UserError, match="pred holds class index 5"):
        boundary_counts(np.full((4, 4), 5), np.zeros((4, 4), int), 3)
    with pytest.raises(UserError, match="dilation_ratio"):
        BoundaryIoU(3, dilation_ratio=0)
