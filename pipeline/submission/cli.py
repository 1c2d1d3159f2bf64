"""``python -m pipeline.submission validate SUBMISSION.csv --sample SAMPLE.csv [options]``: OK or the problems."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from pipeline.io import read_json
from pipeline.rle import RleFormat
from pipeline.submission.format import SubmissionFormat, shapes_from_coco
from pipeline.submission.validate import validate_submission


def _parse_size(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)[xX](\d+)", text)
    if not m:
        raise argparse.ArgumentTypeError(f"expected HxW like 256x256, got {text!r}")
    return int(m.group(1)), int(m.group(2))


def _format_from_args(args: argparse.Namespace) -> SubmissionFormat:
    return SubmissionFormat(
        rle=RleFormat(order=args.order, start_index=args.start_index, starts=args.starts, empty=args.empty),
        layout=args.layout,
        id_column=args.id_column,
        class_column=args.class_column or None,
        prediction_column=args.prediction_column,
        key_format=args.key_format,
        class_value=args.class_value,
        id_source=args.id_source,
        dense_size=args.dense_size,
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m pipeline.submission validate SUBMISSION.csv --sample SAMPLE.csv [options]``."""
    d = SubmissionFormat()
    p = argparse.ArgumentParser(prog="python -m pipeline.submission", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    v = sub.add_parser("validate", help="check a submission CSV; prints OK or the problems (exit 1)")
    v.add_argument("submission", type=Path)
    v.add_argument("--sample", type=Path, help="the sample submission whose rows and columns must be matched")
    v.add_argument("--shapes-from", type=Path, help="a COCO json whose images give each id's size")
    v.add_argument("--classes", type=Path, help="classes.json ([{index, name}, ...]) to check class labels")
    v.add_argument("--layout", choices=["per_class", "per_image", "dense"], default=d.layout)
    v.add_argument("--id-column", default=d.id_column)
    v.add_argument("--class-column", default=d.class_column, help="'' for none")
    v.add_argument("--prediction-column", default=d.prediction_column)
    v.add_argument("--key-format", default=d.key_format, help="e.g. '{id}_{class}' for an ImageId_ClassId column")
    v.add_argument("--class-value", choices=["name", "index"], default=d.class_value)
    v.add_argument("--id-source", choices=["image_id", "file_stem", "file_name"], default=d.id_source)
    v.add_argument("--dense-size", type=_parse_size, default=d.dense_size, help="HxW of the dense layout")
    v.add_argument("--order", choices=["column", "row"], default=d.rle.order)
    v.add_argument("--start-index", type=int, choices=[0, 1], default=d.rle.start_index)
    v.add_argument("--starts", choices=["absolute", "relative"], default=d.rle.starts)
    v.add_argument("--empty", choices=["", "-1"], default=d.rle.empty)
    args = p.parse_args(argv)

    fmt = _format_from_args(args)
    shapes = shapes_from_coco(args.shapes_from, fmt.id_source) if args.shapes_from else None
    classes = read_json(args.classes) if args.classes else None
    problems = validate_submission(args.submission, args.sample, shapes, fmt, classes)
    if problems:
        print("\n".join(problems))
        return 1
    print(f"OK: {args.submission}")
    return 0
