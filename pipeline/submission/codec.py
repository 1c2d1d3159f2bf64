"""The text of a submission, both ways: the only code that reads or writes a submission row.

Every layout of :class:`~pipeline.submission.format.SubmissionFormat` (``per_class``, single-class, combined
``key_format``, ``per_image``, ``dense``) and every RLE variant of :class:`pipeline.rle.RleFormat` go through here:
:func:`encode_image` turns one image's class mask into its rows, :func:`decode_frame` turns rows back into class
masks, and the ``*_cell`` / :func:`split_key` functions are the pieces the validator and the RLE-CSV importer
share. :func:`read_submission_csv` reads the file itself (UTF-8 with or without a BOM, LF or CRLF, every cell as
text, a row with the wrong number of fields refused by its line).

Where per_class rows of two classes cover the same pixel (possible in a file, never written by us), the class with
the larger class index wins, whatever the row order.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import rle
from pipeline.errors import UserError
from pipeline.rle import RleError
from pipeline.submission.format import SubmissionFormat, key_pattern, resize_nearest

Runs = tuple[np.ndarray, np.ndarray]  # (0-based starts, lengths) in the format's pixel order
_FIELD_LIMIT = 2**31 - 1  # a dense row of 1024x1024 class indices is 2 MB; csv's default limit is 128 kB


# --------------------------------------------------------------------------------------------------------------
# The file


class CsvError(UserError):
    """A file that exists but is not a table of text cells (a ragged row, not UTF-8, empty, a repeated column)."""


def read_submission_csv(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a submission or sample CSV with every cell as text (empty cells stay ``""``, ids keep leading zeros).

    A UTF-8 BOM and CRLF line ends are accepted; blank lines are skipped. A row with more or fewer fields than the
    header is one error naming its line (an extra field would otherwise shift every column, a missing one read as
    an empty mask).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    csv.field_size_limit(_FIELD_LIMIT)
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f, strict=True)
            header = next(reader, None)
            if not header:
                raise CsvError(f"{path}: empty file; a submission starts with a header line of column names")
            rows = []
            for row in reader:
                if not row:
                    continue
                if len(row) != len(header):
                    raise CsvError(
                        f"{path}: line {reader.line_num} has {len(row)} fields, the header has {len(header)} "
                        f"({','.join(header)}); every row needs exactly one value per column"
                    )
                rows.append(row)
    except (csv.Error, UnicodeDecodeError) as e:
        raise CsvError(f"{path}: not a readable UTF-8 CSV ({str(e).splitlines()[0]})") from None
    dup = next((c for c in header if header.count(c) > 1), None)
    if dup is not None:
        raise CsvError(f"{path}: column {dup!r} appears twice in the header ({','.join(header)})")
    return pd.DataFrame(rows, columns=header, dtype=object)


def row_keys(df: pd.DataFrame, columns: list[str]) -> list[tuple[str, ...]]:
    """The key-column values of every row, as text."""
    return list(zip(*(df[c].astype(str).tolist() for c in columns), strict=True))


# --------------------------------------------------------------------------------------------------------------
# Keys


def key_parser(fmt: SubmissionFormat, labels: list[str] | None, any_class: str = ".+?") -> re.Pattern[str] | None:
    """A regex that splits a combined key into ``id`` (and ``cls``), or None when keys are plain ids."""
    if fmt.layout != "per_class" or fmt.key_format is None:
        return None
    return key_pattern(fmt.key_format, labels, any_class)


def split_key(key: tuple[str, ...], fmt: SubmissionFormat, parser: re.Pattern[str] | None) -> tuple[str, str | None]:
    """``(image id, class label or None)`` of a row's key-column values; raises :class:`RleError` on a key that
    does not match ``key_format``. The label is None for per_image, dense and single-class rows."""
    if parser is not None:
        m = parser.fullmatch(key[0])
        if m is None:
            raise RleError(f"key does not match key_format {fmt.key_format!r}")
        return m.group("id"), m.groupdict().get("cls")
    if fmt.layout == "per_class" and len(key) == 2:
        return key[0], key[1]
    return key[0], None


# --------------------------------------------------------------------------------------------------------------
# Cells


def cell_text(value: object) -> str:
    """A prediction cell as text (a frame built by hand may hold None or NaN for an empty cell)."""
    if isinstance(value, str):
        return value
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)


def per_class_cell(text: str, fmt: SubmissionFormat, size: int | None) -> Runs:
    """The runs of a per_class (or single-class) cell; ``size`` (H * W) bounds them when known."""
    return rle.parse_runs(text, fmt.rle, size)


def per_image_labels(text: str, fmt: SubmissionFormat) -> list[str]:
    """The class labels a per_image cell uses, in order of first use (no check of the runs)."""
    if text.strip() == fmt.rle.empty:
        return []
    return list(dict.fromkeys(text.split()[0::3]))


def per_image_cell(
    text: str, fmt: SubmissionFormat, size: int | None, valid: set[str] | None = None, overlap: bool = False
) -> dict[str, Runs]:
    """``{class label: runs}`` of a per_image cell of ``class start length`` triples.

    Each class's runs are read as one run-length string (so relative starts count within the class, as the writer
    writes them); runs of different classes must not overlap unless ``overlap`` (a multi-label train CSV). Raises
    :class:`RleError` with the reason.
    """
    stripped = text.strip()
    if stripped == fmt.rle.empty:
        return {}
    tokens = stripped.split()
    if len(tokens) % 3:
        raise RleError(f"{len(tokens)} values; expected 'class start length' triples")
    pairs: dict[str, list[str]] = {}
    for i in range(0, len(tokens), 3):
        pairs.setdefault(tokens[i], []).extend(tokens[i + 1 : i + 3])
    out: dict[str, Runs] = {}
    for label, values in pairs.items():
        if valid is not None and label not in valid:
            raise RleError(f"unknown class {label!r} (known: {', '.join(sorted(valid))})")
        try:
            out[label] = rle.parse_runs(" ".join(values), fmt.rle, size)
        except RleError as e:
            raise RleError(f"class {label}: {e}") from None
    if overlap or not out:
        return out
    starts = np.concatenate([s for s, _ in out.values()])
    ends = np.concatenate([s + n for s, n in out.values()])
    order = np.argsort(starts, kind="stable")
    if np.any(starts[order][1:] < ends[order][:-1]):
        raise RleError("runs of different classes overlap")
    return out


def dense_cell(text: str, fmt: SubmissionFormat, valid: set[int] | None = None) -> np.ndarray:
    """The ``dense_size`` (H, W) int64 class indices of a dense cell; raises :class:`RleError` with the reason."""
    values = rle.parse_integers(text.strip())
    height, width = fmt.dense_size
    if values.size != height * width:
        raise RleError(f"{values.size} values; expected {height * width} ({height}x{width} class indices)")
    if valid is not None:
        bad = np.setdiff1d(np.unique(values), np.array(sorted(valid)))
        if bad.size:
            raise RleError(f"class index {bad[0]} is not in the class list ({', '.join(map(str, sorted(valid)))})")
    elif values.min() < 0:
        raise RleError(f"class index {values.min()} is negative")
    return values.reshape(height, width)


# --------------------------------------------------------------------------------------------------------------
# Masks -> rows


def encode_image(
    class_mask: np.ndarray, fmt: SubmissionFormat, labels: Mapping[int, str], image: str, multilabel: bool = False
) -> dict[tuple[str, ...], str]:
    """``{row key: prediction text}`` of one image's (H, W) integer class mask (0 background).

    Args:
        class_mask: the class indices at the image's original size (dense: resized to ``dense_size`` here).
        fmt: the format.
        labels: ``{class index: label}`` of every foreground class (one row per class in per_class).
        image: the image's submission id.
        multilabel: ``class_mask`` is a multilabel bit field (:mod:`pipeline.labels`): each class's runs are those
            of its own bit, so the rows of two classes may cover the same pixels.
    """
    if fmt.layout == "dense":
        if multilabel:
            raise UserError("the dense layout holds one class a pixel; a multilabel submission needs per_class rows")
        small = resize_nearest(class_mask, fmt.dense_size)
        return {fmt.row_key(image, ""): " ".join(map(str, small.ravel().tolist()))}
    texts = {}
    if not multilabel:
        values, starts, lengths = rle.encode_class_runs(class_mask, fmt.rle.order)
    for index, label in labels.items():
        if multilabel:
            values, starts, lengths = rle.encode_class_runs((class_mask >> (index - 1)) & 1, fmt.rle.order)
            index = 1
        sel = values == index
        texts[label] = rle.runs_to_text(starts[sel], lengths[sel], fmt.rle)
    if fmt.layout == "per_class":
        return {fmt.row_key(image, label): text for label, text in texts.items()}
    parts = []
    for label, text in texts.items():
        if text != fmt.rle.empty:
            pairs = text.split()
            parts.extend(f"{label} {pairs[j]} {pairs[j + 1]}" for j in range(0, len(pairs), 2))
    return {(image,): " ".join(parts) if parts else fmt.rle.empty}


# --------------------------------------------------------------------------------------------------------------
# Rows -> masks


def decode_frame(
    df: pd.DataFrame,
    fmt: SubmissionFormat,
    shapes: Mapping[str, tuple[int, int]],
    label_to_index: Mapping[str, int],
    where: str = "submission",
    multilabel: bool = False,
) -> dict[str, np.ndarray]:
    """``{image id: (H, W) uint8 class mask}`` of every image in ``shapes`` from the rows of ``df`` (Fortran-ordered
    for column-major RLE, as :func:`pipeline.rle.decode_runs` writes them; ``np.ascontiguousarray`` for C order).
    ``multilabel``: the (H, W) uint8 bit field of every class's rows, overlaps kept (:mod:`pipeline.labels`).

    The rows should have passed :func:`pipeline.submission.validate.validate_submission`; a row that still cannot be
    decoded raises :class:`UserError` naming ``where`` and its line. Images without rows are all background; rows of
    images not in ``shapes`` are skipped.

    Args:
        df: the submission, cells as text.
        fmt: its format.
        shapes: ``{image id: (H, W)}`` at the original size.
        label_to_index: ``{class label: class index}`` of the foreground classes (single-class: its one class).
        where: the file name for messages.
        multilabel: decode to bit fields.

    Raises:
        UserError: a dense submission whose ``dense_size`` is not the image's size (it cannot be scored at the
            original size), or a row that does not decode.
    """
    parser = key_parser(fmt, list(label_to_index))
    keys = row_keys(df, fmt.key_columns())
    texts = df[fmt.prediction_column].tolist()
    single = next(iter(label_to_index.values())) if fmt.single_class() and len(label_to_index) == 1 else None
    painted: dict[str, list[tuple[int, Runs]]] = {}
    dense: dict[str, np.ndarray] = {}
    for i, (key, value) in enumerate(zip(keys, texts, strict=True)):
        text = cell_text(value)
        try:
            image, label = split_key(key, fmt, parser)
            if image not in shapes:
                continue  # not asked for (the validator reports ids that are no test image)
            height, width = shapes[image]
            if fmt.layout == "dense":
                if multilabel:
                    raise UserError(f"{where}: the dense layout holds one class a pixel, not multilabel masks")
                if tuple(fmt.dense_size) != (height, width):
                    raise UserError(
                        f"{where}: the dense layout is written at dense_size {fmt.dense_size[0]}x{fmt.dense_size[1]}"
                        f" but image {image!r} is {height}x{width}; a resized prediction cannot be scored at the "
                        "original size (set infer.submission.dense_size to the image size to score it)"
                    )
                dense[image] = dense_cell(text, fmt).astype(np.uint8)
            elif fmt.layout == "per_image":
                for lab, runs in per_image_cell(text, fmt, height * width, set(label_to_index)).items():
                    painted.setdefault(image, []).append((label_to_index[lab], runs))
            else:
                index = single if label is None else label_to_index.get(label)
                if index is None:
                    raise RleError(f"unknown class {label!r}")
                painted.setdefault(image, []).append((index, per_class_cell(text, fmt, height * width)))
        except RleError as e:
            raise UserError(f"{where}: line {i + 2} ({', '.join(key)}): {e}") from None
    return {
        image: dense[image] if image in dense else _paint(painted.get(image, []), shape, fmt.rle.order, multilabel)
        for image, shape in shapes.items()
    }


def _paint(runs: list[tuple[int, Runs]], shape: tuple[int, int], order: str, multilabel: bool) -> np.ndarray:
    """One image's mask from its classes' runs: each class over the lower ones, or (``multilabel``) its bit ORed in.

    The canvas is in the runs' pixel order (Fortran order for column-major RLE), the layout decode_runs returns:
    painting across layouts costs a transpose per class."""
    mask = np.zeros(shape, np.uint8, order="F" if order == "column" else "C")
    for index, (starts, lengths) in sorted(runs, key=lambda t: t[0]):
        inside = rle.decode_runs(starts, lengths, shape, order)
        if multilabel:
            mask[inside.astype(bool)] |= np.uint8(1 << (index - 1))
        else:
            np.copyto(mask, index, where=inside)
    return mask
