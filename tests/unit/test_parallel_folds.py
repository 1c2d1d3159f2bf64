"""pipeline.parallel_folds: the training stages read from DVC's graph of this repo, and the device list."""

from __future__ import annotations

import pytest
from helpers import REPO

from pipeline.errors import UserError
from pipeline.parallel_folds import parse_devices, training_groups


def test_training_groups_follow_dvc_yaml_in_run_order() -> None:
    groups = training_groups(REPO)
    assert [g.name for g in groups] == ["train", "train_r2", "train_r3"]
    models, folds = ["auto"], [0, 1, 2, 3, 4]  # params.yaml's train.models x train.folds, the matrix's order
    for g in groups:
        assert g.items == tuple(f"{g.name}@{m}-{f}" for m in models for f in folds)
    # what each group waits for, run once before its workers start: never a stage of the group itself
    assert {"folds", "plan", "masks"} <= set(groups[0].upstream)
    assert "pseudo" in groups[1].upstream and "pseudo_r2" in groups[2].upstream
    assert not any(u.startswith("train") for g in groups for u in g.upstream if u.split("@")[0] == g.name)


def test_devices_are_cuda_indices_or_cpu() -> None:
    assert parse_devices("0,1") == ["0", "1"]
    assert parse_devices("cpu, cpu") == ["", ""]  # CUDA_VISIBLE_DEVICES empty: the stage sees no GPU
    for bad in ("", "gpu0", "0,,x"):
        with pytest.raises(UserError, match="--devices"):
            parse_devices(bad)


def test_a_folder_that_is_no_dvc_project_is_one_line(tmp_path) -> None:
    with pytest.raises(UserError, match="not a DVC project"):
        training_groups(tmp_path)
