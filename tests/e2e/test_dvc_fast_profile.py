"""The whole competition loop through real DVC on the fast profile (tiny data, one epoch), in a copy of the repo:
demo -> masks -> plan -> folds -> train (round 1) -> pseudo -> train (round 2) -> infer -> report."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import REPO
from test_dvc_foundation import repo_files, run

from pipeline.submission.codec import read_submission_csv
from pipeline.submission.format import shapes_from_coco
from pipeline.submission.validate import validate_submission

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A copy of the repo with the fast profile as params.yaml, after one `dvc repro`: its root and the output."""
    root = tmp_path_factory.mktemp("fast") / "repo"
    for f in repo_files():
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, root / f)
    (root / "dvc.lock").unlink(missing_ok=True)
    run(root, "git", "init", "-q")
    run(root, sys.executable, "-m", "pipeline.profile", "fast")  # the overlay written into params.yaml
    return root, run(root, "dvc", "repro").stdout


def test_fast_profile_runs_every_stage(fast_run: tuple[Path, str]) -> None:
    root, out = fast_run
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
    # infer.round: auto compared both rounds on OOF and ensembles the one it chose (tests/e2e/test_inference.py checks
    # the choice against OOF matrices counted independently)
    assert infer["round"] == infer["round_choice"]["chosen"] and set(infer["round_choice"]["oof"]) == {"1", "2"}
    assert 0.0 <= infer["leaderboard"]["mIoU"] <= 1.0
    assert (root / "work" / "r1" / "pseudo" / "fold0" / "index.csv").is_file()
    assert (root / "work" / "r3" / "models" / "auto" / "fold0" / "skipped.txt").is_file()
    summary = (root / "reports" / "summary.md").read_text()
    assert "Local leaderboard" in summary and "| auto |" in summary
    assert (root / "reports" / "predictions.png").stat().st_size > 0
    shown = run(root, "dvc", "metrics", "show").stdout
    assert "metrics/infer.json" in shown and "metrics/summary.json" in shown
    assert "up to date" in run(root, "dvc", "status").stdout


def test_repeats_over_seeds_through_dvc_exp_run(fast_run: tuple[Path, str]) -> None:
    """`python -m pipeline.ablation --seeds 2`: seed 0 is the run just made (DVC re-runs nothing), seed 1 retrains
    through `dvc exp run`; each seed's rows score that seed's submissions, and the table is their mean ± sd."""
    root, _ = fast_run
    seed0_lb = json.loads((root / "metrics" / "infer.json").read_text())["leaderboard"]["mIoU"]
    seed0_ck = torch.load(root / "work/r1/models/auto/fold0/best.pt", map_location="cpu", weights_only=True)
    run(root, "git", "add", "-A")
    run(root, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "fast run")  # dvc exp needs a HEAD
    # seed 1's dvc exp run and both seeds' six scored submissions: over 300 s on a busy 2-core machine
    out = run(root, sys.executable, "-m", "pipeline.ablation", "--seeds", "2", timeout=900).stdout
    assert "seed 0: dvc exp run -S train.seed=0" in out and "seed 1: dvc exp run -S train.seed=1" in out
    assert yaml.safe_load((root / "params.yaml").read_text())["train"]["seed"] == 1  # the workspace: the last seed
    seeds = {s: json.loads((root / "metrics" / "ablation" / f"seed{s}.json").read_text()) for s in (0, 1)}
    rows = {s: {r["row"]: r for r in seeds[s]["rows"]} for s in (0, 1)}
    assert list(rows[0]) == ["single", "folds", "tta", "pseudo", "round", "postprocess"]
    # the postprocess row (the round chosen on OOF, with the rules fitted on OOF) is the `dvc repro` submission of
    # its seed, scored again: seed 0's equals the first infer stage's, seed 1's the infer stage's of the seed-1 run
    assert rows[0]["postprocess"]["lb_mIoU"] == pytest.approx(seed0_lb, abs=1e-12)
    seed1_lb = json.loads((root / "metrics" / "infer.json").read_text())["leaderboard"]["mIoU"]
    assert rows[1]["postprocess"]["lb_mIoU"] == pytest.approx(seed1_lb, abs=1e-12)
    # seed 1 really trained other models: the checkpoint records recipe.seed + 1 and other weights
    seed1_ck = torch.load(root / "work/r1/models/auto/fold0/best.pt", map_location="cpu", weights_only=True)
    assert seed1_ck["config"]["recipe"]["seed"] == seed0_ck["config"]["recipe"]["seed"] + 1
    w0, w1 = (ck["ema"] or ck["model"] for ck in (seed0_ck, seed1_ck))  # cnn_default keeps no EMA
    assert any(not torch.equal(w0[k], w1[k]) for k in w0)
    # the aggregate against numpy over the per-seed rows
    agg = json.loads((root / "metrics" / "ablation.json").read_text())
    assert agg["seeds"] == [0, 1]
    for row in agg["rows"]:
        values = [rows[s][row["row"]]["lb_mIoU"] for s in (0, 1)]
        assert row["lb_mIoU"]["mean"] == pytest.approx(np.mean(values), abs=1e-9)
        assert row["lb_mIoU"]["sd"] == pytest.approx(np.std(values, ddof=1), abs=1e-9)
    gains = [rows[s]["folds"]["lb_mIoU"] - rows[s]["single"]["lb_mIoU"] for s in (0, 1)]
    assert agg["rows"][1]["gain"]["mean"] == pytest.approx(np.mean(gains), abs=1e-9)
    assert "± " in (root / "reports" / "ablation.md").read_text()
    # a re-run keeps both seeds: nothing is reproduced or re-scored
    again = run(root, sys.executable, "-m", "pipeline.ablation", "--seeds", "2").stdout
    assert again.count("rows kept from") == 2 and "dvc exp run" not in again


