"""A multilabel competition (``masks.overlap: multilabel``) through real DVC on the fast profile, in a copy of the
repo: masks -> plan -> folds -> train -> pseudo -> train round 2 -> infer -> report, and the written submission
scored by an independent per-class scorer against the bit-field truth."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from e2e.test_multilabel_task import CLASSES, score_by_hand, write_multilabel_competition
from test_dvc_foundation import run, set_params
from test_parallel_folds_dvc import copy_fast_project

from pipeline.config import DemoParams
from pipeline.data.demo import generate_demo

pytestmark = pytest.mark.slow


def test_dvc_repro_on_a_multilabel_competition(tmp_path: Path) -> None:
    demo = tmp_path / "demo"
    generate_demo(DemoParams(n_train=96, n_test=12, test_digit_share=0.2), demo / "competition", demo / "truth")
    write_multilabel_competition(demo / "competition", demo / "truth", tmp_path / "ml")
    comp, truth = tmp_path / "ml" / "data" / "competition", tmp_path / "ml" / "data" / "truth"
    root = copy_fast_project(tmp_path)
    set_params(
        root,
        data={"root": str(comp), "truth_dir": str(truth)},
        masks={"overlap": "multilabel"},
        train={"epochs": 3},
    )
    out = run(root, "dvc", "repro", timeout=900).stdout
    for stage in ("masks", "plan", "folds", "train@auto-0", "pseudo", "train_r2@auto-1", "infer", "report"):
        assert f"Running stage '{stage}'" in out, stage
    assert json.loads((root / "work" / "mask_summary.json").read_text())["labels"] == "multilabel"
    pseudo_masks = list((root / "work" / "r1" / "pseudo" / "fold0").glob("*.png"))
    assert pseudo_masks  # round 2 learnt from multilabel pseudo-labels
    iou, _ = score_by_hand(root / "submissions" / "submission.csv", comp / "test.json", truth)
    lb = json.loads((root / "metrics" / "leaderboard.json").read_text())
    assert lb["mIoU"] == pytest.approx(float(iou.mean()))
    for c, name in CLASSES.items():
        assert lb["per_class"][name]["IoU"] == pytest.approx(float(iou[c]))
    assert "Local leaderboard" in (root / "reports" / "summary.md").read_text()
