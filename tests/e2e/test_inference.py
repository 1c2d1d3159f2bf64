"""Inference end to end on the tiny project trained on both folds: the ensemble CLI, its submission, report, ledger
and local leaderboard; ``--tta none`` with ``--images``; pseudo-labels (leak-free and full) and round-2 pairs."""

from __future__ import annotations

import dataclasses
import functools
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import reference_postprocess

from pipeline import infer, rle
from pipeline import postprocess as pp
from pipeline.ablation import ablation_markdown, best_fold, run_ablation
from pipeline.config import ModelConfig, from_dict, read_yaml
from pipeline.data.dataset import normalize
from pipeline.io import read_image, read_json, read_mask
from pipeline.models.registry import build_model
from pipeline.paths import PseudoSetFiles
from pipeline.pseudo import make_pseudo_labels
from pipeline.submission.codec import read_submission_csv
from pipeline.submission.format import PER_CLASS, shapes_from_coco
from pipeline.submission.ledger import LEDGER_COLUMNS
from pipeline.submission.validate import validate_submission
from pipeline.train import pseudo_pairs, train_round

if TYPE_CHECKING:
    from e2e.conftest import Project  # tests/ is on sys.path (tests/conftest.py); annotations only

pytestmark = pytest.mark.slow

NUM_CLASSES = 11


@functools.cache
def fold_model(checkpoint: Path) -> torch.nn.Module:
    ck = torch.load(checkpoint, map_location="cpu", weights_only=True)
    model = build_model(from_dict(ModelConfig, ck["config"], "checkpoint"), NUM_CLASSES)
    model.load_state_dict(ck["ema"])
    return model.eval()


def fold_probs(p: Project, fold: int, image: Path) -> np.ndarray:
    """(C, H, W) softmax of fold ``fold``'s best checkpoint (EMA weights) on one image, computed without the
    inference code: the reference the ensemble and pseudo-labels are checked against."""
    with torch.no_grad():
        x = normalize(torch.from_numpy(read_image(image))[None])
        return fold_model(p.layout.checkpoint(p.model, fold))(x).softmax(1)[0].numpy()


