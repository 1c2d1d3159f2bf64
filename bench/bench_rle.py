"""RLE speed end to end: pipeline.rle vs pycocotools, mask -> Kaggle text and back, on the same masks in one run.

    python bench/bench_rle.py [--sizes 512,2048] [--n 40,8] [--repeat 7] [--seed 0]

Masks: :func:`blob_masks`, 2-5 filled ellipses per mask (radii 1/30 to 1/5 of the side), uint8 0/1 in C order as a
model's argmax gives them. Both sides produce the competition's text: column-major, 1-based ``start length`` pairs
(:data:`pipeline.rle.KAGGLE`, what the submission codec writes per class), checked equal.

- encode, ours: ``rle.encode(mask)``.
- encode, pycocotools: ``mask.encode(np.asfortranarray(mask))`` (it needs a Fortran array), its compressed counts
  string decoded to runs with numpy (:func:`pipeline.data.coco.compressed_runs`), then the same text formatter as ours
  (``rle.runs_to_text``), so only the run finding differs. The ``F input`` rows give both sides a Fortran-ordered
  mask, so pycocotools skips its copy.
- decode, ours: ``rle.decode(text, shape)`` (parses and checks the text, then fills the mask).
- decode, pycocotools: ``np.fromstring`` of the text (no checks), runs -> COCO counts, ``frPyObjects`` and
  ``mask.decode``. Both return a Fortran-ordered (H, W) mask (bool ours, uint8 theirs).

Each of ``--repeat`` rounds times every method over all masks, interleaved, so load from other processes hits all
methods alike; the table gives the median round's masks/s and the median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import pycocotools.mask as mask_utils

from pipeline import rle
from pipeline.data.coco import compressed_runs


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


def coco_encode(mask: np.ndarray) -> str:
    """pycocotools' encode, its counts turned into Kaggle text."""
    encoded = mask_utils.encode(np.asfortranarray(mask))
    return rle.runs_to_text(*compressed_runs(encoded["counts"]))


def coco_decode(text: str, shape: tuple[int, int]) -> np.ndarray:
    """Kaggle text to a mask through pycocotools (no checks of the text)."""
    height, width = shape
    values = np.fromstring(text, dtype=np.int64, sep=" ") if text else np.zeros(0, np.int64)
    counts = rle.runs_to_counts(values[0::2] - 1, values[1::2], height * width)
    return mask_utils.decode(mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width))


def bench_size(size: int, n: int, repeat: int, seed: int) -> list[tuple[str, float, float]]:
    """``(row, ours masks/s, pycocotools masks/s, ratio)`` rows for one mask size; checks the outputs agree."""
    masks = blob_masks(n, size, seed)
    fortran = [np.asfortranarray(m) for m in masks]
    texts = [rle.encode(m) for m in masks]
    shape = (size, size)
    assert texts == [coco_encode(m) for m in masks], "ours and pycocotools write different text"
    assert texts == [rle.encode(m) for m in fortran], "the Fortran-ordered masks encode differently"
    for m, t in zip(masks, texts):
        ours, theirs = rle.decode(t, shape), coco_decode(t, shape)
        assert np.array_equal(ours, m.astype(bool)) and np.array_equal(theirs, m), "a decode disagrees"
    pairs: dict[str, tuple[Callable[[], object], Callable[[], object]]] = {
        "encode": (lambda: [rle.encode(m) for m in masks], lambda: [coco_encode(m) for m in masks]),
        "encode, F input": (lambda: [rle.encode(m) for m in fortran], lambda: [coco_encode(m) for m in fortran]),
        "decode": (lambda: [rle.decode(t, shape) for t in texts], lambda: [coco_decode(t, shape) for t in texts]),
    }
    rows = []
    for name, (ours, theirs) in pairs.items():
        rounds = []
        for _ in range(repeat):
            rounds.append((_seconds(ours), _seconds(theirs)))
        ours_s = statistics.median(r[0] for r in rounds)
        theirs_s = statistics.median(r[1] for r in rounds)
        ratio = statistics.median(r[1] / r[0] for r in rounds)
        rows.append((name, n / ours_s, n / theirs_s, ratio))
    return rows


def _seconds(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="512,2048", help="mask sides in pixels, comma-separated")
    p.add_argument("--n", default="40,8", help="masks per size, comma-separated (one value: the same for all)")
    p.add_argument("--repeat", type=int, default=7, help="timed rounds per method; medians are reported")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    counts = [int(s) for s in args.n.split(",")]
    counts = counts * len(sizes) if len(counts) == 1 else counts
    print("masks: blob_masks, 2-5 filled ellipses each, uint8 0/1, C order; text: Kaggle column-major 1-based")
    print("ratio: pycocotools' time / ours (above 1: ours is faster)")
    print(f"{'size':>6} {'runs':>6}  {'step':<16}{'ours/s':>10}{'coco/s':>10}{'ratio':>8}")
    for size, n in zip(sizes, counts, strict=True):
        runs = np.mean([rle.encode_runs(m)[0].size for m in blob_masks(n, size, args.seed)])
        for name, ours, theirs, ratio in bench_size(size, n, args.repeat, args.seed):
            print(f"{size:>6} {runs:>6.0f}  {name:<16}{ours:>10.1f}{theirs:>10.1f}{ratio:>7.2f}x")


if __name__ == "__main__":
    main()
