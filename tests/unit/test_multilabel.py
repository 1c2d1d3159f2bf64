"""Multilabel masks (``masks.overlap: multilabel``): bit fields painted from COCO against pycocotools, and scored
per class against independent per-pixel computations (scikit-learn's Jaccard, sets of classes, the official
Boundary IoU band of each class's own binary mask)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import load_reference_coco, read_png, someone_elses_competition, write_competition
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import jaccard_score

from pipeline import labels
from pipeline.config import DataParams, MasksParams
from pipeline.data.masks import build_masks
from pipeline.errors import UserError
from pipeline.metrics import (
    BoundaryIoU,
    MultilabelMatrix,
    class_dice,
    class_iou,
    counter,
    image_dice,
    image_miou,
    mask_boundary,
    multilabel_matrix,
    pixel_accuracy,
    score_matrices,
    summarize,
)
from pipeline.paths import Layout

IGNORE = labels.IGNORE_INDEX


@pytest.fixture(scope="module")
def other(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return someone_elses_competition(tmp_path_factory.mktemp("other") / "comp", n_images=7, seed=3)


def reference_bits(json_path: Path, crowd: str) -> dict[int, np.ndarray]:
    """image id -> the bit field from pycocotools' ``annToMask`` of every annotation (crowd: ignore wins)."""
    coco = load_reference_coco(json_path)
    index = {cat_id: i + 1 for i, cat_id in enumerate(sorted(coco.getCatIds()))}
    out = {}
    for image_id, image in coco.imgs.items():
        bits = np.zeros((image["height"], image["width"]), np.uint8)
        crowded = np.zeros(bits.shape, bool)
        for ann in coco.imgToAnns[image_id]:
            m = coco.annToMask(ann).astype(bool)
            if ann.get("iscrowd") and crowd == "ignore":
                crowded |= m
            else:
                bits[m] |= 1 << (index[ann["category_id"]] - 1)
        bits[crowded] = IGNORE
        out[image_id] = bits
    return out


@pytest.mark.parametrize("crowd", ["class", "ignore"])
def test_masks_stage_paints_every_class_of_a_pixel(other: Path, tmp_path: Path, crowd: str) -> None:
    data = DataParams(root=str(other.parent))
    summary = build_masks(data, MasksParams(overlap="multilabel", crowd=crowd, workers=2), Layout(tmp_path))  # type: ignore[arg-type]
    ref = reference_bits(other, crowd)
    overlapping = 0
    for image_id, want in ref.items():
        got = read_png(Layout(tmp_path).mask_path(image_id))
        np.testing.assert_array_equal(got, want, err_msg=f"image {image_id}")
        overlapping += int(np.isin(want, [3, 5, 6, 7]).sum())
    assert overlapping > 0  # the competition really has pixels of two classes
    assert summary["labels"] == "multilabel"
    stacked = np.concatenate([m.ravel() for m in ref.values()])
    valid = stacked != IGNORE
    held = [int((valid & ((stacked >> (k - 1)) & 1 == 1)).sum()) for k in (1, 2, 3)]
    assert [c["pixels"] for c in summary["classes"]] == [int((stacked == 0).sum()), *held]
    assert summary["ignored_pixels"] == int((~valid).sum())
    assert summary["images"] == len(ref)


def test_more_classes_than_bits_is_a_one_line_error(tmp_path: Path) -> None:
    cats = [{"id": i, "name": f"c{i}"} for i in range(1, 9)]
    images = [{"id": 1, "file_name": "a.png", "height": 8, "width": 8}]
    ann = {"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[1, 1, 6, 1, 6, 6]], "iscrowd": 0}
    write_competition(tmp_path / "comp", images, [ann], cats)
    data = DataParams(root=str(tmp_path / "comp"))
    with pytest.raises(UserError, match=r"train.json: 8 categories, but masks.overlap: multilabel holds at most 7"):
        build_masks(data, MasksParams(overlap="multilabel", workers=1), Layout(tmp_path / "w"))


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 8), st.integers(0, 2**31 - 1))
def test_planes_and_pack_round_trip(num_classes: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 2 ** (num_classes - 1), size=(3, 5, 4)).astype(np.uint8)
    bits[rng.random(bits.shape) < 0.2] = IGNORE
    p = labels.planes(bits, num_classes)
    ok = bits != IGNORE
    for k in range(1, num_classes):
        np.testing.assert_array_equal(p[:, k], ok & ((bits & (1 << (k - 1))) > 0))
    np.testing.assert_array_equal(p[:, 0], bits == 0)
    np.testing.assert_array_equal(labels.pack(p), np.where(ok, bits, 0))