def test_ensemble_cli_writes_a_valid_submission_report_and_ledger_row(trained: Project) -> None:
    p = trained
    ledger_rows = len(pd.read_csv(p.layout.ledger)) if p.layout.ledger.is_file() else 0
    help_run = subprocess.Popen(
        [sys.executable, "-m", "pipeline.infer", "--help"],
        cwd=p.root,
        env=p.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # runs beside the ensemble run
    run = subprocess.run(
        [sys.executable, "-m", "pipeline.infer", "--ensemble"],
        cwd=p.root,
        env=p.env(),
        capture_output=True,
        text=True,
        timeout=400,
    )
    help_out, _ = help_run.communicate(timeout=120)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    # the submission matches the sample row for row and decodes inside every image
    comp = Path(p.data.root)
    sub = p.root / "submissions" / "submission.csv"
    classes = read_json(p.layout.classes_json)
    shapes = shapes_from_coco(comp / "test.json")
    assert validate_submission(sub, comp / "sample_submission.csv", shapes, PER_CLASS, classes) == []
    assert len(read_submission_csv(sub)) == len(shapes) * (NUM_CLASSES - 1)

    # metrics/infer.json: every TTA candidate tried on OOF with its score, the chosen set, OOF and LB scores
    report = read_json(p.layout.infer_json)
    entry = report["per_model"][p.model]
    candidates = entry["tta_candidates"]
    assert [c.get("added") for c in candidates] == [None, "hflip", "scale 1.25"]
    assert all(0 <= c["oof_mIoU"] <= 1 and isinstance(c["kept"], bool) for c in candidates)
    kept = [c for c in candidates if c["kept"]]
    assert entry["tta"] == kept[-1]["tta"]  # the greedy search ends on its last kept step
    best_kept = max(c["oof_mIoU"] for c in kept)
    assert all(c["oof_mIoU"] <= best_kept for c in candidates)
    # entry's OOF mIoU scores float16 copies of the chosen set's probabilities: near ties may flip
    assert entry["oof_mIoU"] == pytest.approx(kept[-1]["oof_mIoU"], abs=5e-3)
    assert report["weights"] == {p.model: 1.0}
    before = report["postprocess"]["before"]  # the ensemble's argmax; the top-level figures add the rules
    assert before["oof_mIoU"] == pytest.approx(entry["oof_mIoU"], abs=1e-9)  # one model config: no weighting
    assert report["oof_in_sample"] >= before["oof_in_sample"]  # no rule is a candidate: never worse where fitted
    if not report["postprocess"]["rules"]:
        assert report["oof_in_sample"] == pytest.approx(before["oof_in_sample"], abs=1e-12)
    assert report["test_images"] == len(shapes)
    lb = read_json(p.layout.leaderboard_json)
    assert 0 <= lb["mIoU"] <= 1 and report["leaderboard"]["mIoU"] == lb["mIoU"]

    # one ledger row for the run, with its CV and local-LB scores
    ledger = pd.read_csv(p.layout.ledger, dtype=str, keep_default_na=False)
    assert list(ledger.columns) == LEDGER_COLUMNS and len(ledger) == ledger_rows + 1
    row = ledger.iloc[-1]
    assert row["file"] == "submissions/submission.csv" and row["models"] == p.model
    assert row["members"] == f"{p.model}/fold0/r1 {p.model}/fold1/r1"
    assert float(row["oof_miou"]) == pytest.approx(report["oof_mIoU"])
    # the competition metric's figures, labelled: in-sample (mIoU by default: the figure above) and cross-fitted
    assert report["metric"] == row["metric"] == "miou" and report["fallback"] == [] and row["fallback"] == ""
    assert report["oof_in_sample"] == pytest.approx(report["oof_mIoU"], abs=1e-12)
    assert float(row["oof_in_sample"]) == pytest.approx(report["oof_in_sample"])
    assert float(row["oof_cross_fitted"]) == pytest.approx(report["oof_cross_fitted"])
    assert set(report["cross_fitted_choices"]) == {"0", "1"}
    if all(c["tta"][p.model] == entry["tta"] for c in report["cross_fitted_choices"].values()):
        # the same ensemble on every fold: the ensemble's own figures agree (the rules, fitted per fold, may not)
        assert before["oof_cross_fitted"] == pytest.approx(before["oof_in_sample"], abs=1e-12)
    assert float(row["lb_miou"]) == pytest.approx(lb["mIoU"])
    assert row["tta"] == f"{p.model}: {entry['tta']}" and row["public_score"] == ""
    first = [Path(im["file_name"]).stem for im in read_json(comp / "test.json")["images"][: p.params.infer.overlays]]
    assert all((p.layout.reports_dir / "overlays" / f"{stem}.png").is_file() for stem in first)

    assert help_run.returncode == 0, help_out
    assert "--ensemble" in help_out and "ledger" in help_out


def test_tta_none_on_a_folder_of_images(trained: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = trained
    images = sorted((Path(p.data.root) / "images").glob("test_*.png"))[:3]
    folder = tmp_path / "new"
    for i, src in enumerate(images):  # one in a sub-folder: names are relative to the folder
        dest = folder / ("sub" if i == 0 else "") / src.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dest)
    out, report_path = tmp_path / "new.csv", tmp_path / "report.json"
    monkeypatch.chdir(p.root)  # the CLI's layout is the working directory's
    params = p.write_params("params_shapes.yaml", infer={"postprocess": "shapes"})  # keep-largest, filling too
    argv = ["--ensemble", "--params", str(params), "--tta", "none", "--images", str(folder), "--output", str(out)]
    assert infer.main([*argv, "--report", str(report_path)]) == 0

    report = read_json(report_path)
    assert report["per_model"][p.model]["tta"] == "none" and "tta_candidates" not in report["per_model"][p.model]
    assert "leaderboard" not in report  # no truth for new images
    assert report["postprocess"]["grid"]["largest"] and report["postprocess"]["grid"]["fill"]
    # no sample: one row per (image, foreground class), images numbered 1..N in sorted path order
    classes = read_json(p.layout.classes_json)
    shapes = {str(i): (64, 84) for i in (1, 2, 3)}
    assert validate_submission(out, None, shapes, PER_CLASS, classes) == []
    sub = read_submission_csv(out)
    assert list(sub.columns) == ["id", "class", "predicted"] and len(sub) == 3 * (NUM_CLASSES - 1)
    assert sorted(sub.groupby("id").size().tolist()) == [NUM_CLASSES - 1] * 3

    # the predictions are the argmax of the two fold models' mean probabilities (no TTA), with the rules fitted on OOF
    runs = dict(zip(zip(sub["id"], sub["class"]), sub["predicted"]))  # (id, class) -> RLE text
    order = sorted(folder.rglob("*.png"))  # test_set's order: sorted paths
    for image_id, path in enumerate(order, start=1):
        probs = np.mean([fold_probs(p, f, path) for f in p.params.train.folds], axis=0)
        expected = reference_postprocess(probs.argmax(0), report["postprocess"]["rules"], classes)
        got = np.zeros((64, 84), np.int64)
        for c in classes[1:]:
            got[rle.decode(str(runs[(str(image_id), c["name"])]), (64, 84), PER_CLASS.rle)] = c["index"]
        assert (got != expected).mean() < 1e-3, f"{path.name}: submission differs from the fold models' mean"
    ledger = pd.read_csv(p.layout.ledger, dtype=str, keep_default_na=False)
    assert ledger["file"].iloc[-1] == str(out) and ledger["tta"].iloc[-1] == f"{p.model}: none"


def test_sliding_window_on_images_larger_and_smaller_than_the_tile(
    trained: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``infer.sliding``: each image goes through 64x84 tiles (the config's input size) blended back at its own size;
    the submission is the argmax of the same sliding window over the fold models' mean probabilities."""
    from pipeline.ensemble.fit import EPS
    from pipeline.io import write_png
    from pipeline.sliding import SlidingWindow

    p = trained
    canvases = [read_image(f) for f in sorted((Path(p.data.root) / "images").glob("test_*.png"))[:4]]
    mosaic = np.concatenate([np.concatenate(canvases[:2], 1), np.concatenate(canvases[2:], 1)], 0)  # 128x168
    folder = tmp_path / "large"
    shapes = {"a.png": (128, 168), "b.png": (100, 130), "c.png": (40, 50)}  # c is smaller than a tile
    for name, (h, w) in shapes.items():
        write_png(folder / name, np.ascontiguousarray(mosaic[:h, :w]))
    params = p.write_params("params_sliding.yaml", infer={"sliding": True, "tile_overlap": 0.25, "tile_batch": 5})
    out, report_path = tmp_path / "large.csv", tmp_path / "report.json"
    monkeypatch.chdir(p.root)
    argv = ["--ensemble", "--params", str(params), "--tta", "none", "--images", str(folder), "--output", str(out)]
    assert infer.main([*argv, "--report", str(report_path)]) == 0

    report = read_json(report_path)
    assert report["sliding"] == {"tile": [64, 84], "overlap": 0.25, "blend": "gaussian"}
    classes = read_json(p.layout.classes_json)
    ids = {str(i): shapes[name] for i, name in enumerate(sorted(shapes), start=1)}
    assert validate_submission(out, None, ids, PER_CLASS, classes) == []  # every mask at its original size
    sub = read_submission_csv(out)
    runs = dict(zip(zip(sub["id"], sub["class"]), sub["predicted"]))

    models = [fold_model(p.layout.checkpoint(p.model, f)) for f in p.params.train.folds]

    class MeanProbs(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.log(torch.stack([m(x).softmax(1) for m in models]).mean(0) + EPS)

    window = SlidingWindow(MeanProbs(), (64, 84), 0.25, "gaussian", tile_batch=5)
    for image_id, (name, (h, w)) in enumerate(sorted(shapes.items()), start=1):
        with torch.no_grad():
            expected = window(normalize(torch.from_numpy(read_image(folder / name))[None]))[0].argmax(0).numpy()
        expected = reference_postprocess(expected, report["postprocess"]["rules"], classes)
        got = np.zeros((h, w), np.int64)
        for c in classes[1:]:
            got[rle.decode(str(runs[(str(image_id), c["name"])]), (h, w), PER_CLASS.rle)] = c["index"]
        assert (got != expected).mean() < 1e-3, f"{name}: submission differs from the sliding-window reference"


@pytest.fixture(scope="module")
def pseudo(trained: Project) -> dict[str, Any]:
    """Pseudo-labels of round 1, leak-free (one set per fold) and full (one shared set).

    The threshold is the median top-class probability of the barely trained fold models on a test image, so that
    some pixels fall on each side of it.
    """
    p = trained
    image = Path(p.data.root) / "images" / read_json(Path(p.data.root) / "test.json")["images"][0]["file_name"]
    threshold = float(np.median([fold_probs(p, f, image).max(0) for f in p.params.train.folds]))
    leak_free = dataclasses.replace(p.params, pseudo=dataclasses.replace(p.params.pseudo, threshold=threshold))
    full = dataclasses.replace(leak_free, pseudo=dataclasses.replace(leak_free.pseudo, source="full"))
    return {
        "leak_free": make_pseudo_labels(leak_free, p.layout),
        "full": make_pseudo_labels(full, p.layout),
        "leak_free_params": leak_free,
        "full_params": full,
    }


def other_fold_rules(p: Project, fold: int) -> dict[int, pp.Rule]:
    """The post-processing search run on fold ``fold``'s validation images alone, their argmax predicted here by that
    fold's model (the reference, not the inference code), of the probabilities rounded to float16 as the OOF planner
    keeps them (a tiny model's near-ties would otherwise flip pixels)."""
    folds = pd.read_csv(p.layout.folds_csv)
    preds, truths = [], []
    for row in folds[folds["fold"] == fold].itertuples():
        probs = fold_probs(p, fold, Path(p.data.root) / "images" / row.file_name).astype(np.float16)
        preds.append(probs.argmax(0).astype(np.uint8))
        truths.append(read_mask(p.layout.mask_path(int(row.image_id))))
    grid = pp.Grid.for_pixels(int(np.median([t.size for t in truths])), shapes=False)  # infer.postprocess: auto
    stack = pp.Stack([pp.image_stats(a, t, NUM_CLASSES, grid.areas) for a, t in zip(preds, truths)], grid)
    return pp.fit(stack, grid, p.params.metric.name)[0]


def test_leak_free_pseudo_labels_one_set_per_fold(trained: Project, pseudo: dict[str, Any]) -> None:
    p, threshold = trained, pseudo["leak_free_params"].pseudo.threshold
    classes = read_json(p.layout.classes_json)
    assert set(pseudo["leak_free"]["sets"]) == {"0", "1"}
    tests = read_json(Path(p.data.root) / "test.json")["images"]
    masks = {}
    for fold in p.params.train.folds:
        d = p.layout.pseudo_dir(1, fold)
        index = pd.read_csv(d / "index.csv")
        assert len(index) == len(tests)  # min_confident 0 keeps every image
        summary = read_json(d / "summary.json")
        assert summary["set"] == str(fold) and summary["folds"] == [fold] and summary["kept_images"] == len(tests)
        # set k's post-processing is fitted on the other fold's OOF alone (fold k's truth never shapes it)
        assert summary["postprocess"] == pp.describe(other_fold_rules(p, 1 - fold), classes)
        for row in index.itertuples():
            mask = read_mask(d / row.mask)
            # set k comes from fold k's model alone: 255 exactly where its top probability is under the threshold,
            # except what the rules change, labelled as they say
            probs = fold_probs(p, fold, Path(p.data.root) / "images" / row.file_name)
            top, label = probs.max(0), probs.argmax(0)
            post = reference_postprocess(label, summary["postprocess"], classes)
            changed = post != label
            assert np.array_equal(mask[changed], post[changed])
            clear = (np.abs(top - threshold) > 1e-4) & ~changed  # leave out pixels whose side is a rounding
            assert np.array_equal((mask == 255)[clear], (top < threshold)[clear])
            sure = clear & (top >= threshold)
            assert np.array_equal(mask[sure], label[sure])
            assert row.confident == pytest.approx((mask != 255).mean(), abs=2e-4)
            masks[(fold, row.image_id)] = mask
        assert 0 < np.mean([(m == 255).mean() for (f, _), m in masks.items() if f == fold]) < 1, "threshold unused"
    assert any(not np.array_equal(masks[(0, i)], masks[(1, i)]) for i in {k[1] for k in masks}), "sets identical"


def test_full_pseudo_labels_and_round2_pairs(trained: Project, pseudo: dict[str, Any]) -> None:
    p = trained
    assert set(pseudo["full"]["sets"]) == {"all"}
    d_all = p.layout.pseudo_dir(1, "all")
    summary = read_json(d_all / "summary.json")
    assert summary["set"] == "all" and summary["folds"] == [0, 1]
    assert len(pd.read_csv(d_all / "index.csv")) == summary["kept_images"] == summary["test_images"]

    images_root = (Path(p.data.root) / "images").resolve()
    for fold in p.params.train.folds:
        pairs = pseudo_pairs(pseudo["leak_free_params"], p.layout, fold)  # leak_free: fold k's own set only
        assert len(pairs) == summary["test_images"]
        assert {m.parent for _, m in pairs} == {p.layout.pseudo_dir(1, fold)}
        assert all(m.is_file() and i.parent == images_root and i.is_file() for i, m in pairs)
        shared = pseudo_pairs(pseudo["full_params"], p.layout, fold)
        assert {m.parent for _, m in shared} == {d_all}


def test_round2_trains_on_pseudo_labels_with_its_own_epochs_lr_and_init(
    trained: Project, pseudo: dict[str, Any]
) -> None:
    p, fold = trained, 0
    params = pseudo["leak_free_params"]
    params = dataclasses.replace(
        params, pseudo=dataclasses.replace(params.pseudo, epochs=1, lr_scale=0.5, init_from_previous=True, share=0.5)
    )
    metrics = train_round(p.cfg, p.model, fold, p.layout, params, round_=2)
    assert metrics is not None and metrics["epochs"] == 1  # pseudo.epochs, not the recipe's
    saved = read_yaml(p.layout.model_dir(p.model, fold, 2) / "config.yaml")
    assert saved["recipe"]["epochs"] == 1 and saved["recipe"]["lr"] == pytest.approx(p.cfg.recipe.lr * 0.5)
    assert saved["recipe"]["pseudo_share"] == 0.5  # half of each epoch's samples from the pseudo-labels (sampler)
    # the pseudo-labelled test images join the training side: more steps per epoch than round 1
    r1, r2 = (pd.read_csv(p.layout.curve_path(p.model, fold, r)) for r in (1, 2))
    assert len(pseudo_pairs(params, p.layout, fold)) > 0 and r2["step"].iloc[0] > r1["step"].iloc[0]
    # no round 3 when pseudo.rounds is 1: the stage leaves a note instead of a model
    assert train_round(p.cfg, p.model, fold, p.layout, params, round_=3) is None
    assert (p.layout.model_dir(p.model, fold, 3) / "skipped.txt").is_file()
    assert pd.read_csv(p.layout.curve_path(p.model, fold, 3)).empty  # the stage's plots output exists, empty


def test_a_second_pseudo_round_labels_with_round2_models_and_trains_round3(
    trained: Project, pseudo: dict[str, Any]
) -> None:
    p = trained
    params = pseudo["leak_free_params"]
    one = dataclasses.replace(params, pseudo=dataclasses.replace(params.pseudo, epochs=1, init_from_previous=True))
    # with one pseudo round, the second pseudo stage writes empty sets and says so
    skipped = make_pseudo_labels(one, p.layout, round_=2)
    assert skipped["disabled"] and pd.read_csv(p.layout.pseudo_dir(2, 0) / "index.csv").empty

    two = dataclasses.replace(one, pseudo=dataclasses.replace(one.pseudo, rounds=2))
    for fold in p.params.train.folds:
        assert train_round(p.cfg, p.model, fold, p.layout, two, round_=2) is not None
    made = make_pseudo_labels(two, p.layout, round_=2)
    assert made["round"] == 2 and set(made["sets"]) == {"0", "1"} and "disabled" not in made
    pairs = pseudo_pairs(two, p.layout, 0, round_=2)
    assert pairs and {m.parent for _, m in pairs} == {p.layout.pseudo_dir(2, 0)}
    metrics = train_round(p.cfg, p.model, 0, p.layout, two, round_=3)
    assert metrics is not None and metrics["epochs"] == 1
    r3 = pd.read_csv(p.layout.curve_path(p.model, 0, 3))
    assert r3["epoch"].tolist() == [1]
    assert not (p.layout.model_dir(p.model, 0, 3) / "skipped.txt").exists()


def test_ablation_scores_each_step_as_a_real_submission(trained: Project) -> None:
    p = trained
    params = dataclasses.replace(p.params, pseudo=dataclasses.replace(p.params.pseudo, rounds=0))
    rows = run_ablation(params, p.layout, extra_models=["tiny_second"])
    assert [r["row"] for r in rows] == ["single", "folds", "tta", "multi", "postprocess"]
    # the last row is the multi-model one with its rules: never worse on the OOF images they are fitted on
    assert rows[4]["weights"] == rows[3]["weights"] and rows[4]["oof_in_sample"] >= rows[3]["oof_in_sample"]
    # the second model was trained here (round 1, both folds) for the multi-model row
    assert all(p.layout.oof_path("tiny_second", f).is_file() for f in params.train.folds)
    fold, val = best_fold(p.layout, p.model, params.train.folds)
    assert val == max(read_json(p.layout.model_dir(p.model, f) / "metrics.json")["val_mIoU"] for f in (0, 1))
    assert f"fold {fold}" in rows[0]["what"]
    # one checkpoint knows its fold: its OOF is that fold's validation images, re-predicted; against a bincount
    # matrix of the argmax the training stage stored in oof.npz (float16 probabilities: a tie may flip a pixel)
    n = len(read_json(p.layout.classes_json))
    cm = np.zeros((n, n), np.int64)
    with np.load(p.layout.oof_path(p.model, fold)) as z:
        for key in z.files:
            t, q = read_mask(p.layout.mask_path(int(key))).astype(np.int64).ravel(), z[key].argmax(0).ravel()
            keep = t != 255
            cm += np.bincount(t[keep] * n + q[keep], minlength=n * n).reshape(n, n)
    tp, union = np.diag(cm), cm.sum(0) + cm.sum(1) - np.diag(cm)
    assert rows[0]["oof_mIoU"] == pytest.approx(float(np.mean(tp[union > 0] / union[union > 0])), abs=2e-3)
    assert rows[1]["tta"] == f"{p.model}: none" and rows[1]["weights"] == {p.model: 1.0}
    assert set(rows[3]["weights"]) == {p.model, "tiny_second"}
    assert sum(rows[3]["weights"].values()) == pytest.approx(1.0)
    comp = Path(p.data.root)
    shapes, classes = shapes_from_coco(comp / "test.json"), read_json(p.layout.classes_json)
    for r in rows:
        sub = p.layout.submissions_dir / "ablation" / f"{r['row']}.csv"
        assert validate_submission(sub, comp / "sample_submission.csv", shapes, PER_CLASS, classes) == []
        assert 0 <= r["lb_mIoU"] <= 1 and 0 <= r["lb_mBIoU"] <= 1
    table = ablation_markdown(rows)
    assert table.count("\n") == 2 + len(rows) and f"{rows[1]['lb_mIoU'] - rows[0]['lb_mIoU']:+.4f}" in table


def test_soft_pseudo_labels_keep_the_teacher_probabilities_and_round2_learns_them(
    trained: Project, pseudo: dict[str, Any]
) -> None:
    p = trained
    params = pseudo["leak_free_params"]
    soft = dataclasses.replace(params, pseudo=dataclasses.replace(params.pseudo, soft=True, epochs=1))
    make_pseudo_labels(soft, p.layout)
    classes = read_json(p.layout.classes_json)
    for fold in p.params.train.folds:
        d = p.layout.pseudo_dir(1, fold)
        summary = read_json(d / "summary.json")
        for row in pd.read_csv(d / "index.csv").itertuples():
            got = np.load(PseudoSetFiles.soft_for(d / row.mask), allow_pickle=False)
            # the reference: fold k's model alone, computed without the inference code, rounded to 1/255
            probs = fold_probs(p, fold, Path(p.data.root) / "images" / row.file_name)
            label = probs.argmax(0)
            post = reference_postprocess(label, summary["postprocess"], classes)
            changed = post != label
            assert got.dtype == np.uint8 and got.shape == probs.shape
            assert np.abs(got[:, ~changed].astype(int) - np.rint(probs[:, ~changed] * 255)).max() <= 1
            assert np.array_equal(got[:, changed], (np.arange(NUM_CLASSES)[:, None] == post[changed]) * 255)
    metrics = train_round(p.cfg, p.model, 0, p.layout, soft, round_=2)
    assert metrics is not None and metrics["epochs"] == 1
    saved = read_yaml(p.layout.model_dir(p.model, 0, 2) / "config.yaml")
    assert saved["recipe"]["pseudo_soft"] is True
    assert np.isfinite(pd.read_csv(p.layout.curve_path(p.model, 0, 2))["train_loss"]).all()


def pooled_oof_miou(p: Project, round_: int) -> float:
    """Dataset mIoU of round ``round_``'s OOF argmax over both folds, from a bincount matrix counted here."""
    n = NUM_CLASSES
    cm = np.zeros((n, n), np.int64)
    for fold in p.params.train.folds:
        with np.load(p.layout.oof_path(p.model, fold, round_)) as z:
            for key in z.files:
                t = read_mask(p.layout.mask_path(int(key))).astype(np.int64).ravel()
                q = z[key].astype(np.float32).argmax(0).ravel()
                keep = t != 255
                cm += np.bincount(t[keep] * n + q[keep], minlength=n * n).reshape(n, n)
    tp, union = np.diag(cm), cm.sum(0) + cm.sum(1) - np.diag(cm)
    return float(np.mean(tp[union > 0] / union[union > 0]))


def test_infer_round_auto_ensembles_the_round_whose_oof_scores_best(trained: Project) -> None:
    """Rounds 1 and 2 of both folds exist by now (the pseudo tests above trained round 2): ``infer.round: auto``
    takes the better of the two on OOF, and its members are that round's."""
    p = trained
    params = dataclasses.replace(p.params, infer=dataclasses.replace(p.params.infer, round="auto", tta="none"))
    report = infer.run_ensemble(params, p.layout, output=str(p.layout.root / "auto_round.csv"), write_leaderboard=False)
    want = {r: pooled_oof_miou(p, r) for r in (1, 2)}
    best = max(want, key=lambda r: (want[r], r))
    assert report["round"] == report["round_choice"]["chosen"] == best
    assert report["round_choice"]["oof"] == {str(r): pytest.approx(v, abs=1e-5) for r, v in want.items()}
    assert {m["round"] for m in report["members"]} == {best}
