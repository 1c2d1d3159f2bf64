"""Faults of a training run that a person can fix: a NaN or inf loss, out of memory, a collapsed model.

Each is one line that names the model, fold, epoch (and step) and the fix, through :class:`StepGuard`:

- A non-finite loss (or gradient norm) stops training with a :class:`~pipeline.errors.UserError`. With
  ``recipe.skip_nonfinite: true`` such a batch is skipped instead (no update, no EMA step; the schedule moves on so
  the step count stays the recipe's) and counted: ``skipped_nonfinite`` in each epoch's history row and
  ``skipped_nonfinite_batches`` in the fold's metrics.json. An epoch whose every batch is skipped stops the run.
- An epoch whose weights or validation score are not finite is never the best epoch, so best.pt never holds NaN.
- Out of memory on a batch (``torch.cuda.OutOfMemoryError``, a ``RuntimeError`` that says "out of memory" or
  "can't allocate memory", ``MemoryError``) names the batch size to set: ``recipe.batch_size`` in training, its
  validation and the best model's out-of-fold prediction; in inference (``infer``, ``pseudo``, their out-of-fold
  choices), :func:`inference_memory`: ``infer.batch_size``, or ``infer.tile_batch`` through the sliding window.
- Validation predictions of a single class while the truth has more: a warning and ``collapsed: true``.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from pipeline.config import InferParams, Recipe
from pipeline.errors import UserError
from pipeline.labels import IGNORE_INDEX

WARN_SKIPS = 3  # per-batch warnings printed per run; the rest are counted at each epoch's end

_OOM_TEXT = ("out of memory", "can't allocate memory")  # CUDA / MPS, and the CPU allocator's words


def is_out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` is an allocation failure (on any device)."""
    if isinstance(e, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    return isinstance(e, RuntimeError) and any(t in str(e).lower() for t in _OOM_TEXT)


def all_finite(model: torch.nn.Module) -> bool:
    """Whether every parameter and floating buffer of ``model`` is finite."""
    tensors = [*model.parameters(), *(b for b in model.buffers() if b.is_floating_point())]
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def collapsed(preds: Sequence[np.ndarray], truths: Sequence[np.ndarray]) -> bool:
    """Whether the (H, W) predictions hold a single class while the truths (255 = ignore) hold more than one.

    >>> collapsed([np.zeros((2, 2), np.uint8)], [np.array([[0, 1], [255, 0]], np.uint8)])
    True
    >>> collapsed([np.array([[0, 1]], np.uint8)], [np.array([[0, 1]], np.uint8)])
    False
    """
    predicted = set().union(*(np.unique(p).tolist() for p in preds)) if preds else set()
    truth = set().union(*(np.unique(t).tolist() for t in truths)) - {IGNORE_INDEX} if truths else set()
    return len(predicted) == 1 and len(truth) > 1


class StepGuard:
    """Turns the numerical and memory faults of one (model, fold, round) into one-line errors, or skipped batches.

    Args:
        model_name: the model config's name (``configs/models/<name>.yaml``, which ``config_path`` is).
        recipe: the recipe the run trains with (``batch_size``, ``lr`` and ``skip_nonfinite`` are read).
        world: processes of the run; with more than one, a batch is skipped on every process or on none.
    """

    def __init__(
        self, model_name: str, fold: int, round_: int, recipe: Recipe, config_path: Path, world: int = 1
    ) -> None:
        self.model_name = model_name
        self.where = f"{model_name} fold {fold}" + (f" round {round_}" if round_ > 1 else "")
        self.recipe = recipe
        self.config_path = config_path
        self.world = world
        self.skipped = 0  # in the current epoch
        self.warned = 0

    @contextlib.contextmanager
    def step(self, epoch: int | None, what: str = "") -> Iterator[None]:
        """Around a training step (or a validation pass: ``what="validation"``; or, ``epoch`` None, a pass after the
        last epoch such as the best model's out-of-fold prediction): out of memory and a batch too small for pooled
        BatchNorm become one-line errors naming the fix. ``epoch`` counts from 1."""
        try:
            yield
        except ValueError as e:
            if "Expected more than 1 value per channel" not in str(e):
                raise
            raise UserError(
                f"{self.model_name}: a batch of {max(1, self.recipe.batch_size // self.world)} image(s) "
                "per process is too small for this model's BatchNorm on pooled features (e.g. UPerNet's pyramid "
                f"pooling); set recipe.batch_size to at least {2 * self.world} in {self.config_path}"
            ) from None
        except (RuntimeError, MemoryError) as e:
            if not is_out_of_memory(e):
                raise
            raise UserError(self.out_of_memory(epoch, what)) from None

    def out_of_memory(self, epoch: int | None, what: str = "") -> str:
        bs = self.recipe.batch_size
        at = ", ".join(([f"epoch {epoch}"] if epoch is not None else []) + ([what] if what else []))
        if bs > 1:
            return (
                f"{self.where}: out of memory at batch_size {bs} ({at}); set recipe.batch_size to {bs // 2} in "
                f"{self.config_path}"
            )
        return (
            f"{self.where}: out of memory at batch_size 1 ({at}); set a smaller input_size or encoder in "
            f"{self.config_path}, or train on a device with more memory"
        )

    def finite(self, value: torch.Tensor, what: str, epoch: int, step: int, target: torch.Tensor | None = None) -> bool:
        """True when ``value`` (the loss, or the gradient norm) is finite; else raise, or with
        ``recipe.skip_nonfinite`` count the batch and return False (the caller skips the update).

        ``epoch`` counts from 1, ``step`` is the run's optimizer step (from 1); ``target`` (B, H, W), when given,
        lets the message say that a batch without a labelled pixel is the cause (cross-entropy over no pixels is
        0/0), not the learning rate.
        """
        bad = (~torch.isfinite(value.detach())).any().float()
        if self.world > 1:  # skipping on one process only would leave the others waiting in backward's all-reduce
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        if not bool(bad):
            return True
        shown = f"{float(value.detach()):g}" if value.numel() == 1 else "not finite"
        unlabelled = target is not None and not bool((target != IGNORE_INDEX).any())
        if not self.recipe.skip_nonfinite:
            if unlabelled:
                raise UserError(
                    f"{self.where}: the {what} is {shown} at epoch {epoch} step {step}: the batch has no labelled "
                    f"pixel (every mask pixel is {IGNORE_INDEX}, ignore); drop the images whose masks are all ignore, "
                    f"or set recipe.skip_nonfinite: true in {self.config_path} to skip such batches"
                )
            raise UserError(
                f"{self.where}: the {what} is {shown} at epoch {epoch} step {step}; lower recipe.lr (now "
                f"{self.recipe.lr:g}) in {self.config_path}, or set recipe.skip_nonfinite: true there to skip such "
                "batches"
            )
        self.skipped += 1
        if self.warned < WARN_SKIPS:
            self.warned += 1
            why = " (a batch without a labelled pixel)" if unlabelled else ""
            print(
                f"warning: {self.where}: skipped a batch whose {what} is {shown}{why} at epoch {epoch} step {step} "
                "(recipe.skip_nonfinite)",
                file=sys.stderr,
            )
        return False

    def checker(self, epoch: int, step: int, target: torch.Tensor | None = None) -> Callable[[torch.Tensor, str], bool]:
        """:meth:`finite` bound to one training step, as ``check(value, what)``; ``target`` is given to the loss's
        check only (:meth:`pipeline.training.setup.Optimisation.step` asks it of the loss and the gradient norm)."""
        return lambda value, what: self.finite(value, what, epoch, step, target if what == "loss" else None)

    def end_epoch(self, epoch: int, batches: int) -> int:
        """The epoch's count of skipped batches (reset for the next); every batch skipped stops the run."""
        skipped, self.skipped = self.skipped, 0
        if skipped and skipped >= batches:
            raise UserError(
                f"{self.where}: every batch of epoch {epoch} ({batches}) gave a non-finite loss, so nothing is "
                f"learnt; lower recipe.lr (now {self.recipe.lr:g}) in {self.config_path}"
            )
        if skipped:
            print(f"warning: {self.where}: epoch {epoch} skipped {skipped} of {batches} batches (non-finite)")
        return skipped

    def can_be_best(self, score: float, model: torch.nn.Module, epoch: int) -> bool:
        """Whether epoch ``epoch`` (from 1) may become best.pt: a finite validation score and finite weights."""
        if not math.isfinite(score):
            print(f"warning: {self.where}: epoch {epoch} has a non-finite validation score ({score}); not kept as best")
            return False
        if not all_finite(model):
            print(f"warning: {self.where}: epoch {epoch} has non-finite weights; not kept as best")
            return False
        return True

    def no_best(self) -> UserError:
        """The error of a run that ended without one epoch fit to be best.pt."""
        return UserError(
            f"{self.where}: no epoch ended with finite weights and a finite validation score, so there is no best.pt; "
            f"lower recipe.lr (now {self.recipe.lr:g}) in {self.config_path}"
        )


@contextlib.contextmanager
def inference_memory(p: InferParams, tile: tuple[int, int] | None, what: str) -> Iterator[None]:
    """Around an inference pass of ``infer`` or ``pseudo`` (``what`` says which, e.g. "infer: predicting the test
    images"): out of memory becomes one line naming the ``infer`` key to lower, its value and half of it.

    Whole images go through the model ``infer.batch_size`` at a time; through the sliding window (``tile``, (H, W),
    not None) one image at a time, cut into tiles that go ``infer.tile_batch`` at a time.
    """
    try:
        yield
    except (RuntimeError, MemoryError) as e:
        if not is_out_of_memory(e):
            raise
        raise UserError(inference_out_of_memory(p, tile, what)) from None


def inference_out_of_memory(p: InferParams, tile: tuple[int, int] | None, what: str) -> str:
    """The message of :func:`inference_memory`.

    >>> inference_out_of_memory(InferParams(batch_size=8), None, "infer")
    'infer: out of memory at infer.batch_size 8; set infer.batch_size to 4'
    >>> inference_out_of_memory(InferParams(tile_batch=16), (64, 84), "pseudo")
    'pseudo: out of memory through the sliding window at infer.tile_batch 16; set infer.tile_batch to 8'
    """
    # TTA copies of one size go through the model as one batch: not batching them is the next step down
    tta = ", or infer.batched_tta: false" if p.batched_tta else ""
    if tile is None:
        bs = p.batch_size
        if bs > 1:
            return f"{what}: out of memory at infer.batch_size {bs}; set infer.batch_size to {bs // 2}"
        return (
            f"{what}: out of memory at infer.batch_size 1; set infer.sliding: true to predict in tiles{tta}, or run "
            "on a device with more memory"
        )
    tb = p.tile_batch
    if tb > 1:
        return (
            f"{what}: out of memory through the sliding window at infer.tile_batch {tb}; set infer.tile_batch to "
            f"{tb // 2}"
        )
    return (
        f"{what}: out of memory through the sliding window at infer.tile_batch 1; set a smaller infer.tile (now "
        f"{list(tile)}){tta}, or run on a device with more memory"
    )


def fold_health(
    where: str, history: Sequence[dict[str, Any]], preds: Sequence[np.ndarray], truths: Sequence[np.ndarray]
) -> dict[str, Any]:
    """metrics.json's fault fields: the batches skipped over the run (``skipped_nonfinite`` of each history row), and
    whether the (H, W) validation predictions of the best model collapsed to one class (a warning says so)."""
    health = {
        "skipped_nonfinite_batches": int(sum(r.get("skipped_nonfinite", 0) for r in history)),
        "collapsed": collapsed(preds, truths),
    }
    if health["collapsed"]:
        only = int(np.unique(preds[0])[0])
        print(
            f"warning: {where}: the best model predicts class {only} for every validation pixel while the truth has "
            "more classes: it collapsed (lower recipe.lr, check the loss and class weights, or train longer)"
        )
    return health
