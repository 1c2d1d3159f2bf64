"""A run-length ``train.csv`` plus an images folder -> a COCO competition.

The CSV is read with the same :class:`pipeline.submission.format.SubmissionFormat` that writes the competition's
submission (``infer.submission`` in params.yaml), so one set of params describes both directions: the layout
(``per_class`` rows ``id,class,rle``, a combined ``{id}_{class}`` key, a single-class ``id,rle``, or ``per_image``
``class start length`` triples, all read by :mod:`pipeline.submission.codec`), the column names, and the RLE
format (pixel order, start index, relative starts, empty token; see :mod:`pipeline.rle`). Examples: Severstal
(``ImageId,ClassId,EncodedPixels``, column-major, 1-based), UW-Madison GI Tract (``id,class,segmentation``,
row-major, 1-based), SIIM-ACR (``ImageId,EncodedPixels``, column-major, 0-based, relative starts, ``-1``).

Each row's image is found in the images folder (searched recursively) by its relative path (``0002cc93b.jpg``),
by its file stem, or by ``id_regex`` (a regex searched in each image's relative path: its named group ``id``, or
else all its groups joined by ``_``, is the image's id). Each image's size is read from the image file. Rows of the
same image and class are merged; each connected component of each class is one annotation (classes may overlap).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pipeline import rle
from pipeline.errors import DataError, UserError
from pipeline.importers.common import (
    Split,
    check_classes,
    components,
    default_truth,
    image_size,
    list_images,
    split_keys,
    write_competition,
)
from pipeline.io import safe_join
from pipeline.submission import codec
from pipeline.submission.format import PER_CLASS, SubmissionFormat

Row = tuple[int, str | None, str]  # (CSV line number, class label or None, run-length text)


def index_images(folder: Path, id_regex: str | None = None) -> dict[str, Path]:
    """``{image id: relative path}`` of the images under ``folder``: by file stem, or by ``id_regex``.

    With ``id_regex``, images whose relative path does not match are left out.
    """
    try:
        pattern = re.compile(id_regex) if id_regex else None
    except re.error as e:
        raise UserError(f"--id-regex {id_regex!r}: not a regular expression ({e})") from None
    out: dict[str, Path] = {}
    for rel in list_images(folder, recursive=True):
        safe_join(folder, rel.as_posix())  # a link that leads out of the folder is refused
        if pattern is None:
            key = rel.stem
        else:
            m = pattern.search(rel.as_posix())
            if m is None:
                continue
            key = m.group("id") if "id" in pattern.groupindex else "_".join(g or "" for g in m.groups()) or m.group(0)
        if key in out:
            raise UserError(
                f"{folder / rel}: image id {key!r} is also {folder / out[key]}; ids must be unique "
                "(set --id-regex to tell them apart)"
            )
        out[key] = rel
    return out


def read_rows(csv_path: Path, fmt: SubmissionFormat, known_labels: list[str] | None = None) -> dict[str, list[Row]]:
    """``{image id: [(line, class label, rle text), ...]}`` from a per_class or per_image run-length CSV."""
    if fmt.layout == "dense":
        raise UserError(f"{csv_path}: the dense layout is class indices, not run lengths; import it another way")
    df = codec.read_submission_csv(csv_path)
    needed = fmt.key_columns() + [fmt.prediction_column]
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise UserError(
            f"{csv_path}: no column {missing[0]!r} (columns: {', '.join(map(str, df.columns))}); set --id-column, "
            "--class-column, --rle-column (or the params' infer.submission)"
        )
    parser = codec.key_parser(fmt, known_labels, any_class="[^_]+?")
    rows: dict[str, list[Row]] = {}
    keys = codec.row_keys(df, fmt.key_columns())
    texts = df[fmt.prediction_column].tolist()
    for n, (key, text) in enumerate(zip(keys, texts, strict=True), start=2):  # line 1 is the header
        try:
            image, label = codec.split_key(key, fmt, parser)
        except rle.RleError as e:
            raise DataError(csv_path, f"line {n}", f"key {key[0]!r}: {e}") from None
        if not image:
            raise DataError(csv_path, f"line {n}", "empty image id")
        rows.setdefault(image, []).append((n, label, codec.cell_text(text)))
    return rows


def _labels_in(rows: Mapping[str, list[Row]], fmt: SubmissionFormat) -> dict[str, int]:
    """``{class label: first CSV line with it}`` for every label the rows use (per_image: each triple's first)."""
    found: dict[str, int] = {}
    for image_rows in rows.values():
        for n, label, text in image_rows:
            if label is not None:
                found.setdefault(label, n)
            elif fmt.layout == "per_image":
                for lab in codec.per_image_labels(text, fmt):
                    found.setdefault(lab, n)
    return dict(sorted(found.items()))


def resolve_classes(
    labels: Mapping[str, int], fmt: SubmissionFormat, classes: Mapping[int, str] | None, csv_path: Path
) -> tuple[dict[int, str], dict[str, int]]:
    """``({category id: name}, {label: category id})``.

    Labels are names (``class_value="name"``: with no class list, labels that are all positive integers keep them
    as ids, others are numbered 1..K in sorted order) or class indices (``"index"``: position in the id-sorted
    class list, as the submission writer numbers them). A single-class format needs a one-class list.

    Args:
        labels: ``{label: first CSV line with it}``.
        fmt: the CSV's format.
        classes: the user's ``{category id: name}``, or None to make it from the labels.
        csv_path: the CSV, for messages.
    """
    if fmt.single_class():
        if not classes or len(classes) != 1:
            raise UserError(f"{csv_path}: the rows have no class column; name the one class with --classes NAME")
        return dict(classes), {}
    if fmt.class_value == "index":
        bad = next((lab for lab in labels if not lab.isdigit() or int(lab) < 1), None)
        if bad is not None:
            raise DataError(
                csv_path, f"line {labels[bad]}", f"class {bad!r} is not a class index 1, 2, ... (class_value index)"
            )
        top = max((int(lab) for lab in labels), default=1)
        classes = dict(classes) if classes else {i: str(i) for i in range(1, top + 1)}
        ids = sorted(classes)
        over = next((lab for lab in labels if int(lab) > len(ids)), None)
        if over is not None:
            raise DataError(
                csv_path, f"line {labels[over]}", f"class index {over}, but the class list has {len(ids)} classes"
            )
        return classes, {lab: ids[int(lab) - 1] for lab in labels}
    if classes:
        by_name = {name: i for i, name in classes.items()}
        unknown = next((lab for lab in labels if lab not in by_name), None)
        if unknown is not None:
            problem = f"class {unknown!r} is not in the class list ({', '.join(by_name)})"
            raise DataError(csv_path, f"line {labels[unknown]}", problem)
        return dict(classes), by_name
    if labels and all(lab.isdigit() and int(lab) > 0 and str(int(lab)) == lab for lab in labels):
        made = {int(lab): lab for lab in labels}
    else:
        made = {i + 1: lab for i, lab in enumerate(sorted(labels))}
    if not made:
        raise UserError(f"{csv_path}: no class labels in the rows; name the classes with --classes")
    made = check_classes(made, str(csv_path))
    return made, {name: i for i, name in made.items()}


def decode_image(
    rows: list[Row],
    shape: tuple[int, int],
    fmt: SubmissionFormat,
    label_ids: Mapping[str, int],
    single_id: int | None,
    csv_path: Path,
    image: str,
) -> dict[int, np.ndarray]:
    """``{category id: (H, W) bool mask}``: the union of the image's rows per class."""
    height, width = shape
    masks: dict[int, np.ndarray] = {}

    def paint(category_id: int, runs: codec.Runs) -> None:
        m = rle.decode_runs(*runs, shape, fmt.rle.order)
        masks[category_id] = masks[category_id] | m if category_id in masks else m

    for n, label, text in rows:
        entry = f"line {n} (id {image!r}" + (f", class {label!r})" if label is not None else ")")
        try:
            if fmt.layout == "per_image":  # classes may overlap in a train CSV
                for lab, runs in codec.per_image_cell(text, fmt, height * width, overlap=True).items():
                    paint(label_ids[lab], runs)
            else:
                paint(single_id if label is None else label_ids[label], codec.per_class_cell(text, fmt, height * width))
        except rle.RleError as e:
            raise DataError(csv_path, entry, f"{e} (image is {height}x{width})") from None
    return masks


def import_rle_csv(  # noqa: PLR0913 - the CLI's options, passed by name; each documented under Args
    csv: str | os.PathLike[str],
    images: str | os.PathLike[str],
    out: str | os.PathLike[str],
    fmt: SubmissionFormat = PER_CLASS,
    classes: Mapping[int, str] | None = None,
    truth: str | os.PathLike[str] | None = None,
    split: Split | None = None,
    test_images: str | os.PathLike[str] | None = None,
    id_regex: str | None = None,
    unlisted: Literal["empty", "skip", "error"] = "empty",
    multilabel: bool | None = None,
) -> dict[str, Any]:
    """Write a run-length CSV and its images as a COCO competition in ``out`` (held-out truth in ``truth``).

    Args:
        csv: the train CSV.
        images: its images folder (searched recursively).
        out: the competition folder to write (replaced whole).
        fmt: how the CSV is written: the competition's submission format.
        classes: ``{category id: name}``; default from the labels in the CSV (see :func:`resolve_classes`).
        truth: the test-truth folder (default: ``truth`` beside ``out``); only written for a held-out split.
        split: a random share, or a test list of image ids, held out with truth; default 0.15, or none when
            ``test_images`` is given.
        test_images: the competition's own unlabelled test images (then nothing is held out).
        id_regex: how an image's id is read from its relative path (default: its stem; see the module docstring).
        unlisted: an image of the folder without any row has no foreground (``empty``, the Severstal convention),
            is left out (``skip``), or is an error.
        multilabel: the held-out truth as multilabel bit fields (every class of a pixel, :mod:`pipeline.labels`);
            ``None``: when the CSV's classes overlap on some pixel (and fit the bits), as UW-Madison's do. The
            train annotations keep every class either way (``masks.overlap`` decides how they are painted).

    Returns:
        Counts of images, annotations, categories and unlisted images, and where the truth went.
    """
    csv_path, images_dir = Path(csv), Path(images)
    if not csv_path.is_file():
        raise UserError(f"{csv_path}: file not found")
    if test_images is not None and split is not None and (split.test_share > 0 or split.test_list is not None):
        raise UserError("rle-csv: give either --test-images (the competition's test set) or a held-out split")
    split = split if split is not None else Split(test_share=0.0 if test_images is not None else 0.15)
    known = list(classes.values()) if classes and fmt.class_value == "name" else None
    rows = read_rows(csv_path, fmt, known)
    class_list, label_ids = resolve_classes(_labels_in(rows, fmt), fmt, classes, csv_path)
    single_id = next(iter(class_list)) if fmt.single_class() else None

    by_id = index_images(images_dir, id_regex)
    by_rel = {rel.as_posix(): rel for rel in by_id.values()}
    files: dict[str, Path] = {}  # image key -> relative path
    for image, image_rows in rows.items():
        try:
            safe_join(images_dir, image)
        except UserError as e:
            raise DataError(csv_path, f"line {image_rows[0][0]} (id {image!r})", str(e)) from None
        rel = by_rel.get(image) or by_id.get(image)
        if rel is None:
            raise DataError(csv_path, f"line {image_rows[0][0]} (id {image!r})", f"no such image in {images_dir}")
        files[image] = rel
    listed = {rel for rel in files.values()}
    extra = [(key, rel) for key, rel in by_id.items() if rel not in listed]
    if extra and unlisted == "error":
        raise UserError(
            f"{images_dir / extra[0][1]}: image has no row in {csv_path} ({len(extra)} such images); "
            "--unlisted empty keeps them as all-background, --unlisted skip leaves them out"
        )
    if unlisted == "empty":
        files.update(extra)

    keys = sorted(files)
    test = split_keys(keys, split)
    test_files = index_images(Path(test_images), id_regex) if test_images is not None else {}
    all_keys = keys + sorted(test_files)
    numeric = fmt.id_source == "image_id" and all(k.isdigit() and k == str(int(k)) and int(k) > 0 for k in all_keys)
    truth_dir = (Path(truth) if truth is not None else default_truth(out)) if test else None
    info = {"description": "imported from a run-length CSV", "source": str(csv_path), "seed": split.seed}
    counts: dict[str, Any] = {}
    sources = [csv_path, images_dir] + ([Path(test_images)] if test_images is not None else [])
    with write_competition(out, truth_dir, class_list, info, counts, sources, multilabel) as writer:
        for key in keys:
            rel = files[key]
            path = images_dir / rel
            shape = image_size(path)  # (H, W): the runs are decoded at the image's own size
            masks = decode_image(rows.get(key, []), shape, fmt, label_ids, single_id, csv_path, key)
            objects = [(cid, comp) for cid in sorted(masks) for comp in components(masks[cid])]
            writer.add(
                "test" if key in test else "train",
                rel.as_posix() if rel.as_posix() == key else key + rel.suffix,
                objects,
                source=path,
                image_id=int(key) if numeric else None,
                size=shape,
                origin=str(path),
            )
        for key in sorted(test_files):
            rel = test_files[key]
            writer.add(
                "test",
                key + rel.suffix,
                None,
                source=Path(test_images) / rel,
                image_id=int(key) if numeric else None,
                origin=str(Path(test_images) / rel),
            )
    if counts["overlapping_pixels"]:
        print(
            f"{csv_path}: classes overlap on {counts['overlapping_pixels']} pixels: train with masks.overlap: "
            f"multilabel to keep every class (the truth is {counts['labels']})"
        )
    return {
        **counts,
        "unlisted_images": len(extra) if unlisted == "empty" else 0,
        "skipped_unlisted": len(extra) if unlisted == "skip" else 0,
        "truth": str(truth_dir) if truth_dir else None,
    }
