"""Confusion-matrix metrics: hand-computed tables, properties, and agreement with torchmetrics."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pipeline import metrics
from pipeline.errors import UserError
from pipeline.metrics import (
    ConfusionMatrix,
    class_accuracy,
    class_dice,
    class_iou,
    confusion_matrix,
    image_miou,
    mean_accuracy,
    mean_dice,
    mean_iou,
    pixel_accuracy,
    summarize,
)

NAN = float("nan")

# The module docstring's worked example: 2 classes, one ignored pixel.
T3 = np.array([[0, 0, 1], [0, 1, 1], [255, 1, 1]])
P3 = np.array([[0, 1, 1], [0, 1, 0], [1, 1, 1]])

# 4x4, 4 classes: class 2 is predicted but absent from the truth, class 3 is absent from both; two ignored pixels.
T4 = np.array(
    [
        [0, 0, 0, 1],
        [0, 0, 1, 1],
        [0, 1, 1, 1],
        [255, 255, 1, 1],
    ]
)
P4 = np.array(
    [
        [0, 0, 1, 1],
        [0, 0, 1, 1],
        [2, 1, 1, 0],
        [3, 3, 1, 1],  # predictions under ignored pixels never count
    ]
)
# by hand: t0 -> p0 x4, p1 x1, p2 x1 (6 px); t1 -> p1 x7, p0 x1 (8 px)
M4 = np.array([[4, 1, 1, 0], [1, 7, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])


def assert_scores(actual: np.ndarray, expected: list[float]) -> None:
    np.testing.assert_allclose(np.asarray(actual, dtype=float), np.asarray(expected, dtype=float), rtol=0, atol=1e-12)


# --------------------------------------------------------------------------------------------------------------------
# hand-computed tables


def test_3x3_hand_example_every_metric() -> None:
    m = confusion_matrix(P3, T3, num_classes=2).numpy()
    assert m.tolist() == [[2, 1], [1, 4]]
    assert_scores(class_iou(m), [2 / 4, 4 / 6])
    assert_scores(class_accuracy(m), [2 / 3, 4 / 5])
    assert_scores(class_dice(m), [4 / 6, 8 / 10])
    assert pixel_accuracy(m) == pytest.approx(6 / 8)
    assert mean_iou(m) == pytest.approx((2 / 4 + 4 / 6) / 2)
    assert mean_accuracy(m) == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert mean_dice(m) == pytest.approx((4 / 6 + 8 / 10) / 2)


def test_4x4_hand_example_absent_classes() -> None:
    m = confusion_matrix(P4, T4, num_classes=4).numpy()
    assert m.tolist() == M4.tolist()
    # IoU: class 0: 4 / (6 + 5 - 4); class 1: 7 / (8 + 8 - 7); class 2: 0 / 1 (predicted only); class 3: absent
    assert_scores(class_iou(m), [4 / 7, 7 / 9, 0.0, NAN])
    # Acc (recall) is NaN for a class absent from the truth, even when predicted
    assert_scores(class_accuracy(m), [4 / 6, 7 / 8, NAN, NAN])
    assert_scores(class_dice(m), [8 / 11, 14 / 16, 0.0, NAN])
    assert pixel_accuracy(m) == pytest.approx(11 / 14)
    assert mean_iou(m) == pytest.approx((4 / 7 + 7 / 9 + 0.0) / 3)
    assert mean_accuracy(m) == pytest.approx((4 / 6 + 7 / 8) / 2)
    assert mean_dice(m) == pytest.approx((8 / 11 + 14 / 16 + 0.0) / 3)


def test_per_image_mode_hand_example() -> None:
    # image a: truth all 0, prediction half right; image b: perfect, class 1 only.
    ta, pa = np.zeros((2, 2), int), np.array([[0, 0], [1, 1]])
    tb, pb = np.ones((2, 2), int), np.ones((2, 2), int)
    cm = ConfusionMatrix(2, per_image=True)
    cm.update(np.stack([pa, pb]), np.stack([ta, tb]))
    # dataset: matrix [[2, 2], [0, 4]] -> IoU [2/4, 4/6]
    assert cm.matrix.tolist() == [[2, 2], [0, 4]]
    assert_scores(class_iou(cm), [2 / 4, 4 / 6])
    # per image: a -> IoU [1/2, 0/2], b -> IoU [NaN, 1]; nanmean over images -> [1/2, 1/2]
    assert cm.image_matrices.shape == (2, 2, 2)
    assert_scores(class_iou(cm, per_image=True), [1 / 2, (0 + 1) / 2])
    assert_scores(class_accuracy(cm, per_image=True), [1 / 2, 1.0])  # class 1 absent from a's truth: NaN there
    assert_scores(class_dice(cm, per_image=True), [2 / 3, (0 + 1) / 2])
    assert pixel_accuracy(cm, per_image=True) == pytest.approx((0.5 + 1.0) / 2)
    assert mean_iou(cm, per_image=True) == pytest.approx(0.5)
    assert_scores(image_miou(cm.image_matrices), [(1 / 2 + 0) / 2, 1.0])


def test_per_image_mode_needs_a_stack() -> None:
    with pytest.raises(ValueError, match="per-image"):
        class_iou(np.eye(2, dtype=np.int64), per_image=True)
    with pytest.raises(ValueError, match="per_image=True"):
        _ = ConfusionMatrix(2).image_matrices


def test_all_nan_gives_nan_without_warning() -> None:
    with np.errstate(all="raise"), warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(mean_iou(np.zeros((3, 3), np.int64)))
        assert math.isnan(pixel_accuracy(np.zeros((3, 3), np.int64)))


# --------------------------------------------------------------------------------------------------------------------
# the accumulator


def test_numpy_torch_and_batch_shapes_agree() -> None:
    rng = np.random.default_rng(0)
    t = rng.integers(0, 5, (3, 9, 7))
    t[:, 0] = 255
    p = rng.integers(0, 5, (3, 9, 7))
    whole = confusion_matrix(p, t, 5).numpy()
    assert confusion_matrix(torch.from_numpy(p), torch.from_numpy(t), 5).numpy().tolist() == whole.tolist()
    cm = ConfusionMatrix(5)
    for i in range(3):
        cm.update(p[i], t[i])  # (H, W) one at a time
    assert cm.matrix.tolist() == whole.tolist()
    assert cm.matrix.dtype == np.int64
    assert whole.sum() == (t != 255).sum()


def test_merge_and_add_equal_one_update() -> None:
    rng = np.random.default_rng(1)
    t, p = rng.integers(0, 4, (4, 6, 6)), rng.integers(0, 4, (4, 6, 6))
    a, b, both = (ConfusionMatrix(4, per_image=True) for _ in range(3))
    a.update(p[:1], t[:1])
    b.update(p[1:], t[1:])
    both.update(p, t)
    merged = a + b
    assert merged.matrix.tolist() == both.matrix.tolist()
    assert merged.image_matrices.tolist() == both.image_matrices.tolist()
    assert a.merge(ConfusionMatrix(4, per_image=True)).matrix.tolist() == a.matrix.tolist()
    assert a.matrix.sum() == 36  # merging did not change the parts
    with pytest.raises(ValueError, match="num_classes"):
        a.merge(ConfusionMatrix(5, per_image=True))


def test_cpu_chunking_gives_the_same_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(2)
    t = torch.from_numpy(rng.integers(0, 6, (2, 13, 11)))
    t[0, :3] = 255
    p = torch.from_numpy(rng.integers(0, 6, (2, 13, 11)))
    expected = confusion_matrix(p, t, 6).numpy()
    monkeypatch.setattr(metrics, "_CPU_CHUNK", 7)  # 286 pixels in 41 chunks, the last one partial
    assert confusion_matrix(p, t, 6).numpy().tolist() == expected.tolist()
    assert confusion_matrix(p.to(torch.uint8), t.to(torch.uint8), 6).numpy().tolist() == expected.tolist()


def test_small_dtypes_do_not_overflow() -> None:
    # target * C + pred overflows uint8 / int16 unless widened first
    rng = np.random.default_rng(3)
    t = rng.integers(0, 200, (20, 20))
    p = rng.integers(0, 200, (20, 20))
    expected = confusion_matrix(p, t, 200, ignore_index=250).numpy()
    for dtype in (np.uint8, np.int16, np.int32, np.uint16):
        got = confusion_matrix(p.astype(dtype), t.astype(dtype), 200, ignore_index=250).numpy()
        assert got.tolist() == expected.tolist(), dtype
    assert expected.sum() == 400
    assert confusion_matrix(p == 1, t == 1, 2).sum() == 400  # bool masks count as classes 0 / 1


@pytest.mark.parametrize("num_classes", [127, 128])  # 256 * 127 bins fit the int16 index, 256 * 128 do not
def test_the_index_dtype_boundary_counts_exactly(num_classes: int) -> None:
    rng = np.random.default_rng(4)
    t = rng.integers(0, num_classes, (3, 40, 40))
    p = rng.integers(0, num_classes, (3, 40, 40))
    t[0, :5] = 255
    t[1, 0, :4], p[1, 0, :4] = num_classes - 1, num_classes - 1  # the largest valid bin is used
    expected = np.zeros((num_classes, num_classes), dtype=np.int64)
    keep = t != 255
    np.add.at(expected, (t[keep], p[keep]), 1)  # an independent count, pixel by pixel
    for dtype in (np.uint8, np.int64):
        got = confusion_matrix(p.astype(dtype), t.astype(dtype), num_classes).numpy()
        assert got.tolist() == expected.tolist(), dtype


@pytest.mark.parametrize("ignore_index", [-1, -100, 255, 1_000_000])
def test_every_ignore_index_path(ignore_index: int) -> None:
    # 255 takes the extra-rows path; negative and huge values take the remapping path
    rng = np.random.default_rng(4)
    t = rng.integers(0, 3, (2, 8, 8))
    p = rng.integers(0, 3, (2, 8, 8))
    keep = rng.random((2, 8, 8)) > 0.3
    expected = np.zeros((3, 3), np.int64)
    np.add.at(expected, (t[keep], p[keep]), 1)
    t_ign = np.where(keep, t, ignore_index)
    assert confusion_matrix(p, t_ign, 3, ignore_index).numpy().tolist() == expected.tolist()
    per_image = confusion_matrix(p, t_ign, 3, ignore_index, per_image=True).numpy()
    assert per_image.shape == (2, 3, 3)
    assert per_image.sum(axis=0).tolist() == expected.tolist()


def test_empty_input_counts_nothing() -> None:
    empty = np.zeros((0, 5, 5), np.int64)
    assert confusion_matrix(empty, empty, 3).numpy().tolist() == np.zeros((3, 3)).tolist()
    assert confusion_matrix(empty, empty, 3, per_image=True).shape == (0, 3, 3)


@pytest.mark.parametrize(
    ("pred", "target", "match"),
    [
        (np.full((2, 2), 3), np.zeros((2, 2), int), "pred holds class index 3"),
        (np.full((2, 2), -1), np.zeros((2, 2), int), "pred holds class index -1"),
        (np.zeros((2, 2), int), np.array([[0, 7], [255, 1]]), "target holds value 7"),  # between C and ignore
        (np.zeros((2, 2), int), np.array([[0, 256], [255, 1]]), "target holds value 256"),
        (np.zeros((2, 2), int), np.array([[0, -3], [255, 1]]), "target holds value -3"),
        (np.zeros((2, 2), float), np.zeros((2, 2), int), "integer class indices"),
        (np.zeros((2, 3), int), np.zeros((2, 2), int), "shape"),
        (np.zeros((1, 1, 2, 2), int), np.zeros((1, 1, 2, 2), int), r"\(H, W\) or \(B, H, W\)"),
    ],
)
def test_bad_inputs_are_user_errors(pred: np.ndarray, target: np.ndarray, match: str) -> None:
    with pytest.raises(UserError, match=match):
        confusion_matrix(pred, target, 3)


def test_ignore_index_must_not_be_a_class() -> None:
    with pytest.raises(UserError, match="ignore_index 1 is a class index"):
        ConfusionMatrix(3, ignore_index=1)
    with pytest.raises(UserError, match="positive integer"):
        ConfusionMatrix(0)


# --------------------------------------------------------------------------------------------------------------------
# properties

C_MAX = 5


@st.composite
def label_pair(draw: st.DrawFn, ignore: bool = True) -> tuple[int, np.ndarray, np.ndarray]:
    c = draw(st.integers(1, C_MAX))
    shape = draw(st.tuples(st.integers(1, 3), st.integers(1, 8), st.integers(1, 8)))
    target = draw(hnp.arrays(np.int64, shape, elements=st.integers(0, c - 1)))
    pred = draw(hnp.arrays(np.int64, shape, elements=st.integers(0, c - 1)))
    if ignore:
        mask = draw(hnp.arrays(np.bool_, shape))
        target = np.where(mask, 255, target)
    return c, pred, target


@settings(max_examples=60, deadline=None)
@given(label_pair())
def test_matrix_matches_a_pixel_by_pixel_reference(data: tuple[int, np.ndarray, np.ndarray]) -> None:
    c, pred, target = data
    keep = target != 255
    expected = np.zeros((c, c), np.int64)
    np.add.at(expected, (target[keep], pred[keep]), 1)
    assert confusion_matrix(pred, target, c).numpy().tolist() == expected.tolist()


@settings(max_examples=60, deadline=None)
@given(label_pair())
def test_perfect_prediction_scores_one_for_present_classes(data: tuple[int, np.ndarray, np.ndarray]) -> None:
    c, _, target = data
    pred = np.where(target == 255, 0, target)
    m = confusion_matrix(pred, target, c).numpy()
    present = np.isin(np.arange(c), target[target != 255])
    for scores in (class_iou(m), class_accuracy(m), class_dice(m)):
        assert np.all(scores[present] == 1.0)
        assert np.all(np.isnan(scores[~present]))
    if present.any():
        assert pixel_accuracy(m) == 1.0 and mean_iou(m) == 1.0


@settings(max_examples=60, deadline=None)
@given(label_pair(ignore=False))
def test_swapping_truth_and_prediction_keeps_iou_and_dice(data: tuple[int, np.ndarray, np.ndarray]) -> None:
    c, pred, target = data
    m = confusion_matrix(pred, target, c).numpy()
    swapped = confusion_matrix(target, pred, c).numpy()
    assert swapped.tolist() == m.T.tolist()
    np.testing.assert_array_equal(class_iou(swapped), class_iou(m))
    np.testing.assert_array_equal(class_dice(swapped), class_dice(m))
    assert pixel_accuracy(swapped) == pixel_accuracy(m) or math.isnan(pixel_accuracy(m))


@settings(max_examples=60, deadline=None)
@given(label_pair(), st.integers(0, 2**31 - 1))
def test_ignored_pixels_never_count(data: tuple[int, np.ndarray, np.ndarray], seed: int) -> None:
    c, pred, target = data
    other = np.random.default_rng(seed).integers(0, c, pred.shape)
    changed = np.where(target == 255, other, pred)  # a different prediction under the ignored pixels only
    for per_image in (False, True):
        a = confusion_matrix(pred, target, c, per_image=per_image).numpy()
        b = confusion_matrix(changed, target, c, per_image=per_image).numpy()
        assert a.tolist() == b.tolist()
    assert confusion_matrix(pred, target, c).sum() == (target != 255).sum()


@settings(max_examples=40, deadline=None)
@given(label_pair())
def test_per_image_of_one_image_equals_dataset(data: tuple[int, np.ndarray, np.ndarray]) -> None:
    c, pred, target = data
    cm = ConfusionMatrix(c, per_image=True)
    cm.update(pred[0], target[0])
    np.testing.assert_array_equal(class_iou(cm, per_image=True), class_iou(cm))
    np.testing.assert_array_equal(class_dice(cm, per_image=True), class_dice(cm))


# --------------------------------------------------------------------------------------------------------------------
# agreement with torchmetrics


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_iou_agrees_with_torchmetrics(seed: int) -> None:
    from torchmetrics.classification import MulticlassJaccardIndex

    g = torch.Generator().manual_seed(seed)
    c = 7
    target = torch.randint(0, c - 1, (4, 32, 24), generator=g)  # class 6 never in the truth ...
    pred = torch.randint(0, c - 2, (4, 32, 24), generator=g)  # ... nor in the prediction: NaN here, 0 there
    target[torch.rand(target.shape, generator=g) < 0.1] = 255
    ours = ConfusionMatrix(c)
    tm = MulticlassJaccardIndex(num_classes=c, average=None, ignore_index=255)
    for i in range(2):  # two batches, to exercise the streaming on both sides
        ours.update(pred[2 * i : 2 * i + 2], target[2 * i : 2 * i + 2])
        tm.update(pred[2 * i : 2 * i + 2], target[2 * i : 2 * i + 2])
    expected = tm.compute().numpy()
    got = class_iou(ours)
    present = ~np.isnan(got)
    assert present.tolist() == [True] * 6 + [False]
    np.testing.assert_allclose(got[present], expected[present], rtol=1e-6)


# --------------------------------------------------------------------------------------------------------------------
# summary


def test_summary_is_json_ready_with_none_for_nan() -> None:
    m = confusion_matrix(P4, T4, num_classes=4).numpy()
    s = summarize(m, ["bg", "road", "car", "bike"], boundary=np.array([0.5, 0.25, 0.0, NAN]))
    json.dumps(s, allow_nan=False)  # raises on a NaN that slipped through
    assert s["mIoU"] == pytest.approx((4 / 7 + 7 / 9) / 3)
    assert s["aAcc"] == pytest.approx(11 / 14)
    assert s["mAcc"] == pytest.approx((4 / 6 + 7 / 8) / 2)
    assert s["mDice"] == pytest.approx((8 / 11 + 14 / 16) / 3)
    assert s["mBIoU"] == pytest.approx(0.75 / 3)
    assert s["per_image"] is False
    assert list(s["per_class"]) == ["bg", "road", "car", "bike"]
    assert s["per_class"]["bike"] == {"IoU": None, "Acc": None, "Dice": None, "BIoU": None}
    assert s["per_class"]["car"] == {"IoU": 0.0, "Acc": None, "Dice": 0.0, "BIoU": 0.0}
    assert s["per_class"]["road"]["IoU"] == pytest.approx(7 / 9)


def test_summary_per_image_and_without_boundary() -> None:
    cm = ConfusionMatrix(2, per_image=True)
    cm.update(np.stack([np.array([[0, 0], [1, 1]]), np.ones((2, 2), int)]), np.stack([np.zeros((2, 2), int)] * 2))
    s = summarize(cm, ["a", "b"], per_image=True)
    assert "mBIoU" not in s and "BIoU" not in s["per_class"]["a"]
    assert s["per_image"] is True
    assert s["per_class"]["a"]["IoU"] == pytest.approx((0.5 + 0.0) / 2)
    assert s["per_class"]["b"]["IoU"] == pytest.approx(0.0)
    assert s["aAcc"] == pytest.approx(0.25)


def test_summary_checks_class_names() -> None:
    m = np.eye(3, dtype=np.int64)
    with pytest.raises(UserError, match="2 class names for 3 classes"):
        summarize(m, ["a", "b"])
    with pytest.raises(UserError, match="unique"):
        summarize(m, ["a", "b", "a"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu_and_stays_on_device() -> None:
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 5, (3, 40, 30), generator=g)
    target[:, :4] = 255
    pred = torch.randint(0, 5, (3, 40, 30), generator=g)
    cpu = confusion_matrix(pred, target, 5, per_image=True)
    gpu = confusion_matrix(pred.cuda(), target.cuda(), 5, per_image=True)
    assert gpu.device.type == "cuda"
    assert gpu.cpu().tolist() == cpu.tolist()
    cm = ConfusionMatrix(5)
    cm.update(pred.cuda(), target.cuda())
    assert cm.matrix.tolist() == cpu.sum(0).tolist()
