"""What a run is built from, before its first step: the loaders, and the model with everything that optimises it.

Each process sees ``batch_size // world`` images per step, so the global batch (and the step count) is the
recipe's whatever the number of processes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from pipeline.config import ModelConfig
from pipeline.data.cache import Storage
from pipeline.data.dataset import SegDataset, SoftPaths, build_transform
from pipeline.data.folds import FoldSplit
from pipeline.data.paste import PastedDataset, PasteSampler
from pipeline.data.sampling import CropSampler, Extra, foreground_points
from pipeline.errors import UserError
from pipeline.io import load_torch
from pipeline.losses import SoftTarget, WeightedLoss
from pipeline.models.optim import param_groups
from pipeline.models.registry import build_model
from pipeline.store import Lazy
from pipeline.training.checkpoint import epoch_seed, evaluated_weights
from pipeline.training.context import Context

# (value, what) -> whether the loss or gradient norm is finite; False skips the batch (faults.StepGuard.checker)
Check = Callable[[torch.Tensor, str], bool]


@dataclasses.dataclass
class Loaders:
    """The training loader (its transform and sampler reseeded every epoch) and the validation images."""

    train: DataLoader
    val: SegDataset
    transform: Any  # the training transform (albumentations Compose)
    sampler: Sampler[Any] | None  # None: the loader shuffles one pass over the files

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train)

    def set_epoch(self, seed: int, epoch: int) -> None:
        """Seed the augmentation and the sampling from (seed, epoch): a resumed run repeats them exactly."""
        self.transform.set_random_seed(epoch_seed(seed, epoch))
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)  # type: ignore[attr-defined]


def training_data(
    cfg: ModelConfig, split: FoldSplit, transform: Any, storage: Storage, ctx: Context
) -> tuple[Dataset, Sampler[Any] | None]:
    """The training dataset and its sampler (:func:`sampled_data`), both wrapped for copy-paste
    (:mod:`pipeline.data.paste`) when ``recipe.paste`` is on."""
    train_ds, sampler = sampled_data(cfg, split, transform, storage, ctx)
    if cfg.recipe.paste == 0.0:
        return train_ds, sampler
    return PastedDataset(train_ds), PasteSampler(sampler, len(train_ds), cfg.recipe.paste, cfg.recipe.seed)


def sampled_data(
    cfg: ModelConfig, split: FoldSplit, transform: Any, storage: Storage, ctx: Context
) -> tuple[SegDataset, Sampler[Any] | None]:
    """The training dataset and its sampler: ``None`` (the loader shuffles one pass, as always) unless the recipe
    sets ``samples_per_epoch`` or ``foreground_share``, or a round 2+ sets the pseudo-labels' share or pretraining,
    then a :class:`CropSampler` seeded from (seed, epoch)."""
    rec, ddp = cfg.recipe, ctx.ddp
    crop = cfg.input_size if cfg.resize == "pad" else None  # resize: the whole image is the sample
    soft = split.soft_targets() if rec.pseudo_soft else None  # pseudo.soft: the teacher's probabilities
    train_ds = SegDataset(
        split.train_images,
        split.train_masks,
        transform,
        preload=storage.preload,
        crop=crop,
        cache=storage.cache,
        soft=SoftPaths(soft, len(ctx.classes)) if soft is not None else None,
    )
    split_extra = split.extra > 0 and (rec.pseudo_share is not None or rec.pseudo_pretrain > 0)
    if rec.samples_per_epoch is None and rec.foreground_share == 0.0 and not split_extra:
        if ddp.world == 1:
            return train_ds, None
        return train_ds, DistributedSampler(train_ds, ddp.world, ddp.rank, shuffle=True, seed=rec.seed, drop_last=True)
    points = (
        foreground_points(Lazy(len(train_ds), train_ds.original_mask), rec.seed, ctx.multilabel)
        if rec.foreground_share
        else {}
    )
    sampler = CropSampler(
        len(train_ds),
        points,
        rec.samples_per_epoch,
        rec.foreground_share,
        rec.seed,
        ddp.rank,
        ddp.world,
        Extra(split.extra, rec.pseudo_share, rec.pseudo_pretrain),
    )
    return train_ds, sampler


def build_loaders(cfg: ModelConfig, split: FoldSplit, storage: Storage, ctx: Context) -> Loaders:
    """The fold's loaders, reading from ``storage``; a :class:`UserError` when an epoch would not fill one batch."""
    rec = cfg.recipe
    transform = build_transform(cfg, train=True, seed=rec.seed)
    train_ds, sampler = training_data(cfg, split, transform, storage, ctx)
    val_tf = build_transform(cfg, train=False)
    val_ds = SegDataset(split.val_images, split.val_masks, val_tf, preload=storage.preload, cache=storage.cache)
    loader = DataLoader(
        train_ds,
        batch_size=ctx.per_process_batch,
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=rec.num_workers,
        drop_last=True,
        persistent_workers=rec.num_workers > 0,
        pin_memory=ctx.device.type == "cuda",  # page-locked batches: the copy to the device overlaps (non_blocking)
    )
    if len(loader) == 0:
        what = f"{rec.samples_per_epoch} samples" if rec.samples_per_epoch else f"{len(train_ds)} training images"
        raise UserError(
            f"fold {ctx.run.fold}: {what} is fewer than one batch ({rec.batch_size}); set recipe.samples_per_epoch "
            f"(crops per epoch) to at least {rec.batch_size} in {ctx.run.model_config}"
        )
    return Loaders(loader, val_ds, transform, sampler)


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warm-up to 1 over ``warmup`` steps, then cosine down to ``min_ratio`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))


@dataclasses.dataclass
class Schedule:
    """:func:`lr_factor` as the object LambdaLR calls: its fields are in the scheduler's state_dict, so a run whose
    ``total`` was re-sized (:mod:`pipeline.training.timebox`) resumes on the same schedule."""

    total: int
    warmup: int
    min_ratio: float

    def __call__(self, step: int) -> float:
        return lr_factor(step, self.total, self.warmup, self.min_ratio)


@dataclasses.dataclass
class Optimisation:
    """The model and what optimises it: the network that steps (DDP- and compile-wrapped), AdamW, the per-step
    schedule, the fp16 gradient scaler, the EMA of the weights and the loss."""

    model: torch.nn.Module  # the bare model: its state is what checkpoints hold
    net: torch.nn.Module  # what the forward pass runs: the model, wrapped in DDP and torch.compile as configured
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    ema: Any  # timm ModelEmaV3, or None
    criterion: torch.nn.Module
    grad_clip: float | None

    @property
    def eval_model(self) -> torch.nn.Module:
        """What validation scores: the EMA weights when there are, else the model."""
        return self.ema.module if self.ema is not None else self.model

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[-1]["lr"]

    def set_total_steps(self, total: int) -> None:
        """Stretch or shrink the schedule so that it ends at step ``total``; the next step's rate follows it."""
        for schedule in self.scheduler.lr_lambdas:  # type: ignore[attr-defined]
            schedule.total = total

    def loss(self, x: torch.Tensor, y: torch.Tensor | SoftTarget, autocast: Callable[[], Any]) -> torch.Tensor:
        """The training loss of a batch: the forward pass under ``autocast`` (:meth:`Context.autocast`), then the
        criterion (in float32)."""
        with autocast():
            return self.criterion(self.net(x), y)

    def step(self, loss: torch.Tensor, step: int, finite: Check | None = None) -> bool:
        """Backward ``loss``, clip, step the optimizer, the scaler and the schedule, update the EMA (``step``: the
        optimiser steps taken before this one); return whether the weights were updated.

        ``finite(value, what)`` (:meth:`pipeline.faults.StepGuard.checker`) is asked of the loss before the backward
        pass and of the clipped gradient norm: it raises, or returns False to skip the batch (no optimiser, scaler or
        EMA step; the schedule still moves on, so the step count stays the recipe's).
        """
        updated = (finite is None or finite(loss, "loss")) and self._update(loss, finite)
        self.scheduler.step()  # a skipped batch still counts as a step
        if self.ema is not None and updated:
            self.ema.update(self.model, step=step)
        return updated

    def _update(self, loss: torch.Tensor, finite: Check | None) -> bool:
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            # an fp16 scaler skips inf gradients itself; otherwise they would write NaN into the weights
            if not (self.scaler.is_enabled() or finite is None or finite(norm, "gradient norm")):
                return False
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return True

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.module.load_state_dict(state["ema"])


def build_optimisation(
    cfg: ModelConfig, ctx: Context, steps_per_epoch: int, init_weights: Path | None = None
) -> Optimisation:
    """The model (from the weights ``init_weights`` validated, when given) and its optimiser, schedule, scaler, EMA
    and loss."""
    rec, device = cfg.recipe, ctx.device
    # seed the weight init too: otherwise it depends on whatever ran before in the process, and two runs of one
    # config (or a run and its resumed twin in another process) start from different weights
    torch.manual_seed(rec.seed)
    model = build_model(cfg, len(ctx.classes)).to(device)
    if init_weights is not None:
        model.load_state_dict(evaluated_weights(load_torch(init_weights)))  # what round r-1 validated (EMA, average)
    if rec.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(param_groups(model, rec.lr, rec.weight_decay, rec.layer_decay), lr=rec.lr)
    total_steps, warmup = steps_per_epoch * rec.epochs, int(round(rec.warmup_epochs * steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, Schedule(total_steps, warmup, rec.min_lr_ratio))
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and rec.amp == "fp16")
    ema = None
    if rec.ema is not None:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=rec.ema)
    criterion = WeightedLoss.for_config(cfg, ctx.multilabel).to(device)
    net: torch.nn.Module = DistributedDataParallel(model) if ctx.ddp.world > 1 else model
    if rec.compile:
        net = torch.compile(net)  # type: ignore[assignment]
    return Optimisation(model, net, optimizer, scheduler, scaler, ema, criterion, rec.grad_clip)
