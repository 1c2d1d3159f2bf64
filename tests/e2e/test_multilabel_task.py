"""A multilabel competition end to end (issue #17 item 2: ``masks.overlap: multilabel``).

The tiny project's digit canvases become a competition of three overlapping classes: ``digit`` (every digit),
``odd`` (the odd digits) and ``loop`` (0, 6, 8 and 9): an odd digit's pixels hold two classes, a 9's three. The masks
stage paints bit fields (:mod:`pipeline.labels`); the model learns a sigmoid per class; what it writes is checked
against independent computations (per-class sets of pixels, not the pipeline's planes).
"""

from __future__ import annotations

import dataclasses
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
from pipeline.data.truth import write_truth_record
from pipeline.data.zoo import attributes
from pipeline.infer import run_ensemble
from pipeline.io import read_json, read_mask, write_json, write_png
from pipeline.paths import Layout
from pipeline.threshold import THRESHOLDS
from pipeline.train import train_fold

CLASSES = dict(enumerate(attributes.CLASSES, start=1))  # class index (= COCO id) -> name; bit = index - 1


def bits_of(class_map: np.ndarray) -> np.ndarray:
    """A demo truth class map (0 background, d + 1 digit d, 255 ignore) as the multilabel bit field."""
    out = np.zeros(class_map.shape, np.uint8)
    for d in range(10):
        out[class_map == d + 1] = sum(1 << (c - 1) for c in attributes.classes_of(d))
    out[class_map == 255] = 255
    return out


def write_multilabel_competition(comp: Path, truth: Path, root: Path) -> None:
    """The demo competition ``comp`` (truth ``truth``) as a multilabel one under ``root/data``: every digit
    annotation repeated for each class it belongs to, the truth as bit fields with a multilabel record."""
    dest = root / "data" / "competition"
    (dest / "images").mkdir(parents=True)
    for name in ("train.json", "test.json"):
        data = read_json(comp / name)
        for im in data["images"]:
            (dest / "images" / im["file_name"]).write_bytes((comp / "images" / im["file_name"]).read_bytes())
        anns = []
        for a in data.get("annotations", []):
            for c in attributes.classes_of(int(a["category_id"]) - 1):  # the demo's category id is digit + 1
                anns.append({**a, "id": len(anns) + 1, "category_id": c})
        cats = [{"id": i, "name": n} for i, n in CLASSES.items()]
        write_json(dest / name, {**data, "annotations": anns, "categories": cats})
    out = root / "data" / "truth"
    out.mkdir(parents=True)
    for im in read_json(comp / "test.json")["images"]:
        stem = Path(im["file_name"]).stem
        write_png(out / f"{stem}.png", bits_of(read_mask(truth / f"{stem}.png")))
    classes = [{"index": 0, "name": "background", "coco_id": None}]
    classes += [{"index": i, "name": n, "coco_id": i} for i, n in CLASSES.items()]
    write_json(out / "classes.json", classes)
    write_truth_record(out, dest / "test.json", multilabel=True)


def kaggle_rle_decode(text: str, height: int, width: int) -> np.ndarray:
    """The default format's RLE (1-based starts, column-major pixel order), decoded without the pipeline's codec."""
    flat = np.zeros(height * width, bool)
    nums = [int(v) for v in text.split()]
    for start, length in zip(nums[0::2], nums[1::2], strict=True):
        flat[start - 1 : start - 1 + length] = True
    return flat.reshape(width, height).T


def score_by_hand(csv: Path, test_json: Path, truth_dir: Path) -> tuple[np.ndarray, int]:
    """Per-class IoU (0: no class, then ``CLASSES``) of a default-format submission against bit-field truth,
    written from the CSV text and the truth PNGs alone; and the pixels where two predicted classes overlap."""
    sub = pd.read_csv(csv, dtype=str, keep_default_na=False)
    test = read_json(test_json)["images"]
    assert list(sub.columns) == ["id", "class", "predicted"]
    assert len(sub) == len(CLASSES) * len(test) and set(sub["class"]) == set(CLASSES.values())
    inter, union = np.zeros(4), np.zeros(4)
    overlap = 0
    for im in test:
        rows = sub[sub["id"] == str(im["id"])].set_index("class")["predicted"]
        planes = {c: kaggle_rle_decode(rows[n], im["height"], im["width"]) for c, n in CLASSES.items()}
        overlap += int((planes[1] & (planes[2] | planes[3])).sum())
        truth = read_mask(truth_dir / f"{Path(im['file_name']).stem}.png")
        ok = truth != 255
        none = ~(planes[1] | planes[2] | planes[3])
        for c in range(4):
            t = (truth == 0) if c == 0 else ((truth >> (c - 1)) & 1).astype(bool)
            pr = none if c == 0 else planes[c]
            inter[c] += (t & pr & ok).sum()
            union[c] += ((t | pr) & ok).sum()
    return inter / union, overlap


@pytest.fixture(scope="module")
def multilabel(project: Project, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Layout]:
    root = tmp_path_factory.mktemp("multilabel")
    write_multilabel_competition(Path(project.data.root), Path(project.data.truth_dir), root)
    raw = project_params(root)
    del raw["demo"]
    raw["masks"]["overlap"] = "multilabel"
    raw["pseudo"]["rounds"] = 0
    raw["infer"]["overlays"] = 0
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    (root / "configs" / "models").mkdir(parents=True)
    model = {**TINY_MODEL, "recipe": {**TINY_MODEL["recipe"], "epochs": 8}}  # long enough to predict every class
    (root / "configs" / "models" / "tiny.yaml").write_text(yaml.safe_dump(model, sort_keys=False))
    return root, Layout(root)


