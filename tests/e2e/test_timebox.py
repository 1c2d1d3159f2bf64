"""Training held to recipe.budget_seconds, and copy-paste, through the real loop: epochs re-sized, the schedule
stretched to end on the last step, and a resumed run that repeats an uninterrupted one."""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pytest
import torch
from e2e.test_sampled_training import TRAIN, crop_config, interrupted_run

from pipeline.train import train_fold

if TYPE_CHECKING:
    from e2e.conftest import Project

pytestmark = pytest.mark.slow


def cosine(step: int, total: int, warmup: int, lr: float, floor: float = 0.01) -> float:
    """The recipe's schedule written out again: linear warm-up, then cosine from lr to floor x lr at ``total``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    t = min(1.0, (step - warmup) / (total - warmup))
    return lr * (floor + (1 - floor) * (1 + math.cos(math.pi * t)) / 2)


def test_a_short_budget_stops_early_and_a_long_one_stretches_the_run(project: Project) -> None:
    p = project
    train = dataclasses.replace(TRAIN, epochs=None)
    short = crop_config(epochs=3, samples_per_epoch=16, budget_seconds=0.01)
    train_fold(short, "box_short", 0, p.layout, p.data, train, progress=False)
    assert len(pd.read_csv(p.layout.curve_path("box_short", 0))) == 1  # one epoch spent it all

    long = crop_config(epochs=3, samples_per_epoch=16, budget_seconds=1e6)
    metrics = train_fold(long, "box_long", 0, p.layout, p.data, train, progress=False)
    log = pd.read_csv(p.layout.curve_path("box_long", 0))
    spe = 16 // 8
    assert log["epoch"].tolist() == [1, 2, 3, 4, 5, 6] and metrics["epochs"] == 6  # 2 x recipe.epochs at most
    # the log's lr is the rate of the epoch's last step: epoch 1's on the 3-epoch schedule (re-sized after it),
    # every later one on the 6-epoch schedule, which ends at the floor on the run's last step
    warmup = round(0.5 * spe)
    assert log["lr"].iloc[0] == pytest.approx(cosine(spe, 3 * spe, warmup, 3e-3), rel=1e-6)
    for e in range(2, 7):
        assert log["lr"].iloc[e - 1] == pytest.approx(cosine(e * spe, 6 * spe, warmup, 3e-3), rel=1e-6)
    assert log["lr"].iloc[-1] == pytest.approx(3e-5, rel=1e-6)


def test_a_resumed_timeboxed_pasted_run_matches_an_uninterrupted_one(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopped in epoch 2 of a run that was stretched from 2 to 4 epochs, with copy-paste on: the resumed run keeps
    the checkpoint's epochs and schedule, draws the same donors, and repeats the uninterrupted losses and scores."""
    from e2e.test_training import RESUME_ATOL

    p = project
    cfg = crop_config(epochs=2, samples_per_epoch=16, budget_seconds=1e6, paste=0.5)
    train = dataclasses.replace(TRAIN, epochs=None)
    spe = 16 // 8
    train_fold(cfg, "box_ref", 0, p.layout, p.data, train, progress=False)

    interrupted_run(monkeypatch, spe + 2, lambda: train_fold(cfg, "box", 0, p.layout, p.data, train, progress=False))
    ck = torch.load(p.layout.checkpoint("box", 0, which="last"), weights_only=True)
    assert (ck["epoch"], ck["epochs"]) == (1, 4)
    assert [f["total"] for f in ck["scheduler"]["lr_lambdas"]] == [4 * spe] * len(ck["scheduler"]["lr_lambdas"])

    torch.manual_seed(123)
    train_fold(cfg, "box", 0, p.layout, p.data, train, progress=False)
    resumed = pd.read_csv(p.layout.curve_path("box", 0))
    reference = pd.read_csv(p.layout.curve_path("box_ref", 0))
    assert resumed["step"].tolist() == reference["step"].tolist() == [spe * e for e in (1, 2, 3, 4)]
    np.testing.assert_allclose(resumed["lr"], reference["lr"], rtol=1e-9)
    np.testing.assert_allclose(resumed["train_loss"], reference["train_loss"], rtol=0, atol=RESUME_ATOL)
    np.testing.assert_allclose(resumed["val_mIoU"], reference["val_mIoU"], rtol=0, atol=RESUME_ATOL)


def test_paste_changes_what_trains(project: Project) -> None:
    """The same run with and without copy-paste: the first epoch's loss differs (the donors reach the loss)."""
    p = project
    train = dataclasses.replace(TRAIN, epochs=None)
    logs = {}
    for share in (0.0, 1.0):
        name = f"paste_{int(share)}"
        train_fold(crop_config(epochs=1, samples_per_epoch=16, paste=share), name, 0, p.layout, p.data, train,
                   progress=False)  # fmt: skip
        logs[share] = pd.read_csv(p.layout.curve_path(name, 0))
    assert logs[0.0]["train_loss"].iloc[0] != logs[1.0]["train_loss"].iloc[0]
