"""Folds in parallel through DVC (pipeline.parallel_folds), with 2 CPU processes, on the fast profile in a copy of
the repo: each training stage's items run side by side, one worker each, and DVC records every stage as a plain
``dvc repro`` would (``dvc status`` clean, the submission valid)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from helpers import REPO
from test_dvc_foundation import repo_files, run

from pipeline.submission.codec import read_submission_csv
from pipeline.submission.format import shapes_from_coco
from pipeline.submission.validate import validate_submission

pytestmark = pytest.mark.slow


def spans(log: Path) -> dict[str, tuple[float, float]]:
    """item -> (start, end) unix seconds from a worker's log lines ``start <item> <t>`` / ``end <item> <t>``."""
    marks: dict[str, dict[str, float]] = {}
    for line in log.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] in ("start", "end"):
            marks.setdefault(parts[1], {})[parts[0]] = float(parts[2])
    return {item: (m["start"], m["end"]) for item, m in marks.items()}


def copy_fast_project(tmp_path: Path) -> Path:
    """A copy of the repo (what a clone holds) with the fast profile as params.yaml."""
    root = tmp_path / "repo"
    for f in repo_files():
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, root / f)
    (root / "dvc.lock").unlink(missing_ok=True)
    run(root, "git", "init", "-q")
    run(root, sys.executable, "-m", "pipeline.profile", "fast")
    return root


def set_plan_and_train(root: Path, folds: list[int]) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["plan"]["fold_steps"] = 0  # every fold trains (the budget would otherwise give one fold every step)
    params["train"].update({"threads": 1, "folds": folds})  # one core per worker
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_two_cpu_workers_train_the_folds_side_by_side(tmp_path: Path) -> None:
    root = copy_fast_project(tmp_path)
    set_plan_and_train(root, folds=[0, 1])

    out = run(root, sys.executable, "-m", "pipeline.parallel_folds", "--devices", "cpu,cpu", timeout=1500).stdout
    logs = root / "work" / "parallel"
    for stage in ("train", "train_r2", "train_r3"):
        assert f"{stage}: worker 0 (cpu): {stage}@auto-0" in out and f"{stage}: worker 1 (cpu): {stage}@auto-1" in out
        for w in (0, 1):
            text = (logs / f"{stage}.{w}.log").read_text()
            assert f"Running stage '{stage}@auto-{w}'" in text and f"@auto-{1 - w}'" not in text
    # round 1's two folds ran at the same time: each started before the other ended
    (s0, e0), (s1, e1) = spans(logs / "train.0.log")["train@auto-0"], spans(logs / "train.1.log")["train@auto-1"]
    assert s0 < e1 and s1 < e0
    for f in (0, 1):  # both folds trained (not skipped) and were recorded
        assert json.loads((root / "work" / "r1" / "models" / "auto" / f"fold{f}" / "metrics.json").read_text())
    # DVC recorded every stage as after a plain `dvc repro`: nothing left to run
    assert "up to date" in run(root, "dvc", "status").stdout
    comp = root / "data" / "competition"
    classes = json.loads((root / "work" / "classes.json").read_text())
    problems = validate_submission(
        read_submission_csv(root / "submissions" / "submission.csv"),
        comp / "sample_submission.csv",
        shapes_from_coco(comp / "test.json"),
        classes=[(c["index"], c["name"]) for c in classes],
    )
    assert problems == []


def test_a_failing_item_is_named_with_its_log(tmp_path: Path) -> None:
    root = copy_fast_project(tmp_path)
    set_plan_and_train(root, folds=[0, 5])  # folds.k is 2: fold 5's stage stops ("fold 5 is not in ...folds.csv")
    proc = run(root, sys.executable, "-m", "pipeline.parallel_folds", "--devices", "cpu,cpu", check=False, timeout=900)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "train: worker 1 failed on one of train@auto-5; see " in proc.stderr
    log = root / "work" / "parallel" / "train.1.log"
    assert str(log) in proc.stderr and "fold 5 is not in" in log.read_text()
    assert "end train@auto-0" in (root / "work" / "parallel" / "train.0.log").read_text()  # the other worker finished
    assert (root / "work" / "r1" / "models" / "auto" / "fold0" / "last.pt").is_file()  # and its checkpoint is kept
