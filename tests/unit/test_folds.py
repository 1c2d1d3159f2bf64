"""Folds: seeded, stratified on class presence, group-aware, saved once to folds.csv."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.config import FoldsParams
from pipeline.data.folds import assign_folds, balance_table, build_folds, group_keys, presence_matrix, read_folds
from pipeline.errors import UserError
from pipeline.io import write_csv, write_json
from pipeline.paths import Layout


def multilabel(n: int = 600, seed: int = 0) -> np.ndarray:
    """(N, 5) presence with very different shares per class (50% down to 3%), some images with no class."""
    rng = np.random.default_rng(seed)
    return (rng.random((n, 5)) < np.array([0.5, 0.3, 0.15, 0.07, 0.03])).astype(np.int64)


def test_folds_are_deterministic_for_a_seed_and_change_with_it() -> None:
    y = multilabel()
    a, b = assign_folds(y, 5, seed=42), assign_folds(y, 5, seed=42)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, assign_folds(y, 5, seed=43))


def test_every_image_gets_one_fold_of_about_equal_size() -> None:
    folds = assign_folds(multilabel(), 5, seed=0)
    assert folds.shape == (600,) and set(folds.tolist()) == set(range(5))
    sizes = np.bincount(folds)
    assert sizes.max() - sizes.min() <= 6, sizes


@pytest.mark.parametrize("k", [3, 5])
def test_class_presence_shares_match_overall_in_every_fold(k: int) -> None:
    y = multilabel()
    folds = assign_folds(y, k, seed=1)
    overall = y.mean(axis=0)
    for f in range(k):
        shares = y[folds == f].mean(axis=0)
        assert np.abs(shares - overall).max() < 0.02, (f, shares, overall)
        assert (y[folds == f].sum(axis=0) > 0).all()  # even the 3% class is in every fold


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_per_class_counts_differ_by_at_most_two_between_folds(seed: int) -> None:
    y = multilabel(seed=seed)
    folds = assign_folds(y, 5, seed=seed)
    per_fold = np.array([y[folds == f].sum(axis=0) for f in range(5)])  # (k, K) images with the class
    assert np.ptp(per_fold, axis=0).max() <= 2, per_fold


def test_a_single_class_competition_is_stratified_on_presence() -> None:
    y = (np.random.default_rng(0).random((50, 1)) < 0.3).astype(np.int64)
    folds = assign_folds(y, 5, seed=0)
    counts = [int(y[folds == f].sum()) for f in range(5)]
    assert set(folds.tolist()) == set(range(5)) and max(counts) - min(counts) <= 1, counts


def test_group_by_subfolder_keeps_each_group_in_one_fold() -> None:
    rng = np.random.default_rng(0)
    names = pd.Series([f"patient{rng.integers(0, 23)}/scan{i}.png" for i in range(300)] + ["top.png", "top2.png"])
    groups = group_keys(names, "subfolder")
    assert groups is not None and groups[-1] == "." and groups[0].startswith("patient")
    y = multilabel(len(names))
    folds = assign_folds(y, 4, seed=0, groups=groups)
    by_group = pd.DataFrame({"g": groups, "f": folds}).groupby("g")["f"].nunique()
    assert (by_group == 1).all()
    assert set(folds.tolist()) == set(range(4))
    assert group_keys(names, "none") is None


def test_too_few_images_or_groups_is_a_user_error() -> None:
    with pytest.raises(UserError, match="3 images cannot make k=5 folds"):
        assign_folds(multilabel(3), 5, seed=0)
    groups = np.array(["a", "a", "b", "b", "c", "c"])
    with pytest.raises(UserError, match="3 groups cannot make k=4 folds"):
        assign_folds(multilabel(6), 4, seed=0, groups=groups)


def test_presence_matrix_reads_the_classes_column() -> None:
    index = pd.DataFrame({"classes": ["1 3", "", "2", "3 1 2"]})
    np.testing.assert_array_equal(presence_matrix(index, 3), [[1, 0, 1], [0, 0, 0], [0, 1, 0], [1, 1, 1]])


def write_index(layout: Layout, n: int, seed: int = 0) -> np.ndarray:
    y = multilabel(n, seed)
    rows = [
        [100 + i, f"g{i % 7}/img{i}.png", 10, 12, " ".join(str(c + 1) for c in np.nonzero(y[i])[0])] for i in range(n)
    ]
    write_csv(layout.train_index, ["image_id", "file_name", "height", "width", "classes"], rows)
    write_json(
        layout.classes_json,
        [{"index": 0, "name": "background", "coco_id": None}]
        + [{"index": c + 1, "name": f"c{c}", "coco_id": 10 * c} for c in range(5)],
    )
    return y


def test_build_folds_writes_folds_csv(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    y = write_index(layout, 120)
    out, table = build_folds(FoldsParams(k=4, seed=7), layout)
    with open(layout.folds_csv, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["image_id", "file_name", "fold"]
    assert [int(r[0]) for r in rows[1:]] == list(range(100, 220))
    assert [r[1] for r in rows[1:]] == [f"g{i % 7}/img{i}.png" for i in range(120)]
    folds = np.array([int(r[2]) for r in rows[1:]])
    np.testing.assert_array_equal(folds, assign_folds(y, 4, 7))  # what was saved is what the function gives
    pd.testing.assert_frame_equal(read_folds(layout), out)
    assert table.splitlines()[0].split() == ["fold", "images", "c0", "c1", "c2", "c3", "c4"]
    assert len(table.splitlines()) == 5
    assert sorted(p.name for p in tmp_path.joinpath("work").iterdir()) == [
        "classes.json",
        "folds.csv",
        "train_index.csv",
    ]


def test_build_folds_group_by_subfolder(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    write_index(layout, 70)
    out, _ = build_folds(FoldsParams(k=3, seed=0, group_by="subfolder"), layout)
    assert (out.assign(g=out["file_name"].str.split("/").str[0]).groupby("g")["fold"].nunique() == 1).all()
    with pytest.raises(UserError, match="7 groups cannot make k=8"):
        build_folds(FoldsParams(k=8, group_by="subfolder"), layout)


def test_build_folds_refuses_k_below_2_and_read_folds_needs_the_stage(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    write_index(layout, 10)
    with pytest.raises(UserError, match="folds.k must be at least 2"):
        build_folds(FoldsParams(k=1), layout)
    with pytest.raises(UserError, match="run the folds stage first"):
        read_folds(layout)


def test_balance_table_shows_shares() -> None:
    y = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    table = balance_table(y, np.array([0, 0, 1, 1]), ["cat", "dog"])
    assert table.splitlines()[1].split() == ["0", "2", "0.500", "0.500"]
    assert table.splitlines()[2].split() == ["1", "2", "0.500", "0.500"]


def test_classes_json_is_read_for_names(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    write_index(layout, 12)
    layout.classes_json.write_text(
        json.dumps(
            [{"index": 0, "name": "background"}]
            + [{"index": c + 1, "name": n} for c, n in enumerate(["ant", "bee", "cow", "doe", "elk"])]
        )
    )
    _, table = build_folds(FoldsParams(k=2), layout)
    assert table.splitlines()[0].split()[2:] == ["ant", "bee", "cow", "doe", "elk"]
