"""Stage `train`: train one (model config, fold) pair; resumes from its last checkpoint when run again.

Runs under torchrun too: `torchrun --nproc_per_node N -m stages.train --model M --fold K`.
"""

from __future__ import annotations

import argparse

from pipeline.config import load_model_config, load_params
from pipeline.errors import run_cli
from pipeline.io import write_text
from pipeline.paths import Layout
from pipeline.train import pseudo_pairs, train_fold


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m stages.train", description=__doc__)
    ap.add_argument("--params", default="params.yaml", help="params file (sections: data, train)")
    ap.add_argument("--model", required=True, help="model config name: configs/models/<name>.yaml")
    ap.add_argument("--fold", type=int, required=True, help="fold to validate on (trains on the others)")
    ap.add_argument("--round", type=int, default=1, help="1 = labelled data only; 2+ = with pseudo-labels")
    args = ap.parse_args(argv)
    params = load_params(args.params)
    layout = Layout()
    cfg = load_model_config(layout.model_config(args.model))
    extra, init = [], None
    if args.round > 1:
        if params.pseudo.rounds < args.round - 1:
            write_text(
                layout.model_dir(args.model, args.fold, args.round) / "skipped.txt",
                f"pseudo.rounds is {params.pseudo.rounds}: no round {args.round}\n",
            )
            print(f"round {args.round} skipped (pseudo.rounds: {params.pseudo.rounds})")
            return 0
        extra = pseudo_pairs(params, layout, args.fold, args.round - 1)
        if params.pseudo.init_from_previous:
            init = layout.checkpoint(args.model, args.fold, args.round - 1)
    metrics = train_fold(
        cfg, args.model, args.fold, layout, params.data, params.train, round_=args.round, extra=extra, init_weights=init
    )
    if metrics:
        print(
            f"{args.model} fold {args.fold}: best val mIoU {metrics['val_mIoU']:.4f} at epoch {metrics['best_epoch']}"
        )
    return 0


if __name__ == "__main__":
    run_cli(main)
