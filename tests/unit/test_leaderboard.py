"""The local leaderboard scores every layout and RLE variant, and only its own competition's truth.

The reference scorer here never goes through ``pipeline``: it reads the CSV with :mod:`csv`, decodes each cell with
the few lines of :func:`ref_decode` (written from the documented format, not from ``pipeline.rle``) and computes
mIoU from an ``np.bincount`` confusion matrix. A perfect submission scores exactly 1.0 and a noisy one equals the
reference to 1e-9, in each of 5 layouts x 16 RLE variants and the dense layout.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.config import load_params
from pipeline.data.truth import RECORD, write_truth_record
from pipeline.errors import UserError
from pipeline.leaderboard import main, score_if_truth, score_submission
from pipeline.rle import RleFormat
from pipeline.submission.format import SubmissionFormat
from pipeline.submission.writer import write_submission

REPO = Path(__file__).resolve().parents[2]
NAMES = ["background", "cat", "dog", "eel"]
SHAPES = [(5, 7), (6, 4), (3, 3), (7, 5)]  # (H, W) of the test images: not square, so order matters

VARIANTS = [
    RleFormat(order=o, start_index=i, starts=s, empty=e)  # type: ignore[arg-type]
    for o, i, s, e in itertools.product(("column", "row"), (0, 1), ("absolute", "relative"), ("", "-1"))
]
LAYOUTS = {
    "per_class": {},
    "per_class_index": {"class_value": "index"},
    "key_format": {"key_format": "{id}_{class}", "class_column": None, "id_column": "ImageId_ClassId"},
    "single_class": {"class_column": None, "id_column": "ImageId", "prediction_column": "EncodedPixels"},
    "per_image": {"layout": "per_image"},
}


# --------------------------------------------------------------------------------------------------------------
# The reference: its own decoder and an np.bincount confusion matrix


def ref_decode(text: str, shape: tuple[int, int], rle: RleFormat) -> np.ndarray:
    """A (H, W) bool mask from ``start length`` text, straight from the documented definition."""
    h, w = shape
    flat = np.zeros(h * w, bool)
    if text.strip() in ("", "-1"):
        return flat.reshape(h, w)
    values = [int(v) for v in text.split()]
    end = 0  # 0-based pixel after the previous run
    for k in range(0, len(values), 2):
        written, length = values[k], values[k + 1]
        if rle.starts == "relative" and k > 0:
            start = end + written  # background pixels since the previous run
        else:
            start = written - rle.start_index
        flat[start : start + length] = True
        end = start + length
    return flat.reshape(w, h).T if rle.order == "column" else flat.reshape(h, w)


def ref_read(csv_path: Path, fmt: SubmissionFormat, classes: list[str], shapes: dict[str, tuple[int, int]]):
    """``{image id: (H, W) class mask}`` from the CSV, by the reference decoder."""
    masks = {k: np.zeros(s, np.int64) for k, s in shapes.items()}
    index = {(str(i) if fmt.class_value == "index" else n): i for i, n in enumerate(classes) if i}
    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        text = row[fmt.prediction_column]
        if fmt.layout == "dense":
            image = row[fmt.id_column]
            masks[image] = np.array(text.split(), dtype=np.int64).reshape(shapes[image])
        elif fmt.layout == "per_image":
            image = row[fmt.id_column]
            tokens = text.split() if text.strip() != fmt.rle.empty else []
            by_class: dict[str, list[str]] = {}
            for k in range(0, len(tokens), 3):
                by_class.setdefault(tokens[k], []).extend(tokens[k + 1 : k + 3])
            for label, pairs in by_class.items():
                masks[image][ref_decode(" ".join(pairs), shapes[image], fmt.rle)] = index[label]
        else:
            if fmt.key_format is not None:
                image, label = row[fmt.id_column].rsplit("_", 1)
            elif fmt.class_column is None:
                image, label = row[fmt.id_column], next(iter(index))
            else:
                image, label = row[fmt.id_column], row[fmt.class_column]
            masks[image][ref_decode(text, shapes[image], fmt.rle)] = index[label]
    return masks


def ref_miou(preds: dict[str, np.ndarray], truths: dict[str, np.ndarray], num_classes: int) -> float:
    """Dataset mIoU: one confusion matrix over every pixel (np.bincount), classes absent from both skipped."""
    t = np.concatenate([truths[k].ravel() for k in truths]).astype(np.int64)
    p = np.concatenate([preds[k].ravel() for k in truths]).astype(np.int64)
    cm = np.bincount(t * num_classes + p, minlength=num_classes**2).reshape(num_classes, num_classes)
    tp = np.diag(cm).astype(float)
    union = cm.sum(0) + cm.sum(1) - tp
    return float(np.mean(tp[union > 0] / union[union > 0]))


# --------------------------------------------------------------------------------------------------------------
# A tiny competition with truth


def make_competition(tmp: Path, names: list[str], shapes: list[tuple[int, int]], seed: int = 0):
    """test.json, truth masks, classes.json and the truth record; returns (test_json, truth_dir, truth by id)."""
    rng = np.random.default_rng(seed)
    comp, truth_dir = tmp / "comp", tmp / "truth"
    comp.mkdir(parents=True)
    truth_dir.mkdir()
    images, truths = [], {}
    for i, (h, w) in enumerate(shapes, start=1):
        images.append({"id": i, "file_name": f"img{i}.png", "height": h, "width": w})
        mask = rng.integers(0, len(names), (h, w)).astype(np.uint8)
        mask[rng.random((h, w)) < 0.4] = 0
        Image.fromarray(mask).save(truth_dir / f"img{i}.png")
        truths[str(i)] = mask
    (comp / "test.json").write_text(json.dumps({"images": images, "categories": []}))
    (truth_dir / "classes.json").write_text(json.dumps([{"index": i, "name": n} for i, n in enumerate(names)]))
    write_truth_record(truth_dir, comp / "test.json")
    return comp / "test.json", truth_dir, truths


def noisy(truths: dict[str, np.ndarray], num_classes: int, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for k, m in truths.items():
        m = m.copy()
        flip = rng.random(m.shape) < 0.3
        m[flip] = rng.integers(0, num_classes, int(flip.sum()))
        out[k] = m
    return out


CASES = [(name, rle) for name in LAYOUTS for rle in VARIANTS]


@pytest.mark.parametrize(
    "layout, rle", CASES, ids=[f"{n}-{r.order}-{r.start_index}-{r.starts}-e{r.empty!r}" for n, r in CASES]
)
def test_every_layout_and_rle_variant_scores_like_the_reference(tmp_path: Path, layout: str, rle: RleFormat) -> None:
    fmt = SubmissionFormat(rle=rle, **LAYOUTS[layout])
    names = NAMES[:2] if fmt.single_class() else NAMES
    test_json, truth_dir, truths = make_competition(tmp_path, names, SHAPES)
    classes = list(enumerate(names))
    shapes = {k: v.shape for k, v in truths.items()}

    perfect = write_submission(truths.items(), classes, tmp_path / "perfect.csv", fmt)
    assert score_submission(perfect, truth_dir, test_json, fmt)["mIoU"] == 1.0
    np.testing.assert_array_equal(ref_read(perfect, fmt, names, shapes)["1"], truths["1"])  # the reference agrees

    preds = noisy(truths, len(names))
    sub = write_submission(preds.items(), classes, tmp_path / "noisy.csv", fmt)
    want = ref_miou(ref_read(sub, fmt, names, shapes), truths, len(names))
    assert want == pytest.approx(ref_miou(preds, truths, len(names)), abs=1e-12)  # the CSV holds the prediction
    assert 0.1 < want < 0.9
    assert score_submission(sub, truth_dir, test_json, fmt)["mIoU"] == pytest.approx(want, abs=1e-9)


def test_relative_starts_per_image_and_siim_layouts_regressions(tmp_path: Path) -> None:
    # Before the codec, per_image + relative starts decoded each triple alone (a perfect file scored 0.0832), and
    # class_column: null raised KeyError: None.
    test_json, truth_dir, truths = make_competition(tmp_path, NAMES, [(20, 30)] * 3)
    fmt = SubmissionFormat(rle=RleFormat(starts="relative"), layout="per_image")
    sub = write_submission(truths.items(), list(enumerate(NAMES)), tmp_path / "s.csv", fmt)
    assert score_submission(sub, truth_dir, test_json, fmt)["mIoU"] == 1.0


def test_dense_is_scored_at_the_image_size_and_refused_otherwise(tmp_path: Path) -> None:
    test_json, truth_dir, truths = make_competition(tmp_path, NAMES, [(6, 5)] * 3)
    fmt = SubmissionFormat(layout="dense", class_column=None, dense_size=(6, 5))
    classes = list(enumerate(NAMES))
    assert (
        score_submission(write_submission(truths.items(), classes, tmp_path / "p.csv", fmt), truth_dir, test_json, fmt)[
            "mIoU"
        ]
        == 1.0
    )
    preds = noisy(truths, 4)
    sub = write_submission(preds.items(), classes, tmp_path / "n.csv", fmt)
    want = ref_miou(ref_read(sub, fmt, NAMES, {k: (6, 5) for k in truths}), truths, 4)
    assert want == pytest.approx(ref_miou(preds, truths, 4), abs=1e-12)
    assert score_submission(sub, truth_dir, test_json, fmt)["mIoU"] == pytest.approx(want, abs=1e-9)

    other = dataclasses.replace(fmt, dense_size=(3, 3))
    sub = write_submission(truths.items(), classes, tmp_path / "small.csv", other)
    with pytest.raises(UserError, match=r"dense_size 3x3 but image '1' is 6x5; a resized prediction cannot be scored"):
        score_submission(sub, truth_dir, test_json, other)


def test_overlapping_per_class_rows_paint_the_larger_class_index(tmp_path: Path) -> None:
    test_json, truth_dir, _ = make_competition(tmp_path, NAMES, [(2, 2)])
    (tmp_path / "s.csv").write_text("id,class,predicted\n1,dog,1 4\n1,cat,1 2\n1,eel,\n")
    truth = np.array([[2, 2], [2, 2]], np.uint8)  # all dog: the cat rows lose where they overlap
    Image.fromarray(truth).save(truth_dir / "img1.png")
    assert score_submission(tmp_path / "s.csv", truth_dir, test_json, SubmissionFormat())["mIoU"] == 1.0


# --------------------------------------------------------------------------------------------------------------
# Only the competition's own truth


def _params(tmp: Path, root: Path, truth: Path):
    params = load_params(REPO / "params.yaml")
    data = dataclasses.replace(params.data, root=str(root), truth_dir=str(truth), test_json="test.json")
    return dataclasses.replace(params, data=data)


def test_score_if_truth_scores_the_matching_truth_and_skips_any_other(tmp_path: Path, capsys) -> None:
    test_json, truth_dir, truths = make_competition(tmp_path / "a", NAMES, SHAPES)
    fmt = SubmissionFormat()
    sub = write_submission(truths.items(), list(enumerate(NAMES)), tmp_path / "s.csv", fmt)
    params = _params(tmp_path, test_json.parent, truth_dir)
    assert score_if_truth(sub, params, fmt)["mIoU"] == 1.0
    assert "local leaderboard: miou 1.00000, mIoU 1.00000" in capsys.readouterr().out

    # another competition (the demo's truth_dir default with another data.root): skipped with one line, no error
    other_json, _, _ = make_competition(tmp_path / "b", NAMES, SHAPES[:2], seed=5)
    assert score_if_truth(sub, _params(tmp_path, other_json.parent, truth_dir), fmt) is None
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith(
        f"no truth for this competition: {truth_dir / RECORD} is for a test.json"
    )
    # no truth folder at all, and a truth folder without a record
    assert score_if_truth(sub, _params(tmp_path, test_json.parent, tmp_path / "nope"), fmt) is None
    assert "nope does not exist" in capsys.readouterr().out
    (truth_dir / RECORD).unlink()
    assert score_if_truth(sub, params, fmt) is None
    assert f"has no {RECORD}" in capsys.readouterr().out
    with pytest.raises(UserError, match="no truth for this competition"):  # asked for explicitly: an error
        score_submission(sub, truth_dir, test_json, fmt)


def test_the_cli_checks_an_explicit_truth(tmp_path: Path) -> None:
    test_json, truth_dir, truths = make_competition(tmp_path / "a", NAMES, SHAPES)
    other_json, _, _ = make_competition(tmp_path / "b", NAMES, SHAPES[:2], seed=5)
    sub = write_submission(truths.items(), list(enumerate(NAMES)), tmp_path / "s.csv", SubmissionFormat())
    args = [str(sub), "--params", str(REPO / "params.yaml"), "--truth", str(truth_dir)]
    assert main([*args, "--test-json", str(test_json), "--out", str(tmp_path / "lb.json")]) == 0
    assert json.loads((tmp_path / "lb.json").read_text())["mIoU"] == 1.0
    with pytest.raises(UserError, match=r"no truth for this competition: .*competition\.json is for a test\.json"):
        main([*args, "--test-json", str(other_json)])


def ref_image_scores(preds: dict[str, np.ndarray], truths: dict[str, np.ndarray], num_classes: int) -> dict:
    """Per-image metrics straight from their definitions, one boolean mask per (image, class)."""
    image_miou, dice = [], []
    for k, t in truths.items():
        p = preds[k]
        ious = []
        for c in range(num_classes):
            inter, union = np.sum((t == c) & (p == c)), np.sum((t == c) | (p == c))
            if union:
                ious.append(inter / union)
            if c > 0:  # Dice over foreground (image, class) pairs, empty vs empty = 1
                size = np.sum(t == c) + np.sum(p == c)
                dice.append(1.0 if size == 0 else 2 * inter / size)
        image_miou.append(np.mean(ious))
    return {"image_miou": float(np.mean(image_miou)), "image_dice": float(np.mean(dice))}


@pytest.mark.parametrize("metric", ["image_miou", "image_dice"])
def test_the_leaderboard_scores_the_competition_metric_like_the_reference(tmp_path: Path, metric: str) -> None:
    fmt = SubmissionFormat()
    test_json, truth_dir, truths = make_competition(tmp_path, NAMES, SHAPES)
    preds = noisy(truths, len(NAMES))
    preds["3"][:] = 0  # an image predicted empty: its absent classes count as empty vs empty (Dice 1) or not at all
    sub = write_submission(preds.items(), list(enumerate(NAMES)), tmp_path / "noisy.csv", fmt)
    lb = score_submission(sub, truth_dir, test_json, fmt, metric)
    assert lb["metric"] == metric
    assert lb["score"] == pytest.approx(ref_image_scores(preds, truths, len(NAMES))[metric], abs=1e-9)
    assert lb["mIoU"] == pytest.approx(ref_miou(preds, truths, len(NAMES)), abs=1e-9)
