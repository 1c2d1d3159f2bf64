"""The report's figures against an independent computation: OOF mIoU from a direct np.bincount confusion matrix
over the saved OOF probabilities and train masks, the leaderboard section shown only for this competition's truth,
and the prediction grid decoded through the codec in every layout."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.config import load_params
from pipeline.data.truth import write_truth_record
from pipeline.paths import Layout
from pipeline.plan.apply import write_plan
from pipeline.report import oof_miou, prediction_grid, write_summary
from pipeline.rle import RleFormat
from pipeline.submission.format import SubmissionFormat
from pipeline.submission.writer import write_submission

REPO = Path(__file__).resolve().parents[2]
K = 4  # classes with background
IGNORE = 255


def ref_miou(pairs: list[tuple[np.ndarray, np.ndarray]], k: int) -> float:
    """Dataset mIoU of (prediction, truth) pairs: np.bincount confusion matrix, 255 truth pixels dropped."""
    p = np.concatenate([a.ravel() for a, _ in pairs]).astype(np.int64)
    t = np.concatenate([b.ravel() for _, b in pairs]).astype(np.int64)
    keep = t != IGNORE
    cm = np.bincount(t[keep] * k + p[keep], minlength=k * k).reshape(k, k)
    tp = np.diag(cm).astype(float)
    union = cm.sum(0) + cm.sum(1) - tp
    return float(np.mean(tp[union > 0] / union[union > 0]))


def make_run(tmp: Path, folds: list[int], seed: int = 0) -> tuple[Layout, dict[int, tuple[np.ndarray, np.ndarray]]]:
    """Train masks (with ignore pixels) and each fold's OOF probabilities; returns {image id: (pred, truth)}."""
    rng = np.random.default_rng(seed)
    layout = Layout(tmp)
    layout.masks_dir.mkdir(parents=True)
    pairs = {}
    image_id = 1
    for f in folds:
        probs = {}
        for _ in range(3):
            h, w = rng.integers(3, 9, 2)
            truth = rng.integers(0, K, (h, w)).astype(np.uint8)
            truth[rng.random((h, w)) < 0.1] = IGNORE
            Image.fromarray(truth).save(layout.mask_path(image_id))
            p = rng.random((K, h, w)).astype(np.float32)
            probs[str(image_id)] = p / p.sum(0)
            pairs[image_id] = (p.argmax(0), truth)
            image_id += 1
        layout.oof_path("m", f, 1).parent.mkdir(parents=True)
        np.savez(layout.oof_path("m", f, 1), **probs)
    return layout, pairs


def test_oof_miou_pools_every_fold_like_a_direct_confusion_matrix(tmp_path: Path) -> None:
    layout, pairs = make_run(tmp_path, [0, 1, 2])
    want = ref_miou(list(pairs.values()), K)
    assert 0.05 < want < 0.6
    assert oof_miou(layout, "m", [0, 1, 2], 1, K) == pytest.approx(want, abs=1e-12)
    assert oof_miou(layout, "m", [0, 1, 2, 3], 1, K) is None  # a fold without OOF: no figure rather than a wrong one


