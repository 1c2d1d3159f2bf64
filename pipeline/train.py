"""Training one model on one fold: the loop, checkpoints, resume, validation and out-of-fold predictions.

Outputs (all written atomically, under ``Layout.model_dir(model, fold, round)``):
    last.pt / best.pt   weights, EMA, optimizer, scheduler, scaler, RNG, epoch, config, classes, metrics
    metrics.json (dvc metrics), config.yaml (the resolved config); the per-epoch log for dvc plots goes to
    ``Layout.curve_path`` (outside the folder, which DVC tracks as one output)
    oof.npz             float16 softmax probabilities (C, H, W) of each validation image, keyed by image id
    top/                with ``recipe.average_best: k``, the k best epochs' weights (pipeline/training/average.py)

Resume: when ``last.pt`` exists and its fingerprint (config, fold, round, training images, initial weights and the
contents of the training code) matches, training continues from it with every piece of state restored; each epoch's
shuffling and augmentation are seeded from (seed, epoch), so a resumed run repeats the same epochs and steps as an
uninterrupted one. A finished run whose code changed (any module the train stage imports, :data:`TRAIN_ENTRY`)
trains afresh: the model folders persist between ``dvc repro`` runs, so otherwise a fix to ``losses.py`` would rerun
the stage and keep the old model.

Seed: the run's seed is the model config's ``recipe.seed`` plus ``train.seed`` (params.yaml, default 0), so one
param repeats every model of a run with new seeds while models keep their own; the effective seed is what the saved
config, the checkpoint and the fingerprint record.

Scale-out: under ``torchrun --nproc_per_node N`` the same function runs with DistributedDataParallel (gloo on
CPU, nccl on CUDA); the per-process batch is ``batch_size // N`` so the global batch and step count match a
single process; rank 0 writes every file.

:func:`train_fold` reads top to bottom; its steps live in ``pipeline.training``: ``recipe`` (every override of the
epochs, learning rate and seed), ``context`` (which run, and how it runs), ``setup`` (loaders, model and optimiser),
``epoch`` (one epoch of steps, validation), ``checkpoint`` (fingerprint, RNG, save/resume) and ``finish``
(out-of-fold probabilities, metrics.json, the fold report); device and processes are ``pipeline.distributed``'s.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import yaml

from pipeline.closure import PROJECT_ROOT, closure_digest
from pipeline.config import DataParams, ModelConfig, Params, TrainParams, to_dict
from pipeline.data.cache import fold_storage
from pipeline.data.folds import FoldSplit, fold_split
from pipeline.errors import UserError
from pipeline.faults import StepGuard
from pipeline.io import read_json, safe_join, write_csv, write_text
from pipeline.paths import Layout
from pipeline.rounds import LOG_COLUMNS, pseudo_set, skip_training_round, training_round_runs
from pipeline.training.average import TopK, average_into_best
from pipeline.training.checkpoint import Checkpoints, TrainState, fingerprint, seed_epoch
from pipeline.training.context import Context, RunId, make_context
from pipeline.training.epoch import evaluate, train_one_epoch
from pipeline.training.finish import finish_fold
from pipeline.training.recipe import round_config, run_config
from pipeline.training.setup import Loaders, Optimisation, build_loaders, build_optimisation
from pipeline.training.timebox import Timebox

__all__ = ["LOG_COLUMNS", "TRAIN_ENTRY", "FoldSplit", "fold_split", "pseudo_pairs", "train_fold", "train_round"]

# The module the train stage runs (dvc.yaml): its import closure is the training code the fingerprint covers.
TRAIN_ENTRY = "stages.train"


def pseudo_pairs(params: Params, layout: Layout, fold: int, round_: int = 1) -> list[tuple[Path, Path]]:
    """(test image path, pseudo mask path) pairs that round ``round_ + 1``'s fold ``fold`` trains on."""
    files = layout.pseudo_files(round_, pseudo_set(params, fold))
    index = files.index_csv
    if not index.is_file():
        raise UserError(f"{index} not found: run the pseudo stage first (dvc repro pseudo)")
    df = pd.read_csv(index)
    root = params.data.images_path
    return [(safe_join(root, f), files.root / m) for f, m in zip(df["file_name"], df["mask"])]


