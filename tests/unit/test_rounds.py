"""The stages of a switched-off round: empty outputs that DVC accepts, written without importing torch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers import REPO

from pipeline.config import load_params
from pipeline.rounds import LOG_COLUMNS, pseudo_round_runs, pseudo_set, pseudo_sets, training_round_runs

# Runs one stage's main() and fails if torch got imported along the way.
NO_TORCH = """
import importlib, sys
stage = importlib.import_module(sys.argv[1])
assert stage.main(sys.argv[2:]) == 0
assert "torch" not in sys.modules, "a switched-off round imported torch"
"""


def write_params(root: Path, **pseudo: object) -> Path:
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump({"train": {"folds": [0, 1]}, "pseudo": pseudo}))
    return path


@pytest.mark.parametrize(("rounds", "trains", "labels"), [(0, [1], []), (1, [1, 2], [1]), (2, [1, 2, 3], [1, 2])])
def test_which_rounds_run(tmp_path: Path, rounds: int, trains: list[int], labels: list[int]) -> None:
    params = load_params(write_params(tmp_path, rounds=rounds))
    assert [r for r in range(1, 5) if training_round_runs(params, r)] == trains
    assert [r for r in range(1, 5) if pseudo_round_runs(params, r)] == labels


def test_leak_free_sets_are_per_fold_and_full_is_shared(tmp_path: Path) -> None:
    leak_free = load_params(write_params(tmp_path, source="leak_free"))
    full = load_params(write_params(tmp_path, source="full"))
    assert pseudo_sets(leak_free) == [0, 1] and [pseudo_set(leak_free, f) for f in (0, 1)] == [0, 1]
    assert pseudo_sets(full) == ["all"] and [pseudo_set(full, f) for f in (0, 1)] == ["all", "all"]


def run_stage(root: Path, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run(
        [sys.executable, "-c", NO_TORCH, *args], cwd=root, env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout


def test_switched_off_rounds_write_their_outputs_without_torch(tmp_path: Path) -> None:
    write_params(tmp_path, rounds=1)
    (tmp_path / "configs" / "models").mkdir(parents=True)
    shutil.copy2(REPO / "configs" / "models" / "cnn_default.yaml", tmp_path / "configs" / "models")

    out = run_stage(tmp_path, "stages.train", "--model", "cnn_default", "--fold", "1", "--round", "3")
    assert "round 3 fold 1 skipped (pseudo.rounds is 1: no round 3)" in out
    model_dir = tmp_path / "work" / "r3" / "models" / "cnn_default" / "fold1"
    assert (model_dir / "skipped.txt").read_text() == "pseudo.rounds is 1: no round 3\n"
    curve = pd.read_csv(tmp_path / "metrics" / "curves" / "r3" / "cnn_default-fold1.csv")
    assert curve.empty and list(curve.columns) == LOG_COLUMNS

    out = run_stage(tmp_path, "stages.pseudo", "--round", "2")
    assert "pseudo-labels from round 2 skipped" in out
    for fold in (0, 1):
        assert pd.read_csv(tmp_path / "work" / "r2" / "pseudo" / f"fold{fold}" / "index.csv").empty
    summary = json.loads((tmp_path / "metrics" / "pseudo_r2.json").read_text())
    assert summary == {"round": 2, "source": "leak_free", "sets": {}, "disabled": True}
