"""The ``report`` stage's logic: the end-of-run report (``reports/summary.md``, ``metrics/summary.json``): models x
rounds OOF mIoU, the ensemble and its weights, the local leaderboard with the mmseg-style per-class table, time per
stage, and a grid of test predictions."""

from __future__ import annotations

import dataclasses
import datetime
import json
import platform
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import Params
from pipeline.data.folds import read_folds
from pipeline.data.truth import truth_mismatch
from pipeline.errors import UserError
from pipeline.io import read_image, read_json, safe_join, write_json, write_png, write_text
from pipeline.oof import model_oof
from pipeline.paths import Layout
from pipeline.plan.apply import planned_folds
from pipeline.plots import colorize
from pipeline.tables import format_markdown


def _json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def oof_scores(layout: Layout, model: str, folds: list[int], round_: int, metric: str, num_classes: int) -> dict | None:
    """OOF scores of one model config in one round, every fold's validation predictions pooled
    (:mod:`pipeline.oof`): ``{"metric", "score", "mIoU"}``, or ``None`` when an ``oof.npz`` is missing."""
    m = model_oof(layout, model, folds, round_, num_classes)
    return None if m is None else m.scores(metric)


def oof_miou(layout: Layout, model: str, folds: list[int], round_: int, num_classes: int) -> float | None:
    """OOF dataset mIoU of one model config in one round (``None`` when an ``oof.npz`` is missing)."""
    s = oof_scores(layout, model, folds, round_, "miou", num_classes)
    return None if s is None else s["mIoU"]


def stage_seconds(layout: Layout, params: Params) -> dict[str, float | None]:
    """Seconds per stage, from what each stage recorded; ``None`` (reported as "unknown") where a record is
    missing, never 0: a training round is unknown unless every (model, fold) recorded its time."""
    out: dict[str, float | None] = {}
    for name in ("demo", "masks", "folds"):
        t = _json(layout.timing_path(name))
        out[name] = t.get("seconds") if t else None
    for r in range(1, 2 + params.pseudo.rounds):
        times = [_json(layout.fold_files(m, f, r).metrics) for m in params.train.models for f in params.train.folds]
        known = all(mj and "train_seconds" in mj for mj in times)
        out[f"train round {r} (all folds)"] = round(sum(mj["train_seconds"] for mj in times), 1) if known else None  # type: ignore[index]
    rounds = range(1, 1 + params.pseudo.rounds)
    named = [("pseudo" if r == 1 else f"pseudo r{r}", layout.pseudo_metrics(r)) for r in rounds]
    for name, path in (*named, ("infer", layout.infer_json)):
        j = _json(path)
        out[name] = j.get("seconds") if j else None
    return out


def format_seconds(seconds: float | None) -> str:
    """``12.3``, or ``unknown`` for a stage that recorded no time."""
    return "unknown" if seconds is None else f"{seconds:.1f}"


