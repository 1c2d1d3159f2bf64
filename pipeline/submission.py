"""Submission files: write them from class masks, check them against the sample, export COCO results, keep a ledger.

Layouts (``SubmissionFormat.layout``), all CSV with one header line:

``per_class`` (default)
    One row per (image, foreground class): ``id,class,predicted`` where ``class`` is the category name (or the
    class index, ``class_value="index"``) and ``predicted`` is the binary mask of that class as ``start length``
    text in ``SubmissionFormat.rle`` (see :mod:`pipeline.rle`). Kaggle's combined key column (``ImageId_ClassId``)
    is ``key_format="{id}_{class}"`` with ``class_column=None``; a single-class competition (``ImageId,
    EncodedPixels``) is ``class_column=None`` without ``key_format``.
``per_image``
    One row per image: ``id,predicted`` where ``predicted`` is space-separated triples ``class start length``,
    grouped by class in class-index order, each class's runs in pixel order (relative starts, if chosen, are
    counted within that class). An image without foreground is the RLE format's empty token.
``dense``
    One row per image (the trash-competition style ``image_id,PredictionString``): the class index of every pixel
    of the mask resized to ``dense_size`` (H, W) with nearest-neighbour centre sampling (as PIL ``NEAREST``),
    space-separated, row-major. Background (0) is written too.

Class masks handed to the writers are (H, W) integer arrays at the original image size: 0 background, 1..K the
classes of the class list. With a sample submission the writers follow it exactly: its rows in its order, its
columns, its other columns untouched; only the prediction column is filled.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import json
import os
import re
import string
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from pipeline import rle
from pipeline.errors import DataError, UserError, run_cli
from pipeline.io import atomic_open, read_json, write_csv
from pipeline.rle import KAGGLE, RleFormat

Classes = Sequence[tuple[int, str]] | Sequence[Mapping[str, Any]]
_MAX_PROBLEMS = 50
_SHOWN_IN_ERROR = 5


# --------------------------------------------------------------------------------------------------------------
# Format


@dataclasses.dataclass(frozen=True)
class SubmissionFormat:
    """How predictions become rows; see the module docstring for the layouts.

    Attributes:
        rle: how a binary mask is written (per_class and per_image layouts).
        layout: ``per_class``, ``per_image`` or ``dense``.
        id_column: the image id column, or the combined key column when ``key_format`` is set.
        class_column: the class column (per_class); ``None`` when there is none (``key_format`` or one class).
        prediction_column: the column that holds the prediction.
        key_format: how image id and class form one key (e.g. ``"{id}_{class}"``), or ``None``.
        class_value: write a class as its ``name`` or its class ``index``.
        id_source: what identifies an image: the COCO ``image_id``, the ``file_stem`` or the ``file_name``.
        dense_size: (H, W) of the dense layout.
    """

    rle: RleFormat = KAGGLE
    layout: Literal["per_class", "per_image", "dense"] = "per_class"
    id_column: str = "id"
    class_column: str | None = "class"
    prediction_column: str = "predicted"
    key_format: str | None = None
    class_value: Literal["name", "index"] = "name"
    id_source: Literal["image_id", "file_stem", "file_name"] = "image_id"
    dense_size: tuple[int, int] = (256, 256)

    def __post_init__(self) -> None:
        choices = {
            "layout": ("per_class", "per_image", "dense"),
            "class_value": ("name", "index"),
            "id_source": ("image_id", "file_stem", "file_name"),
        }
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise UserError(f"submission format: {name} {getattr(self, name)!r} is not one of {', '.join(valid)}")
        if self.key_format is not None:
            fields = [f for _, f, _, _ in string.Formatter().parse(self.key_format) if f is not None]
            if "id" not in fields or set(fields) - {"id", "class"}:
                raise UserError(
                    f"submission format: key_format {self.key_format!r} must contain {{id}} and may "
                    "contain {class}, nothing else"
                )
        if len(self.dense_size) != 2 or min(self.dense_size) < 1:
            raise UserError(f"submission format: dense_size must be (H, W) positive, got {self.dense_size}")

    def columns(self) -> list[str]:
        """The columns of a submission written without a sample."""
        if self.layout == "per_class" and self.key_format is None and self.class_column is not None:
            return [self.id_column, self.class_column, self.prediction_column]
        return [self.id_column, self.prediction_column]

    def key_columns(self) -> list[str]:
        """The columns that identify a row."""
        return self.columns()[:-1]

    def image_key(self, image_id: int | str, file_name: str = "") -> str:
        """The submission id of an image, by ``id_source``."""
        if self.id_source == "image_id":
            return str(image_id)
        if self.id_source == "file_stem":
            return Path(file_name).stem
        return file_name

    def class_label(self, index: int, name: str) -> str:
        """How class ``index`` called ``name`` is written."""
        return name if self.class_value == "name" else str(index)

    def row_key(self, image: str, label: str) -> tuple[str, ...]:
        """The key-column values of the row for ``image`` and class ``label`` (label unused outside per_class)."""
        if self.layout != "per_class":
            return (image,)
        if self.key_format is not None:
            return (self.key_format.format(**{"id": image, "class": label}),)
        if self.class_column is None:
            return (image,)
        return (image, label)

    def single_class(self) -> bool:
        """Whether a per_class row key leaves the class out (then only one foreground class is allowed)."""
        if self.layout != "per_class":
            return False
        if self.key_format is not None:
            return "{class}" not in self.key_format
        return self.class_column is None


PER_CLASS = SubmissionFormat()
"""The default: ``id,class,predicted``, one row per (image, foreground class), class names, Kaggle RLE."""

TRASH = SubmissionFormat(
    layout="dense",
    id_column="image_id",
    prediction_column="PredictionString",
    class_column=None,
    id_source="file_name",
    dense_size=(256, 256),
)
"""The trash-competition layout: ``image_id,PredictionString`` with 256x256 row-major class indices."""


def foreground_classes(classes: Classes) -> list[tuple[int, str]]:
    """``(index, name)`` of every non-background class, by index, from pairs or classes.json entries."""
    if isinstance(classes, (str, Mapping)) or not isinstance(classes, Sequence):
        raise UserError(
            f"class list: expected a list of (index, name) pairs or {{index, name}} objects, got "
            f"{type(classes).__name__}"
        )
    out: dict[int, str] = {}
    for c in classes:
        if isinstance(c, Mapping) and not {"index", "name"} <= set(c):
            raise UserError(f"class list: entry {dict(c)} needs 'index' and 'name'")
        index, name = (c["index"], c["name"]) if isinstance(c, Mapping) else c
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index <= 255:
            raise UserError(f"class list: class index {index!r} must be an integer in 0..255")
        if int(index) in out:
            raise UserError(f"class list: class index {index} appears twice")
        out[int(index)] = str(name)
    return sorted((i, n) for i, n in out.items() if i != 0)


def _labels(fg: list[tuple[int, str]], fmt: SubmissionFormat) -> dict[int, str]:
    labels = {i: fmt.class_label(i, n) for i, n in fg}
    if len(set(labels.values())) != len(labels):
        raise UserError(f"class list: class labels are not unique ({sorted(labels.values())})")
    if fmt.layout == "per_image":
        bad = [lab for lab in labels.values() if not lab or lab.split() != [lab]]
        if bad:
            raise UserError(
                f"class list: label {bad[0]!r} is empty or has whitespace; the per_image layout needs "
                "one-word labels (use class_value='index')"
            )
    if fmt.single_class() and len(labels) != 1:
        raise UserError(
            f"submission format: rows have no class (class_column none, key_format "
            f"{fmt.key_format!r}) but there are {len(labels)} foreground classes; set class_column or "
            "a key_format with {class}"
        )
    return labels


def resize_nearest(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a (H, W) mask to ``size`` (H, W) by nearest-neighbour centre sampling (PIL ``NEAREST``)."""
    h, w = mask.shape
    out_h, out_w = size
    rows = np.minimum(((np.arange(out_h) + 0.5) * h / out_h).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(out_w) + 0.5) * w / out_w).astype(np.int64), w - 1)
    return mask[rows[:, None], cols[None, :]]


