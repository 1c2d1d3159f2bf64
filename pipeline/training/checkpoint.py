"""A run's checkpoints: the fingerprint a resume must match, the RNG state, and the save/resume pair.

``last.pt`` and ``best.pt`` (written atomically by rank 0 after every epoch, ``best.pt`` when the epoch is the best so
far) hold the weights, EMA, optimizer, scheduler, scaler, RNG, the :class:`TrainState`, the config, classes, metrics,
fingerprint and the run's name. :meth:`Checkpoints.resume` reads ``last.pt`` back when its fingerprint matches, with
every piece of state restored; each epoch's shuffling and augmentation are seeded from (seed, epoch)
(:func:`seed_epoch`), so a resumed run repeats the same epochs and steps as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pipeline.config import ModelConfig, to_dict
from pipeline.data.folds import FoldSplit
from pipeline.io import load_torch, save_torch
from pipeline.training.context import RunId

if TYPE_CHECKING:
    from pipeline.training.setup import Optimisation


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch`` of a run seeded ``seed``."""
    return seed * 100_003 + epoch


def seed_epoch(seed: int, epoch: int) -> None:
    """Seed every RNG from (seed, epoch): shuffling and augmentation repeat exactly after a resume."""
    s = epoch_seed(seed, epoch)
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)


def rng_state() -> dict[str, Any]:
    """RNG state as tensors and plain lists only, so checkpoints load with ``weights_only=True``."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "has_gauss": has_gauss, "gauss": gauss},
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fingerprint(cfg: ModelConfig, fold: int, round_: int, split: FoldSplit, init: Path | None, code: str) -> str:
    """What a checkpoint must match to be resumed: config, fold, round, training data, initial weights, code.

    Paths alone are not enough: a pseudo-label round rewrites the same mask files with new labels, and round 2's
    initial weights keep their path when round 1 is retrained. So the masks and the initial weights are hashed
    by content and the images by size (cheap, and a changed image almost always changes size; masks are small).
    ``code`` is the digest of the training code (:func:`pipeline.closure.closure_digest` of the train stage).
    """
    blob = json.dumps(
        {
            "config": to_dict(cfg),
            "code": code,
            "fold": fold,
            "round": round_,
            "init": _file_digest(init) if init is not None else None,
            "train": [str(p) for p in split.train_images],
            "val": split.val_ids,
            "masks": [_file_digest(p) for p in [*split.train_masks, *split.val_masks]],
            "soft": [_file_digest(p) for p in split.soft_targets() or [] if p] if cfg.recipe.pseudo_soft else None,
            "image_bytes": [p.stat().st_size for p in [*split.train_images, *split.val_images]],
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def evaluated_weights(ck: dict[str, Any]) -> dict[str, Any]:
    """The weights a checkpoint's validation scored: the EMA's when the run kept one, else the model's."""
    return ck["ema"] if ck.get("ema") is not None else ck["model"]


@dataclasses.dataclass
class TrainState:
    """Where a run stands: epochs done, optimiser steps taken, the best epoch so far and the per-epoch log."""

    epoch: int = 0
    step: int = 0
    best: float = -1.0  # the best epoch's validation score (the competition metric)
    best_epoch: int = -1
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # rows of rounds.LOG_COLUMNS
    epochs: int | None = None  # the run's epochs as re-sized to recipe.budget_seconds (None: recipe.epochs)
    seconds: float = 0.0  # whole seconds of the epochs done (training, validation, checkpoints)

    def end_epoch(
        self,
        val: dict[str, Any],
        train_loss: float,
        lr: float,
        train_img_s: float,
        seconds: float,
        skipped: int = 0,
        fit: Callable[[float], bool] | None = None,
    ) -> bool:
        """Log the epoch just trained and validated (``val``: :func:`pipeline.training.epoch.evaluate`'s dict;
        ``skipped``: its batches skipped as non-finite); True when it is the best so far in the competition metric
        (``val["score"]``; mIoU by default). ``fit(score)`` is asked of an epoch that beats the best score: False
        (non-finite weights or score, :meth:`pipeline.faults.StepGuard.can_be_best`) keeps it from being best."""
        self.epoch += 1
        if val["score"] > self.best and (fit is None or fit(val["score"])):
            self.best, self.best_epoch = val["score"], self.epoch
        self.history.append(
            {
                "epoch": self.epoch,
                "step": self.step,
                "lr": lr,
                "train_loss": train_loss,
                "val_mIoU": val["mIoU"],
                "val_mBIoU": val["mBIoU"],
                "val_aAcc": val["aAcc"],
                "train_img_s": round(train_img_s, 1),
                "seconds": round(seconds, 2),
                "skipped_nonfinite": skipped,  # in the checkpoint's history (metrics.json sums it), not in the curves
            }
        )
        return self.best_epoch == self.epoch


@dataclasses.dataclass(frozen=True)
class Checkpoints:
    """The ``last.pt`` / ``best.pt`` pair of one run, and what every checkpoint records beside the training state."""

    run: RunId
    fingerprint: str
    cfg: ModelConfig
    classes: list[dict[str, Any]]
    multilabel: bool = False  # the model learnt bit-field masks: a sigmoid per class (inference reads it)

    @property
    def last(self) -> Path:
        return self.run.files.last

    def save(self, opt: Optimisation, state: TrainState, metrics: dict[str, Any], best: bool) -> None:
        """Write ``last.pt`` (and ``best.pt`` first, when ``best``) after an epoch; ``metrics``: its validation."""
        ck = {
            **opt.state_dict(),
            "rng": rng_state(),
            "epoch": state.epoch,
            "step": state.step,
            "best_miou": state.best,  # the best score in the competition metric, whatever its name
            "best_epoch": state.best_epoch,
            "history": state.history,
            "epochs": state.epochs,
            "seconds": state.seconds,
            "fingerprint": self.fingerprint,
            "config": to_dict(self.cfg),
            "classes": self.classes,
            "multilabel": self.multilabel,
            "metrics": metrics,
            "model_name": self.run.model,
            "fold": self.run.fold,
            "round": self.run.round_,
        }
        if best:
            save_torch(self.run.files.best, ck)
        save_torch(self.last, ck)  # last: the one a resume reads, written after best

    def resume(self, opt: Optimisation, main: bool) -> TrainState:
        """Load ``last.pt`` into ``opt`` and the RNGs when its fingerprint matches; return the state to go on from
        (a fresh one otherwise). ``main``: whether this process prints what it did."""
        if not self.last.is_file():
            return TrainState()
        ck = load_torch(self.last, corrupt_ok=True)  # unreadable (half-written elsewhere, truncated): start afresh
        if ck is None or ck.get("fingerprint") != self.fingerprint:
            if main and ck is not None:
                print(f"{self.last} belongs to another config, data or training code; starting afresh")
            return TrainState()
        opt.load_state_dict(ck)
        set_rng_state(ck["rng"])
        state = TrainState(
            ck["epoch"],
            ck["step"],
            ck["best_miou"],
            ck["best_epoch"],
            list(ck["history"]),
            ck.get("epochs"),
            float(ck.get("seconds", 0.0)),
        )
        if main:
            print(f"resuming {self.run.title} after epoch {state.epoch}")
        return state