def random_pair(rng: np.random.Generator, n: int, c: int, h: int = 6, w: int = 7) -> tuple[np.ndarray, np.ndarray]:
    truth = rng.integers(0, 2 ** (c - 1), size=(n, h, w)).astype(np.uint8)
    truth[rng.random(truth.shape) < 0.15] = IGNORE
    pred = rng.integers(0, 2 ** (c - 1), size=(n, h, w)).astype(np.uint8)
    return pred, truth


def indicator(bits: np.ndarray, c: int) -> np.ndarray:
    """(pixels, C) 0/1: column 0 no class, column k class k; written with Python sets, not the pipeline's planes."""
    rows = []
    for v in bits.ravel().tolist():
        held = {k for k in range(1, c) if v & (1 << (k - 1))}
        rows.append([int(not held)] + [int(k in held) for k in range(1, c)])
    return np.array(rows, dtype=np.int64)


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 8), st.integers(0, 2**31 - 1))
def test_class_iou_and_dice_equal_sklearn_per_class(c: int, seed: int) -> None:
    pred, truth = random_pair(np.random.default_rng(seed), 3, c)
    ok = truth.ravel() != IGNORE
    yt, yp = indicator(truth, c)[ok], indicator(pred, c)[ok]
    m = counter(c, multilabel=True, per_image=True)
    m.update(pred, truth)
    present = (yt.sum(0) + yp.sum(0)) > 0
    want = jaccard_score(yt, yp, average=None, zero_division=0)
    got = class_iou(m.matrix)
    np.testing.assert_allclose(got[present], want[present])
    assert np.isnan(got[~present]).all()
    tp, t, p = (yt & yp).sum(0), yt.sum(0), yp.sum(0)
    np.testing.assert_allclose(class_dice(m.matrix)[present], 2 * tp[present] / (t + p)[present])
    assert pixel_accuracy(m.matrix) == pytest.approx((yt == yp).mean())
    assert score_matrices("miou", m.image_matrices) == pytest.approx(float(np.mean(want[present])))


def test_worked_example_of_the_one_vs_rest_matrices() -> None:
    # truth {1}, {1, 2}, ignore; prediction {1, 2}, {1}, {} -> class 1: TP 2; class 2: FP 1, FN 1; no class: TN 2
    m = multilabel_matrix(np.array([[3, 1, 0]]), np.array([[1, 3, IGNORE]]), 3)
    assert m.shape == (1, 3, 2, 2)
    np.testing.assert_array_equal(class_iou(m), [np.nan, 1.0, 0.0])
    s = summarize(m, ["none", "a", "b"])
    assert s["mIoU"] == pytest.approx(0.5) and s["per_class"]["b"]["Dice"] == 0.0


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 6), st.integers(0, 2**31 - 1))
def test_per_image_scores_equal_a_loop_over_images_and_classes(c: int, seed: int) -> None:
    pred, truth = random_pair(np.random.default_rng(seed), 4, c)
    m = MultilabelMatrix(c, per_image=True)
    for i in range(len(pred)):  # one update per image: the same stack as one batch
        m.update(pred[i], truth[i])
    np.testing.assert_array_equal(m.image_matrices, multilabel_matrix(pred, truth, c, per_image=True).numpy())
    want_miou, want_dice = [], []
    for i in range(len(pred)):
        ok = truth[i].ravel() != IGNORE
        yt, yp = indicator(truth[i], c)[ok], indicator(pred[i], c)[ok]
        ious, dices = [], []
        for k in range(c):
            inter, size = int((yt[:, k] & yp[:, k]).sum()), int(yt[:, k].sum() + yp[:, k].sum())
            if size:
                ious.append(inter / (size - inter))
            if k:
                dices.append(2 * inter / size if size else 1.0)
        want_miou.append(np.mean(ious) if ious else np.nan)
        want_dice.append(np.mean(dices) if ok.any() else np.nan)
    np.testing.assert_allclose(image_miou(m.image_matrices), want_miou)
    np.testing.assert_allclose(image_dice(m.image_matrices), want_dice)
    assert score_matrices("image_dice", m.image_matrices) == pytest.approx(np.nanmean(want_dice))


