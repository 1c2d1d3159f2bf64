"""The local leaderboard: score a submission CSV against held-back truth masks.

Truth is a folder of PNG class masks named by test-image file stem, with a ``classes.json`` (index, name) beside
them (the embedded default writes one to ``data/truth``). The submission is decoded with the same format params
that wrote it; its class labels are matched to the truth's classes by name (or index, per ``class_value``).
Scores: mIoU over all classes (background included, dataset convention), per-class IoU and accuracy, pixel
accuracy, and Boundary IoU (see :mod:`pipeline.metrics`).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from pipeline import rle
from pipeline.config import from_dict, load_params
from pipeline.errors import UserError, run_cli
from pipeline.io import read_json, read_mask, write_json
from pipeline.metrics import BoundaryIoU, ConfusionMatrix, summarize
from pipeline.submission import SubmissionFormat, read_submission_csv, validate_submission


def decode_submission(
    csv_path: Path, test_json: Path, fmt: SubmissionFormat, classes: list[dict[str, Any]]
) -> dict[str, np.ndarray]:
    """``{file stem: (H, W) uint8 class mask}`` decoded from a per_class or per_image submission."""
    images = read_json(test_json)["images"]
    df = read_submission_csv(csv_path)
    shapes = {fmt.image_key(im["id"], im["file_name"]): (int(im["height"]), int(im["width"])) for im in images}
    problems = validate_submission(df, None, shapes, fmt, [(c["index"], c["name"]) for c in classes])
    if problems:
        raise UserError(f"{csv_path}: not a valid submission: {'; '.join(problems[:5])}")
    stem = {fmt.image_key(im["id"], im["file_name"]): Path(im["file_name"]).stem for im in images}
    label_to_index = {fmt.class_label(c["index"], c["name"]): c["index"] for c in classes if c["index"] != 0}
    masks = {key: np.zeros(shape, np.uint8) for key, shape in shapes.items()}
    pred = fmt.prediction_column
    for _, row in df.iterrows():
        if fmt.layout == "per_class":
            if fmt.key_format is not None:
                raise UserError(
                    "leaderboard: key_format submissions are scored through their sample's columns; "
                    "use id and class columns"
                )
            image = str(row[fmt.id_column])
            # A single-class layout (id,predicted: Carvana) has no class column: its one class is the label.
            label = str(row[fmt.class_column]) if fmt.class_column is not None else next(iter(label_to_index))
            m = rle.decode(str(row[pred]), shapes[image], fmt.rle)
            masks[image][m] = label_to_index[label]
        elif fmt.layout == "per_image":
            image = str(row[fmt.id_column])
            parts = str(row[pred]).split()
            if parts and parts != [fmt.rle.empty]:
                for k in range(0, len(parts), 3):
                    m = rle.decode(f"{parts[k + 1]} {parts[k + 2]}", shapes[image], fmt.rle)
                    masks[image][m] = label_to_index[parts[k]]
        else:
            raise UserError("leaderboard: the dense layout is resized and cannot be scored at original size")
    return {stem[k]: v for k, v in masks.items()}


def score_submission(csv_path: Path, truth_dir: Path, test_json: Path, fmt: SubmissionFormat) -> dict[str, Any]:
    """Score ``csv_path`` against ``truth_dir``; returns the summary dict (mIoU, aAcc, mBIoU, per_class, ...)."""
    classes = read_json(truth_dir / "classes.json")
    preds = decode_submission(csv_path, test_json, fmt, classes)
    cm, biou = ConfusionMatrix(len(classes)), BoundaryIoU(len(classes))
    for stem, pred in tqdm(preds.items(), desc="score", unit="img", mininterval=1.0, leave=False):
        truth = read_mask(truth_dir / f"{stem}.png")
        if truth.shape != pred.shape:
            raise UserError(f"{truth_dir / (stem + '.png')}: truth is {truth.shape}, prediction {pred.shape}")
        cm.update(pred, truth)
        biou.update(pred, truth)
    return summarize(cm, [c["name"] for c in classes], boundary=biou)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.leaderboard", description=__doc__.split("\n\n")[0])
    ap.add_argument("submission", help="submission CSV to score")
    ap.add_argument("--truth", help="truth masks folder (default data.truth_dir)")
    ap.add_argument("--test-json", help="COCO test json with the image sizes (default data.root/data.test_json)")
    ap.add_argument("--params", default="params.yaml", help="params file: data paths and infer.submission format")
    ap.add_argument("--out", help="write the scores as JSON here")
    args = ap.parse_args(argv)
    params = load_params(args.params)
    fmt = from_dict(SubmissionFormat, params.infer.submission, "params.yaml: infer.submission")
    truth = Path(args.truth or params.data.truth_dir)
    test_json = Path(args.test_json or Path(params.data.root) / params.data.test_json)
    scores = score_submission(Path(args.submission), truth, test_json, fmt)
    from pipeline.report import format_table

    print(format_table(scores))
    print(f"mIoU {scores['mIoU']:.5f}  mBIoU {scores['mBIoU']:.5f}  aAcc {scores['aAcc']:.5f}")
    if args.out:
        write_json(args.out, scores)
    return 0


if __name__ == "__main__":
    run_cli(main)
