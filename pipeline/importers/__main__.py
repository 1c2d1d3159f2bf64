"""Import a dataset as a standard COCO competition folder: ``python -m pipeline.importers <kind> ...``.

Kinds: ``m2nist`` (combined.npy + segmented.npy), ``folders`` (image and mask folders matched by stem), ``labelme``
(a folder of labelme JSON files), ``rle-csv`` (a run-length train.csv and its images); ``make-m2nist`` writes the
embedded digits in M2NIST's npy layout. Each writes ``<out>/train.json``, ``<out>/test.json``, ``<out>/images/``
and, for a held-out test split, its truth masks (``--truth``, default ``truth`` beside ``<out>``).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from pipeline.config import load_params
from pipeline.errors import UserError, run_cli
from pipeline.importers.common import Split, parse_classes, parse_split, read_classes_file
from pipeline.submission.format import SubmissionFormat, submission_format


def _common(p: argparse.ArgumentParser, test_list: str) -> None:
    p.add_argument("--out", required=True, type=Path, help="competition folder to write (replaced whole)")
    p.add_argument("--truth", type=Path, help="held-out test truth folder (default: 'truth' beside --out)")
    p.add_argument("--split", help="TRAIN:TEST ratios of the random split, e.g. 0.85:0.15 (default 0.85:0.15)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random split")
    p.add_argument("--test-list", type=Path, help=f"file of {test_list} to hold out (replaces the random split)")


def _classes(p: argparse.ArgumentParser, flag: str, what: str, required: bool) -> None:
    g = p.add_mutually_exclusive_group(required=required)
    g.add_argument(f"--{flag}", help=f"{what}: 'a,b' (ids 1, 2) or 'a=1,b=5'")
    g.add_argument(f"--{flag}-file", type=Path, help="one name per line (line i = id i, line 0 background) or name=id")


def _read_classes(args: argparse.Namespace, flag: str) -> dict[int, str] | None:
    text, file = getattr(args, flag), getattr(args, f"{flag}_file")
    if file is not None:
        return read_classes_file(file)
    return parse_classes(text, f"--{flag}") if text is not None else None


def _split(args: argparse.Namespace, default: float = 0.15) -> Split:
    share = parse_split(args.split) if args.split is not None else default
    return Split(test_share=share, seed=args.seed, test_list=args.test_list)


def _rle_format(args: argparse.Namespace) -> SubmissionFormat:
    """The CSV's format: the params file's infer.submission (if given), then each flag that was set."""
    if args.params is not None:
        fmt = submission_format(load_params(args.params).infer.submission, args.params)
    else:
        fmt = SubmissionFormat()
    flags = ("layout", "id_column", "key_format", "class_value", "id_source")
    changes: dict[str, Any] = {k: getattr(args, k) for k in flags if getattr(args, k) is not None}
    if args.rle_column is not None:
        changes["prediction_column"] = args.rle_column
    if args.class_column is not None:
        changes["class_column"] = args.class_column or None
    rle_flags = ("order", "start_index", "starts", "empty")
    rle_changes = {k: getattr(args, k) for k in rle_flags if getattr(args, k) is not None}
    try:
        return dataclasses.replace(fmt, rle=dataclasses.replace(fmt.rle, **rle_changes), **changes)
    except ValueError as e:  # RleFormat's own check
        raise UserError(str(e)) from None


def main(argv: list[str] | None = None) -> int:  # noqa: PLR0915 - one argparse sub-parser per importer
    ap = argparse.ArgumentParser(prog="python -m pipeline.importers", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="kind", required=True)

    m = sub.add_parser("m2nist", help="M2NIST combined.npy + segmented.npy (one-hot, last channel background)")
    m.add_argument("combined", type=Path, help="(N, H, W) uint8 canvases")
    m.add_argument("segmented", type=Path, help="(N, H, W, C) one-hot labels, last channel = background")
    _common(m, "0-based image indices")
    _classes(m, "classes", "names of channels 0..C-2 (default '0'..'9')", required=False)

    f = sub.add_parser("folders", help="image and mask folders matched by file stem (e.g. horse/ and mask/)")
    f.add_argument("images", type=Path, help="images folder")
    f.add_argument("masks", type=Path, help="masks folder: class-index, palette or 0/255 PNGs")
    f.add_argument("--mask-suffix", default="", help="what a mask's stem adds to its image's, e.g. _mask")
    _common(f, "image stems")
    _classes(f, "classes", "the class of each mask value", required=True)

    lm = sub.add_parser("labelme", help="a folder of labelme JSON files (polygon, rectangle, circle shapes)")
    lm.add_argument("folder", type=Path, help="folder of *.json files")
    lm.add_argument("--root", type=Path, help="image paths must stay inside this folder (default: the folder)")
    _common(lm, "JSON stems")
    _classes(lm, "labels", "the category id of each labelme label", required=True)

    r = sub.add_parser("rle-csv", help="a run-length train.csv (Severstal, UW-Madison, SIIM style) + images")
    r.add_argument("csv", type=Path, help="the train CSV")
    r.add_argument("images", type=Path, help="its images folder (searched recursively)")
    r.add_argument("--test-images", type=Path, help="the competition's unlabelled test images (then no split)")
    r.add_argument("--id-regex", help="regex read from each image's relative path: group 'id', or groups joined by _")
    r.add_argument("--unlisted", choices=["empty", "skip", "error"], default="empty", help="images without rows")
    r.add_argument("--params", type=Path, help="read the format from this params file's infer.submission")
    r.add_argument("--layout", choices=["per_class", "per_image"])
    r.add_argument("--id-column")
    r.add_argument("--class-column", help="'' for none (one class, or a key_format)")
    r.add_argument("--rle-column", help="the run-length column (the format's prediction_column)")
    r.add_argument("--key-format", help="a combined key column, e.g. '{id}_{class}'")
    r.add_argument("--class-value", choices=["name", "index"])
    r.add_argument("--id-source", choices=["image_id", "file_stem", "file_name"])
    r.add_argument("--order", choices=["column", "row"])
    r.add_argument("--start-index", type=int, choices=[0, 1])
    r.add_argument("--starts", choices=["absolute", "relative"])
    r.add_argument("--empty", choices=["", "-1"])
    r.add_argument(
        "--multilabel",
        choices=["auto", "yes", "no"],
        default="auto",
        help="truth as multilabel bit fields (auto: when classes overlap)",
    )
    _common(r, "image ids")
    _classes(r, "classes", "class names and ids (default: from the CSV's labels)", required=False)

    g = sub.add_parser("make-m2nist", help="write the embedded MNIST digits in M2NIST's npy layout")
    g.add_argument("--out", required=True, type=Path, help="folder for combined.npy and segmented.npy")
    g.add_argument("-n", type=int, default=1000, help="number of canvases")
    g.add_argument("--seed", type=int, default=0)

    args = ap.parse_args(argv)
    if args.kind == "make-m2nist":
        from pipeline.importers.m2nist import COMBINED_NPY, SEGMENTED_NPY, write_m2nist_npy

        write_m2nist_npy(args.out, args.n, args.seed)
        print(f"wrote {args.out / COMBINED_NPY} and {args.out / SEGMENTED_NPY} ({args.n} canvases)")
        return 0
    if args.kind == "m2nist":
        from pipeline.importers.m2nist import import_m2nist

        counts = import_m2nist(
            args.combined, args.segmented, args.out, args.truth, _split(args), _read_classes(args, "classes")
        )
    elif args.kind == "folders":
        from pipeline.importers.folders import import_folders

        classes = _read_classes(args, "classes")
        counts = import_folders(args.images, args.masks, classes, args.out, args.truth, _split(args), args.mask_suffix)
    elif args.kind == "labelme":
        from pipeline.importers.labelme import import_labelme

        labels = _read_classes(args, "labels")
        counts = import_labelme(args.folder, labels, args.out, args.truth, _split(args), args.root)
    else:
        from pipeline.importers.rle_csv import import_rle_csv

        counts = import_rle_csv(
            args.csv,
            args.images,
            args.out,
            _rle_format(args),
            _read_classes(args, "classes"),
            args.truth,
            _split(args, default=0.0 if args.test_images is not None else 0.15),
            args.test_images,
            args.id_regex,
            args.unlisted,
            {"auto": None, "yes": True, "no": False}[args.multilabel],
        )
    print(f"{args.out}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    return 0


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
