"""The ablation's decision rows (pipeline.ablation.postprocess_rows): earlier rows are scored on the argmax without
rules; the threshold row (infer.threshold: fit) comes before the post-processing rows, which keep it."""

from __future__ import annotations

import dataclasses

from pipeline.ablation import postprocess_rows
from pipeline.config import Params


def _rows() -> list:
    p = Params()
    return [("folds", "fold ensemble", p, {}), ("tta", "+ TTA", dataclasses.replace(p), {"x": 1})]


def test_threshold_row_then_post_processing_rows_that_keep_it() -> None:
    rows = postprocess_rows("auto", _rows(), "fit")
    assert [r[0] for r in rows] == ["folds", "tta", "threshold", "postprocess"]
    decided = [(r[2].infer.threshold, r[2].infer.postprocess) for r in rows]
    assert decided == [("none", "none"), ("none", "none"), ("fit", "none"), ("fit", "auto")]
    assert rows[2][3] == {"x": 1} and rows[2][1] == "+ probability threshold fitted on OOF"


def test_without_a_threshold_the_rows_are_as_before() -> None:
    rows = postprocess_rows("shapes", _rows())
    assert [r[0] for r in rows] == ["folds", "tta", "postprocess_areas", "postprocess"]
    assert [(r[2].infer.threshold, r[2].infer.postprocess) for r in rows] == [
        ("none", "none"),
        ("none", "none"),
        ("none", "auto"),
        ("none", "shapes"),
    ]
    assert [r[0] for r in postprocess_rows("none", _rows())] == ["folds", "tta"]
