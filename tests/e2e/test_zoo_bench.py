"""bench/zoo.py end to end on one tiny zoo competition: real stages through DVC in a copy of the project, the
submission scored on the held-back truth, the table written; its mIoU checked against a direct confusion matrix."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import load_bench, read_png

from pipeline.data.zoo import silhouette
from pipeline.leaderboard import decode_submission
from pipeline.submission.format import SubmissionFormat

pytestmark = pytest.mark.slow


def test_zoo_bench_runs_the_pipeline_on_a_tiny_silhouette(tmp_path: Path) -> None:
    bench = load_bench("zoo.py", "bench_zoo")
    work = tmp_path / "work"
    comp, truth = work / "silhouette" / "competition", work / "silhouette" / "truth"
    # 48 train images: fold 0 of 5 keeps 38, more than one batch of cnn_default (32).
    silhouette.generate(comp, truth, n_train=48, n_test=6)
    out = tmp_path / "RESULTS.md"
    out.write_text("# Zoo results\n\nan old table\n\n## Another benchmark\n\nkept\n")
    argv = ["--competitions", "silhouette", "--small", "--folds", "1", "--work", str(work), "--out", str(out)]
    assert bench.main(argv) == 0

    text = out.read_text()
    assert "an old table" not in text and text.endswith("## Another benchmark\n\nkept\n")  # only its section
    rows = [ln for ln in text.splitlines() if ln.startswith("| silhouette |")]
    assert rows[0].startswith("| silhouette | fixed |") and rows[-1].startswith("| silhouette | planned |")
    copy = work / "silhouette" / "fixed"
    params = (copy / "params.yaml").read_text()
    assert str(comp) in params and "no_truth" in params  # pointed at the competition, not at its truth
    assert json.loads((copy / "work" / "classes.json").read_text())[1]["name"] == "horse"

    # The table's mIoU equals a direct confusion matrix of the decoded submission against the truth PNGs.
    fmt = SubmissionFormat(class_column=None)
    classes = json.loads((truth / "classes.json").read_text())
    preds = decode_submission(copy / "submissions" / "submission.csv", comp / "test.json", fmt, classes)
    cm = np.zeros((2, 2), np.int64)
    for stem, pred in preds.items():
        t = read_png(truth / f"{stem}.png")
        cm += np.bincount(t.ravel().astype(np.int64) * 2 + pred.ravel(), minlength=4).reshape(2, 2)
    inter = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - inter
    miou = float(np.mean(inter / union))
    assert f"| silhouette | fixed | {miou:.4f} |" in text

    # Budget minutes: the plan stage and each training stage from its process's start, never less than its epochs.
    planned = work / "silhouette" / "planned"
    runs = [json.loads(p.read_text()) for p in planned.glob("work/r*/models/*/*/metrics.json")]
    assert runs and all(m["stage_seconds"] > m["train_seconds"] for m in runs)  # imports, OOF pass: more than epochs
    plan = json.loads(json.dumps(__import__("yaml").safe_load((planned / "work" / "plan.yaml").read_text())))
    minutes = (plan["budget"]["plan_seconds"] + sum(m["stage_seconds"] for m in runs)) / 60
    assert f"| {minutes:.1f} (plan said {plan['budget']['predicted_minutes']:.1f}) |" in rows[-1]
