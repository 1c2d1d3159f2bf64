"""The mmseg-style per-class results table (Class | IoU | Acc | Dice | BIoU) and the row of dataset means, for the
console, markdown and CSV.

Tables are rendered from the JSON-ready summary of :func:`pipeline.metrics.summarize`, so a saved ``metrics.json``
can be re-rendered without the data; files are written atomically through :mod:`pipeline.io`. The fold report
(:func:`pipeline.training.finish.fold_report`), the local leaderboard and the end-of-run report use them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from pipeline.io import write_csv, write_text

_COLUMNS = ("IoU", "Acc", "Dice", "BIoU")
_SUMMARY_COLUMNS = ("aAcc", "mIoU", "mAcc", "mDice", "mBIoU")


def percent(x: float | None) -> str:
    """A score in [0, 1] as a percentage with 2 decimals; "nan" when it is missing (NaN or None)."""
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


def table_rows(summary: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the per-class table: Class | IoU | Acc | Dice | BIoU, percentages with 2 decimals.

    The BIoU column appears only when the summary has Boundary IoU. Missing scores (NaN or None) read "nan".
    """
    per_class: Mapping[str, Mapping[str, float | None]] = summary["per_class"]
    columns = [c for c in _COLUMNS if any(c in row for row in per_class.values())]
    rows = [[name, *(percent(scores.get(c)) for c in columns)] for name, scores in per_class.items()]
    return ["Class", *columns], rows


def summary_row(summary: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """Header and the one row of dataset means: aAcc | mIoU | mAcc | mDice | mBIoU (if present), in percent."""
    columns = [c for c in _SUMMARY_COLUMNS if c in summary]
    return columns, [percent(summary[c]) for c in columns]


def _ascii_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def line(cells: Sequence[str]) -> str:
        return "|" + "|".join(f" {str(c):^{w}} " for c, w in zip(cells, widths, strict=True)) + "|"

    return "\n".join([rule, line(header), rule, *(line(r) for r in rows), rule])


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    align = ["---", *("---:" for _ in header[1:])]
    lines = [header, align, *rows]
    return "\n".join("| " + " | ".join(str(c) for c in cells) + " |" for cells in lines)


def format_table(summary: Mapping[str, Any]) -> str:
    """The mmseg-style console report: the per-class table, then the dataset means."""
    header, rows = table_rows(summary)
    s_header, s_row = summary_row(summary)
    mode = "per-image mean" if summary.get("per_image") else "dataset"
    return f"per-class results:\n{_ascii_table(header, rows)}\nsummary ({mode}):\n{_ascii_table(s_header, [s_row])}"


def format_markdown(summary: Mapping[str, Any]) -> str:
    """The same tables as :func:`format_table`, as markdown."""
    header, rows = table_rows(summary)
    s_header, s_row = summary_row(summary)
    return f"{_markdown_table(s_header, [s_row])}\n\n{_markdown_table(header, rows)}\n"


def write_tables(summary: Mapping[str, Any], csv_path: str | os.PathLike[str], md_path: str | os.PathLike[str]) -> None:
    """Write the per-class table as CSV (one row per class) and both tables as markdown, atomically."""
    header, rows = table_rows(summary)
    write_csv(csv_path, header, rows)
    write_text(md_path, format_markdown(summary))
