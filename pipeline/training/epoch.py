"""One epoch: a pass of optimiser steps over the training loader, then the validation that scores it."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from tqdm import tqdm

from pipeline.data.dataset import SegDataset
from pipeline.faults import StepGuard
from pipeline.losses import labels
from pipeline.metrics import BoundaryIoU, boundary_iou_scores, counter, summarize
from pipeline.oof import scores as oof_scores
from pipeline.predict import activate, iter_logits
from pipeline.threshold import decide
from pipeline.training.checkpoint import TrainState
from pipeline.training.context import Context
from pipeline.training.setup import Optimisation


def train_one_epoch(
    opt: Optimisation, loader: DataLoader, ctx: Context, state: TrainState, guard: StepGuard, desc: str
) -> tuple[float, int, int]:
    """Step over every batch of ``loader`` (``state.step`` counts the steps; ``desc`` labels the progress bar).

    ``guard`` turns out of memory, a batch too small for BatchNorm and a NaN/inf loss or gradient norm into one-line
    errors naming the fix, or (``recipe.skip_nonfinite``) skips a non-finite batch (:mod:`pipeline.faults`).

    Returns:
        The epoch's mean training loss over every process's batches that updated the weights, the images trained on
        (all processes), and the batches skipped as non-finite.
    """
    opt.net.train()
    epoch = state.epoch + 1  # from 1, as the messages name it
    loss_sum, n = torch.zeros((), device=ctx.device), 0
    for batch in tqdm(loader, desc=desc, unit="batch", disable=not ctx.bars, mininterval=2.0, leave=False):
        x, y = ctx.inputs(batch)  # (B, 3, H, W) float32, (B, H, W) int64 (or a SoftTarget of them)
        with guard.step(epoch):  # out of memory, a batch too small for BatchNorm: one line naming the fix
            loss = opt.loss(x, y, ctx.autocast)
            # a NaN/inf loss or gradient norm: an error, or (recipe.skip_nonfinite) no update from this batch
            updated = opt.step(loss, state.step, guard.checker(epoch, state.step + 1, target=labels(y)))
        state.step += 1
        if updated:
            loss_sum += loss.detach()
            n += 1
    ctx.ddp.mean(loss_sum)  # every rank's share: the logged loss is the global mean
    skipped = guard.end_epoch(epoch, len(loader))  # every batch skipped: an error
    return float(loss_sum) / max(1, n), n * ctx.per_process_batch * ctx.ddp.world, skipped


@torch.no_grad()
def evaluate(model: torch.nn.Module, val_ds: SegDataset, ctx: Context) -> dict[str, Any]:
    """Validation metrics over the fold's validation images (sharded over processes, matrices all-reduced).

    Returns :func:`pipeline.metrics.summarize`'s dict (mIoU, mBIoU, aAcc, per_class, ...) with ``metric`` (its
    name) and ``score``: the competition metric (:mod:`pipeline.oof`), which picks the best epoch.
    """
    model.eval()
    ddp, classes = ctx.ddp, ctx.classes
    per_image = ctx.metric != "miou"  # dataset mIoU needs only the summed matrix: keep no per-image copies for it
    c, multilabel = len(classes), ctx.multilabel
    cm, biou = counter(c, multilabel, per_image), BoundaryIoU(c, multilabel=multilabel)
    subset: Any = val_ds
    if ddp.world > 1:
        subset = torch.utils.data.Subset(val_ds, list(range(ddp.rank, len(val_ds), ddp.world)))
        # Subset re-indexes items; the dataset's own index is kept in item["index"] so sizes still resolve
    sizes = lambda i: val_ds.original_mask(i).shape  # noqa: E731
    for idx, logits in iter_logits(
        model, subset, ctx.device, ctx.batch_size, sizes, amp_ctx=ctx.autocast, channels_last=ctx.channels_last
    ):
        pred = decide(activate(logits, multilabel), None, multilabel).cpu()  # the argmax, or each sigmoid over 0.5
        truth = torch.from_numpy(np.stack([val_ds.original_mask(int(i)) for i in idx]))
        cm.update(pred, truth)
        biou.update(pred, truth)
    matrix, b_inter, b_union = (torch.as_tensor(v) for v in (cm.matrix, biou.intersection, biou.union))
    images = cm.image_matrices if per_image else None  # (N, C, C) (multilabel: (N, C, 2, 2)) on this rank
    if ddp.world > 1:
        for t in (matrix, b_inter, b_union):
            dist.all_reduce(t)
        if per_image:  # every rank's images, for a per-image mean over the whole validation set
            parts: list[Any] = [None] * ddp.world
            dist.all_gather_object(parts, images)
            images = np.concatenate(parts)
    out = summarize(matrix.numpy(), [c["name"] for c in classes], boundary=boundary_iou_scores(b_inter, b_union))
    whole = matrix.numpy() if multilabel else matrix.numpy()[None]  # a multilabel matrix is (1, C, 2, 2) already
    s = oof_scores(images if images is not None else whole, ctx.metric)
    out["metric"], out["score"] = s["metric"], s["score"]
    return out
