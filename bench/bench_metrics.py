"""Time the confusion-matrix accumulator against torchmetrics on one 32 x 512 x 512, 11-class batch.

    python bench/bench_metrics.py [--runs 9] [--device cpu|cuda] [--boundary]

Both sides get the same int64 tensors in the same run (ours is also timed on the same maps as uint8, the dtype
a class-index mask is stored in: 8x less memory to read); the median of ``--runs`` timed runs (after one warm-up) is
reported. Ours is ``ConfusionMatrix.update`` plus reading the matrix and the per-class IoU; torchmetrics is
``MulticlassJaccardIndex(average=None, ignore_index=255)`` update + compute.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a plain script from anywhere

from pipeline.metrics import BoundaryIoU, ConfusionMatrix, class_iou  # noqa: E402

BATCH, SIZE, CLASSES = 32, 512, 11


def median_ms(fn: Callable[[], object], runs: int, device: torch.device) -> tuple[float, float]:
    """Median and min wall time of ``fn`` in milliseconds, synchronising CUDA around each run."""
    fn()  # warm-up: allocator, kernels, lazy imports
    times = []
    for _ in range(runs):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--boundary", action="store_true", help="also time BoundaryIoU.update (slow on CPU)")
    args = parser.parse_args()
    from torchmetrics.classification import MulticlassJaccardIndex

    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, CLASSES, (BATCH, SIZE, SIZE), generator=g)
    pred = torch.where(torch.rand(target.shape, generator=g) < 0.8, target, torch.randint(0, CLASSES, target.shape))
    target[:, :16] = 255  # some ignored pixels
    pred, target = pred.to(device), target.to(device)

    def ours() -> object:
        cm = ConfusionMatrix(CLASSES)
        cm.update(pred, target)
        return class_iou(cm)

    def theirs() -> object:
        metric = MulticlassJaccardIndex(num_classes=CLASSES, average=None, ignore_index=255).to(device)
        metric.update(pred, target)
        return metric.compute()

    pred8, target8 = pred.to(torch.uint8), target.to(torch.uint8)

    def ours_uint8() -> object:
        cm = ConfusionMatrix(CLASSES)
        cm.update(pred8, target8)
        return class_iou(cm)

    ours_iou, their_iou = ours(), theirs().cpu().numpy()
    max_diff = float(max(abs(ours_iou - their_iou).max(), abs(ours_uint8() - their_iou).max()))
    rows = [("ConfusionMatrix.update + IoU", *median_ms(ours, args.runs, device))]
    rows.append(("torchmetrics JaccardIndex update+compute", *median_ms(theirs, args.runs, device)))
    rows.append(("ConfusionMatrix, uint8 class maps (1 B/px)", *median_ms(ours_uint8, args.runs, device)))
    if args.boundary:

        def boundary() -> object:
            b = BoundaryIoU(CLASSES)
            b.update(pred, target)
            return b.scores()

        rows.append(("BoundaryIoU.update (not compared)", *median_ms(boundary, max(1, args.runs // 3), device)))

    pixels = BATCH * SIZE * SIZE
    print(f"batch {BATCH}x{SIZE}x{SIZE} int64 ({pixels / 1e6:.1f} M pixels), {CLASSES} classes, device {device}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.runs} runs")
    width = max(len(r[0]) for r in rows)
    print(f"{'':{width}}  {'median ms':>10}  {'min ms':>8}  {'Mpix/s':>8}")
    for name, med, low in rows:
        print(f"{name:{width}}  {med:10.2f}  {low:8.2f}  {pixels / med / 1e3:8.0f}")
    print(
        f"speed-up vs torchmetrics: {rows[1][1] / rows[0][1]:.1f}x (int64), {rows[1][1] / rows[2][1]:.1f}x (uint8);"
        f"  max |IoU difference|: {max_diff:.1e}"
    )


if __name__ == "__main__":
    main()
