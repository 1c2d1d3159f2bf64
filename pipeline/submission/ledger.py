"""The submission ledger: one CSV row per submission made (what made it, its OOF and local scores, the public score
pasted in by hand), so CV can be compared with LB over a competition.

A submission is its file and the sha256 of its bytes: a run that writes the same file again (``infer`` re-run after
a kill that came between its ledger row and ``metrics/infer.json``) replaces that row instead of adding a second.
"""

from __future__ import annotations

import csv
import datetime
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import UserError
from pipeline.io import write_csv
from pipeline.submission.format import formula_risk

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
    "metric",  # the competition metric (params.yaml metric.name) of the two OOF figures that follow
    "oof_in_sample",  # the choices (TTA, temperature, weights) fitted and scored on every fold
    "oof_cross_fitted",  # fold k scored with the choices fitted without fold k: compare this one with the LB
    "fallback",  # what infer.allow_fallback let fall back without OOF (empty: nothing)
    "lb_score",  # the local leaderboard in the competition metric (the column "metric" names it)
    "submission_sha256",  # the submission file's bytes: with "file", the row's key (the same submission: one row)
    "postprocess",  # the per-class rules fitted on OOF (infer.postprocess), JSON; empty: none
    "threshold",  # the binary class-probability threshold fitted on OOF (infer.threshold); empty: the argmax
]
KEY_COLUMNS = ("file", "submission_sha256")


def _ledger_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple, dict)):
        text = json.dumps(value, separators=(",", ":"), default=str)
    elif isinstance(value, np.generic):
        text = str(value.item())
    else:
        text = str(value)
    # a leading quote keeps a spreadsheet from running a cell such as "=HYPERLINK(...)" as a formula
    return "'" + text if formula_risk(text) else text


def append_ledger(ledger_csv: str | os.PathLike[str], row: Mapping[str, Any]) -> None:
    """Append one submission to the ledger CSV (created with its header when missing), by an atomic rewrite.

    Columns are fixed (:data:`LEDGER_COLUMNS`); missing keys are left empty (``public_score`` is for the user to
    paste in), ``time`` defaults to now (UTC), lists and dicts are written as compact JSON. A row whose ``file`` and
    ``submission_sha256`` (both given) are an earlier row's is that submission again: it replaces the earlier row in
    place, keeping a ``public_score`` pasted there. A ledger written before the last columns were added (its header
    the start of today's) gets them, empty in its earlier rows.
    """
    ledger_csv = Path(ledger_csv)
    unknown = sorted(set(row) - set(LEDGER_COLUMNS))
    if unknown:
        raise UserError(f"{ledger_csv}: unknown ledger column {unknown[0]!r}; columns: {', '.join(LEDGER_COLUMNS)}")
    rows: list[list[str]] = []
    if ledger_csv.exists():
        with open(ledger_csv, encoding="utf-8", newline="") as f:
            table = list(csv.reader(f))
        if table and (not table[0] or table[0] != LEDGER_COLUMNS[: len(table[0])]):
            raise UserError(
                f"{ledger_csv}: header {table[0]} is not the ledger's {LEDGER_COLUMNS}; move the file "
                "aside to start a new ledger"
            )
        added = len(LEDGER_COLUMNS) - len(table[0]) if table else 0  # columns newer than the file
        rows = [r + [""] * added for r in table[1:]]
    values = dict(row)
    values.setdefault("time", datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    new = [_ledger_cell(values.get(c)) for c in LEDGER_COLUMNS]
    same = _same_submission(rows, new)
    if same is None:
        rows.append(new)
    else:
        score = LEDGER_COLUMNS.index("public_score")
        new[score] = new[score] or rows[same][score]  # pasted by hand after the upload: not lost to a re-run
        rows[same] = new
    write_csv(ledger_csv, LEDGER_COLUMNS, rows)


def _same_submission(rows: list[list[str]], new: list[str]) -> int | None:
    """The index of the row of the same submission as ``new`` (same file, same sha256), or ``None``."""
    key = [LEDGER_COLUMNS.index(c) for c in KEY_COLUMNS]
    if not all(new[k] for k in key):  # a row without a digest is never taken for another
        return None
    return next((i for i, r in enumerate(rows) if all(r[k : k + 1] == [new[k]] for k in key)), None)