# --------------------------------------------------------------------------------------------------------------
# Reading


def read_submission_csv(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a submission or sample CSV with every cell as text (empty cells stay ``""``, ids keep leading zeros)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not a readable CSV ({str(e).splitlines()[0]})") from None


def _frame(src: str | os.PathLike[str] | pd.DataFrame, default_name: str) -> tuple[str, pd.DataFrame]:
    if isinstance(src, pd.DataFrame):
        return default_name, src
    return str(src), read_submission_csv(src)


def _row_keys(df: pd.DataFrame, columns: list[str]) -> list[tuple[str, ...]]:
    """The key-column values of every row, as text."""
    return list(zip(*(df[c].astype(str).tolist() for c in columns), strict=True))


def shapes_from_coco(path: str | os.PathLike[str], id_source: str = "image_id") -> dict[str, tuple[int, int]]:
    """``{submission id: (H, W)}`` from the ``images`` of a COCO json (a test split needs no annotations)."""
    data = read_json(path)
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise DataError(path, "top level", "expected a JSON object with an 'images' list")
    fmt = SubmissionFormat(id_source=id_source)  # type: ignore[arg-type]
    shapes: dict[str, tuple[int, int]] = {}
    for i, im in enumerate(images):
        if not isinstance(im, dict) or not all(k in im for k in ("id", "file_name", "height", "width")):
            raise DataError(path, f"images[{i}]", "an image needs id, file_name, height and width")
        key = fmt.image_key(im["id"], str(im["file_name"]))
        if key in shapes:
            raise DataError(path, f"images[{i}]", f"submission id {key!r} (id_source {id_source}) is not unique")
        shapes[key] = (int(im["height"]), int(im["width"]))
    return shapes


# --------------------------------------------------------------------------------------------------------------
# Validation


class _Problems(list):
    """A list of problem lines that stops growing at a limit and counts the rest."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit, self.dropped = limit, 0

    def add(self, line: str) -> None:
        if len(self) < self.limit:
            self.append(line)
        else:
            self.dropped += 1

    def result(self) -> list[str]:
        return list(self) + ([f"... and {self.dropped} more problems"] if self.dropped else [])


def _key_parser(fmt: SubmissionFormat, labels: Iterable[str] | None) -> re.Pattern[str] | None:
    """A regex that splits a combined key into ``id`` (and ``cls``), or None when keys are plain ids."""
    if fmt.layout != "per_class" or fmt.key_format is None:
        return None
    return key_pattern(fmt.key_format, labels)


def key_pattern(key_format: str, labels: Iterable[str] | None, any_class: str = ".+?") -> re.Pattern[str]:
    """A regex splitting a combined key (``{id}_{class}``) into ``id`` and ``cls``: ``cls`` is one of ``labels``
    (longest first), or ``any_class`` when the labels are not known."""
    known = sorted(labels or [], key=len, reverse=True)
    cls = "|".join(re.escape(lab) for lab in known) if known else any_class
    pattern = ""
    for literal, field, _, _ in string.Formatter().parse(key_format):
        pattern += re.escape(literal)
        if field == "id":
            pattern += "(?P<id>.+)"
        elif field == "class":
            pattern += f"(?P<cls>{cls})"
    return re.compile(pattern)


def _check_per_image(text: str, fmt: SubmissionFormat, size: int | None, valid: set[str] | None) -> str | None:
    stripped = text.strip()
    if stripped == fmt.rle.empty:
        return None
    tokens = stripped.split()
    if len(tokens) % 3:
        return f"{len(tokens)} values; expected 'class start length' triples"
    runs: dict[str, list[str]] = {}
    for i in range(0, len(tokens), 3):
        runs.setdefault(tokens[i], []).extend(tokens[i + 1 : i + 3])
    all_starts, all_ends = [], []
    for label, pairs in runs.items():
        if valid is not None and label not in valid:
            return f"unknown class {label!r} (known: {', '.join(sorted(valid))})"
        try:
            starts, lengths = rle.parse_runs(" ".join(pairs), fmt.rle, size)
        except rle.RleError as e:
            return f"class {label}: {e}"
        all_starts.append(starts)
        all_ends.append(starts + lengths)
    starts, ends = np.concatenate(all_starts), np.concatenate(all_ends)
    order = np.argsort(starts, kind="stable")
    if np.any(starts[order][1:] < ends[order][:-1]):
        return "runs of different classes overlap"
    return None


def _check_dense(text: str, fmt: SubmissionFormat, valid: set[int] | None) -> str | None:
    try:
        values = rle.parse_integers(text.strip())
    except rle.RleError as e:
        return str(e)
    need = fmt.dense_size[0] * fmt.dense_size[1]
    if values.size != need:
        return f"{values.size} values; expected {need} ({fmt.dense_size[0]}x{fmt.dense_size[1]} class indices)"
    if valid is not None:
        bad = np.setdiff1d(np.unique(values), np.array(sorted(valid)))
        if bad.size:
            return f"class index {bad[0]} is not in the class list ({', '.join(map(str, sorted(valid)))})"
    elif values.min() < 0:
        return f"class index {values.min()} is negative"
    return None


def validate_submission(
    submission: str | os.PathLike[str] | pd.DataFrame,
    sample: str | os.PathLike[str] | pd.DataFrame | None = None,
    shapes: Mapping[str | int, tuple[int, int]] | None = None,
    fmt: SubmissionFormat = PER_CLASS,
    classes: Classes | None = None,
    max_problems: int = _MAX_PROBLEMS,
) -> list[str]:
    """Check a submission; an empty list means it is fine.

    Args:
        submission: the CSV path or its frame (cells as text).
        sample: the sample submission; when given, rows (by key) and columns must match it exactly, and every
            other column must keep the sample's value.
        shapes: ``{image id: (H, W)}``; when given, every run must lie inside its image and every image must
            be known. Without a sample, shapes and classes together define the expected rows.
        fmt: the submission format (column names, layout, RLE format).
        classes: the class list; when given, class labels and dense class indices are checked against it.
        max_problems: stop listing after this many (a count of the rest is added).

    Returns:
        One line per problem, each naming the file and the line (``sub.csv: line 7 (id '3', class 'cat'): ...``).
    """
    name, df = _frame(submission, "submission")
    problems = _Problems(max_problems)
    sample_name, sample_df = _frame(sample, "sample") if sample is not None else ("", None)
    expected_columns = list(sample_df.columns) if sample_df is not None else fmt.columns()
    if list(df.columns) != expected_columns:
        source = f"the sample {sample_name}" if sample_df is not None else "the format"
        problems.add(f"{name}: columns {list(df.columns)} do not match {source}: {expected_columns}")
    needed = fmt.key_columns() + [fmt.prediction_column]
    missing_cols = [c for c in needed if c not in df.columns]
    if missing_cols:
        problems.add(
            f"{name}: no column {missing_cols[0]!r} (columns: {', '.join(map(str, df.columns))}); "
            "set the id/class/prediction column options"
        )
        return problems.result()
    if sample_df is not None:
        absent = [c for c in needed if c not in sample_df.columns]
        if absent:
            problems.add(f"{sample_name}: no column {absent[0]!r} (columns: {', '.join(map(str, sample_df.columns))})")
            return problems.result()

    fg = foreground_classes(classes) if classes is not None else None
    labels = _labels(fg, fmt) if fg is not None else None
    shape_of = {str(k): (int(v[0]), int(v[1])) for k, v in shapes.items()} if shapes is not None else None
    parser = _key_parser(fmt, labels.values() if labels else None)
    key_cols = fmt.key_columns()

    def describe(key: tuple[str, ...]) -> str:
        return ", ".join(f"{c} {v!r}" for c, v in zip(key_cols, key, strict=True))

    keys = _row_keys(df, key_cols)
    lines: dict[tuple[str, ...], list[int]] = {}  # key -> its CSV line numbers (the header is line 1)
    for i, key in enumerate(keys):
        lines.setdefault(key, []).append(i + 2)
    counts = {key: len(at) for key, at in lines.items()}
    for key, at in lines.items():
        if len(at) > 1:
            shown = ", ".join(map(str, at[:5])) + (", ..." if len(at) > 5 else "")
            problems.add(
                f"{name}: line {at[0]} ({describe(key)}): appears {len(at)} times (lines {shown}); "
                "each row must appear once"
            )

    expected: list[tuple[str, ...]] | None = None
    sample_rows: dict[tuple[str, ...], int] = {}
    if sample_df is not None:
        expected = _row_keys(sample_df, key_cols)
        sample_rows = {k: i for i, k in enumerate(expected)}
    elif shape_of is not None and labels is not None:
        expected = [fmt.row_key(image, lab) for image in shape_of for lab in labels.values()]
        expected = list(dict.fromkeys(expected))  # single-class or per-image layouts: one row per image
    if expected is not None:
        want = set(expected)
        for key in expected:
            if key not in counts:
                problems.add(f"{name}: missing row ({describe(key)})")
        for key in counts:
            if key not in want:
                problems.add(
                    f"{name}: line {lines[key][0]} ({describe(key)}): unexpected row (not in "
                    f"{'the sample' if sample_df is not None else 'the shapes and classes'})"
                )

    other_cols = [c for c in df.columns if c not in needed and sample_df is not None and c in sample_df.columns]
    valid_labels = set(labels.values()) if labels is not None else None
    valid_indices = ({0} | {i for i, _ in fg}) if fg is not None else None
    unknown_images: set[str] = set()
    predictions = df[fmt.prediction_column].tolist()
    for i, key in enumerate(keys):
        where = f"{name}: line {i + 2} ({describe(key)})"
        if sample_df is not None and key in sample_rows:
            for c in other_cols:
                have, want_value = df[c].iat[i], sample_df[c].iat[sample_rows[key]]
                if str(have) != str(want_value):
                    problems.add(f"{where}: column {c!r} is {have!r}, the sample has {want_value!r}")
        text = predictions[i]
        if not isinstance(text, str):
            text = "" if text is None or (isinstance(text, float) and np.isnan(text)) else str(text)
        if fmt.layout == "dense":
            reason = _check_dense(text, fmt, valid_indices)
            if reason:
                problems.add(f"{where}: {reason}")
            continue
        image = key[0]
        if parser is not None:
            m = parser.fullmatch(image)
            if m is None:
                problems.add(f"{where}: key does not match key_format {fmt.key_format!r}")
                continue
            image = m.group("id")
        size = None
        if shape_of is not None:
            if image not in shape_of:
                if image not in unknown_images:
                    unknown_images.add(image)
                    problems.add(f"{where}: no image size for id {image!r} (not among the {len(shape_of)} images)")
                continue
            size = shape_of[image][0] * shape_of[image][1]
        if fmt.layout == "per_image":
            reason = _check_per_image(text, fmt, size, valid_labels)
        else:
            if valid_labels is not None and len(key) == 2 and key[1] not in valid_labels:
                problems.add(f"{where}: unknown class {key[1]!r} (known: {', '.join(sorted(valid_labels))})")
            try:
                rle.parse_runs(text, fmt.rle, size)
                reason = None
            except rle.RleError as e:
                reason = str(e)
        if reason:
            problems.add(f"{where}: {reason}")
    return problems.result()


# --------------------------------------------------------------------------------------------------------------
# Writing


class SubmissionWriter:
    """Collect predictions one image at a time (as short strings, never masks), then write a checked CSV.

    Example::

        writer = SubmissionWriter(classes, fmt, sample=read_submission_csv("sample_submission.csv"))
        for image, mask in predictions:          # mask: (H, W) uint8 class indices at the original size
            writer.add(fmt.image_key(image.id, image.file_name), mask)
        writer.finalize("submissions/sub.csv")  # validates, refuses a bad file, writes atomically
    """

    def __init__(
        self,
        classes: Classes,
        fmt: SubmissionFormat = PER_CLASS,
        sample: str | os.PathLike[str] | pd.DataFrame | None = None,
    ) -> None:
        self.fmt = fmt
        self.classes = foreground_classes(classes)
        self.labels = _labels(self.classes, fmt)
        self._valid = np.array([0] + [i for i, _ in self.classes])
        self.sample_name, self.sample = _frame(sample, "sample") if sample is not None else ("", None)
        if self.sample is not None:
            for c in fmt.key_columns() + [fmt.prediction_column]:
                if c not in self.sample.columns:
                    raise UserError(
                        f"{self.sample_name}: no column {c!r} (columns: {', '.join(self.sample.columns)})"
                        "; set the format's id_column/class_column/prediction_column/key_format"
                    )
            keys = _row_keys(self.sample, fmt.key_columns())
            dup = next((k for k, n in Counter(keys).items() if n > 1), None)
            if dup is not None:
                raise UserError(f"{self.sample_name}: row {dup} appears more than once in the sample")
        self._rows: dict[tuple[str, ...], str] = {}
        self._shapes: dict[str, tuple[int, int]] = {}

    def add(self, image: str | int, class_mask: np.ndarray) -> None:
        """Add the (H, W) integer class mask of one image, at its original size, under submission id ``image``."""
        image = str(image)
        if image in self._shapes:
            raise UserError(f"submission: image {image!r} was added twice")
        class_mask = np.asarray(class_mask)
        if class_mask.ndim != 2 or not np.issubdtype(class_mask.dtype, np.integer):
            raise UserError(
                f"submission: image {image!r}: expected an (H, W) integer class mask, got "
                f"{class_mask.dtype} {class_mask.shape}"
            )
        fmt = self.fmt
        if fmt.layout == "dense":
            small = resize_nearest(class_mask, fmt.dense_size)
            self._check_values(image, np.unique(small))
            self._rows[fmt.row_key(image, "")] = " ".join(map(str, small.ravel().tolist()))
        else:
            values, starts, lengths = rle.encode_class_runs(class_mask, fmt.rle.order)
            self._check_values(image, np.unique(values))
            texts = {}
            for index, label in self.labels.items():
                sel = values == index
                texts[label] = rle.runs_to_text(starts[sel], lengths[sel], fmt.rle)
            if fmt.layout == "per_class":
                for label, text in texts.items():
                    self._rows[fmt.row_key(image, label)] = text
            else:
                parts = []
                for label, text in texts.items():
                    if text != fmt.rle.empty:
                        pairs = text.split()
                        parts.extend(f"{label} {pairs[j]} {pairs[j + 1]}" for j in range(0, len(pairs), 2))
                self._rows[(image,)] = " ".join(parts) if parts else fmt.rle.empty
        self._shapes[image] = (int(class_mask.shape[0]), int(class_mask.shape[1]))

    def _check_values(self, image: str, present: np.ndarray) -> None:
        bad = np.setdiff1d(present, self._valid)
        if bad.size:
            raise UserError(
                f"submission: image {image!r}: mask has class index {bad[0]}, not in the class list "
                f"({', '.join(map(str, self._valid.tolist()))})"
            )

    def frame(self) -> pd.DataFrame:
        """The submission as a frame (cells as text), in the sample's rows and columns when there is a sample."""
        fmt = self.fmt
        if self.sample is None:
            rows = [(*key, text) for key, text in self._rows.items()]
            return pd.DataFrame(rows, columns=fmt.columns(), dtype=object)
        keys = _row_keys(self.sample, fmt.key_columns())
        missing = [k for k in keys if k not in self._rows]
        in_sample = set(keys)
        extra = [k for k in self._rows if k not in in_sample]
        if missing or extra:
            made = next(iter(self._rows), None)
            hint = f"; the writer made rows like {made}" if made else "; no image was added"
            what = []
            if missing:
                what.append(f"{len(missing)} sample rows have no prediction (first {missing[0]})")
            if extra:
                what.append(f"{len(extra)} predicted rows are not in the sample (first {extra[0]})")
            raise UserError(
                f"{self.sample_name}: {' and '.join(what)}{hint}. Check that every test image was "
                "predicted and the id_source/class_value/key_format options"
            )
        out = self.sample.copy()
        out[fmt.prediction_column] = [self._rows[k] for k in keys]
        return out

    def finalize(self, path: str | os.PathLike[str]) -> Path:
        """Validate the submission and write it atomically to ``path``; a bad submission raises UserError."""
        df = self.frame()
        problems = validate_submission(df, self.sample, self._shapes, self.fmt, self.classes)
        if problems:
            shown = "; ".join(problems[:_SHOWN_IN_ERROR])
            more = f" (and {len(problems) - _SHOWN_IN_ERROR} more)" if len(problems) > _SHOWN_IN_ERROR else ""
            raise UserError(f"{path}: refusing to write an invalid submission: {shown}{more}")
        path = Path(path)
        with atomic_open(path, "w", encoding="utf-8", newline="") as f:
            df.to_csv(f, index=False, lineterminator="\n")
        return path


def write_submission(
    predictions: Iterable[tuple[str | int, np.ndarray]],
    classes: Classes,
    path: str | os.PathLike[str],
    fmt: SubmissionFormat = PER_CLASS,
    sample: str | os.PathLike[str] | pd.DataFrame | None = None,
) -> Path:
    """Stream ``(submission id, (H, W) class mask)`` pairs through a :class:`SubmissionWriter` into ``path``."""
    writer = SubmissionWriter(classes, fmt, sample)
    for image, class_mask in predictions:
        writer.add(image, class_mask)
    return writer.finalize(path)


class PredictionStringWriter(SubmissionWriter):
    """The trash-competition writer: ``image_id,PredictionString`` with the mask resized (nearest) to ``size``
    (H, W) and written as row-major class indices."""

    def __init__(
        self,
        classes: Classes,
        size: tuple[int, int] = (256, 256),
        sample: str | os.PathLike[str] | pd.DataFrame | None = None,
        id_column: str = "image_id",
        prediction_column: str = "PredictionString",
    ) -> None:
        fmt = dataclasses.replace(
            TRASH, dense_size=tuple(size), id_column=id_column, prediction_column=prediction_column
        )
        super().__init__(classes, fmt, sample)


# --------------------------------------------------------------------------------------------------------------
# COCO results


def to_coco_results(
    image_id: int,
    class_mask: np.ndarray,
    class_to_category_id: Mapping[int, int],
    scores: np.ndarray | None = None,
    connectivity: Literal[4, 8] = 8,
) -> list[dict[str, Any]]:
    """COCO results for one image: one compressed-RLE detection per connected component of each class.

    Args:
        image_id: the COCO image id.
        class_mask: (H, W) integer class indices; 0 is background and is skipped.
        class_to_category_id: class index -> COCO category id, for every class present in the mask.
        scores: optional probabilities, (C, H, W) per class or (H, W) for the predicted class; a component's
            score is their mean over its pixels (class ``c`` reads ``scores[c]``). Without scores it is 1.0.
        connectivity: 4 or 8 neighbours join pixels into one component.

    Returns:
        Dicts with ``image_id``, ``category_id``, ``segmentation`` (``{"size": [H, W], "counts": str}``) and
        ``score``, readable by ``COCO.loadRes``; ordered by class index, then by component (in row-major order
        of each component's first pixel, as ``scipy.ndimage.label`` numbers them).
    """
    from pycocotools import mask as mask_utils
    from scipy import ndimage

    class_mask = np.asarray(class_mask)
    if class_mask.ndim != 2:
        raise ValueError(f"class_mask must be (H, W), got shape {class_mask.shape}")
    height, width = class_mask.shape
    if scores is not None:
        scores = np.asarray(scores, dtype=np.float64)
        if scores.shape[-2:] != class_mask.shape or scores.ndim not in (2, 3):
            raise ValueError(
                f"scores must be (C, H, W) or (H, W) matching the mask {class_mask.shape}, got {scores.shape}"
            )
    structure = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    results = []
    for c in np.unique(class_mask).tolist():
        if c == 0:
            continue
        if c not in class_to_category_id:
            raise UserError(
                f"COCO results: class index {c} has no category id (mapping has {sorted(class_to_category_id)})"
            )
        components, n = ndimage.label(class_mask == c, structure=structure)
        if scores is not None:
            prob = scores[c] if scores.ndim == 3 else scores
            means = np.atleast_1d(ndimage.mean(prob, components, np.arange(1, n + 1)))
        # all components' runs in one column-major pass; a stable sort by component keeps pixel order within each
        values, starts, lengths = rle.encode_class_runs(components, "column")
        keep = values > 0
        values, starts, lengths = values[keep], starts[keep], lengths[keep]
        order = np.argsort(values, kind="stable")
        values, starts, lengths = values[order], starts[order], lengths[order]
        bounds = np.searchsorted(values, np.arange(1, n + 2))
        for k in range(n):
            lo, hi = bounds[k], bounds[k + 1]
            counts = rle.runs_to_counts(starts[lo:hi], lengths[lo:hi], height * width)
            compressed = mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
            results.append(
                {
                    "image_id": image_id,
                    "category_id": int(class_to_category_id[c]),
                    "segmentation": {"size": [height, width], "counts": compressed["counts"].decode("ascii")},
                    "score": float(means[k]) if scores is not None else 1.0,
                }
            )
    return results


# --------------------------------------------------------------------------------------------------------------
# Ledger

LEDGER_COLUMNS = [
    "file",
    "time",
    "git_commit",
    "models",
    "members",  # model/fold<k>/r<round> of every member: what ran, not what params listed
    "tta",
    "ensemble_weights",
    "oof_miou",
    "lb_miou",
    "public_score",
]


def _ledger_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, separators=(",", ":"), default=str)
    if isinstance(value, np.generic):
        return str(value.item())
    return str(value)


