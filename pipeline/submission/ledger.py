"""The submission ledger: one CSV row per submission made (what made it, its OOF and local scores, the public score
pasted in by hand), so CV can be compared with LB over a competition."""

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
]


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