def _competition(tmp: Path, fmt: SubmissionFormat, truth_matches: bool):
    """A finished run: test images, a submission, truth (this competition's or another's), a leaderboard json."""
    rng = np.random.default_rng(3)
    root = tmp / "comp"
    (root / "images").mkdir(parents=True)
    images, preds = [], {}
    for i in range(1, 4):
        h, w = (6, 5) if fmt.layout == "dense" else (6 + i, 5)
        Image.fromarray(rng.integers(0, 255, (h, w, 3)).astype(np.uint8)).save(root / "images" / f"t{i}.png")
        images.append({"id": i, "file_name": f"t{i}.png", "height": h, "width": w})
        preds[str(i)] = rng.integers(0, K, (h, w)).astype(np.uint8)
    (root / "test.json").write_text(json.dumps({"images": images, "categories": []}))
    names = ["background", "a", "b", "c"]
    layout, pairs = make_run(tmp, [0])
    layout.classes_json.write_text(json.dumps([{"index": i, "name": n} for i, n in enumerate(names)]))
    layout.folds_csv.write_text("image_id,file_name,fold\n1,x.png,0\n")
    write_plan(layout, {"enabled": True, "folds": {"trained": [0], "of": [0], "why": "the only fold"}})
    truth = tmp / "truth"
    truth.mkdir()
    other = tmp / "other.json"
    other.write_text("{}")
    write_truth_record(truth, root / "test.json" if truth_matches else other)
    layout.metrics_dir.mkdir(exist_ok=True)
    layout.leaderboard_json.write_text(json.dumps({"mIoU": 0.5, "mBIoU": 0.25, "aAcc": 0.75, "per_class": {}}))
    sub = write_submission(preds.items(), list(enumerate(names)), tmp / "sub.csv", fmt)
    params = load_params(REPO / "params.yaml")
    params = dataclasses.replace(
        params,
        data=dataclasses.replace(params.data, root=str(root), truth_dir=str(truth), test_json="test.json"),
        train=dataclasses.replace(params.train, models=["m"], folds=[0]),
        pseudo=dataclasses.replace(params.pseudo, rounds=0),
        infer=dataclasses.replace(params.infer, output=str(sub), submission=_as_params(fmt)),
    )
    return params, layout, preds, pairs


def _as_params(fmt: SubmissionFormat) -> dict:
    d = dataclasses.asdict(fmt)
    d["dense_size"] = list(d["dense_size"])
    return d


LAYOUTS = [
    SubmissionFormat(),
    SubmissionFormat(rle=RleFormat(order="row", start_index=0, starts="relative", empty="-1"), layout="per_image"),
    SubmissionFormat(key_format="{id}_{class}", class_column=None, id_column="k", class_value="index"),
    SubmissionFormat(layout="dense", class_column=None, dense_size=(6, 5)),
    SubmissionFormat(layout="dense", class_column=None, dense_size=(3, 2)),  # shown resized to the image
]


@pytest.mark.parametrize("fmt", LAYOUTS, ids=["per_class", "per_image_rel", "key_index", "dense", "dense_small"])
def test_prediction_grid_shows_the_decoded_submission(tmp_path: Path, fmt: SubmissionFormat) -> None:
    from pipeline.plots import colorize
    from pipeline.submission.format import resize_nearest

    params, layout, preds, _ = _competition(tmp_path, fmt, truth_matches=True)
    prediction_grid(params, layout, tmp_path / "grid.png")
    grid = np.asarray(Image.open(tmp_path / "grid.png"))
    h, w = 6 + 3 if fmt.layout != "dense" else 6, 5  # the tallest tile sets the cell size
    for i in range(3):  # tile i: image | mask, cell (0, i) of a 3-column grid with 4-pixel gutters
        pred = preds[str(i + 1)]
        if fmt.layout == "dense":
            pred = resize_nearest(resize_nearest(pred, fmt.dense_size), pred.shape)  # what the CSV can say
        ph, pw = pred.shape
        x0 = i * (2 * w + 4)
        np.testing.assert_array_equal(grid[0:ph, x0 + pw : x0 + 2 * pw], colorize(pred))
        assert h >= ph


def test_the_report_shows_the_leaderboard_only_for_this_competitions_truth(tmp_path: Path, capsys) -> None:
    params, layout, _, pairs = _competition(tmp_path / "a", SubmissionFormat(), truth_matches=True)
    text = write_summary(params, layout)
    assert "## Local leaderboard" in text and "`miou` (the competition metric, params `metric.name`) **0.5000**" in text
    want = ref_miou(list(pairs.values()), K)  # the OOF table: fold 0 is the only fold
    assert f"| m | {want:.4f} |" in text
    summary = json.loads((layout.metrics_dir / "summary.json").read_text())
    assert summary["oof_mIoU"]["m"]["round1"] == pytest.approx(want, abs=1e-12)
    params, layout, _, _ = _competition(tmp_path / "b", SubmissionFormat(), truth_matches=False)
    text = write_summary(params, layout)
    assert "Local leaderboard" not in text
    assert "no truth for this competition: " in capsys.readouterr().out
