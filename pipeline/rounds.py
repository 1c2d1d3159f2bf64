"""Training rounds and pseudo-label sets: which round runs, and what a switched-off round leaves behind.

Round 1 trains on the labelled images; round r > 1 also trains on pseudo-labels made by round r - 1, and runs only
when ``pseudo.rounds >= r - 1``. ``dvc.yaml`` has stages for every round it supports, so the stages of a round that
is switched off still run: they write empty outputs here, without importing torch, and finish in under a second.
"""

from __future__ import annotations

from typing import Any

from pipeline.config import Params
from pipeline.errors import UserError
from pipeline.io import atomic_dir, write_csv, write_text
from pipeline.paths import Layout, PseudoSetFiles

# Columns of the per-epoch curves CSV (what `dvc plots` reads).
LOG_COLUMNS = ["epoch", "step", "lr", "train_loss", "val_mIoU", "val_mBIoU", "val_aAcc", "train_img_s", "seconds"]
PSEUDO_INDEX_COLUMNS = ["image_id", "file_name", "mask", "confident"]


def training_round_runs(params: Params, round_: int) -> bool:
    """Round 1 always; round r > 1 when there is a pseudo-label round r - 1."""
    return round_ == 1 or params.pseudo.rounds >= round_ - 1


def pseudo_round_runs(params: Params, round_: int) -> bool:
    """Whether round ``round_``'s models make pseudo-labels (for round ``round_ + 1``)."""
    return params.pseudo.rounds >= round_


def pseudo_sets(params: Params) -> list[int | str]:
    """The pseudo-label sets a round makes: one per fold (leak_free) or a single shared one ("all")."""
    return list(params.train.folds) if params.pseudo.source == "leak_free" else ["all"]


def pseudo_set(params: Params, fold: int) -> int | str:
    """Which pseudo-label set fold ``fold`` trains on: its own (leak_free) or the shared one ("all")."""
    return fold if params.pseudo.source == "leak_free" else "all"


def skip_training_round(
    params: Params, layout: Layout, model_name: str, fold: int, round_: int, why: str | None = None
) -> None:
    """The outputs of a training stage that does not train (a switched-off round, or a fold the plan leaves out):
    a ``skipped.txt`` that says why, and an empty curves file."""
    why = why or f"pseudo.rounds is {params.pseudo.rounds}: no round {round_}"
    write_text(layout.fold_files(model_name, fold, round_).skipped, why + "\n")
    write_csv(layout.curve_path(model_name, fold, round_), LOG_COLUMNS, [])
    print(f"round {round_} fold {fold} skipped ({why})")


def skip_pseudo_round(params: Params, layout: Layout, round_: int) -> dict[str, Any]:
    """The outputs of a switched-off pseudo-label round: empty sets; returns its summary."""
    for s in pseudo_sets(params):
        with atomic_dir(layout.pseudo_dir(round_, s)) as d:
            write_csv(PseudoSetFiles(d).index_csv, PSEUDO_INDEX_COLUMNS, [])
    print(f"pseudo-labels from round {round_} skipped (pseudo.rounds: {params.pseudo.rounds})")
    return {"round": round_, "source": params.pseudo.source, "sets": {}, "disabled": True}


def choose_round(params: Params, layout: Layout, models: list[str], num_classes: int) -> tuple[int, dict[str, Any]]:
    """``infer.round: auto``: the round (1 to 1 + ``pseudo.rounds``) whose fold models' out-of-fold predictions score
    best in the competition metric (each model config's per-image matrices pooled; a tie keeps the later round),
    and why. Each fold's OOF images are its validation images, which a leak-free later round never learnt from, so
    the rounds compare on the same images (in-sample: the choice is made and scored on them).

    With ``pseudo.source: full`` the last round, unscored: its OOF saw the validation labels through the pseudo-labels
    (the fold leak), so it would be chosen for that alone. A round without OOF is an error saying what to run.
    """
    import numpy as np

    from pipeline.metrics import score_matrices
    from pipeline.oof import missing_oof, model_oof  # they pull in torch; a switched-off stage above must not

    last = 1 + params.pseudo.rounds
    if last == 1:
        return 1, {"chosen": 1, "why": "pseudo.rounds: 0, one round"}
    if params.pseudo.source == "full":
        why = "pseudo.source: full: a later round's OOF saw its validation labels through the pseudo-labels"
        return last, {"chosen": last, "why": f"the last round ({why})"}
    metric, folds, scores = params.metric.name, params.train.folds, {}
    for r in range(1, last + 1):
        stacks = [model_oof(layout, m, folds, r, num_classes) for m in models]
        if any(s is None for s in stacks):
            raise UserError(
                f"infer.round: auto chooses on out-of-fold predictions, but {missing_oof(layout, models, folds, r)} "
                f"is missing: train round {r} again (dvc repro), or set infer.round to a number"
            )
        scores[r] = score_matrices(metric, np.concatenate([s.matrices for s in stacks if s is not None]))
    chosen = max(scores, key=lambda r: (scores[r], r))
    oof = {str(r): round(s, 5) for r, s in scores.items()}
    return chosen, {"chosen": chosen, "oof": oof, "why": f"round {chosen}'s OOF {metric} is the highest ({oof})"}
