"""Stage `train`: train one (model config, fold) pair; resumes from its last checkpoint when run again.

Runs under torchrun too: `torchrun --nproc_per_node N -m stages.train --model M --fold K`.
"""

from __future__ import annotations

import argparse

from pipeline.clock import record_stage_seconds
from pipeline.config import DEFAULT_PARAMS, load_params
from pipeline.errors import run_cli
from pipeline.paths import Layout
from pipeline.plan.apply import plan_fold_list, planned_config
from pipeline.rounds import skip_training_round, training_round_runs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m stages.train", description=__doc__)
    ap.add_argument("--params", default=DEFAULT_PARAMS, help="params file (sections: data, train, pseudo)")
    ap.add_argument("--model", required=True, help="model config name: configs/models/<name>.yaml")
    ap.add_argument("--fold", type=int, required=True, help="fold to validate on (trains on the others)")
    ap.add_argument("--round", type=int, default=1, help="1 = labelled data only; 2+ = with pseudo-labels")
    args = ap.parse_args(argv)
    params = load_params(args.params)
    layout = Layout()
    if not training_round_runs(params, args.round):  # before torch is imported: a switched-off round takes 0.3 s
        skip_training_round(params, layout, args.model, args.fold, args.round)
        return 0
    folds = plan_fold_list(params, layout)
    if folds is not None and args.fold not in folds:  # the budget gives fewer folds enough steps (plan.fold_steps)
        why = f"the plan trains folds {folds} only (work/plan.yaml: folds; plan.fold_steps: 0 trains every fold)"
        skip_training_round(params, layout, args.model, args.fold, args.round, why)
        return 0
    cfg = planned_config(args.model, layout, params)  # the model config with the plan's choices (work/plan.yaml)
    from pipeline.train import train_round  # torch, timm, SMP: seconds to import

    metrics = train_round(cfg, args.model, args.fold, layout, params, args.round)
    if metrics:
        record_stage_seconds(layout.fold_files(args.model, args.fold, args.round).metrics)  # what the budget counts
        print(
            f"{args.model} fold {args.fold}: best val mIoU {metrics['val_mIoU']:.4f} at epoch {metrics['best_epoch']}"
        )
    return 0


if __name__ == "__main__":
    run_cli(main)
