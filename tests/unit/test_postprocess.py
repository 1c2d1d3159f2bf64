"""Post-processing: the rules against scipy's labelling, the statistics' matrices against the applied rules, the fit."""

from __future__ import annotations

import numpy as np
from helpers import reference_apply
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.metrics import confusion_matrix, score_matrices
from pipeline.postprocess import Grid, Stack, apply, fit, image_stats

C = 4


maps = st.integers(0, 2**32 - 1).map(
    lambda seed: np.random.default_rng(seed).choice(C, size=(9, 11), p=[0.5, 0.2, 0.2, 0.1]).astype(np.uint8)
)
AREAS, TOTALS = (0, 1, 2, 4, 7), (0, 3, 10, 30)
rule_sets = st.dictionaries(
    st.integers(1, C - 1), st.tuples(st.sampled_from(AREAS), st.sampled_from(TOTALS)), max_size=C - 1
)


@settings(max_examples=60, deadline=None)
@given(maps, rule_sets)
def test_apply_matches_scipy_labelling(pred: np.ndarray, rules: dict[int, tuple[int, int]]) -> None:
    np.testing.assert_array_equal(apply(pred, rules), reference_apply(pred, rules))


@settings(max_examples=60, deadline=None)
@given(maps, maps, rule_sets)
def test_the_statistics_give_the_matrices_of_the_applied_rules(
    pred: np.ndarray, truth: np.ndarray, rules: dict[int, tuple[int, int]]
) -> None:
    truth = truth.copy()
    truth[0, :3] = 255  # ignore pixels count for the areas, never for the matrices
    stack = Stack([image_stats(pred, truth, C, AREAS)], Grid(AREAS, TOTALS))
    want = confusion_matrix(reference_apply(pred, rules), truth, C).numpy()
    np.testing.assert_array_equal(stack.matrices_for(rules)[0], want)


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
    assert rules.get(1, (0, 0))[0] in (2, 8, 32) and rules.get(1, (0, 0))[0] > 1  # the specks go
    assert 2 not in rules or rules[2][0] <= 4 and rules[2][1] <= 4  # the true 4-px objects stay
    independent = np.stack([confusion_matrix(apply(p, rules), t, 3).numpy() for p, t in zip(preds, truths)])
    assert after == score_matrices("miou", independent) and after > before


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(maps, maps), min_size=1, max_size=4), st.sampled_from(["miou", "image_miou", "image_dice"]))
def test_the_fit_is_never_worse_than_none_where_it_is_fitted(pairs: list, metric: str) -> None:
    stats = [image_stats(p, t, C, AREAS) for p, t in pairs]
    _, before, after = fit(stats, Grid(AREAS, TOTALS), metric)
    assert after >= before or (np.isnan(before) and np.isnan(after))
