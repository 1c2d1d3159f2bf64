"""A binary task end to end (issue #7): image/mask folders imported, a sigmoid model, foreground-only rows.

The tiny project's canvases are written as a Weizmann-Horse-style folder pair (``horse/``, ``mask/`` with 0/255
masks: any digit is foreground), imported with ``pipeline.importers`` as class ``digit`` (255 reads as class
id 1) with 20 % held out as test truth. There is no sample submission: the writer then makes one row
per (image, non-background class), i.e. one row per image. The model has ``head: sigmoid`` (one logit, BCE).
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from e2e.conftest import TINY_MODEL, Project, project_params  # tests/ is on sys.path (tests/conftest.py)

from pipeline.config import load_model_config, load_params
from pipeline.data.folds import build_folds
from pipeline.data.masks import build_masks
from pipeline.importers.common import Split
from pipeline.importers.folders import import_folders
from pipeline.infer import run_ensemble
from pipeline.io import read_json, read_mask, write_png
from pipeline.paths import Layout
from pipeline.pseudo import make_pseudo_labels
from pipeline.submission.codec import read_submission_csv
from pipeline.threshold import THRESHOLDS
from pipeline.train import train_fold

COCO_ID = 1


def write_horse_layout(project: Project, dest: Path) -> None:
    """The tiny project's train and test canvases as a Weizmann-Horse-style folder pair: ``horse/<stem>.png`` and
    ``mask/<stem>.png`` (0/255: any digit is foreground)."""
    (dest / "horse").mkdir(parents=True)
    (dest / "mask").mkdir()
    comp, truth = Path(project.data.root), Path(project.data.truth_dir)
    for name in ("train.json", "test.json"):
        for im in read_json(comp / name)["images"]:
            stem = Path(im["file_name"]).stem
            shutil.copy(comp / "images" / im["file_name"], dest / "horse" / f"{stem}.png")
            mask = read_mask(project.layout.mask_path(im["id"]) if name == "train.json" else truth / f"{stem}.png")
            write_png(dest / "mask" / f"{stem}.png", np.where(mask > 0, 255, 0).astype(np.uint8))


@pytest.fixture(scope="module")
def binary(project: Project, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Layout]:
    root = tmp_path_factory.mktemp("binary")
    write_horse_layout(project, root / "raw")
    counts = import_folders(
        root / "raw" / "horse",
        root / "raw" / "mask",
        {COCO_ID: "digit"},
        root / "data" / "competition",
        split=Split(test_share=0.2, seed=0),
    )
    assert counts is not None
    raw = project_params(root)
    del raw["demo"]  # the competition is the imported one
    raw["pseudo"]["rounds"] = 0
    raw["infer"]["overlays"] = 0
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    model = {**TINY_MODEL, "head": "sigmoid"}
    (root / "configs" / "models").mkdir(parents=True)
    (root / "configs" / "models" / "tiny.yaml").write_text(yaml.safe_dump(model, sort_keys=False))
    return root, Layout(root)


@pytest.fixture(scope="module")
def binary_trained(binary: tuple[Path, Layout]) -> list[dict[str, Any]]:
    """Masks, folds and every fold of the sigmoid model trained on the imported competition: each fold's metrics."""
    root, layout = binary
    params = load_params(root / "params.yaml")
    assert build_masks(params.data, params.masks, layout) is not None
    build_folds(params.folds, layout)
    cfg = load_model_config(layout.model_config("tiny"))
    assert cfg.head == "sigmoid"
    threads = torch.get_num_threads()
    try:
        return [
            train_fold(cfg, "tiny", f, layout, params.data, params.train, progress=False) for f in params.train.folds
        ]
    finally:
        torch.set_num_threads(threads)


def test_binary_task_trains_scores_and_submits_foreground_rows_only(
    binary: tuple[Path, Layout], binary_trained: list[dict[str, Any]]
) -> None:
    root, layout = binary
    params = load_params(root / "params.yaml")
    classes = read_json(layout.classes_json)
    assert [(c["index"], c["name"], c["coco_id"]) for c in classes] == [(0, "background", None), (1, "digit", COCO_ID)]
    for metrics in binary_trained:
        assert 0 <= metrics["val_mIoU"] <= 1 and "val_mBIoU" in metrics
    # the checkpoint holds a one-logit network seen as two classes
    ck = torch.load(layout.checkpoint("tiny", 0), map_location="cpu", weights_only=True)
    assert ck["config"]["head"] == "sigmoid"

    params = dataclasses.replace(params, infer=dataclasses.replace(params.infer, tta="none"))
    out = root / "submissions" / "binary.csv"
    report = run_ensemble(params, layout, output=str(out))
    sub = read_submission_csv(out)
    test_ids = [str(im["id"]) for im in read_json(Path(params.data.root) / "test.json")["images"]]
    assert list(sub.columns) == ["id", "class", "predicted"]
    assert list(sub["id"]) == test_ids and set(sub["class"]) == {"digit"}  # foreground rows only, one per image
    lb = report["leaderboard"]
    assert 0 <= lb["mIoU"] <= 1 and 0 <= lb["mBIoU"] <= 1
    scores = read_json(layout.leaderboard_json)
    assert set(scores["per_class"]) == {"background", "digit"}
    assert all(v["BIoU"] is not None for v in scores["per_class"].values())


