"""Training one model on one fold: the loop, checkpoints, resume, validation and out-of-fold predictions.

Outputs (all written atomically, under ``Layout.model_dir(model, fold, round)``):
    last.pt / best.pt   weights, EMA, optimizer, scheduler, scaler, RNG, epoch, config, classes, metrics
    metrics.json (dvc metrics), config.yaml (the resolved config); the per-epoch log for dvc plots goes to
    ``Layout.curve_path`` (outside the folder, which DVC tracks as one output)
    oof.npz             float16 softmax probabilities (C, H, W) of each validation image, keyed by image id

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
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import yaml
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from pipeline.closure import PROJECT_ROOT, closure_digest
from pipeline.config import DataParams, ModelConfig, Params, TrainParams, to_dict
from pipeline.data.dataset import SegDataset, build_transform, normalize
from pipeline.data.folds import read_folds
from pipeline.data.sampling import CropSampler, foreground_points
from pipeline.errors import UserError
from pipeline.io import (
    load_torch,
    read_image,
    read_json,
    safe_join,
    save_torch,
    write_csv,
    write_json,
    write_npz,
    write_text,
)
from pipeline.losses import WeightedLoss
from pipeline.metrics import BoundaryIoU, ConfusionMatrix, boundary_iou_scores, summarize
from pipeline.models.optim import param_groups
from pipeline.models.registry import build_model
from pipeline.oof import scores as oof_scores
from pipeline.paths import Layout
from pipeline.predict import autocast, iter_logits
from pipeline.rounds import LOG_COLUMNS, pseudo_set, skip_training_round, training_round_runs

# The module the train stage runs (dvc.yaml): its import closure is the training code the fingerprint covers.
TRAIN_ENTRY = "stages.train"


@dataclasses.dataclass
class FoldSplit:
    """Paths of one fold's training and validation images and masks."""

    train_images: list[Path]
    train_masks: list[Path]
    val_ids: list[int]
    val_images: list[Path]
    val_masks: list[Path]


def fold_split(layout: Layout, data: DataParams, fold: int, extra: Sequence[tuple[Path, Path]] = ()) -> FoldSplit:
    """Split the saved folds: fold ``fold`` validates, the rest (plus ``extra`` image/mask pairs) train.

    ``extra`` (e.g. pseudo-labelled test images) only ever joins the training side.
    """
    folds = read_folds(layout)
    if fold not in set(folds["fold"]):
        raise UserError(f"fold {fold} is not in {layout.folds_csv} (folds 0..{folds['fold'].max()})")
    images_root = Path(data.root) / data.images_dir
    tr, va = folds[folds["fold"] != fold], folds[folds["fold"] == fold]
    return FoldSplit(
        train_images=[images_root / f for f in tr["file_name"]] + [p for p, _ in extra],
        train_masks=[layout.mask_path(i) for i in tr["image_id"]] + [m for _, m in extra],
        val_ids=[int(i) for i in va["image_id"]],
        val_images=[images_root / f for f in va["file_name"]],
        val_masks=[layout.mask_path(i) for i in va["image_id"]],
    )


