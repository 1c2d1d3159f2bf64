"""The ablation a competitor asks for: how much each step of the loop adds on the local leaderboard.

From one finished run (``dvc repro``), each row is a real submission, written, validated and scored like the
final one (``submissions/ablation/<row>.csv``):

1. best single fold model: the round-1 fold whose own validation mIoU is highest (chosen without test truth), no TTA;
2. fold ensemble: every round-1 fold of the first model, no TTA;
3. + TTA: the same, with the TTA set chosen on out-of-fold predictions;
4. + multi-model: round-1 folds of every model given (weights fitted on OOF), TTA chosen on OOF;
5. + pseudo-label round: the last round's ensemble (round 1 + ``pseudo.rounds``);
6. + round chosen on OOF (``infer.round: auto``, the default): the round whose OOF scores best
   (:func:`pipeline.rounds.choose_round`), as ``dvc repro`` ensembles it;
7. + threshold (``infer.threshold: fit``, binary tasks): the row above with the class's probability threshold
   fitted on its OOF;
8. + post-processing (``infer.postprocess``): the row above with the per-class rules fitted on its OOF, as
   ``dvc repro`` makes it; with ``shapes``, first the component and total areas alone (``auto``), then
   keep-largest-component and hole filling too. Rows 1-6 are scored without threshold or post-processing.

Nothing here is tuned on the test truth: every choice (the fold, the TTA set, the weights) is made on OOF, and the
truth only scores the result. Models of row 4 that are not trained yet are trained here (round 1, every fold).

Use: ``python -m pipeline.ablation --extra-model cnn_fpn`` after ``dvc repro``; writes ``reports/ablation.md`` and
``metrics/ablation.json``. ``--seeds 3`` repeats the loop over three training seeds through ``dvc exp run`` and gives
every figure as mean ± sd, with each gain called distinguishable or not (``pipeline/repeats.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Sequence
from typing import Any

from pipeline.config import DEFAULT_PARAMS, Params, load_model_config, load_params
from pipeline.errors import UserError, run_cli
from pipeline.infer import run_ensemble
from pipeline.io import read_json, write_json, write_text
from pipeline.paths import Layout
from pipeline.repeats import repeats_markdown, run_repeats
from pipeline.train import train_round


def best_fold(layout: Layout, model: str, folds: Sequence[int], round_: int = 1) -> tuple[int, float]:
    """The fold whose model scored best on its own validation images (its ``metrics.json`` ``val_score``, in the
    competition metric; ``val_mIoU`` for runs that predate it): no test truth."""
    scores = {}
    for f in folds:
        path = layout.fold_files(model, f, round_).metrics
        if not path.is_file():
            raise UserError(f"{path}: missing; train {model} fold {f} round {round_} first (dvc repro)")
        m = read_json(path)
        scores[f] = float(m.get("val_score", m["val_mIoU"]))
    fold = max(scores, key=scores.__getitem__)
    return fold, scores[fold]


def ensure_trained(params: Params, layout: Layout, model: str) -> list[int]:
    """Train round 1 of ``model`` on every fold that has no checkpoint yet; return the folds trained here."""
    cfg = load_model_config(layout.model_config(model))
    done = []
    for f in params.train.folds:
        if not layout.checkpoint(model, f, 1).is_file() or not layout.oof_path(model, f, 1).is_file():
            train_round(cfg, model, f, layout, params, 1)
            done.append(f)
    return done


def _with(params: Params, **infer: Any) -> Params:
    return dataclasses.replace(params, infer=dataclasses.replace(params.infer, **infer))


Row = tuple[str, str, Params, dict[str, Any]]  # key, label, the params infer runs with, extra report fields


def postprocess_rows(mode: str, rows: list[Row], threshold: str = "none") -> list[Row]:
    """``rows`` without threshold or post-processing; then, with ``threshold: fit`` (the run's ``infer.threshold``),
    the last again with the binary threshold fitted on its OOF; then that again with the rules fitted on its OOF
    (``mode``: the run's ``infer.postprocess``; ``shapes``: the areas alone first, then keep-largest and filling)."""
    rows = [(k, label, _with(p, postprocess="none", threshold="none"), extra) for k, label, p, extra in rows]
    if threshold == "fit":
        _, _, last, extra = rows[-1]
        rows.append(("threshold", "+ probability threshold fitted on OOF", _with(last, threshold="fit"), extra))
    _, _, last, extra = rows[-1]
    if mode == "shapes":
        label = "+ post-processing fitted on OOF: component and total areas"
        rows.append(("postprocess_areas", label, _with(last, postprocess="auto"), extra))
        label = "+ keep-largest-component and hole filling fitted on OOF"
        rows.append(("postprocess", label, _with(last, postprocess="shapes"), extra))
    elif mode == "auto":
        rows.append(("postprocess", "+ post-processing fitted on OOF", _with(last, postprocess="auto"), extra))
    return rows


def run_ablation(params: Params, layout: Layout, extra_models: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Write and score one submission per row (see the module docstring); return the rows."""
    models = list(params.infer.models or params.train.models)
    first = models[0]
    multi = list(dict.fromkeys([*models, *extra_models]))
    for m in multi[1:]:
        ensure_trained(params, layout, m)
    final_round = 1 + params.pseudo.rounds

    fold, val = best_fold(layout, first, params.train.folds)
    rows: list[Row] = [
        (
            "single",
            f"best single fold model ({first} fold {fold}, val {params.metric.name} {val:.4f}), no TTA",
            _with(params, models=[first], round=1, tta="none"),
            {"checkpoints": [str(layout.checkpoint(first, fold, 1))]},
        ),
        (
            "folds",
            f"fold ensemble ({first}, {len(params.train.folds)} folds), no TTA",
            _with(params, models=[first], round=1, tta="none"),
            {},
        ),
        ("tta", "+ TTA chosen on OOF", _with(params, models=[first], round=1, tta="auto"), {}),
    ]
    if len(multi) > 1:
        rows.append(
            (
                "multi",
                f"+ multi-model ({' + '.join(multi)}, weights fitted on OOF)",
                _with(params, models=multi, round=1, tta="auto"),
                {},
            )
        )
    if params.pseudo.rounds:
        auto = params.infer.round == "auto"
        last = f"round {final_round}" + ("" if auto else ": the `dvc repro` submission")
        rows.append(
            ("pseudo", f"+ pseudo-label round ({' + '.join(models)}, {last})", _with(params, round=final_round), {})
        )
        if auto:
            label = "+ round chosen on OOF (infer.round: auto: the `dvc repro` submission)"
            rows.append(("round", label, _with(params, round="auto"), {}))

    rows = postprocess_rows(params.infer.postprocess, rows, params.infer.threshold)

    results = []
    for key, label, p, extra in rows:
        t0 = time.time()
        print(f"--- ablation: {label}")
        report = run_ensemble(
            p, layout, output=str(layout.ablation_submission(key)), overlays=0, write_leaderboard=False, **extra
        )
        lb = report.get("leaderboard")
        if lb is None:
            raise UserError(f"{params.data.truth_dir}: no test truth, so there is no local leaderboard to ablate on")
        results.append(
            {
                "row": key,
                "what": label,
                "lb_mIoU": lb["mIoU"],
                "lb_mBIoU": lb["mBIoU"],
                "oof_mIoU": report.get("oof_mIoU"),
                "metric": report.get("metric"),
                "oof_in_sample": report.get("oof_in_sample"),
                "oof_cross_fitted": report.get("oof_cross_fitted"),
                "fallback": report.get("fallback", []),
                "tta": "; ".join(f"{n}: {e['tta']}" for n, e in report["per_model"].items()),
                "weights": report["weights"],
                "seconds": round(time.time() - t0, 1),
            }
        )
    return results


def ablation_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The README/report table: LB mIoU per row and its gain over the row above."""
    lines = [
        "| step | local LB mIoU | gain | LB mBIoU | OOF mIoU | OOF cross-fitted | TTA |",
        "|---|---|---|---|---|---|---|",
    ]
    prev = None
    for r in rows:
        gain = "" if prev is None else f"{r['lb_mIoU'] - prev:+.4f}"
        oof = "" if r["oof_mIoU"] is None else f"{r['oof_mIoU']:.4f}"
        cross = r.get("oof_cross_fitted")
        cross = "" if cross is None else f"{cross:.4f} ({r.get('metric')})"
        lines.append(
            f"| {r['what']} | {r['lb_mIoU']:.4f} | {gain} | {r['lb_mBIoU']:.4f} | {oof} | {cross} | {r['tta']} |"
        )
        prev = r["lb_mIoU"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.ablation", description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default=DEFAULT_PARAMS, help="params file of the finished run")
    ap.add_argument(
        "--extra-model",
        action="append",
        default=[],
        metavar="NAME",
        help="a second model config for the multi-model row (configs/models/NAME.yaml; trained here if needed)",
    )
    ap.add_argument(
        "--seeds",
        type=int,
        metavar="N",
        help="repeat over N training seeds (--first-seed, +1, ...; each through `dvc exp run`): mean ± sd per row",
    )
    ap.add_argument("--first-seed", type=int, default=0, metavar="S", help="the first seed of --seeds (default 0)")
    args = ap.parse_args(argv)
    layout = Layout()
    if args.seeds is not None:
        agg = run_repeats(args.params, layout, args.seeds, args.extra_model, args.first_seed)
        table = repeats_markdown(agg)
        write_json(layout.ablation_json, agg)
        seed = load_params(args.params).train.seed
        print(f"--- repeats: the workspace is at train.seed={seed} (the last seed run); `dvc exp show` lists them all")
    else:
        rows = run_ablation(load_params(args.params), layout, args.extra_model)
        table = ablation_markdown(rows)
        write_json(layout.ablation_json, rows)
    write_text(layout.ablation_md, "# Ablation on the local leaderboard\n\n" + table)
    print(table)
    return 0


if __name__ == "__main__":
    run_cli(main)