def _foreground_pixels(csv: Path) -> int:
    """Predicted foreground pixels of a binary submission: the sum of its run lengths (every second number)."""
    sub = read_submission_csv(csv)
    return sum(sum(int(v) for v in str(rle).split()[1::2]) for rle in sub["predicted"].fillna(""))


def test_binary_threshold_fitted_on_oof_matches_the_oof_probabilities_thresholded_by_hand(
    binary: tuple[Path, Layout], binary_trained: list[dict[str, Any]]
) -> None:
    """``infer.threshold: fit`` after the test above trained the folds: the report's OOF figure is the folds' own
    out-of-fold probabilities (oof.npz, written at training) thresholded at the chosen value and scored here by
    hand, and the submission's foreground grows or shrinks against the argmax's as the threshold is under or over
    0.5."""
    root, layout = binary
    params = load_params(root / "params.yaml")
    argmax_csv, fitted_csv = root / "submissions" / "argmax.csv", root / "submissions" / "fitted.csv"
    base = dataclasses.replace(params.infer, tta="none", postprocess="none")
    run_ensemble(dataclasses.replace(params, infer=base), layout, output=str(argmax_csv))
    fitted = dataclasses.replace(params, infer=dataclasses.replace(base, threshold="fit"))
    report = run_ensemble(fitted, layout, output=str(fitted_csv))
    t = report["threshold"]["value"]
    assert t is None or t in THRESHOLDS
    assert report["threshold"]["after"]["oof_in_sample"] >= report["threshold"]["before"]["oof_in_sample"]
    cm = np.zeros((2, 2), np.int64)
    for f in params.train.folds:
        with np.load(layout.oof_path("tiny", f)) as z:
            for key in z.files:
                probs = z[key].astype(np.float32)
                pred = (probs.argmax(0) if t is None else probs[1] > np.float32(t)).astype(np.int64)
                truth = read_mask(layout.mask_path(int(key))).astype(np.int64)
                keep = truth != 255
                cm += np.bincount(2 * truth[keep] + pred[keep], minlength=4).reshape(2, 2)
    iou = [cm[c, c] / (cm[c].sum() + cm[:, c].sum() - cm[c, c]) for c in (0, 1)]
    assert report["oof_mIoU"] == pytest.approx(float(np.mean(iou)), abs=2e-3)
    ledger = pd.read_csv(layout.ledger, dtype=str, keep_default_na=False)
    assert ledger["threshold"].iloc[-1] == ("" if t is None else str(t))
    before, after = _foreground_pixels(argmax_csv), _foreground_pixels(fitted_csv)
    assert after == before if t is None else (after >= before if t < 0.5 else after <= before)


def _best_threshold(probs_truth: list[tuple[np.ndarray, np.ndarray]]) -> float | None:
    """The pooled-mIoU-best threshold of THRESHOLDS over (probabilities, truth) pairs, the argmax (None) unless one
    beats it, ties to the one nearest 0.5: counted here pixel by pixel, apart from the pipeline's counts."""

    def miou(t: float | None) -> float:
        cm = np.zeros((2, 2), np.int64)
        for probs, truth in probs_truth:
            pred = (probs.argmax(0) if t is None else probs[1] > np.float32(t)).astype(np.int64)
            keep = truth != 255
            cm += np.bincount(2 * truth[keep].astype(np.int64) + pred[keep], minlength=4).reshape(2, 2)
        return float(np.mean([cm[c, c] / (cm[c].sum() + cm[:, c].sum() - cm[c, c]) for c in (0, 1)]))

    best: tuple[float | None, float] = (None, miou(None))
    for t in sorted(THRESHOLDS, key=lambda t: abs(t - 0.5)):
        if miou(t) > best[1] + 1e-12:
            best = (t, miou(t))
    return best[0]


def test_leak_free_pseudo_sets_threshold_is_fitted_without_their_fold(
    binary: tuple[Path, Layout], binary_trained: list[dict[str, Any]]
) -> None:
    """Pseudo set k labels over the threshold fitted on the other folds' OOF only (round-2 fold k's validation truth
    never shapes it), the same one found by hand from their oof.npz."""
    root, layout = binary
    params = load_params(root / "params.yaml")
    params = dataclasses.replace(
        params,
        pseudo=dataclasses.replace(params.pseudo, rounds=1, tta="none"),
        infer=dataclasses.replace(params.infer, threshold="fit", postprocess="none"),
    )
    out = make_pseudo_labels(params, layout, 1)
    per_set = out["postprocess"]["threshold_per_set"]
    oof = {}
    for f in params.train.folds:
        with np.load(layout.oof_path("tiny", f)) as z:
            oof[f] = [(z[k].astype(np.float32), read_mask(layout.mask_path(int(k)))) for k in z.files]
    for k in params.train.folds:
        others = [pair for f in params.train.folds if f != k for pair in oof[f]]
        assert per_set[str(k)] == _best_threshold(others), k
        assert read_json(layout.pseudo_files(1, k).summary_json)["threshold"] == per_set[str(k)]
