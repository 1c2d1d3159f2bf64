"""Post-processing: the rules against scipy's labelling, the statistics' matrices against the applied rules, the fit
(areas, keep-largest, hole filling)."""

from __future__ import annotations

import numpy as np
from helpers import reference_apply
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.metrics import confusion_matrix, score_matrices
from pipeline.postprocess import Grid, Rule, Stack, apply, fit, fit_fill, hole_stats, image_stats

C = 4


maps = st.integers(0, 2**32 - 1).map(
    lambda seed: np.random.default_rng(seed).choice(C, size=(9, 11), p=[0.5, 0.2, 0.2, 0.1]).astype(np.uint8)
)
AREAS, TOTALS = (0, 1, 2, 4, 7), (0, 3, 10, 30)
rules = st.builds(
    lambda a, t, largest, fill: Rule(0 if largest else a, t, largest, fill),
    st.sampled_from(AREAS),
    st.sampled_from(TOTALS),
    st.booleans(),
    st.booleans(),
)
rule_sets = st.dictionaries(st.integers(1, C - 1), rules, max_size=C - 1)


@settings(max_examples=60, deadline=None)
@given(maps, rule_sets)
def test_apply_matches_scipy_labelling(pred: np.ndarray, rules: dict[int, Rule]) -> None:
    np.testing.assert_array_equal(apply(pred, rules), reference_apply(pred, rules))


@settings(max_examples=60, deadline=None)
@given(maps, maps, rule_sets)
def test_the_statistics_give_the_matrices_of_the_applied_rules(
    pred: np.ndarray, truth: np.ndarray, rules: dict[int, Rule]
) -> None:
    truth = truth.copy()
    truth[0, :3] = 255  # ignore pixels count for the areas, never for the matrices
    stack = Stack([image_stats(pred, truth, C, AREAS)], Grid(AREAS, TOTALS))
    removal = {c: r._replace(fill=False) for c, r in rules.items()}
    holes = hole_stats(reference_apply(pred, removal), truth, C)[None]  # the holes of the map the removal leaves
    want = confusion_matrix(reference_apply(pred, rules), truth, C).numpy()
    np.testing.assert_array_equal(stack.matrices_for(rules, holes=holes)[0], want)


def test_holes_are_filled_only_where_one_class_alone_encloses_background() -> None:
    pred = np.zeros((7, 12), np.uint8)
    pred[1:6, 1:6] = 1
    pred[3, 3] = 0  # a hole of class 1
    pred[1:6, 7:11] = 2
    pred[3, 8:10] = 0
    pred[3, 10] = 1  # a region bordered by classes 2 and 1: no hole
    pred[0, 3] = 1
    out = apply(pred, {1: Rule(fill=True), 2: Rule(fill=True)})
    assert out[3, 3] == 1 and (out[3, 8:10] == 0).all()
    assert (out[0] == np.where(np.arange(12) == 3, 1, 0)).all()  # the border region is no hole either


def test_keep_largest_keeps_every_component_tied_for_the_largest() -> None:
    pred = np.zeros((5, 9), np.uint8)
    pred[0:2, 0:2] = 1  # 4 px
    pred[0:2, 4:6] = 1  # 4 px, tied
    pred[4, 8] = 1  # 1 px
    out = apply(pred, {1: Rule(largest=True)})
    assert out.sum() == 8 and out[4, 8] == 0
    truth = pred.copy()
    stats = image_stats(pred, truth, 2, (0,))
    assert stats.left[1].tolist() == [9, 8] and stats.moved[1, 1].tolist() == [0, 1]  # slot 1: keep-largest


def test_the_fit_removes_planted_false_blobs_and_keeps_true_small_objects() -> None:
    rng = np.random.default_rng(0)
    stats, truths, preds = [], [], []
    for _ in range(30):
        truth = np.zeros((32, 32), np.uint8)
        truth[4:14, 4:14] = 1  # a large class-1 object
        truth[20:22, 20:22] = 2  # a small true class-2 object (4 px)
        pred = truth.copy()
        for _ in range(3):  # false one-pixel specks of class 1 on the background
            y, x = rng.integers(16, 32, 2)
            if truth[y, x] == 0:
                pred[y, x] = 1
        stats.append(image_stats(pred, truth, 3, (0, 2, 8, 32)))
        truths.append(truth)
        preds.append(pred)
    rules, before, after = fit(stats, Grid((0, 2, 8, 32), (0, 16)), "miou")
    r1 = rules.get(1, Rule())
    assert r1.largest or r1.min_area in (2, 8, 32)  # the specks go
    assert 2 not in rules or rules[2].min_area <= 4 and rules[2].min_total <= 4  # the true 4-px objects stay
    independent = np.stack([confusion_matrix(apply(p, rules), t, 3).numpy() for p, t in zip(preds, truths)])
    assert after == score_matrices("miou", independent) and after > before


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(maps, maps), min_size=1, max_size=4), st.sampled_from(["miou", "image_miou", "image_dice"]))
def test_the_fit_is_never_worse_than_none_where_it_is_fitted(pairs: list, metric: str) -> None:
    stats = [image_stats(p, t, C, AREAS) for p, t in pairs]
    _, before, after = fit(stats, Grid(AREAS, TOTALS), metric)
    assert after >= before or (np.isnan(before) and np.isnan(after))


def test_the_fit_keeps_the_largest_object_and_fills_planted_holes() -> None:
    """One true object per image, predicted with a hole and a far larger false blob than any area candidate:
    keep-largest removes the blob, filling closes the hole; both checked against matrices computed here."""
    preds, truths = [], []
    for k in range(20):
        truth = np.zeros((40, 40), np.uint8)
        truth[5:25, 5:25] = 1
        pred = truth.copy()
        pred[12:16, 12:16] = 0  # a 16-px hole in the object
        pred[30:36, 30 - k % 3 : 36 - k % 3] = 1  # a 36-px false blob, above every min_area candidate
        preds.append(pred)
        truths.append(truth)
    grid = Grid((0, 2, 8), (0, 8))
    stack = Stack([image_stats(p, t, 2, grid.areas) for p, t in zip(preds, truths)], grid)
    removal, before, after = fit(stack, grid, "miou")
    assert removal == {1: Rule(0, 0, largest=True)}
    holes = np.stack([hole_stats(apply(p, removal), t, 2) for p, t in zip(preds, truths)])
    rules, filled = fit_fill(stack, removal, holes, "miou")
    assert rules == {1: Rule(0, 0, largest=True, fill=True)} and before < after < filled == 1.0
    independent = np.stack([confusion_matrix(apply(p, rules), t, 2).numpy() for p, t in zip(preds, truths)])
    assert score_matrices("miou", independent) == filled