def append_ledger(ledger_csv: str | os.PathLike[str], row: Mapping[str, Any]) -> None:
    """Append one submission to the ledger CSV (created with its header when missing), by an atomic rewrite.

    Columns are fixed (:data:`LEDGER_COLUMNS`); missing keys are left empty (``public_score`` is for the user to
    paste in), ``time`` defaults to now (UTC), lists and dicts are written as compact JSON.
    """
    ledger_csv = Path(ledger_csv)
    unknown = sorted(set(row) - set(LEDGER_COLUMNS))
    if unknown:
        raise UserError(f"{ledger_csv}: unknown ledger column {unknown[0]!r}; columns: {', '.join(LEDGER_COLUMNS)}")
    rows: list[list[str]] = []
    if ledger_csv.exists():
        with open(ledger_csv, encoding="utf-8", newline="") as f:
            table = list(csv.reader(f))
        if table and table[0] != LEDGER_COLUMNS:
            raise UserError(
                f"{ledger_csv}: header {table[0]} is not the ledger's {LEDGER_COLUMNS}; move the file "
                "aside to start a new ledger"
            )
        rows = table[1:]
    values = dict(row)
    values.setdefault("time", datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    rows.append([_ledger_cell(values.get(c)) for c in LEDGER_COLUMNS])
    write_csv(ledger_csv, LEDGER_COLUMNS, rows)


# --------------------------------------------------------------------------------------------------------------
# CLI


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


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
