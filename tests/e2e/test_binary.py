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

import numpy as np
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
from pipeline.submission.codec import read_submission_csv
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


def test_binary_task_trains_scores_and_submits_foreground_rows_only(binary: tuple[Path, Layout]) -> None:
    root, layout = binary
    params = load_params(root / "params.yaml")
    summary = build_masks(params.data, params.masks, layout)
    assert summary is not None
    classes = read_json(layout.classes_json)
    assert [(c["index"], c["name"], c["coco_id"]) for c in classes] == [(0, "background", None), (1, "digit", COCO_ID)]
    build_folds(params.folds, layout)
    cfg = load_model_config(layout.model_config("tiny"))
    assert cfg.head == "sigmoid"
    threads = torch.get_num_threads()
    try:
        for fold in params.train.folds:
            metrics = train_fold(cfg, "tiny", fold, layout, params.data, params.train, progress=False)
            assert 0 <= metrics["val_mIoU"] <= 1 and "val_mBIoU" in metrics
    finally:
        torch.set_num_threads(threads)
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
