"""One recipe on one fold of a zoo competition: the experiments of bench/RECIPE.md, repeatable.

Makes the competition once under ``--work`` (zoo generator, masks, 5 folds seeded 42, as ``dvc repro`` would),
then trains ``--config`` with ``--set`` overrides (JSON, merged into the model config) on ``--fold`` through the
pipeline's own ``train_fold`` and prints one line: fold val mIoU, best epoch, seconds, per-class IoU. With
``--probe SECONDS`` it runs the augmentation probe on that fold instead.

    python bench/recipe_fold.py objects --epochs 12 --set '{"encoder": "resnet18", "encoder_depth": 5,
        "decoder_kwargs": {"decoder_channels": [128, 64, 32, 16, 16]}}'
    python bench/recipe_fold.py objects --probe 120
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.augment_probe import probe_fold  # noqa: E402
from pipeline.config import DataParams, FoldsParams, MasksParams, ModelConfig, TrainParams, from_dict  # noqa: E402
from pipeline.data.folds import build_folds  # noqa: E402
from pipeline.data.masks import build_masks  # noqa: E402
from pipeline.data.zoo.registry import get  # noqa: E402
from pipeline.paths import Layout  # noqa: E402
from pipeline.train import train_fold  # noqa: E402

SIZES = {"objects": (96, 128), "textures": (128, 160), "scenes": (256, 256), "silhouette": (120, 160)}


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    for k, v in over.items():
        base[k] = merge(dict(base[k]), v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return base


def prepare(name: str, work: Path) -> tuple[Layout, DataParams]:
    root = work / name
    data = DataParams(root=str(root / "data" / "competition"), truth_dir=str(root / "data" / "truth"))
    layout = Layout(root)
    if not layout.folds_csv.is_file():
        get(name).generate(data.root, data.truth_dir)
        build_masks(data, MasksParams(workers=1), layout)
        build_folds(FoldsParams(k=5, seed=42), layout)
    return layout, data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("competition", help="a zoo competition: objects, textures, ...")
    ap.add_argument("--config", default="cnn_default", help="configs/models/<name>.yaml")
    ap.add_argument("--set", default="{}", help="JSON merged into the model config")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--name", default=None, help="run name (model folder); default: a hash of the overrides")
    ap.add_argument("--probe", type=float, default=None, help="run the augmentation probe for this many seconds")
    ap.add_argument("--work", type=Path, default=Path("/tmp/segpipe-recipe"))
    ap.add_argument("--log", type=Path, default=None, help="append the result line to this file")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    layout, data = prepare(args.competition, args.work)
    d = yaml.safe_load((REPO / "configs" / "models" / f"{args.config}.yaml").read_text())
    d.pop("tiny", None)
    d["input_size"] = list(SIZES.get(args.competition, d["input_size"]))
    over = json.loads(args.set)
    d = merge(d, over)
    if args.epochs is not None:
        d["recipe"]["epochs"] = args.epochs
    cfg = from_dict(ModelConfig, d, "recipe_fold")
    t0 = time.time()
    if args.probe is not None:
        plan = probe_fold(layout, data, cfg, fold=args.fold, seconds=args.probe)
        line = f"probe {args.competition} {args.probe:g}s ({plan.seconds}s): kept {plan.kept}; " + " | ".join(
            plan.reasons
        )
    else:
        name = args.name or f"{args.config}-{hashlib.sha256(args.set.encode()).hexdigest()[:8]}"
        shutil.rmtree(layout.model_dir(name, args.fold), ignore_errors=True)
        train = TrainParams(models=[name], folds=[args.fold], device="cpu", threads=args.threads)
        m = train_fold(cfg, name, args.fold, layout, data, train, progress=False)
        per_class = {k: round(v, 3) for k, v in m["per_class_IoU"].items()}
        line = (
            f"{args.competition} {args.config} {args.set} ep{cfg.recipe.epochs} fold{args.fold}: val mIoU "
            f"{m['val_mIoU']:.4f} (best epoch {m['best_epoch']}), train {m['train_seconds']} s, wall "
            f"{time.time() - t0:.0f} s, per class {json.dumps(per_class)}"
        )
    print(line)
    if args.log is not None:
        with open(args.log, "a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
