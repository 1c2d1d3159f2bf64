"""The end of a run: the best checkpoint's out-of-fold probabilities, ``metrics.json`` and the fold's report."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from pipeline.config import ModelConfig
from pipeline.data.dataset import SegDataset
from pipeline.faults import fold_health
from pipeline.io import load_torch, npz_writer, read_image, write_json
from pipeline.metrics import BoundaryIoU, counter, summarize
from pipeline.models.registry import build_model
from pipeline.paths import FoldFiles
from pipeline.predict import activate, iter_logits
from pipeline.store import Lazy, SpillDict
from pipeline.threshold import decide
from pipeline.training.checkpoint import evaluated_weights
from pipeline.training.context import Context


def finish_fold(
    val_ds: SegDataset, val_ids: list[int], cfg: ModelConfig, history: list[dict[str, Any]], ctx: Context
) -> dict[str, Any]:
    """Reload the best checkpoint, write out-of-fold probabilities and metrics.json; return the metrics (with
    :func:`pipeline.faults.fold_health`'s fields: the batches skipped as non-finite, and whether it collapsed)."""
    files, classes = ctx.run.files, ctx.classes
    ck = load_torch(files.best)
    model = build_model(cfg, len(classes)).to(ctx.device)
    model.load_state_dict(evaluated_weights(ck))
    if ctx.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.eval()
    sizes = lambda i: val_ds.original_mask(i).shape  # noqa: E731
    # memory flat in the fold's size: probabilities stream into the npz, argmax masks spill to disk (pipeline.store)
    with npz_writer(files.oof) as oof, SpillDict(files.oof.parent) as preds:
        for idx, logits in iter_logits(
            model, val_ds, ctx.device, ctx.batch_size, sizes, amp_ctx=ctx.autocast, channels_last=ctx.channels_last
        ):
            p = activate(logits, ctx.multilabel).half().cpu().numpy()  # (B, C, H, W) float16
            for j, i in enumerate(idx.tolist()):
                oof.add(str(val_ids[i]), p[j])
                preds[i] = decide(p[j], None, ctx.multilabel).astype(np.uint8)
        ordered, truths = Lazy(len(val_ds), preds.__getitem__), Lazy(len(val_ds), val_ds.original_mask)
        fold_report(files, val_ds, ordered, classes, ctx.multilabel)
        health = fold_health(f"{ck['model_name']} fold {ck['fold']}", history, ordered, truths)
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
        # recipe.average_best: the averaged epochs, their score and whether best.pt is the average
        **({"averaged": ck["averaged"]} if ck.get("averaged") else {}),
        # skipped_nonfinite_batches, and collapsed: a best model that predicts one class everywhere (a warning too)
        **health,
    }
    write_json(files.metrics, metrics)
    return metrics


def fold_report(
    files: FoldFiles,
    val_ds: SegDataset,
    preds: Sequence[np.ndarray],
    classes: list[dict[str, Any]],
    multilabel: bool = False,
) -> None:
    """The fold's evaluation: mmseg-style per-class table (printed, CSV, markdown), confusion-matrix PNG (class maps
    only), and a grid of the worst and best validation images (image / truth / prediction / error). ``preds`` and
    the truths are read one at a time (any sequence: a :class:`~pipeline.store.Lazy` one keeps memory flat)."""
    from pipeline.metrics import image_miou
    from pipeline.plots import plot_confusion_matrix, plot_examples
    from pipeline.tables import format_table, write_tables

    names = [c["name"] for c in classes]
    cm, biou = counter(len(classes), multilabel, per_image=True), BoundaryIoU(len(classes), multilabel=multilabel)
    truths = Lazy(len(val_ds), val_ds.original_mask)
    for t, p in zip(truths, preds):
        cm.update(p, t)
        biou.update(p, t)
    summary = summarize(cm, names, boundary=biou)
    print(format_table(summary))
    write_tables(summary, files.per_class_csv, files.per_class_md)
    if not multilabel:  # a multilabel task has no one confusion matrix: one 2 x 2 per class, in the table
        plot_confusion_matrix(cm.matrix, names, files.confusion_png)
    images = Lazy(len(val_ds), lambda i: read_image(val_ds.images[i]))  # only the drawn rows are read
    plot_examples(files.examples_png, images, truths, preds, len(classes), n=4, scores=image_miou(cm.image_matrices))