def train_round(
    cfg: ModelConfig, model_name: str, fold: int, layout: Layout, params: Params, round_: int = 1
) -> dict[str, Any] | None:
    """Train one (model, fold) of round ``round_``: round 1 on the labelled images; round r > 1 also on round r-1's
    pseudo-labelled test images, with ``pseudo.epochs`` and ``recipe.lr x pseudo.lr_scale``, from round r-1's
    weights when ``pseudo.init_from_previous``.

    Returns:
        The run's metrics, or ``None`` when ``pseudo.rounds`` has no round ``round_`` (a ``skipped.txt`` says so and
        the curves file is empty, so the DVC stage still has its outputs).
    """
    if round_ < 1:
        raise UserError(f"round must be 1 or more, got {round_}")
    if not training_round_runs(params, round_):
        skip_training_round(params, layout, model_name, fold, round_)
        return None
    # from a run that skipped this stage (fewer rounds, or a plan that trained fewer folds)
    layout.fold_files(model_name, fold, round_).skipped.unlink(missing_ok=True)
    if round_ == 1:
        return train_fold(cfg, model_name, fold, layout, params.data, params.train, metric=params.metric.name)
    cfg, train = round_config(cfg, params)
    init = layout.checkpoint(model_name, fold, round_ - 1) if params.pseudo.init_from_previous else None
    extra = pseudo_pairs(params, layout, fold, round_ - 1)
    return train_fold(
        cfg, model_name, fold, layout, params.data, train, round_, extra, init_weights=init, metric=params.metric.name
    )


def train_fold(  # noqa: PLR0913 - the public entry: train_round, the tests and bench/ pass these by name
    cfg: ModelConfig,
    model_name: str,
    fold: int,
    layout: Layout,
    data: DataParams,
    params: TrainParams,
    round_: int = 1,
    extra: Sequence[tuple[Path, Path]] = (),
    init_weights: Path | None = None,
    progress: bool = True,
    metric: str = "miou",
    code_root: Path = PROJECT_ROOT,
) -> dict[str, Any]:
    """Train ``model_name`` on ``fold`` (resuming if possible), write its outputs; return its metrics.

    ``metric`` (params.yaml ``metric.name``) scores each epoch's validation and picks the best epoch. ``code_root`` is
    the folder whose ``pipeline/`` and ``stages/`` the code digest of the fingerprint reads (the installed project;
    tests point it at an edited copy).
    """
    cfg = run_config(cfg, params)  # train.epochs, train.seed
    rec, run = cfg.recipe, RunId(layout, model_name, fold, round_)
    ctx = make_context(cfg, params, run, read_json(layout.classes_json), metric, progress)
    split = fold_split(layout, data, fold, extra)
    fp = fingerprint(cfg, fold, round_, split, init_weights, closure_digest(TRAIN_ENTRY, code_root))
    storage = fold_storage(
        params.preload,
        params.preload_mib,
        [*split.train_images, *split.val_images],
        [*split.train_masks, *split.val_masks],
        layout,
    )
    if ctx.ddp.main:
        print(f"{run.title}: {storage.why}")
    loaders = build_loaders(cfg, split, storage, ctx)
    opt = build_optimisation(cfg, ctx, loaders.steps_per_epoch, init_weights)
    checkpoints = Checkpoints(run, fp, cfg, ctx.classes, ctx.multilabel)
    state = checkpoints.resume(opt, ctx.ddp.main)
    guard = StepGuard(model_name, fold, round_, rec, run.model_config, ctx.ddp.world)  # pipeline/faults.py
    if ctx.ddp.main:
        start_outputs(run, cfg, state)

    top = TopK.for_run(run.files.top, rec.average_best, fresh=state.epoch == 0, main=ctx.ddp.main)
    timebox = Timebox(rec.budget_seconds, rec.epochs, [r["seconds"] for r in state.history])
    epochs, save_seconds = state.epochs or rec.epochs, 0.0
    while state.epoch < epochs:
        epoch, t0 = state.epoch, time.time()
        seed_epoch(rec.seed, epoch)
        loaders.set_epoch(rec.seed, epoch)
        desc = f"{model_name} f{fold} r{round_} ep {epoch + 1}/{epochs}"
        train_loss, images, skipped = train_one_epoch(opt, loaders.train, ctx, state, guard, desc)
        train_img_s = images / max(1e-9, time.time() - t0)  # training only, not validation
        with guard.step(epoch + 1, "validation"):
            val = evaluate(opt.eval_model, loaders.val, ctx)
        # never an epoch with non-finite weights or score as the best (best.pt never holds NaN)
        fit = functools.partial(guard.can_be_best, model=opt.eval_model, epoch=epoch + 1)
        best = state.end_epoch(val, train_loss, opt.lr, train_img_s, time.time() - t0, skipped, fit)
        if top is not None and ctx.ddp.main and top.would_keep(val["score"]) and fit(val["score"]):
            top.offer(state.epoch, val["score"], opt.eval_model)  # recipe.average_best: among the k best so far
        epochs = resize_epochs(timebox, state, time.time() - t0 + save_seconds, opt, loaders, ctx, run.title)
        if ctx.ddp.main:
            print(
                f"{run.title} epoch {epoch + 1}/{epochs}: loss {train_loss:.4f} val mIoU {val['mIoU']:.4f} "
                f"mBIoU {val['mBIoU']:.4f} aAcc {val['aAcc']:.4f} ({state.history[-1]['seconds']:.1f}s)"
            )
            write_curves(run, state)
            t_save = time.time()
            checkpoints.save(opt, state, val, best)
            save_seconds = time.time() - t_save  # counted in the next epoch's cost (this one is decided)
    if state.best_epoch < 0:
        raise guard.no_best()

    return end_run(top, cfg, ctx, loaders, state, guard, split.val_ids)


