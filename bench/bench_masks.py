"""COCO -> masks throughput: the masks stage's painting vs a plain pycocotools ``annToMask`` loop, in one run.

    python bench/bench_masks.py [--n-scenes 64] [--n-aerial 2] [--aerial-side 1024] [--repeat 3] [--work DIR]

Competitions: two zoo generators (``pipeline.data.zoo``), written once to ``--work`` (a temp folder by default;
an existing one is reused): ``scenes`` (256x256, 6 classes, ~5 polygon/RLE objects per image) and ``aerial``
(square tiles with many small objects, ~150 per 1024x1024 tile).

- ours: :func:`pipeline.data.coco.paint_mask` over the train images (what each masks-stage worker paints), with
  the stage's defaults (``larger_first``, crowd as class).
- pycocotools: per annotation ``COCO.annToMask``, sorted the same way (larger first by pixel count, ties by id),
  each painted with its class index.
- stage: :func:`pipeline.data.masks.build_masks` with one worker, once, end to end (reads and checks the json and
  every image file, paints, writes the PNGs, index and summary); images/s for scale, no ratio.

The two paintings are checked equal image by image, and the stage's PNGs equal to them. Masks/s are the median
round of ``--repeat``; the ratio is the median of the per-round ratios (pycocotools' time / ours).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools.coco import COCO

from pipeline.config import DataParams, MasksParams
from pipeline.data.coco import CocoData, load_coco, paint_mask
from pipeline.data.masks import build_masks
from pipeline.data.zoo.registry import get
from pipeline.paths import Layout


def ann_to_mask_loop(coco: COCO, data: CocoData) -> list[np.ndarray]:
    """The plain way: decode every annotation to a full mask, sort larger first (ties by id), paint class ids."""
    index = {c.coco_id: c.index for c in data.categories}
    out = []
    for im in data.images:
        decoded = [(ann, coco.annToMask(ann)) for ann in coco.imgToAnns[im.id]]
        decoded.sort(key=lambda am: (-int(am[1].sum()), am[0]["id"]))
        mask = np.zeros((im.height, im.width), np.uint8)
        for ann, m in decoded:
            mask[m > 0] = index[ann["category_id"]]
        out.append(mask)
    return out


def ours(data: CocoData) -> list[np.ndarray]:
    return [paint_mask(im, data.categories) for im in data.images]


def competition(work: Path, name: str, n_train: int, **size: int) -> Path:
    """The zoo competition ``name`` under ``work`` (generated unless already there); its folder."""
    root = work / (f"{name}_{n_train}" + "".join(f"_{v}" for v in size.values()))
    if not (root / "train.json").is_file():
        get(name).generate(root, work / f"{root.name}_truth", n_train=n_train, n_test=1, seed=0, **size)
    return root


def _seconds(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def bench(root: Path, repeat: int, work: Path) -> dict[str, float]:
    """images/s of ours, the annToMask loop and the stage on one competition, and the ratio; checks equality."""
    data = load_coco(root / "train.json")
    with contextlib.redirect_stdout(io.StringIO()):  # COCO() prints its index building
        coco = COCO(str(root / "train.json"))
    rounds = []
    for _ in range(repeat):
        t_ours, painted = _seconds(lambda: ours(data))
        t_loop, reference = _seconds(lambda: ann_to_mask_loop(coco, data))
        rounds.append((t_ours, t_loop))
    for im, a, b in zip(data.images, painted, reference, strict=True):
        assert np.array_equal(a, b), f"{root.name}: image {im.id} differs from the annToMask loop"
    layout = Layout(Path(tempfile.mkdtemp(dir=work)))
    with contextlib.redirect_stderr(io.StringIO()):  # the stage's progress bar
        t_stage, _ = _seconds(lambda: build_masks(DataParams(root=str(root)), MasksParams(workers=1), layout))
    for im, a in zip(data.images, painted, strict=True):
        with Image.open(layout.masks_dir / Layout.mask_name(im.id)) as png:
            assert np.array_equal(np.asarray(png), a), f"{root.name}: the stage's PNG of image {im.id} differs"
    n = len(data.images)
    return {
        "images": n,
        "annotations": sum(len(im.annotations) for im in data.images),
        "ours": n / statistics.median(r[0] for r in rounds),
        "loop": n / statistics.median(r[1] for r in rounds),
        "ratio": statistics.median(r[1] / r[0] for r in rounds),
        "stage": n / t_stage,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-scenes", type=int, default=64, help="train images of the scenes competition")
    p.add_argument("--n-aerial", type=int, default=2, help="train images of the aerial competition")
    p.add_argument("--aerial-side", type=int, default=1024, help="aerial tile side (the zoo's own is 2048)")
    p.add_argument("--repeat", type=int, default=3, help="timed rounds; medians are reported")
    p.add_argument("--work", help="folder for the generated competitions (reused when present); default a temp one")
    args = p.parse_args()
    with contextlib.ExitStack() as stack:
        work = Path(args.work) if args.work else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        work.mkdir(parents=True, exist_ok=True)
        cases = {
            "scenes 256x256": competition(work, "scenes", args.n_scenes),
            f"aerial {args.aerial_side}x{args.aerial_side}": competition(
                work, "aerial", args.n_aerial, height=args.aerial_side, width=args.aerial_side
            ),
        }
        print("images/s; ratio: the annToMask loop's time / ours (above 1: ours is faster); stage: 1 worker, with I/O")
        print(f"{'competition':<20}{'images':>7}{'anns':>7}{'ours/s':>10}{'loop/s':>10}{'ratio':>9}{'stage/s':>10}")
        for name, root in cases.items():
            r = bench(root, args.repeat, work)
            print(
                f"{name:<20}{r['images']:>7}{r['annotations']:>7}{r['ours']:>10.2f}{r['loop']:>10.2f}"
                f"{r['ratio']:>8.1f}x{r['stage']:>10.2f}"
            )


if __name__ == "__main__":
    main()
