"""TTA + ensemble inference and the submission: ``python -m pipeline.infer --ensemble``.

``run_ensemble`` reads as load -> plan -> predict -> finalise -> score -> ledger; every choice is made on out-of-fold
(OOF) predictions, never on test truth, and scored in the competition metric (``metric.name``, :mod:`pipeline.oof`):

1. load: the best checkpoint of every (model config, fold) of a round (:mod:`pipeline.ensemble.members`);
2. plan (:mod:`pipeline.ensemble.plan`): the TTA set per model config (``infer.tta: auto``: starting from no TTA,
   each candidate transform is kept only if the config's OOF metric rises; every candidate's score is reported),
   an optional per-model temperature (``calibrate``) and the weights across configs (``weights: fit``, coordinate
   ascent, reported beside equal weights). Each choice is scored in-sample and cross-fitted (``oof_in_sample``,
   ``oof_cross_fitted``: fold k scored with the choices made without fold k): the cross-fitted figure is the one
   to compare with the leaderboard. Without OOF predictions, ``auto`` and ``fit`` are errors unless
   ``infer.allow_fallback`` (then recorded under ``fallback``);
3. predict: test images stream through in batches: each config averages its fold models (with its TTA) in the
   chosen space, configs are combined with their weights, and the argmax goes to the submission writer as a class
   mask at the image's original size; nothing is kept for the whole test set but the short RLE strings. With
   ``infer.sliding`` each image goes alone through :class:`pipeline.sliding.SlidingWindow` (the OOF predictions of
   the plan do too);
4. finalise, score on the local leaderboard (when test truth exists), and add a row to the ledger.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from pipeline.config import DEFAULT_PARAMS, Params, load_params
from pipeline.data.dataset import SegDataset
from pipeline.distributed import resolve_device
from pipeline.ensemble.choose import oof_unavailable
from pipeline.ensemble.data import test_set
from pipeline.ensemble.members import (
    EnsembleForward,
    GroupForward,
    Loaded,
    Runtime,
    find_members,
    load_members,
    members_from_checkpoints,
    windowed,
)
from pipeline.ensemble.plan import Plan, plan_ensemble
from pipeline.errors import run_cli
from pipeline.io import file_digest, read_json, write_json
from pipeline.paths import Layout
from pipeline.plan.apply import planned_params
from pipeline.postprocess import apply as apply_postprocess
from pipeline.predict import iter_logits
from pipeline.rounds import choose_round
from pipeline.submission.format import SubmissionFormat, submission_format
from pipeline.submission.ledger import append_ledger
from pipeline.submission.writer import SubmissionWriter
from pipeline.threshold import decide
from pipeline.tta import describe


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def run_ensemble(
    params: Params,
    layout: Layout,
    output: str | None = None,
    images_dir: str | None = None,
    checkpoints: Sequence[str] = (),
    tta_mode: str | None = None,
    overlays: int | None = None,
    write_leaderboard: bool = True,
) -> dict[str, Any]:
    """Choose TTA and weights on OOF, predict the test set streaming, write and validate the submission.

    ``write_leaderboard=False`` keeps the local-leaderboard score in the returned report only (side runs such as the
    ablation must not overwrite the stage's ``metrics/leaderboard.json``).
    """
    params = planned_params(params, layout)  # infer keys left null: the plan's sliding window and TTA candidates
    p = params.infer
    if tta_mode is not None:
        p = dataclasses.replace(p, tta=tta_mode)  # type: ignore[arg-type]
        params = dataclasses.replace(params, infer=p)
    fmt = submission_format(p.submission)
    device = resolve_device(params.train.device)
    models = p.models or params.train.models
    round_choice: dict[str, Any] | None = None
    if p.round == "auto" and not checkpoints:
        round_, round_choice = choose_round(params, layout, models, len(read_json(layout.classes_json)))
        print(f"infer.round: auto: round {round_}: {round_choice['why']}")
    else:
        round_ = p.round if isinstance(p.round, int) else 1 + _pseudo_rounds(params)
    if checkpoints:
        members = members_from_checkpoints(checkpoints)
        rounds = {m.round for m in members}
        round_ = rounds.pop() if len(rounds) == 1 else -1  # the report's round: the members' own (-1: mixed rounds)
    else:
        members = find_members(layout, models, params.train.folds, round_)
    t0 = time.time()

    loaded = load_members(members, device)  # load
    rt = Runtime.of(loaded, p, device)
    plan = plan_ensemble(params, layout, loaded, rt, oof_unavailable(layout, members))  # plan on OOF
    report: dict[str, Any] = {
        "round": round_,
        **({"round_choice": round_choice} if round_choice is not None else {}),
        "models": list(loaded.groups),
        "folds": sorted({m.fold for m in members}),
        "members": [{"model": m.model, "fold": m.fold, "round": m.round} for m in members],
        "space": p.space,
        "metric": params.metric.name,
        **plan.report,
        "weights": dict(zip(loaded.groups, plan.weights)),
        "fallback": plan.fallback,
    }
    if rt.tile is not None:
        report["sliding"] = {"tile": list(rt.tile), "overlap": p.tile_overlap, "blend": p.tile_blend}

    out = Path(output or p.output)  # predict the test set, streaming, and finalise the submission
    report["test_images"] = predict_test(params, layout, loaded, rt, plan, fmt, out, images_dir, overlays)
    report["submission"] = str(out)
    report["seconds"] = round(time.time() - t0, 1)
    print(f"wrote {out} ({report['test_images']} images, {report['seconds']} s)")

    from pipeline.leaderboard import score_if_truth

    lb = score_if_truth(out, params, fmt) if images_dir is None else None  # None: no truth of this competition
    if lb is not None:
        report["leaderboard"] = {k: lb[k] for k in ("metric", "score", "mIoU", "mBIoU", "aAcc")}
    if write_leaderboard and images_dir is None:  # a stage output: written (as "not scored") even without truth
        write_json(layout.leaderboard_json, lb if lb is not None else {"scored": False, "reason": "no truth"})
    append_ledger(layout.ledger, ledger_row(report, params, plan, lb))  # and the ledger
    return report


def predict_test(  # noqa: PLR0913 - run_ensemble's second half: every argument is a piece it already built
    params: Params,
    layout: Layout,
    loaded: Loaded,
    rt: Runtime,
    plan: Plan,
    fmt: SubmissionFormat,
    out: Path,
    images_dir: str | None,
    overlays: int | None,
) -> int:
    """Stream the test set through the planned ensemble into the submission at ``out``; return the image count."""
    p = rt.p
    tests = test_set(params, images_dir)
    ml = loaded.multilabel
    groups = [
        GroupForward(list(by_fold.values()), plan.ttas[n], p.space, plan.temps.get(n, 1.0), p.batched_tta, ml)
        for n, by_fold in loaded.groups.items()
    ]
    ensemble = EnsembleForward(groups, plan.weights, p.space, ml).to(rt.device)
    sample = params.data.sample_submission_path
    sample = sample if sample.is_file() and images_dir is None else None
    writer = SubmissionWriter(loaded.classes, fmt, sample=sample, multilabel=ml)
    ds = SegDataset(tests.paths, None, None, preload=False)
    overlay_n = p.overlays if overlays is None else overlays
    layout.overlays_dir.mkdir(parents=True, exist_ok=True)  # an output of the infer stage: there even with no overlays
    forward = windowed(ensemble, p, rt.tile)
    batches = iter_logits(forward, ds, rt.device, rt.batch, sizes=lambda i: tests.sizes[i], amp_ctx=rt.amp_ctx)
    bar = tqdm(total=len(ds), desc="infer", unit="img", mininterval=1.0)
    # out of memory: one line naming the infer key to lower, below the bar (closed first, on the way out)
    with rt.memory("infer: predicting the test images"), bar:
        for idx, logp in batches:
            # (B, H, W) class indices at original size: the argmax, or over the binary threshold fitted on OOF (a
            # multilabel ensemble: the bit field of each class's sigmoid over 0.5)
            pred = decide(rt.probabilities(logp), plan.threshold, ml).to(torch.uint8).cpu().numpy()
            for j, i in enumerate(idx.tolist()):
                mask = apply_postprocess(pred[j], plan.postprocess)  # the rules fitted on OOF (none: unchanged)
                writer.add(fmt.image_key(tests.ids[i], tests.file_names[i]), mask)
                if i < overlay_n:
                    _write_overlay(layout.overlay_path(Path(tests.file_names[i]).stem), tests.paths[i], mask)
            bar.update(len(idx))
    writer.finalize(out)
    return len(ds)


def ledger_row(report: dict[str, Any], params: Params, plan: Plan, lb: dict[str, Any] | None) -> dict[str, Any]:
    """The ledger's row of a run: what ran, how it was chosen, its CV (in-sample and cross-fitted) and LB."""
    names = report["models"]
    return {
        "file": report["submission"],
        "time": datetime.datetime.now().isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "models": " ".join(names),
        "members": " ".join(f"{m['model']}/fold{m['fold']}/r{m['round']}" for m in report["members"]),
        "tta": "; ".join(f"{n}: {describe(plan.ttas[n])}" for n in names),
        "ensemble_weights": " ".join(f"{n}={w:.3f}" for n, w in zip(names, plan.weights)),
        "oof_miou": report.get("oof_mIoU", ""),
        "metric": params.metric.name,
        "oof_in_sample": report.get("oof_in_sample", ""),
        "oof_cross_fitted": "" if report.get("oof_cross_fitted") is None else report["oof_cross_fitted"],
        "fallback": "; ".join(plan.fallback),
        "lb_miou": lb["mIoU"] if lb else "",
        "lb_score": lb["score"] if lb else "",
        "public_score": "",
        "submission_sha256": file_digest(report["submission"]),  # the row's key with "file": a re-run replaces it
        "postprocess": report.get("postprocess", {}).get("rules") or "",
        # one per class for multilabel masks, space-separated (the CSV cell keeps no commas)
        "threshold": " ".join(map(str, plan.threshold)) if isinstance(plan.threshold, tuple) else plan.threshold,
    }


def _pseudo_rounds(params: Params) -> int:
    pseudo = getattr(params, "pseudo", None)
    return int(getattr(pseudo, "rounds", 0)) if pseudo is not None else 0


def _write_overlay(dest: Path, image_path: Path, pred: np.ndarray) -> None:
    from pipeline.io import read_image, write_png
    from pipeline.plots import colorize

    image = read_image(image_path)
    color = colorize(pred)
    blend = np.where(pred[..., None] > 0, (0.5 * image + 0.5 * color).astype(np.uint8), image)
    write_png(dest, np.concatenate([image, blend], axis=1))


# --------------------------------------------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m pipeline.infer",
        description="TTA + ensemble inference: writes a validated RLE submission, scores it on the local "
        "leaderboard when test truth exists, and adds a row to submissions/ledger.csv. After uploading, paste the "
        "public score into that row's public_score column to compare CV (oof_miou) with LB.",
    )
    ap.add_argument(
        "--ensemble",
        action="store_true",
        help="ensemble the trained models listed in params (infer.models or train.models, every fold in train.folds)",
    )
    ap.add_argument("--params", default=DEFAULT_PARAMS, help="params file (sections: data, train, infer)")
    ap.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        metavar="PT",
        help="ensemble these checkpoints instead (repeatable: each is one member, with the model, fold and round it "
        "records); no OOF selection then",
    )
    ap.add_argument("--tta", choices=["auto", "config", "none"], help="override infer.tta")
    ap.add_argument("--output", help="submission CSV to write (default infer.output)")
    ap.add_argument("--images", help="a folder of new images to predict instead of the competition's test set")
    ap.add_argument("--overlays", type=int, help="write PNG overlays of the first N predictions to reports/overlays")
    ap.add_argument("--report", help="write the run's JSON report here (default metrics/infer.json)")
    args = ap.parse_args(argv)
    if not args.ensemble and not args.checkpoint:
        ap.error("give --ensemble (models from params) or --checkpoint PT")
    params = load_params(args.params)
    layout = Layout()
    report = run_ensemble(params, layout, args.output, args.images, args.checkpoint, args.tta, args.overlays)
    write_json(args.report or layout.infer_json, report)
    return 0


if __name__ == "__main__":
    run_cli(main)
