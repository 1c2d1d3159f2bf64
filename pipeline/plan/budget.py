"""The time budget: how long the training the plan chooses takes on this machine, and how many epochs fit.

The model of one training stage (one model config, one fold, one round), from measured costs only:

    epoch  = steps x step_seconds + n_val x eval_image_seconds               (train, then validate every epoch)
             + SAVES_PER_EPOCH x save_seconds                                 (last.pt, and best.pt when it improved)
    fixed  = startup_seconds + STAGE_SECONDS + (n_fit + n_val) x read_seconds  (process, imports, preloading)
             + build_seconds + n_val x eval_image_seconds                     (the best model's out-of-fold pass)
    stage  = epochs x epoch + fixed

where ``steps = samples_per_epoch // batch`` (or ``n_fit // batch``: the loader drops the last partial batch),
``n_fit`` the fold's training images (round r > 1 adds the test images it may pseudo-label: an upper bound) and
``n_val`` its validation images. The whole training is the probe plus every stage of every model, fold and round;
its budget is split equally between the model configs, and each one's round-1 epochs are the most that fit.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

STAGE_SECONDS = 3.0  # python and DVC start-up of a stage, the fold report's tables and plots (measured: 2-4 s)
SAVES_PER_EPOCH = 2  # last.pt every epoch, best.pt before it when the epoch is the best so far: the upper bound


@dataclasses.dataclass(frozen=True)
class Work:
    """What one model config trains: images per fold and round, the batch, the epochs of the later rounds."""

    images: int  # labelled training images (all folds)
    test_images: int  # test images round r > 1 may add as pseudo-labels
    k: int  # folds the images are split into
    folds: int  # folds trained (len(train.folds))
    rounds: int  # training rounds: 1 + pseudo.rounds
    batch_size: int
    samples_per_epoch: int | None = None  # None: one pass over the fold's images
    later_epochs: int | None = None  # epochs of rounds 2+ (pseudo.epochs); None: the same as round 1

    def n_val(self) -> int:
        return int(round(self.images / self.k))

    def n_fit(self, round_: int) -> int:
        return self.images - self.n_val() + (self.test_images if round_ > 1 else 0)

    def steps(self, round_: int) -> int:
        n = self.samples_per_epoch if self.samples_per_epoch is not None else self.n_fit(round_)
        return n // self.batch_size


@dataclasses.dataclass(frozen=True)
class Costs:
    """Measured seconds (see :mod:`pipeline.plan.machine` and the fingerprint's ``read_seconds``)."""

    step: float
    eval_image: float
    startup: float
    read_image: float
    build: float = 0.0
    save: float = 0.0  # one checkpoint write


def epoch_seconds(work: Work, costs: Costs, round_: int) -> float:
    return work.steps(round_) * costs.step + work.n_val() * costs.eval_image + SAVES_PER_EPOCH * costs.save


def fixed_seconds(work: Work, costs: Costs, round_: int) -> float:
    n_val = work.n_val()
    return (
        costs.startup
        + STAGE_SECONDS
        + (work.n_fit(round_) + n_val) * costs.read_image
        + costs.build
        + n_val * costs.eval_image
    )


def round_epochs(work: Work, epochs: int, round_: int) -> int:
    if round_ == 1 or work.later_epochs is None:
        return epochs
    return work.later_epochs


def split(work: Work, costs: Costs, epochs: int) -> dict[str, Any]:
    """Predicted seconds per round and fold with ``epochs`` in round 1 (the report's budget split)."""
    rounds = {}
    total = 0.0
    for r in range(1, work.rounds + 1):
        e = round_epochs(work, epochs, r)
        per_epoch = epoch_seconds(work, costs, r)
        fold = e * per_epoch + fixed_seconds(work, costs, r)
        rounds[f"round{r}"] = {
            "epochs": e,
            "steps_per_epoch": work.steps(r),
            "train_images": work.n_fit(r),
            "val_images": work.n_val(),
            "epoch_seconds": round(per_epoch, 2),
            "fixed_seconds": round(fixed_seconds(work, costs, r), 2),
            "fold_seconds": round(fold, 1),
            "folds": work.folds,
            "seconds": round(work.folds * fold, 1),
        }
        total += work.folds * fold
    return {"rounds": rounds, "seconds": round(total, 1)}


def total_seconds(work: Work, costs: Costs, epochs: int) -> float:
    """Every fold and round of one model config with ``epochs`` in round 1."""
    return sum(
        work.folds * (round_epochs(work, epochs, r) * epoch_seconds(work, costs, r) + fixed_seconds(work, costs, r))
        for r in range(1, work.rounds + 1)
    )


def fitting_epochs(work: Work, costs: Costs, seconds: float) -> int:
    """The most round-1 epochs whose whole training (every fold and round) takes at most ``seconds``; 0 if none.

    Solved in closed form: the total is linear in the round-1 epochs (and in the later rounds' too when they follow
    round 1's count).
    """
    fixed = total_seconds(work, costs, 0)
    per_epoch = work.folds * sum(
        epoch_seconds(work, costs, r) for r in range(1, work.rounds + 1) if r == 1 or work.later_epochs is None
    )
    if per_epoch <= 0:
        return 0
    return max(0, math.floor((seconds - fixed) / per_epoch + 1e-9))


def fitting_samples(work: Work, costs: Costs, seconds: float, epochs: int) -> int:
    """The most samples per epoch (a multiple of the batch) with which ``epochs`` round-1 epochs fit in ``seconds``;
    0 when not even one batch per epoch fits. Every round draws the same number of samples."""
    one = dataclasses.replace(work, samples_per_epoch=work.batch_size)
    zero = dataclasses.replace(work, samples_per_epoch=0)
    base = total_seconds(zero, costs, epochs)
    per_batch = total_seconds(one, costs, epochs) - base  # seconds each extra batch per epoch adds, all folds/rounds
    if per_batch <= 0:
        return 0
    return max(0, math.floor((seconds - base) / per_batch + 1e-9)) * work.batch_size


def size_to_budget(
    works: Sequence[Work], costs: Sequence[Costs], budget_seconds: float, probe_seconds: float
) -> list[float]:
    """Each model config's share of the budget once the probe is paid: equal shares (seconds)."""
    left = max(0.0, budget_seconds - probe_seconds)
    return [left / max(1, len(works))] * len(works)
