"""Does the data loader keep up? Loader images/s with the training augmentations, beside the model's step (issue 18).

Makes the zoo's ``objects`` competition (RGB 96x128, 900 train images) under ``--work``, its masks and 5 folds
through the stage code, then, on fold 0's training images and the config the plan chooses there (``cnn_default`` at
96x128, batch 14, ``Affine`` + ``ColorJitter``):

- the **training loader** itself (:func:`pipeline.training.setup.build_loaders`, what ``train_fold`` iterates: the
  sampler, the dataset, the transform with the augmentations, the collate), one epoch at each ``--workers`` count, for
  each storage: decoded images in RAM (``train.preload: true``), the disk cache (``false``, :mod:`pipeline.data.cache`;
  timed on its second epoch, the first one writes it) and decoding the source PNGs on every read (no cache);
- the **training step** the plan's probe measures on the same config (:func:`pipeline.plan.machine.measure_step`:
  loading its batch, forward, backward, AdamW).

A loader that delivers more images/s than the step consumes keeps the model fed; the ratio says by how much.

    python bench/bench_loader.py [--workers 0,1,2] [--work /tmp/segpipe-loader]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a plain script from anywhere

from pipeline.config import (  # noqa: E402
    Augment,
    DataParams,
    FoldsParams,
    MasksParams,
    TrainParams,
    load_model_config,
)
from pipeline.data.cache import DecodedCache, Storage  # noqa: E402
from pipeline.data.folds import build_folds, fold_split  # noqa: E402
from pipeline.data.masks import build_masks  # noqa: E402
from pipeline.data.zoo.registry import get  # noqa: E402
from pipeline.io import read_json  # noqa: E402
from pipeline.paths import Layout  # noqa: E402
from pipeline.plan.machine import measure_step  # noqa: E402
from pipeline.training.context import RunId, make_context  # noqa: E402
from pipeline.training.setup import build_loaders  # noqa: E402

AUGMENT = [
    Augment("Affine", {"p": 0.5, "scale": [0.8, 1.25], "translate_percent": [-0.1, 0.1]}),
    Augment("ColorJitter", {"p": 0.5, "brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.1}),
]


class _NoCache(DecodedCache):
    """Decode the source files on every read: the storage without a cache, for comparison."""

    def read(self, image: Path, mask: Path | None) -> Any:
        from pipeline.io import read_image, read_mask

        return read_image(image), (read_mask(mask) if mask is not None else None)


def prepare(work: Path) -> tuple[Layout, DataParams]:
    root = work / "objects"
    data = DataParams(root=str(root / "data" / "competition"), truth_dir=str(root / "data" / "truth"))
    layout = Layout(root)
    if not layout.folds_csv.is_file():
        get("objects").generate(data.root, data.truth_dir)
        build_masks(data, MasksParams(workers=1), layout)
        build_folds(FoldsParams(k=5, seed=42), layout)
    return layout, data


def epoch_images_per_second(loaders: Any, epochs: int) -> float:
    """Images/s of the last of ``epochs`` passes over the training loader (nothing else runs)."""
    rate = 0.0
    for epoch in range(epochs):
        loaders.set_epoch(0, epoch)
        t0, n = time.perf_counter(), 0
        for batch in loaders.train:
            n += len(batch["image"])
        rate = n / (time.perf_counter() - t0)
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", default="0,1,2", help="comma-separated loader worker counts")
    ap.add_argument("--work", type=Path, default=Path("/tmp/segpipe-loader"))
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the training step")
    args = ap.parse_args()
    layout, data = prepare(args.work)
    base = load_model_config(REPO / "configs" / "models" / "cnn_default.yaml")
    rec = dataclasses.replace(base.recipe, batch_size=14, augment=AUGMENT)
    cfg = dataclasses.replace(base, input_size=(96, 128), resize="pad", recipe=rec)
    split = fold_split(layout, data, 0)
    classes = read_json(layout.classes_json)
    train = TrainParams(models=["cnn_default"], folds=[0], device="cpu", threads=args.threads)
    ctx = make_context(cfg, train, RunId(layout, "bench", 0), classes, "miou", progress=False)

    n = min(len(split.train_images), 28)
    timing = measure_step(cfg, "cnn_default", len(classes), split.train_images[:n], split.train_masks[:n], "cpu", 10)
    step_rate = cfg.recipe.batch_size / timing.step_seconds
    storages = {
        "RAM (preload true)": (Storage(True, None, ""), 1),
        "disk cache (preload false)": (Storage(False, DecodedCache(layout), ""), 2),
        "PNG decode, no cache": (Storage(False, _NoCache(layout), ""), 1),
    }
    print(
        f"objects fold 0: {len(split.train_images)} training images, cnn_default 96x128 batch 14, Affine + "
        f"ColorJitter; {torch.get_num_threads()} torch threads"
    )
    print(f"training step (probe, loading included): {timing.step_seconds * 1000:.0f} ms = {step_rate:.0f} img/s\n")
    print(f"{'storage':<28}{'workers':>8}{'loader img/s':>14}{'x the step':>12}")
    for name, (storage, epochs) in storages.items():
        for w in (int(x) for x in args.workers.split(",")):
            wcfg = dataclasses.replace(cfg, recipe=dataclasses.replace(cfg.recipe, num_workers=w))
            loaders = build_loaders(wcfg, split, storage, ctx)
            rate = epoch_images_per_second(loaders, epochs)
            print(f"{name:<28}{w:>8}{rate:>14.0f}{rate / step_rate:>12.1f}")
            del loaders


if __name__ == "__main__":
    main()