def end_run(
    top: TopK | None,
    cfg: ModelConfig,
    ctx: Context,
    loaders: Loaders,
    state: TrainState,
    guard: StepGuard,
    val_ids: list[int],
) -> dict[str, Any]:
    """After the last epoch: the average of the best epochs (``recipe.average_best``), then the out-of-fold
    probabilities and metrics of best.pt (rank 0); every process waits for the others between the two."""
    ctx.ddp.barrier()
    if top is not None:  # every process (the average's validation all-reduces), each reading rank 0's index afresh
        with guard.step(None, "averaging the best epochs' weights"):
            average_into_best(TopK(top.files, top.k), cfg, ctx, loaders, state, ctx.run.files.best)
        ctx.ddp.barrier()
    with guard.step(None, "out-of-fold prediction with best.pt"):  # out of memory: recipe.batch_size, as in training
        result = finish_fold(loaders.val, val_ids, cfg, state.history, ctx) if ctx.ddp.main else {}
    ctx.ddp.barrier()
    return result


def resize_epochs(
    timebox: Timebox, state: TrainState, cost: float, opt: Optimisation, loaders: Loaders, ctx: Context, title: str
) -> int:
    """After an epoch that cost ``cost`` seconds: the run's epochs re-sized to ``recipe.budget_seconds``
    (:mod:`pipeline.training.timebox`; every process takes rank 0's count), the schedule stretched to them."""
    state.seconds += cost
    timebox.costs.append(cost)
    before = state.epochs or timebox.planned
    epochs = timebox.epochs(state.epoch, state.seconds)
    if ctx.ddp.world > 1:  # one count for every process, or they would wait on each other at the end
        epochs = int(ctx.ddp.broadcast(torch.tensor([float(epochs)], device=ctx.device)).item())
    if epochs != before:
        opt.set_total_steps(epochs * loaders.steps_per_epoch)
        if ctx.ddp.main:
            print(
                f"{title}: {epochs} epochs instead of {before} to end on recipe.budget_seconds "
                f"({timebox.budget:.0f} s; {state.seconds:.0f} s spent, {timebox.costs[-1]:.1f} s the last epoch)"
            )
    state.epochs = epochs
    return epochs


def start_outputs(run: RunId, cfg: ModelConfig, state: TrainState) -> None:
    """The run's folder, its resolved config.yaml, and the curves so far (rank 0, before the first epoch)."""
    run.out_dir.mkdir(parents=True, exist_ok=True)
    write_text(run.files.config, yaml.safe_dump(to_dict(cfg), sort_keys=False))
    # DVC deletes the (non-persistent) curves file before running the stage: a resume of a finished run must write
    # it again from the checkpoint's history, or the stage fails for a missing output
    write_curves(run, state)


def write_curves(run: RunId, state: TrainState) -> None:
    """The per-epoch log so far (dvc plots), rewritten whole."""
    write_csv(run.curves, LOG_COLUMNS, [[r[c] for c in LOG_COLUMNS] for r in state.history])
