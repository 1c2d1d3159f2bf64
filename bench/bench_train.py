"""Training throughput: the training stage (pipeline.train.train_fold) against a bare SMP loop, same model and data.

Builds a small embedded-default project in a temp folder (demo -> masks -> folds), trains ``cnn_default`` for a
few epochs with train_fold (its log records training images/s, validation excluded), then runs a bare loop:
the same model from the same config, the same images preloaded as one tensor, AdamW, cross-entropy + Dice, the
same autocast and channels-last, no loader, no EMA, no checkpoints. Prints both and the ratio (target >= 0.9).

    python bench/bench_train.py [--train 800] [--epochs 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import DataParams, DemoParams, FoldsParams, MasksParams, TrainParams, load_model_config  # noqa: E402
from pipeline.data.dataset import normalize  # noqa: E402
from pipeline.data.demo import generate_demo  # noqa: E402
from pipeline.data.folds import build_folds  # noqa: E402
from pipeline.data.masks import build_masks  # noqa: E402
from pipeline.io import read_image, read_mask  # noqa: E402
from pipeline.losses import WeightedLoss  # noqa: E402
from pipeline.models.registry import build_model  # noqa: E402
from pipeline.paths import Layout  # noqa: E402
from pipeline.predict import autocast  # noqa: E402
from pipeline.train import fold_split, train_fold  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", type=int, default=800, help="demo train canvases")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--model", default="cnn_default")
    args = ap.parse_args()
    repo = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        layout = Layout(root)
        comp = root / "data" / "competition"
        generate_demo(DemoParams(n_train=args.train, n_test=8), comp, root / "data" / "truth")
        data = DataParams(root=str(comp))
        build_masks(data, MasksParams(workers=2), layout)
        build_folds(FoldsParams(k=5), layout)
        cfg = load_model_config(repo / "configs" / "models" / f"{args.model}.yaml")
        cfg = dataclasses.replace(cfg, recipe=dataclasses.replace(cfg.recipe, epochs=args.epochs))
        train_fold(cfg, args.model, 0, layout, data, TrainParams(device="cpu"), progress=False)
        log = pd.read_csv(layout.curve_path(args.model, 0))
        stage = float(log["train_img_s"].iloc[1:].mean() if len(log) > 1 else log["train_img_s"].iloc[0])

        # the bare loop: same model, same images preloaded, same batch, no loader
        split = fold_split(layout, data, 0)
        x_all = torch.from_numpy(np.stack([read_image(p) for p in split.train_images]))
        y_all = torch.from_numpy(np.stack([read_mask(p) for p in split.train_masks])).long()
        rec = cfg.recipe
        torch.manual_seed(0)
        model = build_model(cfg, 11).to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(model.parameters(), lr=rec.lr, weight_decay=rec.weight_decay)
        loss_fn = WeightedLoss(rec.loss, rec.class_weights)
        steps = len(x_all) // rec.batch_size
        rates = []
        for _ in range(args.epochs):
            perm = torch.randperm(len(x_all))
            t0 = time.time()
            for s in range(steps):
                idx = perm[s * rec.batch_size : (s + 1) * rec.batch_size]
                x = normalize(x_all[idx]).contiguous(memory_format=torch.channels_last)
                with autocast(torch.device("cpu"), rec.amp, rec.cpu_bf16):
                    loss = loss_fn(model(x), y_all[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            rates.append(steps * rec.batch_size / (time.time() - t0))
        bare = float(np.mean(rates[1:]) if len(rates) > 1 else rates[0])
    print(
        f"model {args.model}, {len(split.train_images)} training images, batch {rec.batch_size}, "
        f"{torch.get_num_threads()} threads, epochs {args.epochs} (first epoch excluded when >1)"
    )
    print(f"{'loop':<28}{'images/s':>10}")
    print(f"{'training stage (train_fold)':<28}{stage:>10.1f}")
    print(f"{'bare SMP loop':<28}{bare:>10.1f}")
    print(f"ratio stage / bare: {stage / bare:.3f}  (target >= 0.9)")


if __name__ == "__main__":
    main()
