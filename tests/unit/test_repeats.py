"""The repeats table: mean ± sd and the paired gain verdict, on hand-computed values."""

from __future__ import annotations

import math

import pytest

from pipeline.repeats import aggregate, mean_sd, repeats_markdown, verdict


def test_mean_sd_by_hand() -> None:
    # 0.90, 0.92, 0.97: mean 0.93; deviations -0.03, -0.01, +0.04; squares sum 0.0026; / (3 - 1) = 0.0013
    m, sd = mean_sd([0.90, 0.92, 0.97])
    assert m == pytest.approx(0.93, abs=1e-12)
    assert sd == pytest.approx(math.sqrt(0.0013), abs=1e-12)
    assert mean_sd([0.5]) == (0.5, 0.0)


def test_verdict_is_two_sample_sds() -> None:
    assert verdict([0.010, 0.014, 0.012]) == "distinguishable"  # mean 0.012, sd 0.002
    assert verdict([0.004, -0.002, 0.004]) == "indistinguishable"  # mean 0.002, sd 0.00346
    # exactly at the edge: mean 0.02, sd 0.01 (0.01, 0.02, 0.03) -> 2 sd: distinguishable
    assert verdict([0.01, 0.02, 0.03]) == "distinguishable"
    assert verdict([0.0, 0.0, 0.0]) == "indistinguishable"  # no gain at all, however steady
    assert verdict([0.05]) == "one seed"


def _row(key: str, lb: float, oof: float | None, what: str | None = None) -> dict:
    return {
        "row": key,
        "what": what or key,
        "lb_mIoU": lb,
        "lb_mBIoU": lb - 0.001,
        "oof_mIoU": oof,
        "oof_cross_fitted": oof,
        "metric": "miou",
        "tta": "m: none",
    }


def test_aggregate_pairs_gains_by_seed() -> None:
    per_seed = {
        0: [_row("single", 0.90, None, "best single (fold 2, val 0.91), no TTA"), _row("folds", 0.93, 0.94)],
        1: [_row("single", 0.88, None, "best single (fold 0, val 0.90), no TTA"), _row("folds", 0.92, 0.95)],
        2: [_row("single", 0.91, None, "best single (fold 2, val 0.92), no TTA"), _row("folds", 0.93, 0.93)],
    }
    agg = aggregate(per_seed)
    assert agg["seeds"] == [0, 1, 2]
    single, folds = agg["rows"]
    # LB of the fold ensemble: 0.93, 0.92, 0.93 -> mean 0.926667, sd sqrt((2 * 0.0033333^2 + 0.0066667^2) / 2)
    assert folds["lb_mIoU"]["mean"] == pytest.approx(0.9266666667, abs=1e-9)
    assert folds["lb_mIoU"]["sd"] == pytest.approx(math.sqrt((2 * (1 / 300) ** 2 + (2 / 300) ** 2) / 2), abs=1e-9)
    # the gain is paired: 0.03, 0.04, 0.02 (not the difference of the means' sds): mean 0.03, sd 0.01
    assert folds["gain"]["values"] == pytest.approx([0.03, 0.04, 0.02], abs=1e-12)
    assert (folds["gain"]["mean"], folds["gain"]["sd"]) == pytest.approx((0.03, 0.01), abs=1e-12)
    assert folds["gain"]["verdict"] == "distinguishable"
    assert "gain" not in single and "oof_mIoU" not in single  # no OOF for the single model: no figure
    assert single["what"] == "best single (per seed: fold 2, val 0.91; fold 0, val 0.90; fold 2, val 0.92), no TTA"
    table = repeats_markdown(agg)
    assert "| folds | 0.9267 ± 0.0058 | +0.0300 ± 0.0100 | distinguishable | 0.9257 ± 0.0058 |" in table
    assert "0.9400 ± 0.0100" in table  # OOF 0.94, 0.95, 0.93


def test_aggregate_refuses_seeds_with_other_rows() -> None:
    from pipeline.errors import UserError

    with pytest.raises(UserError, match="seed 1 has rows"):
        aggregate({0: [_row("single", 0.9, None)], 1: [_row("folds", 0.9, None)]})
