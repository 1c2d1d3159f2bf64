"""Which competition a truth folder belongs to: ``<truth>/competition.json`` records the sha256 of the bytes of the
``test.json`` written with it, so the local leaderboard never scores one competition's submission against another
competition's truth (``data.truth_dir`` keeps its default when ``data.root`` changes).

The demo and every importer write the record together with the truth; a truth folder without one (made by hand, or
by an older version) is not used until it has one (:func:`write_truth_record` makes it).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from pipeline.io import read_json, write_json
from pipeline.paths import TruthFiles

RECORD = TruthFiles.RECORD  # the record's file name in a truth folder


def competition_sha256(test_json: str | os.PathLike[str]) -> str:
    """The sha256 (hex) of the bytes of a competition's ``test.json``."""
    return hashlib.sha256(Path(test_json).read_bytes()).hexdigest()


def write_truth_record(
    truth_dir: str | os.PathLike[str], test_json: str | os.PathLike[str], multilabel: bool = False
) -> None:
    """Record in ``truth_dir`` that its masks are the truth of the competition whose test split is ``test_json``
    (``multilabel``: they are bit fields, :mod:`pipeline.labels`)."""
    record = {"test_json_sha256": competition_sha256(test_json)}
    if multilabel:
        record["labels"] = "multilabel"
    write_json(TruthFiles(Path(truth_dir)).record, record)


def truth_multilabel(truth_dir: str | os.PathLike[str]) -> bool:
    """Whether a truth folder's record says its masks are multilabel bit fields."""
    data = read_json(TruthFiles(Path(truth_dir)).record)
    return isinstance(data, dict) and data.get("labels") == "multilabel"


def truth_mismatch(truth_dir: str | os.PathLike[str], test_json: str | os.PathLike[str]) -> str | None:
    """Why ``truth_dir`` is not the truth of the competition of ``test_json``, or None when its record matches."""
    truth_dir, test_json = Path(truth_dir), Path(test_json)
    if not truth_dir.is_dir():
        return f"{truth_dir} does not exist"
    record = TruthFiles(truth_dir).record
    if not record.is_file():
        return f"{truth_dir} has no {RECORD} saying which competition it belongs to (the demo and importers write it)"
    if not test_json.is_file():
        return f"{test_json} does not exist"
    data = read_json(record)
    have = data.get("test_json_sha256") if isinstance(data, dict) else None
    want = competition_sha256(test_json)
    if have != want:
        return f"{record} is for a test.json with sha256 {str(have)[:12]}..., {test_json} has {want[:12]}..."
    return None
