"""Plots and tables (pipeline.plots, pipeline.tables): tables (console, CSV, markdown), confusion-matrix and example
PNGs, palette and mask colouring."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.errors import UserError
from pipeline.metrics import summarize
from pipeline.plots import (
    ERROR_COLOR,
    IGNORE_COLOR,
    colorize,
    error_map,
    palette,
    plot_confusion_matrix,
    plot_examples,
    rank_images,
)
from pipeline.tables import format_markdown, format_table, table_rows, write_tables

# 3 classes: IoU [1/2, 2/3, NaN] as in the metrics module's worked example, plus an absent class
MATRIX = np.array([[2, 1, 0], [1, 4, 0], [0, 0, 0]])
NAMES = ["background", "road", "car"]


def summary(boundary: bool = True) -> dict:
    return summarize(MATRIX, NAMES, boundary=np.array([0.25, 0.125, np.nan]) if boundary else None)


# --------------------------------------------------------------------------------------------------------------------
# palette and colouring


def test_palette_is_fixed_distinct_and_never_grey() -> None:
    full = palette(256)
    assert full.shape == (256, 3) and full.dtype == np.uint8
    np.testing.assert_array_equal(palette(5), full[:5])  # a class keeps its colour whatever n is
    assert len(np.unique(full, axis=0)) == 256
    assert full[0].tolist() == [0, 0, 0]
    grey = (full[:, 0] == full[:, 1]) & (full[:, 1] == full[:, 2])
    assert grey.sum() == 1  # only the black of class 0
    assert not (full == IGNORE_COLOR).all(axis=1).any()
    with pytest.raises(UserError, match="256"):
        palette(257)


def test_colorize_maps_classes_and_greys_ignore() -> None:
    mask = np.array([[0, 1], [255, 7]], dtype=np.uint8)
    rgb = colorize(mask)
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0].tolist() == palette()[0].tolist()
    assert rgb[0, 1].tolist() == palette()[1].tolist()
    assert rgb[1, 1].tolist() == palette()[7].tolist()
    assert rgb[1, 0].tolist() == list(IGNORE_COLOR)
    with pytest.raises(UserError, match="no palette colour"):
        colorize(np.array([[300]]))
    with pytest.raises(UserError, match=r"\(H, W\) integer"):
        colorize(np.zeros((2, 2), np.float32))


def test_error_map() -> None:
    target = np.array([[0, 1], [255, 2]])
    pred = np.array([[0, 2], [1, 2]])
    err = error_map(pred, target)
    assert err[0, 0].tolist() == [0, 0, 0]
    assert err[0, 1].tolist() == list(ERROR_COLOR)
    assert err[1, 0].tolist() == list(IGNORE_COLOR)  # wrong, but ignored
    assert err[1, 1].tolist() == [0, 0, 0]


# --------------------------------------------------------------------------------------------------------------------
# tables


def test_table_rows_are_percentages_with_nan() -> None:
    header, rows = table_rows(summary())
    assert header == ["Class", "IoU", "Acc", "Dice", "BIoU"]
    assert rows == [
        ["background", "50.00", "66.67", "66.67", "25.00"],
        ["road", "66.67", "80.00", "80.00", "12.50"],
        ["car", "nan", "nan", "nan", "nan"],
    ]
    header, rows = table_rows(summary(boundary=False))
    assert header == ["Class", "IoU", "Acc", "Dice"]


def test_console_table() -> None:
    text = format_table(summary())
    lines = text.splitlines()
    assert lines[0] == "per-class results:"
    assert "|   Class    |  IoU  |  Acc  | Dice  | BIoU  |" in lines
    assert "| background | 50.00 | 66.67 | 66.67 | 25.00 |" in lines
    assert "|    car     |  nan  |  nan  |  nan  |  nan  |" in lines
    assert "summary (dataset):" in lines
    # means skip the NaN class: mIoU = (50 + 66.67) / 2, aAcc = 6 / 8
    assert "| 75.00 | 58.33 | 73.33 | 73.33 | 18.75 |" in lines
    widths = {len(line) for line in lines[1:6]}
    assert len(widths) == 1  # every row of the per-class table lines up


def test_write_tables_csv_and_markdown(tmp_path: Path) -> None:
    csv_path, md_path = tmp_path / "out" / "per_class.csv", tmp_path / "out" / "metrics.md"
    write_tables(summary(), csv_path, md_path)
    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["Class"] for r in rows] == NAMES
    assert rows[1] == {"Class": "road", "IoU": "66.67", "Acc": "80.00", "Dice": "80.00", "BIoU": "12.50"}
    md = md_path.read_text(encoding="utf-8")
    assert md == format_markdown(summary())
    assert "| Class | IoU | Acc | Dice | BIoU |" in md
    assert "| car | nan | nan | nan | nan |" in md
    assert "| aAcc | mIoU | mAcc | mDice | mBIoU |" in md
    assert not list(tmp_path.glob("out/.*.tmp"))  # atomic writes leave no temp files behind


# --------------------------------------------------------------------------------------------------------------------
# plots


def open_png(path: Path) -> Image.Image:
    with Image.open(path) as im:
        im.load()
        assert im.format == "PNG"
        return im


def test_confusion_matrix_png(tmp_path: Path) -> None:
    dest = tmp_path / "cm.png"
    plot_confusion_matrix(MATRIX, NAMES, dest)
    im = open_png(dest)
    assert 400 <= im.width <= 1000 and 400 <= im.height <= 1000
    rgb = np.asarray(im.convert("RGB"))
    assert rgb.std() > 10  # not a blank canvas
    with pytest.raises(UserError, match="class names"):
        plot_confusion_matrix(MATRIX, NAMES[:2], dest)


def test_confusion_matrix_png_grows_with_classes(tmp_path: Path) -> None:
    small, big = tmp_path / "small.png", tmp_path / "big.png"
    plot_confusion_matrix(MATRIX, NAMES, small)
    c = 40
    plot_confusion_matrix(np.random.default_rng(0).integers(0, 9, (c, c)), [f"class {i}" for i in range(c)], big)
    assert open_png(big).width > open_png(small).width


def test_rank_images() -> None:
    scores = [0.5, np.nan, 0.1, 0.9, 0.3, 0.9]
    assert rank_images(scores, 2) == ([2, 4], [5, 3])
    assert rank_images(scores, 4) == ([2, 4, 0, 3], [5])  # never the same image twice
    assert rank_images([np.nan], 3) == ([], [])


class Recording(Sequence):
    """A sequence that remembers which items were read (to check that only the chosen images are loaded)."""

    def __init__(self, items: list[np.ndarray]) -> None:
        self.items, self.read = items, set()

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):  # type: ignore[no-untyped-def]
        self.read.add(i)
        return self.items[i]


def example_data(n_images: int = 6) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(0)
    images, targets, preds = [], [], []
    for i in range(n_images):
        t = np.kron(rng.integers(0, 3, (4, 5)), np.ones((8, 8), np.int64))  # (32, 40)
        p = t.copy()
        p[: 4 * i] = (p[: 4 * i] + 1) % 3  # image i has 4 * i wrong rows: image 0 is perfect, the last is worst
        t[0, 0] = 255
        images.append(rng.integers(0, 255, (32, 40, 3), dtype=np.uint8))
        targets.append(t)
        preds.append(p)
    return images, targets, preds


def test_examples_png_picks_worst_and_best(tmp_path: Path) -> None:
    images, targets, preds = example_data()
    dest = tmp_path / "examples.png"
    worst, best = plot_examples(dest, images, targets, preds, num_classes=3, n=2)
    assert worst == [5, 4] and best == [0, 1]
    im = open_png(dest)
    assert 800 <= im.width <= 1200  # 4 panels of 2.6 in at 100 dpi
    assert 900 <= im.height <= 1200  # 4 rows


def test_examples_with_known_scores_read_only_the_chosen_images(tmp_path: Path) -> None:
    images, targets, preds = (Recording(x) for x in example_data())
    scores = [0.9, 0.2, 0.5, 0.7, 0.1, 0.95]
    worst, best = plot_examples(tmp_path / "ex.png", images, targets, preds, 3, n=1, scores=scores)
    assert (worst, best) == ([4], [5])
    assert images.read == targets.read == preds.read == {4, 5}
    assert open_png(tmp_path / "ex.png").height < 700  # 2 rows


def test_examples_input_errors(tmp_path: Path) -> None:
    images, targets, preds = example_data(2)
    with pytest.raises(UserError, match="2 images, 2 targets and 1 predictions"):
        plot_examples(tmp_path / "x.png", images, targets, preds[:1], 3)
    with pytest.raises(UserError, match="no image has a score"):
        plot_examples(tmp_path / "x.png", images, targets, preds, 3, scores=[np.nan, np.nan])
    assert not (tmp_path / "x.png").exists()