def test_bits_past_the_classes_are_a_clear_error() -> None:
    with pytest.raises(UserError, match="pred holds multilabel value 4, which sets a bit past the 2 classes"):
        multilabel_matrix(np.array([[4]]), np.array([[1]]), 3)
    with pytest.raises(UserError, match="target holds multilabel value 8"):
        multilabel_matrix(np.array([[1]]), np.array([[8]]), 3)
    with pytest.raises(UserError, match="pred holds multilabel value 255"):
        multilabel_matrix(np.array([[255]]), np.array([[1]]), 3)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_boundary_iou_of_each_class_is_the_official_band_of_its_own_mask(seed: int) -> None:
    rng = np.random.default_rng(seed)
    c, h, w = 4, 40, 50
    truth = np.zeros((h, w), np.uint8)
    pred = np.zeros((h, w), np.uint8)
    for bits in (truth, pred):
        for k in range(1, c):
            y, x = rng.integers(0, 30), rng.integers(0, 40)
            bits[y : y + rng.integers(5, 15), x : x + rng.integers(5, 15)] |= 1 << (k - 1)
    b = BoundaryIoU(c, multilabel=True)
    b.update(pred, truth)
    for k in range(1, c):
        tb = mask_boundary((truth >> (k - 1)) & 1)
        pb = mask_boundary((pred >> (k - 1)) & 1)
        union = int((tb | pb).sum())
        assert b.intersection[k] == int((tb & pb).sum()) and b.union[k] == union


def test_decode_is_each_class_over_its_own_threshold() -> None:
    probs = np.random.default_rng(0).random((4, 5, 6))
    got = labels.decode(probs, [0.3, 0.5, 0.7])
    for k, t in zip((1, 2, 3), (0.3, 0.5, 0.7), strict=True):
        np.testing.assert_array_equal((got >> (k - 1)) & 1, (probs[k] > t).astype(np.uint8))


# --------------------------------------------------------------------------------------------------------------------
# Learning and predicting: the losses, the ensemble's averaging, the submission rows


def test_multilabel_bce_is_the_mean_over_valid_pixel_class_pairs() -> None:
    import torch

    from pipeline.losses import MultilabelBCE, presence_target

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
    bits = rng.integers(0, 4, size=(2, 4, 5)).astype(np.uint8)
    bits[0, 0, :3] = IGNORE
    got = float(MultilabelBCE([1.0, 2.0, 0.5])(torch.from_numpy(logits), torch.from_numpy(bits).long()))
    total, n = 0.0, 0
    for b, y, x in np.ndindex(2, 4, 5):
        v = int(bits[b, y, x])
        if v == IGNORE:
            continue
        held = [v == 0, bool(v & 1), bool(v & 2)]
        for c, w in enumerate((1.0, 2.0, 0.5)):
            p = 1 / (1 + np.exp(-float(logits[b, c, y, x])))
            total += -w * (np.log(p) if held[c] else np.log(1 - p))
            n += 1
    assert got == pytest.approx(total / n, rel=1e-5)
    assert presence_target(torch.from_numpy(bits).long(), 3, multilabel=True).tolist() == [
        [float((bits[i] == 0).any()), float(((bits[i] & 1) > 0).any()), float(((bits[i] & 2) > 0).any())]
        for i in range(2)
    ]


def test_smp_losses_see_the_planes_with_ignore_on_every_plane() -> None:
    import segmentation_models_pytorch as smp
    import torch

    from pipeline.config import LossTerm
    from pipeline.losses import make_term

    rng = np.random.default_rng(1)
    logits = torch.from_numpy(rng.normal(size=(2, 3, 6, 6)).astype(np.float32))
    bits = torch.from_numpy(rng.integers(0, 4, size=(2, 6, 6)).astype(np.int64))
    bits[1, :2] = IGNORE
    planes = torch.stack([bits == 0, (bits & 1) > 0, (bits & 2) > 0], 1).long()
    planes[(bits == IGNORE).unsqueeze(1).expand_as(planes)] = IGNORE
    want = smp.losses.DiceLoss(mode="multilabel", ignore_index=IGNORE)(logits, planes)
    got = make_term(LossTerm(name="dice"), None, multilabel=True)(logits, bits)
    assert float(got) == pytest.approx(float(want))


def test_ensemble_forwards_average_sigmoid_probabilities_or_logits() -> None:
    import torch
    from torch import nn

    from pipeline.config import TtaConfig
    from pipeline.ensemble.fit import combine
    from pipeline.ensemble.members import EnsembleForward, GroupForward

    class Fixed(nn.Module):
        def __init__(self, z: torch.Tensor) -> None:
            super().__init__()
            self.z = z

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.z

    za, zb = torch.tensor([[[[2.0]], [[-1.0]]]]), torch.tensor([[[[-0.5]], [[3.0]]]])
    x = torch.zeros(1, 3, 1, 1)
    tta = TtaConfig(flips=[], scales=[])
    mean_p = (torch.sigmoid(za) + torch.sigmoid(zb)) / 2
    prob = GroupForward([Fixed(za), Fixed(zb)], tta, "prob", multilabel=True)(x)
    torch.testing.assert_close(torch.sigmoid(prob), mean_p)
    logit = GroupForward([Fixed(za), Fixed(zb)], tta, "logit", multilabel=True)(x)
    torch.testing.assert_close(logit, (za + zb) / 2)
    groups = [
        GroupForward([Fixed(za)], tta, "prob", multilabel=True),
        GroupForward([Fixed(zb)], tta, "prob", multilabel=True),
    ]
    ens = EnsembleForward(groups, [3.0, 1.0], "prob", multilabel=True)(x)
    torch.testing.assert_close(
        torch.sigmoid(ens), 0.75 * torch.sigmoid(za) + 0.25 * torch.sigmoid(zb), atol=1e-5, rtol=0
    )
    pa, pb = torch.sigmoid(za)[0].numpy(), torch.sigmoid(zb)[0].numpy()
    got = combine([pa, pb], [1.0, 1.0], "logit", multilabel=True)
    np.testing.assert_allclose(got, torch.sigmoid((za + zb) / 2)[0].numpy(), atol=1e-5)


