"""Check a submission against its sample, the image sizes and the class list, listing every problem by line."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping

import pandas as pd

from pipeline.rle import RleError
from pipeline.submission import codec
from pipeline.submission.format import (
    PER_CLASS,
    Classes,
    SubmissionFormat,
    class_labels,
    foreground_classes,
    formula_risk,
)

MAX_PROBLEMS = 50


class Problems(list):
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


def frame(src: str | os.PathLike[str] | pd.DataFrame, default_name: str) -> tuple[str, pd.DataFrame]:
    """``(name for messages, frame)`` of a path or a frame."""
    if isinstance(src, pd.DataFrame):
        return default_name, src
    return str(src), codec.read_submission_csv(src)


@dataclasses.dataclass
class _Context:
    """What every row check needs: the file's name, the format and what the rows are checked against."""

    name: str
    fmt: SubmissionFormat
    key_cols: list[str]
    shape_of: dict[str, tuple[int, int]] | None
    valid_labels: set[str] | None
    valid_indices: set[int] | None
    problems: Problems

    def describe(self, key: tuple[str, ...]) -> str:
        return ", ".join(f"{c} {v!r}" for c, v in zip(self.key_cols, key, strict=True))


def validate_submission(
    submission: str | os.PathLike[str] | pd.DataFrame,
    sample: str | os.PathLike[str] | pd.DataFrame | None = None,
    shapes: Mapping[str | int, tuple[int, int]] | None = None,
    fmt: SubmissionFormat = PER_CLASS,
    classes: Classes | None = None,
    max_problems: int = MAX_PROBLEMS,
) -> list[str]:
    """Check a submission; an empty list means it is fine.

    Args:
        submission: the CSV path or its frame (cells as text). A file that cannot be read as a table (a row with
            the wrong number of fields, not UTF-8, empty) is one problem.
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
    try:
        name, df = frame(submission, "submission")
    except codec.CsvError as e:  # one clear problem (a shifted column would give a misleading one per row)
        return [str(e)]
    problems = Problems(max_problems)
    sample_name, sample_df = frame(sample, "sample") if sample is not None else ("", None)
    if not _columns_ok(name, df, sample_name, sample_df, fmt, problems):
        return problems.result()
    fg = foreground_classes(classes) if classes is not None else None
    labels = class_labels(fg, fmt) if fg is not None else None
    ctx = _Context(
        name=name,
        fmt=fmt,
        key_cols=fmt.key_columns(),
        shape_of={str(k): (int(v[0]), int(v[1])) for k, v in shapes.items()} if shapes is not None else None,
        valid_labels=set(labels.values()) if labels is not None else None,
        valid_indices=({0} | {i for i, _ in fg}) if fg is not None else None,
        problems=problems,
    )
    keys = codec.row_keys(df, ctx.key_cols)
    _check_rows_present(ctx, keys, sample_df, labels)
    if sample_df is not None:
        _check_other_columns(ctx, df, keys, sample_df)
    parser = codec.key_parser(fmt, list(labels.values()) if labels else None)
    unknown_images: set[str] = set()
    for i, (key, value) in enumerate(zip(keys, df[fmt.prediction_column].tolist(), strict=True)):
        where = f"{name}: line {i + 2} ({ctx.describe(key)})"
        reason = _check_row(ctx, key, codec.cell_text(value), parser, unknown_images)
        if reason:
            problems.add(f"{where}: {reason}")
    return problems.result()


def _columns_ok(
    name: str,
    df: pd.DataFrame,
    sample_name: str,
    sample_df: pd.DataFrame | None,
    fmt: SubmissionFormat,
    problems: Problems,
) -> bool:
    """Check the header; False when a needed column is missing (then the rows cannot be checked)."""
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
        return False
    if sample_df is not None:
        absent = [c for c in needed if c not in sample_df.columns]
        if absent:
            problems.add(f"{sample_name}: no column {absent[0]!r} (columns: {', '.join(map(str, sample_df.columns))})")
            return False
    return True


def _check_rows_present(
    ctx: _Context, keys: list[tuple[str, ...]], sample_df: pd.DataFrame | None, labels: dict[int, str] | None
) -> None:
    """Each row once; with a sample (or shapes and classes) exactly the expected rows."""
    lines: dict[tuple[str, ...], list[int]] = {}  # key -> its CSV line numbers (the header is line 1)
    for i, key in enumerate(keys):
        lines.setdefault(key, []).append(i + 2)
    for key, at in lines.items():
        if len(at) > 1:
            shown = ", ".join(map(str, at[:5])) + (", ..." if len(at) > 5 else "")
            ctx.problems.add(
                f"{ctx.name}: line {at[0]} ({ctx.describe(key)}): appears {len(at)} times (lines {shown}); "
                "each row must appear once"
            )
    expected: list[tuple[str, ...]] | None = None
    if sample_df is not None:
        expected = codec.row_keys(sample_df, ctx.key_cols)
    elif ctx.shape_of is not None and labels is not None:
        expected = [ctx.fmt.row_key(image, lab) for image in ctx.shape_of for lab in labels.values()]
        expected = list(dict.fromkeys(expected))  # single-class or per-image layouts: one row per image
    if expected is None:
        return
    want = set(expected)
    for key in expected:
        if key not in lines:
            ctx.problems.add(f"{ctx.name}: missing row ({ctx.describe(key)})")
    for key, at in lines.items():
        if key not in want:
            ctx.problems.add(
                f"{ctx.name}: line {at[0]} ({ctx.describe(key)}): unexpected row (not in "
                f"{'the sample' if sample_df is not None else 'the shapes and classes'})"
            )


def _check_other_columns(ctx: _Context, df: pd.DataFrame, keys: list[tuple[str, ...]], sample_df: pd.DataFrame) -> None:
    """Columns other than the key and prediction keep the sample's values."""
    needed = ctx.key_cols + [ctx.fmt.prediction_column]
    other_cols = [c for c in df.columns if c not in needed and c in sample_df.columns]
    if not other_cols:
        return
    sample_rows = {k: i for i, k in enumerate(codec.row_keys(sample_df, ctx.key_cols))}
    for i, key in enumerate(keys):
        if key not in sample_rows:
            continue
        for c in other_cols:
            have, want_value = df[c].iat[i], sample_df[c].iat[sample_rows[key]]
            if str(have) != str(want_value):
                ctx.problems.add(
                    f"{ctx.name}: line {i + 2} ({ctx.describe(key)}): column {c!r} is {have!r}, "
                    f"the sample has {want_value!r}"
                )


