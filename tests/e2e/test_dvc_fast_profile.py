"""The whole competition loop through real DVC on the fast profile (tiny data, one epoch), in a copy of the repo:
demo -> masks -> plan -> folds -> train (round 1) -> pseudo -> train (round 2) -> infer -> report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import REPO
from test_dvc_foundation import repo_files, run

from pipeline.submission.codec import read_submission_csv
from pipeline.submission.format import shapes_from_coco
from pipeline.submission.validate import validate_submission

pytestmark = pytest.mark.slow


def test_fast_profile_runs_every_stage(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    for f in repo_files():
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, root / f)
    (root / "dvc.lock").unlink(missing_ok=True)
    shutil.copy2(REPO / "profiles" / "fast.yaml", root / "params.yaml")
    run(root, "git", "init", "-q")
    out = run(root, "dvc", "repro").stdout
    for stage in (
        "demo",
        "masks",
        "plan",
        "folds",
        "train@auto-0",
        "pseudo",
        "train_r2@auto-1",
        "pseudo_r2",  # pseudo.rounds is 1: the second pseudo round and round 3 run and do nothing
        "train_r3@auto-0",
        "infer",
        "report",
    ):
        assert f"Running stage '{stage}'" in out, stage

    comp = root / "data" / "competition"
    sub = root / "submissions" / "submission.csv"
    df = read_submission_csv(sub)
    classes = json.loads((root / "work" / "classes.json").read_text())
    assert (
        validate_submission(
            df,
            comp / "sample_submission.csv",
            shapes_from_coco(comp / "test.json"),
            classes=[(c["index"], c["name"]) for c in classes],
        )
        == []
    )
    infer = json.loads((root / "metrics" / "infer.json").read_text())
    assert infer["round"] == 2 and 0.0 <= infer["leaderboard"]["mIoU"] <= 1.0
    assert (root / "work" / "r1" / "pseudo" / "fold0" / "index.csv").is_file()
    assert (root / "work" / "r3" / "models" / "auto" / "fold0" / "skipped.txt").is_file()
    summary = (root / "reports" / "summary.md").read_text()
    assert "Local leaderboard" in summary and "| auto |" in summary
    assert (root / "reports" / "predictions.png").stat().st_size > 0
    shown = run(root, "dvc", "metrics", "show").stdout
    assert "metrics/infer.json" in shown and "metrics/summary.json" in shown
    assert "up to date" in run(root, "dvc", "status").stdout