def pseudo_pairs(params: Params, layout: Layout, fold: int, round_: int = 1) -> list[tuple[Path, Path]]:
    """(test image path, pseudo mask path) pairs that round ``round_ + 1``'s fold ``fold`` trains on."""
    d = layout.pseudo_dir(round_, pseudo_set(params, fold))
    index = d / "index.csv"
    if not index.is_file():
        raise UserError(f"{index} not found: run the pseudo stage first (dvc repro pseudo)")
    df = pd.read_csv(index)
    root = Path(params.data.root) / params.data.images_dir
    return [(safe_join(root, f), d / m) for f, m in zip(df["file_name"], df["mask"])]


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
    if round_ == 1:
        return train_fold(cfg, model_name, fold, layout, params.data, params.train, metric=params.metric.name)
    if not training_round_runs(params, round_):
        skip_training_round(params, layout, model_name, fold, round_)
        return None
    ps = params.pseudo
    recipe = cfg.recipe
    if ps.epochs is not None:
        recipe = dataclasses.replace(recipe, epochs=ps.epochs)
    if ps.lr_scale != 1.0:
        recipe = dataclasses.replace(recipe, lr=recipe.lr * ps.lr_scale)
    train = params.train if ps.epochs is None else dataclasses.replace(params.train, epochs=None)
    init = layout.checkpoint(model_name, fold, round_ - 1) if ps.init_from_previous else None
    (layout.model_dir(model_name, fold, round_) / "skipped.txt").unlink(missing_ok=True)  # from a run with fewer rounds
    return train_fold(
        dataclasses.replace(cfg, recipe=recipe),
        model_name,
        fold,
        layout,
        params.data,
        train,
        round_=round_,
        extra=pseudo_pairs(params, layout, fold, round_ - 1),
        init_weights=init,
        metric=params.metric.name,
    )


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device is cuda but no CUDA device is available (use auto or cpu)")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and dist.is_available() and dist.is_initialized():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device(name)


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warm-up to 1 over ``warmup`` steps, then cosine down to ``min_ratio`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def seed_epoch(seed: int, epoch: int) -> None:
    """Seed every RNG from (seed, epoch): shuffling and augmentation repeat exactly after a resume."""
    s = seed * 100_003 + epoch
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
    ``code`` is the digest of the training code (:func:`pipeline.closure.closure_digest` of :data:`TRAIN_ENTRY`).
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
            "image_bytes": [p.stat().st_size for p in [*split.train_images, *split.val_images]],
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def training_data(
    cfg: ModelConfig, split: FoldSplit, transform: Any, preload: bool, ddp: Dist
) -> tuple[SegDataset, torch.utils.data.Sampler[Any] | None]:
    """The training dataset and its sampler: ``None`` (the loader shuffles one pass, as always) unless the recipe
    sets ``samples_per_epoch`` or ``foreground_share``, then a :class:`CropSampler` seeded from (seed, epoch)."""
    rec = cfg.recipe
    crop = cfg.input_size if cfg.resize == "pad" else None  # resize: the whole image is the sample
    train_ds = SegDataset(split.train_images, split.train_masks, transform, preload=preload, crop=crop)
    if rec.samples_per_epoch is None and rec.foreground_share == 0.0:
        if ddp.world == 1:
            return train_ds, None
        return train_ds, DistributedSampler(train_ds, ddp.world, ddp.rank, shuffle=True, seed=rec.seed, drop_last=True)
    points = foreground_points([train_ds.original_mask(i) for i in range(len(train_ds))], seed=rec.seed)
    sampler = CropSampler(
        len(train_ds), points, rec.samples_per_epoch, rec.foreground_share, rec.seed, ddp.rank, ddp.world
    )
    return train_ds, sampler


@dataclasses.dataclass
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str) -> Dist:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        use_cuda = device_name != "cpu" and torch.cuda.is_available()
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return Dist(dist.get_rank(), dist.get_world_size())


def train_fold(
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
    if params.epochs is not None:
        cfg = dataclasses.replace(cfg, recipe=dataclasses.replace(cfg.recipe, epochs=params.epochs))
    if params.seed:
        cfg = dataclasses.replace(cfg, recipe=dataclasses.replace(cfg.recipe, seed=cfg.recipe.seed + params.seed))
    rec = cfg.recipe
    if params.threads > 0:
        torch.set_num_threads(params.threads)
    ddp = init_distributed(params.device)
    device = resolve_device(params.device)
    out_dir = layout.model_dir(model_name, fold, round_)
    classes = read_json(layout.classes_json)
    num_classes = len(classes)
    split = fold_split(layout, data, fold, extra)
    fp = fingerprint(cfg, fold, round_, split, init_weights, closure_digest(TRAIN_ENTRY, code_root))

    # --- data: each process sees batch_size // world images per step, so the global batch is batch_size
    per_proc_batch = max(1, rec.batch_size // ddp.world)
    transform = build_transform(cfg, train=True, seed=rec.seed)
    train_ds, sampler = training_data(cfg, split, transform, params.preload, ddp)
    val_ds = SegDataset(split.val_images, split.val_masks, build_transform(cfg, train=False), preload=params.preload)
    loader = DataLoader(
        train_ds,
        batch_size=per_proc_batch,
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=rec.num_workers,
        drop_last=True,
        persistent_workers=rec.num_workers > 0,
    )
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        what = f"{rec.samples_per_epoch} samples" if rec.samples_per_epoch else f"{len(train_ds)} training images"
        raise UserError(
            f"fold {fold}: {what} is fewer than one batch ({rec.batch_size}); set recipe.samples_per_epoch "
            f"(crops per epoch) to at least {rec.batch_size} in {layout.model_config(model_name)}"
        )
    total_steps = steps_per_epoch * rec.epochs

    # --- model, optimiser, schedule, scaler, EMA
    # seed the weight init too: otherwise it depends on whatever ran before in the process, and two runs of one
    # config (or a run and its resumed twin in another process) start from different weights
    torch.manual_seed(rec.seed)
    model = build_model(cfg, num_classes).to(device)
    if init_weights is not None:
        model.load_state_dict(load_torch(init_weights)["model"])
    if rec.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(param_groups(model, rec.lr, rec.weight_decay, rec.layer_decay), lr=rec.lr)
    warmup = int(round(rec.warmup_epochs * steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, warmup, rec.min_lr_ratio)
    )
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and rec.amp == "fp16")
    ema = None
    if rec.ema is not None:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=rec.ema)
    criterion = WeightedLoss(rec.loss, rec.class_weights).to(device)
    net: torch.nn.Module = DistributedDataParallel(model) if ddp.world > 1 else model
    if rec.compile:
        net = torch.compile(net)  # type: ignore[assignment]
    amp_ctx = lambda: autocast(device, rec.amp, rec.cpu_bf16)  # noqa: E731

    # --- resume
    start_epoch, step, best, best_epoch, history = 0, 0, -1.0, -1, []
    last = out_dir / "last.pt"
    if last.is_file():
        ck = load_torch(last, corrupt_ok=True)  # unreadable (half-written elsewhere, truncated): start afresh
        if ck is not None and ck.get("fingerprint") == fp:
            model.load_state_dict(ck["model"])
            optimizer.load_state_dict(ck["optimizer"])
            scheduler.load_state_dict(ck["scheduler"])
            scaler.load_state_dict(ck["scaler"])
            if ema is not None and ck.get("ema") is not None:
                ema.module.load_state_dict(ck["ema"])
            set_rng_state(ck["rng"])
            start_epoch, step = ck["epoch"], ck["step"]
            best, best_epoch, history = ck["best_miou"], ck["best_epoch"], list(ck["history"])
            if ddp.main:
                print(f"resuming {model_name} fold {fold} round {round_} after epoch {start_epoch}")
        elif ddp.main:
            if ck is not None:
                print(f"{last} belongs to another config, data or training code; starting afresh")

    def write_curves() -> None:
        write_csv(
            layout.curve_path(model_name, fold, round_), LOG_COLUMNS, [[r[c] for c in LOG_COLUMNS] for r in history]
        )

    if ddp.main:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_text(out_dir / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
        # DVC deletes the (non-persistent) curves file before running the stage: a resume of a finished run
        # must write it again from the checkpoint's history, or the stage fails for a missing output
        write_curves()

    def checkpoint(epoch: int, metrics: dict[str, Any]) -> dict[str, Any]:
        return {
            "model": model.state_dict(),
            "ema": ema.module.state_dict() if ema is not None else None,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": rng_state(),
            "epoch": epoch,
            "step": step,
            "best_miou": best,
            "best_epoch": best_epoch,
            "history": history,
            "fingerprint": fp,
            "config": to_dict(cfg),
            "classes": classes,
            "metrics": metrics,
            "model_name": model_name,
            "fold": fold,
            "round": round_,
        }

    eval_model = lambda: ema.module if ema is not None else model  # noqa: E731
    for epoch in range(start_epoch, rec.epochs):
        t0 = time.time()
        seed_epoch(rec.seed, epoch)
        transform.set_random_seed(rec.seed * 100_003 + epoch)
        if sampler is not None:
            sampler.set_epoch(epoch)
        net.train()
        loss_sum, n = torch.zeros((), device=device), 0
        bar = tqdm(
            loader,
            desc=f"{model_name} f{fold} r{round_} ep {epoch + 1}/{rec.epochs}",
            unit="batch",
            disable=not (progress and ddp.main),
            mininterval=2.0,
            leave=False,
        )
        for batch in bar:
            x = normalize(batch["image"].to(device, non_blocking=True))
            y = batch["mask"].to(device, non_blocking=True)
            if rec.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            try:
                with amp_ctx():
                    loss = criterion(net(x), y)
            except ValueError as e:
                if "Expected more than 1 value per channel" not in str(e):
                    raise
                raise UserError(
                    f"{model_name}: a batch of {x.shape[0]} image(s) per process is too small for this model's "
                    f"BatchNorm on pooled features (e.g. UPerNet's pyramid pooling); set recipe.batch_size to at "
                    f"least {2 * ddp.world} in {layout.model_config(model_name)}"
                ) from e
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if rec.grad_clip is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), rec.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            if ema is not None:
                ema.update(model, step=step)
            step += 1
            loss_sum += loss.detach()
            n += 1
        if ddp.world > 1:
            dist.all_reduce(loss_sum)  # every rank's share: the logged loss is the global mean
            loss_sum /= ddp.world
        train_loss = float(loss_sum) / max(1, n)
        train_img_s = n * per_proc_batch * ddp.world / max(1e-9, time.time() - t0)  # training only, not validation
        val = evaluate(eval_model(), val_ds, device, rec.batch_size, classes, amp_ctx, ddp, rec.channels_last, metric)
        if val["score"] > best:  # the best epoch in the competition metric (metric.name; mIoU by default)
            best, best_epoch = val["score"], epoch + 1
        row = {
            "epoch": epoch + 1,
            "step": step,
            "lr": optimizer.param_groups[-1]["lr"],
            "train_loss": train_loss,
            "val_mIoU": val["mIoU"],
            "val_mBIoU": val["mBIoU"],
            "val_aAcc": val["aAcc"],
            "train_img_s": round(train_img_s, 1),
            "seconds": round(time.time() - t0, 2),
        }
        history.append(row)
        if ddp.main:
            print(
                f"{model_name} fold {fold} round {round_} epoch {epoch + 1}/{rec.epochs}: loss {train_loss:.4f} "
                f"val mIoU {val['mIoU']:.4f} mBIoU {val['mBIoU']:.4f} aAcc {val['aAcc']:.4f} ({row['seconds']:.1f}s)"
            )
            write_curves()
            ck = checkpoint(epoch + 1, val)
            if best_epoch == epoch + 1:
                save_torch(out_dir / "best.pt", ck)
            save_torch(out_dir / "last.pt", ck)  # last: the one a resume reads, written after best
    if ddp.world > 1:
        dist.barrier()
    result: dict[str, Any] = {}
    if ddp.main:
        result = finish_fold(
            out_dir, val_ds, split.val_ids, device, rec.batch_size, classes, amp_ctx, rec.channels_last, cfg, history
        )
    if ddp.world > 1:
        dist.barrier()
    return result


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    val_ds: SegDataset,
    device: torch.device,
    batch_size: int,
    classes: list[dict[str, Any]],
    amp_ctx: Callable[[], Any],
    ddp: Dist,
    channels_last: bool,
    metric: str = "miou",
) -> dict[str, Any]:
    """Validation metrics over the fold's validation images (sharded over processes, matrices all-reduced).

    Returns :func:`pipeline.metrics.summarize`'s dict (mIoU, mBIoU, aAcc, per_class, ...) with ``metric`` (its
    name) and ``score``: the competition metric (:mod:`pipeline.oof`), which picks the best epoch.
    """
    model.eval()
    per_image = metric != "miou"  # dataset mIoU needs only the summed matrix: keep no per-image copies for it
    cm, biou = ConfusionMatrix(len(classes), per_image=per_image), BoundaryIoU(len(classes))
    subset: Any = val_ds
    if ddp.world > 1:
        subset = torch.utils.data.Subset(val_ds, list(range(ddp.rank, len(val_ds), ddp.world)))
        # Subset re-indexes items; the dataset's own index is kept in item["index"] so sizes still resolve
    sizes = lambda i: val_ds.original_mask(i).shape  # noqa: E731
    for idx, logits in iter_logits(
        model, subset, device, batch_size, sizes, amp_ctx=amp_ctx, channels_last=channels_last
    ):
        pred = logits.argmax(1).cpu()
        truth = torch.from_numpy(np.stack([val_ds.original_mask(int(i)) for i in idx]))
        cm.update(pred, truth)
        biou.update(pred, truth)
    matrix, b_inter, b_union = (torch.as_tensor(v) for v in (cm.matrix, biou.intersection, biou.union))
    images = cm.image_matrices if per_image else None  # (N, C, C) on this rank
    if ddp.world > 1:
        for t in (matrix, b_inter, b_union):
            dist.all_reduce(t)
        if per_image:  # every rank's images, for a per-image mean over the whole validation set
            parts: list[Any] = [None] * ddp.world
            dist.all_gather_object(parts, images)
            images = np.concatenate(parts)
    out = summarize(matrix.numpy(), [c["name"] for c in classes], boundary=boundary_iou_scores(b_inter, b_union))
    s = oof_scores(images if images is not None else matrix.numpy()[None], metric)
    out["metric"], out["score"] = s["metric"], s["score"]
    return out


def finish_fold(
    out_dir: Path,
    val_ds: SegDataset,
    val_ids: list[int],
    device: torch.device,
    batch_size: int,
    classes: list[dict[str, Any]],
    amp_ctx: Callable[[], Any],
    channels_last: bool,
    cfg: ModelConfig,
    history: list[dict[str, Any]],
) -> dict[str, Any]:
    """Reload the best checkpoint, write out-of-fold probabilities and metrics.json; return the metrics."""
    ck = load_torch(out_dir / "best.pt")
    model = build_model(cfg, len(classes)).to(device)
    model.load_state_dict(ck["ema"] if ck.get("ema") is not None else ck["model"])
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.eval()
    probs: dict[str, np.ndarray] = {}
    preds: dict[int, np.ndarray] = {}
    sizes = lambda i: val_ds.original_mask(i).shape  # noqa: E731
    for idx, logits in iter_logits(
        model, val_ds, device, batch_size, sizes, amp_ctx=amp_ctx, channels_last=channels_last
    ):
        p = torch.softmax(logits, 1).half().cpu().numpy()  # (B, C, H, W) float16
        for j, i in enumerate(idx.tolist()):
            probs[str(val_ids[i])] = p[j]
            preds[i] = p[j].argmax(0).astype(np.uint8)
    write_npz(out_dir / "oof.npz", **probs)
    fold_report(out_dir, val_ds, [preds[i] for i in range(len(val_ds))], classes)
    m = ck["metrics"]
    metrics = {
        "best_epoch": ck["best_epoch"],
        "val_mIoU": m["mIoU"],
        "metric": m.get("metric", "miou"),  # the competition metric that chose the best epoch, and its score
        "val_score": m.get("score", m["mIoU"]),
        "val_mBIoU": m["mBIoU"],
        "val_aAcc": m["aAcc"],
        "epochs": len(history),
        "train_seconds": round(sum(r["seconds"] for r in history), 1),
        "per_class_IoU": {k: v["IoU"] for k, v in m["per_class"].items()},
    }
    write_json(out_dir / "metrics.json", metrics)
    return metrics


def fold_report(out_dir: Path, val_ds: SegDataset, preds: list[np.ndarray], classes: list[dict[str, Any]]) -> None:
    """The fold's evaluation: mmseg-style per-class table (printed, CSV, markdown), confusion-matrix PNG, and a
    grid of the worst and best validation images (image / truth / prediction / error)."""
    from pipeline.metrics import image_miou
    from pipeline.report import format_table, plot_confusion_matrix, plot_examples, write_tables

    names = [c["name"] for c in classes]
    cm, biou = ConfusionMatrix(len(classes), per_image=True), BoundaryIoU(len(classes))
    truths = [val_ds.original_mask(i) for i in range(len(val_ds))]
    for t, p in zip(truths, preds):
        cm.update(p, t)
        biou.update(p, t)
    summary = summarize(cm, names, boundary=biou)
    print(format_table(summary))
    write_tables(summary, out_dir / "per_class.csv", out_dir / "per_class.md")
    plot_confusion_matrix(cm.matrix, names, out_dir / "confusion.png")
    images = _LazyImages(val_ds.images)  # only the drawn rows are read
    plot_examples(
        out_dir / "examples.png", images, truths, preds, len(classes), n=4, scores=image_miou(cm.image_matrices)
    )


class _LazyImages:
    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        return read_image(self.paths[i])