def _check_row(
    ctx: _Context, key: tuple[str, ...], text: str, parser: re.Pattern[str] | None, unknown_images: set[str]
) -> str | None:
    """The problem with one row, or None."""
    fmt = ctx.fmt
    risk = next((r for r in map(formula_risk, key) if r), None)
    if risk:
        return f"key {risk} (CSV injection); ids and labels must not start with = + - @"
    try:
        if fmt.layout == "dense":
            codec.dense_cell(text, fmt, ctx.valid_indices)
            return None
        image, label = codec.split_key(key, fmt, parser)
        size = None
        if ctx.shape_of is not None:
            if image not in ctx.shape_of:
                if image in unknown_images:
                    return None
                unknown_images.add(image)
                return f"no image size for id {image!r} (not among the {len(ctx.shape_of)} images)"
            size = ctx.shape_of[image][0] * ctx.shape_of[image][1]
        if fmt.layout == "per_image":
            codec.per_image_cell(text, fmt, size, ctx.valid_labels)
            return None
        if ctx.valid_labels is not None and label is not None and label not in ctx.valid_labels:
            return f"unknown class {label!r} (known: {', '.join(sorted(ctx.valid_labels))})"
        codec.per_class_cell(text, fmt, size)
    except RleError as e:
        return str(e)
    return None
