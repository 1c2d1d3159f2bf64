"""The local leaderboard: score a submission CSV against held-back truth masks of the same competition.

Truth is a folder of PNG class masks named by test-image file stem, with a ``classes.json`` (index, name) and a
``competition.json`` beside them (the embedded default writes them to ``data/truth``; see
:mod:`pipeline.data.truth`). A truth folder is used only when its ``competition.json`` records the current
``test.json``: pointing ``data.root`` at another competition skips the local leaderboard (one logged line) instead
of scoring against the wrong truth. The submission is decoded by :mod:`pipeline.submission.codec` with the same
format params that wrote it, in every layout (per_class, single-class, combined key, per_image, and dense when
``dense_size`` is the image size); its class labels are matched to the truth's classes by name (or index, per
``class_value``). Scores: mIoU over all classes (background included, dataset convention), per-class IoU and
accuracy, pixel accuracy, and Boundary IoU (see :mod:`pipeline.metrics`). A truth whose record says ``multilabel``
holds bit fields (:mod:`pipeline.labels`): the rows of each class decode into its own bit and every class is scored
as its own binary problem.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from pipeline.config import DEFAULT_PARAMS, Params, load_params
from pipeline.data.truth import truth_mismatch, truth_multilabel
from pipeline.errors import UserError, run_cli
from pipeline.io import read_json, read_mask, write_json
from pipeline.metrics import BoundaryIoU, counter, score_matrices, summarize
from pipeline.paths import TruthFiles
from pipeline.submission.codec import decode_frame, read_submission_csv
from pipeline.submission.format import SubmissionFormat, submission_format
from pipeline.submission.validate import validate_submission


def decode_submission(
    csv_path: Path, test_json: Path, fmt: SubmissionFormat, classes: list[dict[str, Any]], multilabel: bool = False
) -> dict[str, np.ndarray]:
    """``{file stem: (H, W) uint8 class mask}`` of every test image, decoded from a checked submission
    (``multilabel``: bit fields, every class's rows kept)."""
    images = read_json(test_json)["images"]
    df = read_submission_csv(csv_path)
    shapes = {fmt.image_key(im["id"], im["file_name"]): (int(im["height"]), int(im["width"])) for im in images}
    problems = validate_submission(df, None, shapes, fmt, [(c["index"], c["name"]) for c in classes])
    if problems:
        raise UserError(f"{csv_path}: not a valid submission: {'; '.join(problems[:5])}")
    stem = {fmt.image_key(im["id"], im["file_name"]): Path(im["file_name"]).stem for im in images}
    label_to_index = {fmt.class_label(c["index"], c["name"]): c["index"] for c in classes if c["index"] != 0}
    masks = decode_frame(df, fmt, shapes, label_to_index, str(csv_path), multilabel)
    return {stem[k]: v for k, v in masks.items()}


def score_submission(
    csv_path: Path, truth_dir: Path, test_json: Path, fmt: SubmissionFormat, metric: str = "miou"
) -> dict[str, Any]:
    """Score ``csv_path`` against ``truth_dir``; returns the summary dict (mIoU, aAcc, mBIoU, per_class, ...) with
    ``metric`` (params.yaml ``metric.name``) and ``score``, the competition's metric (:func:`metrics.score_matrices`).

    Raises:
        UserError: the truth is not this competition's (see :mod:`pipeline.data.truth`), or the submission or a
            truth mask is unreadable or invalid.
    """
    reason = truth_mismatch(truth_dir, test_json)
    if reason:
        raise UserError(f"no truth for this competition: {reason}")
    truth_files = TruthFiles(truth_dir)
    classes = read_json(truth_files.classes_json)
    multilabel = truth_multilabel(truth_dir)  # bit-field truth: each class its own binary problem
    preds = decode_submission(csv_path, test_json, fmt, classes, multilabel)
    cm, biou = counter(len(classes), multilabel, per_image=True), BoundaryIoU(len(classes), multilabel=multilabel)
    for stem, pred in tqdm(preds.items(), desc="score", unit="img", mininterval=1.0, leave=False):
        truth = read_mask(truth_files.mask(stem))
        if truth.shape != pred.shape:
            raise UserError(f"{truth_files.mask(stem)}: truth is {truth.shape}, prediction {pred.shape}")
        cm.update(pred, truth)
        biou.update(pred, truth)
    scores = summarize(cm.matrix, [c["name"] for c in classes], boundary=biou)
    return {"metric": metric, "score": score_matrices(metric, cm.image_matrices), **scores}


def truth_for(params: Params, truth: str | Path | None = None) -> tuple[Path | None, str]:
    """``(truth folder, "")`` when ``truth`` (default ``data.truth_dir``) is this competition's, else ``(None,
    why not)``."""
    truth_dir = Path(truth if truth is not None else params.data.truth_dir)
    reason = truth_mismatch(truth_dir, params.data.test_json_path)
    return (None, reason) if reason else (truth_dir, "")


def score_if_truth(
    csv_path: str | Path, params: Params, fmt: SubmissionFormat, truth: str | Path | None = None
) -> dict[str, Any] | None:
    """The local leaderboard of ``csv_path``, or None (after one logged line) when the competition of
    ``params.data.root`` has no truth of its own: the folder is missing or its ``competition.json`` is another's."""
    truth_dir, reason = truth_for(params, truth)
    if truth_dir is None:
        print(f"no truth for this competition: {reason}; skipping the local leaderboard")
        return None
    test_json = params.data.test_json_path
    lb = score_submission(Path(csv_path), truth_dir, test_json, fmt, params.metric.name)
    print(
        f"local leaderboard: {lb['metric']} {lb['score']:.5f}, mIoU {lb['mIoU']:.5f}, mBIoU {lb['mBIoU']:.5f}, "
        f"aAcc {lb['aAcc']:.5f}"
    )
    return lb


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.leaderboard", description=__doc__.split("\n\n")[0])
    ap.add_argument("submission", help="submission CSV to score")
    ap.add_argument("--truth", help="truth masks folder (default data.truth_dir); its competition.json must match")
    ap.add_argument("--test-json", help="COCO test json with the image sizes (default data.root/data.test_json)")
    ap.add_argument("--params", default=DEFAULT_PARAMS, help="params file: data paths and infer.submission format")
    ap.add_argument("--out", help="write the scores as JSON here")
    args = ap.parse_args(argv)
    params = load_params(args.params)
    fmt = submission_format(params.infer.submission, args.params)
    truth = Path(args.truth or params.data.truth_dir)
    test_json = Path(args.test_json or params.data.test_json_path)
    scores = score_submission(Path(args.submission), truth, test_json, fmt, params.metric.name)
    from pipeline.tables import format_table

    print(format_table(scores))
    print(
        f"{scores['metric']} {scores['score']:.5f}  mIoU {scores['mIoU']:.5f}  mBIoU {scores['mBIoU']:.5f}  "
        f"aAcc {scores['aAcc']:.5f}"
    )
    if args.out:
        write_json(args.out, scores)
    return 0


if __name__ == "__main__":
    run_cli(main)