def prediction_grid(params: Params, layout: Layout, dest: Path, n: int = 12) -> None:
    """A PNG grid of the first ``n`` test images, each beside its predicted mask decoded from the submission (by
    :mod:`pipeline.submission.codec`; a dense prediction at another size is resized to the image for the picture)."""
    from pipeline.submission.codec import decode_frame, read_submission_csv
    from pipeline.submission.format import resize_nearest, submission_format
    from pipeline.submission.validate import validate_submission

    fmt = submission_format(params.infer.submission)
    images = read_json(params.data.test_json_path)["images"]
    classes = read_json(layout.classes_json)
    df = read_submission_csv(params.infer.output)
    shapes = {fmt.image_key(im["id"], im["file_name"]): (int(im["height"]), int(im["width"])) for im in images}
    problems = validate_submission(df, None, shapes, fmt, [(c["index"], c["name"]) for c in classes])
    if problems:
        raise UserError(f"{params.infer.output}: not a valid submission: {'; '.join(problems[:5])}")
    images = images[:n]
    keys = [fmt.image_key(im["id"], im["file_name"]) for im in images]
    # only the shown images are decoded; a dense prediction at its dense_size, resized below for the picture only
    shapes = {k: tuple(fmt.dense_size) if fmt.layout == "dense" else shapes[k] for k in keys}
    labels = {fmt.class_label(c["index"], c["name"]): c["index"] for c in classes if c["index"] != 0}
    preds = decode_frame(df, fmt, shapes, labels, str(params.infer.output))
    tiles = []
    for im in images:
        image = read_image(safe_join(params.data.images_path, im["file_name"]))
        pred = preds[fmt.image_key(im["id"], im["file_name"])]
        if pred.shape != image.shape[:2]:
            pred = resize_nearest(pred, image.shape[:2])
        tiles.append(np.concatenate([image, colorize(pred)], axis=1))
    h, w = max(t.shape[0] for t in tiles), max(t.shape[1] for t in tiles)
    cols = 3
    rows = -(-len(tiles) // cols)
    grid = np.full((rows * (h + 4), cols * (w + 4), 3), 255, np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        grid[r * (h + 4) : r * (h + 4) + t.shape[0], c * (w + 4) : c * (w + 4) + t.shape[1]] = t
    write_png(dest, grid)


def write_summary(params: Params, layout: Layout) -> str:
    folds = planned_folds(params, layout)  # the folds that trained: the plan may train fewer of train.folds
    params = dataclasses.replace(params, train=dataclasses.replace(params.train, folds=folds))
    classes = read_json(layout.classes_json)
    rounds = list(range(1, 2 + params.pseudo.rounds))
    folds = list(params.train.folds)
    read_folds(layout)  # the folds exist (an error says what to run otherwise)
    lines = [
        "# Run summary",
        "",
        f"{datetime.date.today().isoformat()}, {platform.machine()} with "
        f"{__import__('os').cpu_count()} CPU cores, competition `{params.data.root}`.",
        "",
    ]
    lines += [
        "## Out-of-fold mIoU (models x rounds)",
        "",
        "| model | " + " | ".join(f"round {r}" for r in rounds) + " |",
        "|---|" + "---|" * len(rounds),
    ]
    metric = params.metric.name
    oof: dict[str, dict[int, dict[str, Any] | None]] = {}
    for m in params.train.models:
        oof[m] = {r: oof_scores(layout, m, folds, r, metric, len(classes)) for r in rounds}
        lines.append(f"| {m} | " + " | ".join("-" if v is None else f"{v['mIoU']:.4f}" for v in oof[m].values()) + " |")
    if metric != "miou":  # the competition's metric beside mIoU
        lines += [
            "",
            f"OOF `{metric}`: "
            + "; ".join(
                f"{m} " + ", ".join("-" if v is None else f"{v['score']:.4f}" for v in by_round.values())
                for m, by_round in oof.items()
            )
            + " (rounds in order).",
        ]
    write_json(
        layout.summary_json,
        {
            "oof_mIoU": {m: {f"round{r}": v and v["mIoU"] for r, v in by_round.items()} for m, by_round in oof.items()},
            "metric": metric,
            "oof_score": {
                m: {f"round{r}": v and v["score"] for r, v in by_round.items()} for m, by_round in oof.items()
            },
        },
    )
    infer = _json(layout.infer_json) or {}
    if infer:
        lines += [
            "",
            "## Ensemble",
            "",
            f"Round {infer.get('round')} models{_round_why(infer)}, averaged in {infer.get('space')} space.",
            "",
            "| model | TTA (chosen on OOF) | weight | OOF mIoU with TTA |",
            "|---|---|---|---|",
        ]
        for m, e in infer.get("per_model", {}).items():
            oof_t = e.get("oof_mIoU")
            lines.append(
                f"| {m} | {e.get('tta')} | {infer['weights'].get(m, 0):.3f} | "
                + ("-" if oof_t is None else f"{oof_t:.4f}")
                + " |"
            )
        if "oof_mIoU" in infer:
            lines += [
                "",
                f"Ensemble OOF mIoU: {infer['oof_mIoU']:.4f} (equal weights {infer['oof_mIoU_equal_weights']:.4f}).",
            ]
        if infer.get("oof_in_sample") is not None:
            cross = infer.get("oof_cross_fitted")
            lines += [
                "",
                f"Ensemble OOF `{infer.get('metric', 'miou')}`: in-sample {infer['oof_in_sample']:.4f} (choices fitted "
                "and scored on every fold), cross-fitted "
                + ("n/a (one fold)" if cross is None else f"**{cross:.4f}**")
                + " (fold k scored with the choices fitted without it: the estimate to compare with the leaderboard).",
            ]
        if infer.get("fallback"):
            lines += ["", "Fallbacks without OOF (infer.allow_fallback): " + "; ".join(infer["fallback"]) + "."]
    no_truth = truth_mismatch(params.data.truth_dir, params.data.test_json_path)
    if no_truth:  # a leaderboard file left by another competition is not this one's
        print(f"no truth for this competition: {no_truth}; the report has no local leaderboard")
    lb = None if no_truth else _json(layout.leaderboard_json)
    lb = lb if lb and "mIoU" in lb else None  # {"scored": false}: infer found no truth
    if lb:
        lines += [
            "",
            "## Local leaderboard (held-back test truth)",
            "",
            f"`{lb.get('metric', 'miou')}` (the competition metric, params `metric.name`) "
            f"**{lb.get('score', lb['mIoU']):.4f}**;"
            f" mIoU {lb['mIoU']:.4f} over {len(lb['per_class'])} classes with background (dataset convention), "
            f"mBIoU {lb['mBIoU']:.4f}, aAcc {lb['aAcc']:.4f}.",
            "",
            format_markdown(lb),
        ]
    secs = stage_seconds(layout, params)
    if secs:
        lines += ["", "## Time per stage", "", "| stage | seconds |", "|---|---|"]
        lines += [f"| {k} | {format_seconds(v)} |" for k, v in secs.items()]
    prediction_grid(params, layout, layout.predictions_png)
    lines += [
        "",
        "## Test predictions",
        "",
        "Each pair: test image | predicted mask (colour = class).",
        "",
        f"![test predictions]({layout.predictions_png.name})",
    ]
    text = "\n".join(lines) + "\n"
    write_text(layout.summary_md, text)
    return text


def _round_why(infer: dict[str, Any]) -> str:
    """`` (infer.round: auto: why)`` when infer chose the round on OOF, else nothing."""
    choice = infer.get("round_choice")
    return f" (infer.round: auto: {choice['why']})" if choice else ""
