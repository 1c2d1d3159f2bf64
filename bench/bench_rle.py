"""RLE encode speed: pipeline.rle vs a per-pixel Python loop vs pycocotools, on the same masks in one run.

    python bench/bench_rle.py [--n 20] [--size 512] [--seed 0]

Each method turns a binary (H, W) mask into a string: ours and the loop write Kaggle ``start length`` text
(column-major, 1-based); pycocotools writes its own compressed COCO string (``encode`` + ``bytes.decode``), the
work a COCO results file needs. The outputs of ours and the loop are checked to be equal.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import pycocotools.mask as mask_utils

from pipeline import rle


def blob_masks(n: int, size: int, seed: int) -> list[np.ndarray]:
    """Masks that look like segmentation output: a few filled ellipses each (a few hundred runs per mask)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = []
    for _ in range(n):
        m = np.zeros((size, size), dtype=np.uint8)
        for _ in range(rng.integers(2, 6)):
            cy, cx = rng.uniform(0, size, 2)
            ry, rx = rng.uniform(size / 30, size / 5, 2)
            m[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = 1
        out.append(m)
    return out


def loop_encode(mask: np.ndarray) -> str:
    """The per-pixel Python loop found in many Kaggle kernels."""
    flat = mask.T.flatten().tolist()
    parts: list[str] = []
    start = -1
    for i, v in enumerate(flat):
        if v and start < 0:
            start = i
        elif not v and start >= 0:
            parts += [str(start + 1), str(i - start)]
            start = -1
    if start >= 0:
        parts += [str(start + 1), str(len(flat) - start)]
    return " ".join(parts)


def coco_encode(mask: np.ndarray) -> str:
    return mask_utils.encode(np.asfortranarray(mask))["counts"].decode("ascii")


def timed(fn: Callable[[np.ndarray], str], masks: list[np.ndarray], repeat: int) -> tuple[float, list[str]]:
    """Best time over ``repeat`` passes (seconds for all masks) and the outputs of the last pass."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = [fn(m) for m in masks]
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=20, help="number of masks")
    p.add_argument("--size", type=int, default=512, help="mask side in pixels")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    masks = blob_masks(args.n, args.size, args.seed)
    mpix = args.n * args.size * args.size / 1e6
    runs = np.mean([rle.encode_runs(m)[0].size for m in masks])
    print(f"{args.n} masks of {args.size}x{args.size} ({mpix:.1f} MPix), {runs:.0f} runs per mask on average")

    results = {
        "pipeline.rle.encode": timed(rle.encode, masks, repeat=5),
        "per-pixel Python loop": timed(loop_encode, masks, repeat=1),
        "pycocotools encode+str": timed(coco_encode, masks, repeat=5),
    }
    assert results["pipeline.rle.encode"][1] == results["per-pixel Python loop"][1], "ours and the loop disagree"

    ours = results["pipeline.rle.encode"][0]
    print(f"{'method':<24}{'masks/s':>10}{'MPix/s':>10}{'ms/mask':>10}{'time vs ours':>14}")
    for name, (seconds, _) in results.items():
        print(
            f"{name:<24}{args.n / seconds:>10.1f}{mpix / seconds:>10.1f}{1000 * seconds / args.n:>10.2f}"
            f"{seconds / ours:>13.2f}x"
        )


if __name__ == "__main__":
    main()