def test_a_budget_too_small_for_every_fold_trains_fewer_and_every_stage_follows(
    fast_run: tuple[Path, str], tmp_path: Path
) -> None:
    """With the epochs left to the plan and more steps per fold asked (plan.fold_steps) than the budget gives any,
    the plan trains fold 0 alone: fold 1's stages skip, and pseudo, infer and report use fold 0 only."""
    src, _ = fast_run
    root = tmp_path / "repo"
    shutil.copytree(src, root, symlinks=True)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"]["epochs"] = None  # the plan sizes the epochs, so its fold rule applies
    params["plan"].update({"fold_steps": 10**6, "max_epochs": 1})
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = run(root, "dvc", "repro").stdout
    plan = yaml.safe_load((root / "work" / "plan.yaml").read_text())
    assert plan["folds"]["trained"] == [0] and plan["folds"]["of"] == [0, 1]
    assert "under plan.fold_steps (1000000)" in plan["folds"]["why"]
    assert plan["budget"]["per_model"]["auto"]["rounds"]["round1"]["folds"] == 1
    for r in (1, 2):
        fold1 = root / "work" / f"r{r}" / "models" / "auto" / "fold1"
        assert "the plan trains folds [0] only" in (fold1 / "skipped.txt").read_text()
        # the earlier run's fold-1 model is kept (plan.fold_steps: 0 would resume it), and used by nothing here
        assert (fold1 / "best.pt").read_bytes() == (src / fold1.relative_to(root) / "best.pt").read_bytes()
        assert (root / "work" / f"r{r}" / "models" / "auto" / "fold0" / "best.pt").is_file()
    assert "round 1 fold 1 skipped" in out
    assert sorted(p.name for p in (root / "work" / "r1" / "pseudo").iterdir()) == ["fold0"]
    infer = json.loads((root / "metrics" / "infer.json").read_text())
    # infer.round: auto chose among the rounds on fold 0's OOF alone, and ensembles that round's fold 0
    chosen = infer["round_choice"]["chosen"]
    assert infer["members"] == [{"model": "auto", "fold": 0, "round": chosen}] and infer["folds"] == [0]
    comp = root / "data" / "competition"
    df = read_submission_csv(root / "submissions" / "submission.csv")
    assert validate_submission(df, comp / "sample_submission.csv", shapes_from_coco(comp / "test.json")) == []
    assert "| auto |" in (root / "reports" / "summary.md").read_text()