def test_submission_rows_of_each_class_overlap_and_decode_back_to_the_bits() -> None:
    from pipeline.submission import codec
    from pipeline.submission.format import PER_CLASS
    from pipeline.submission.writer import SubmissionWriter

    bits = np.zeros((5, 6), np.uint8)
    bits[1:4, 1:4] = 1
    bits[2:5, 2:6] |= 2
    classes = [{"index": 0, "name": "background"}, {"index": 1, "name": "a"}, {"index": 2, "name": "b"}]
    w = SubmissionWriter(classes, PER_CLASS, multilabel=True)
    w.add("7", bits)
    df = w.frame()
    assert df["class"].tolist() == ["a", "b"]
    for name, k in (("a", 1), ("b", 2)):  # 1-based column-major runs, by hand
        want = (bits >> (k - 1)) & 1
        text = df[df["class"] == name]["predicted"].iloc[0]
        flat = np.zeros(30, np.uint8)
        nums = [int(v) for v in text.split()]
        for s, n in zip(nums[0::2], nums[1::2], strict=True):
            flat[s - 1 : s - 1 + n] = 1
        np.testing.assert_array_equal(flat.reshape(6, 5).T, want)
    back = codec.decode_frame(df, PER_CLASS, {"7": (5, 6)}, {"a": 1, "b": 2}, multilabel=True)["7"]
    np.testing.assert_array_equal(back, bits)
    with pytest.raises(UserError, match="multilabel mask value 4 sets a bit past the 2 classes"):
        w.add("8", np.full((2, 2), 4, np.uint8))


# --------------------------------------------------------------------------------------------------------------------
# Per-class thresholds (infer.threshold: fit on multilabel masks)


def _probs_and_truth(seed: int, n: int = 5, c: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 2 ** (c - 1), size=(n, 6, 7)).astype(np.uint8)
    truth[rng.random(truth.shape) < 0.1] = IGNORE
    noisy = labels.planes(np.where(truth == IGNORE, 0, truth), c).astype(np.float32)
    probs = np.clip(0.35 * noisy + 0.65 * rng.random(noisy.shape), 0, 1).astype(np.float32)
    return probs, truth


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 3))
def test_class_sweep_equals_decoding_at_each_candidate(seed: int, j: int) -> None:
    from pipeline.threshold import THRESHOLDS, class_sweep

    probs, truth = _probs_and_truth(seed, n=2)
    current = (0.4, 0.55, 0.6)
    for i in range(len(probs)):
        got = class_sweep(probs[i], truth[i], j, current, THRESHOLDS)
        for ti, t in enumerate(THRESHOLDS):
            ts = list(current)
            ts[j - 1] = t
            want = multilabel_matrix(labels.decode(probs[i], ts), truth[i], 4)[0].numpy()
            np.testing.assert_array_equal(got[ti], want, err_msg=f"class {j} at {t}")


def test_fitted_thresholds_beat_one_half_and_no_single_class_move_improves() -> None:
    from pipeline.threshold import THRESHOLDS, class_sweep, fit_multilabel

    probs, truth = _probs_and_truth(7, n=6)
    keep = np.array([True, True, True, True, False, False])

    def sweep(j: int, current: tuple[float, ...]) -> np.ndarray:
        return np.stack([class_sweep(probs[i], truth[i], j, current, THRESHOLDS) for i in range(len(probs))], 1)

    def score(ts: tuple[float, ...]) -> float:  # decoded and counted by the plain path, on the kept images
        m = multilabel_matrix(labels.decode(probs[keep], ts), truth[keep], 4, per_image=True).numpy()
        return score_matrices("miou", m)

    ts, before, after = fit_multilabel(sweep, 4, "miou", keep)
    assert before == pytest.approx(score((0.5, 0.5, 0.5))) and after == pytest.approx(score(ts))
    assert after > before  # the noisy probabilities are not best cut at 0.5
    for j in range(3):
        for t in THRESHOLDS:
            moved = (*ts[:j], t, *ts[j + 1 :])
            assert score(moved) <= after + 1e-12