@pytest.fixture(scope="module")
def multilabel_trained(multilabel: tuple[Path, Layout]) -> list[dict[str, Any]]:
    root, layout = multilabel
    params = load_params(root / "params.yaml")
    build_masks(params.data, params.masks, layout)
    build_folds(params.folds, layout)
    cfg = load_model_config(layout.model_config("tiny"))
    threads = torch.get_num_threads()
    try:
        return [train_fold(cfg, "tiny", f, layout, params.data, params.train, progress=False) for f in (0, 1)]
    finally:
        torch.set_num_threads(threads)


def test_masks_hold_every_class_of_a_digit(multilabel: tuple[Path, Layout], multilabel_trained: Any) -> None:
    root, layout = multilabel
    summary = read_json(layout.mask_summary)
    assert summary["labels"] == "multilabel"
    values = set()
    for f in layout.masks_dir.iterdir():
        values |= set(np.unique(read_mask(f)).tolist())
    assert {1, 3, 5, 7} & values and values <= {0, 1, 3, 5, 7, 255}  # digit, +odd, +loop, +odd+loop (9)


def test_oof_holds_sigmoid_probabilities_of_the_fold_models(
    multilabel: tuple[Path, Layout], multilabel_trained: list[dict[str, Any]]
) -> None:
    """Each OOF array is the per-class sigmoid of the best checkpoint's logits (not a softmax: they need not sum
    to 1), and the fold's val mIoU is the per-class IoU of those probabilities over 0.5 against the truth bits."""
    root, layout = multilabel
    for fold, metrics in zip((0, 1), multilabel_trained, strict=True):
        oof = np.load(layout.fold_files("tiny", fold, 1).oof)
        keys = list(oof.keys())
        assert keys
        sums = []
        inter = np.zeros(4)
        union = np.zeros(4)
        for k in keys:
            p = oof[k].astype(np.float32)
            assert p.shape[0] == 4 and (p >= 0).all() and (p <= 1).all()
            sums.append(float(np.abs(p.sum(0) - 1).mean()))
            truth = read_mask(layout.mask_path(int(k)))
            ok = truth != 255
            for c in range(4):
                t = (truth == 0) if c == 0 else ((truth >> (c - 1)) & 1).astype(bool)
                pr = ~(p[1:] > 0.5).any(0) if c == 0 else p[c] > 0.5
                inter[c] += (t & pr & ok).sum()
                union[c] += ((t | pr) & ok).sum()
        assert max(sums) > 0.01  # not a softmax
        scored = union > 0
        assert metrics["val_mIoU"] == pytest.approx(float(np.mean(inter[scored] / union[scored])), abs=2e-3)


def test_infer_writes_each_class_from_its_own_mask_and_the_leaderboard_scores_it_per_class(
    multilabel: tuple[Path, Layout], multilabel_trained: list[dict[str, Any]]
) -> None:
    """The submission has one row per (test image, class), rows of two classes cover the same pixels, and the local
    leaderboard's per-class IoU and mIoU equal an independent per-class scorer on the held-back bit fields."""
    root, layout = multilabel
    params = load_params(root / "params.yaml")
    out = root / "submissions" / "multilabel.csv"
    report = run_ensemble(params, layout, output=str(out))
    iou, overlap = score_by_hand(out, Path(params.data.root) / "test.json", Path(params.data.truth_dir))
    assert overlap > 0  # the model predicts odd or looped digits as digits too: overlapping rows
    lb = read_json(layout.leaderboard_json)
    assert report["leaderboard"]["mIoU"] == pytest.approx(float(iou.mean()))
    for c, name in CLASSES.items():
        assert lb["per_class"][name]["IoU"] == pytest.approx(float(iou[c]))


def test_per_class_thresholds_fitted_on_oof_are_what_the_oof_scores_by_hand(
    multilabel: tuple[Path, Layout], multilabel_trained: list[dict[str, Any]]
) -> None:
    """``infer.threshold: fit`` on multilabel masks: one threshold per class; the report's OOF figure is the folds'
    own oof.npz probabilities cut at them and scored here per class, and the ledger records them."""
    root, layout = multilabel
    params = load_params(root / "params.yaml")
    infer = dataclasses.replace(params.infer, tta="none", threshold="fit")
    report = run_ensemble(dataclasses.replace(params, infer=infer), layout, output=str(root / "submissions" / "t.csv"))
    ts = report["threshold"]["value"]
    assert isinstance(ts, list) and len(ts) == 3 and all(t in THRESHOLDS for t in ts)
    assert report["threshold"]["after"]["oof_in_sample"] >= report["threshold"]["before"]["oof_in_sample"]
    inter, union = np.zeros(4), np.zeros(4)
    for f in params.train.folds:
        with np.load(layout.oof_path("tiny", f)) as z:
            for key in z.files:
                p = z[key].astype(np.float32)
                over = [p[c] > np.float32(ts[c - 1]) for c in (1, 2, 3)]
                pred = [~(over[0] | over[1] | over[2]), *over]
                truth = read_mask(layout.mask_path(int(key)))
                ok = truth != 255
                for c in range(4):
                    t = (truth == 0) if c == 0 else ((truth >> (c - 1)) & 1).astype(bool)
                    inter[c] += (t & pred[c] & ok).sum()
                    union[c] += ((t | pred[c]) & ok).sum()
    assert report["oof_mIoU"] == pytest.approx(float(np.mean(inter / union)), abs=2e-3)
    ledger = pd.read_csv(layout.ledger, dtype=str, keep_default_na=False)
    assert ledger["threshold"].iloc[-1] == " ".join(map(str, ts))
