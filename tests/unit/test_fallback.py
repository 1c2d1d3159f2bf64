"""No silent fallback: ``tta: auto`` without OOF is an error naming the missing file and the param that allows the
fallback; an allowed fallback is recorded. Missing stage timings read "unknown", not 0 s."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import Params, TrainParams, TtaConfig
from pipeline.ensemble.choose import no_tta, oof_unavailable, resolve_tta
from pipeline.ensemble.members import Member
from pipeline.errors import UserError
from pipeline.io import write_json
from pipeline.paths import Layout
from pipeline.report import format_seconds, stage_seconds

CONFIG_TTA = TtaConfig(flips=["hflip"], scales=[1.0], merge="mean")


def _never() -> None:
    raise AssertionError("no search without OOF")


def test_auto_without_oof_names_the_file_and_the_param(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    members = [Member("m", 0, 1, tmp_path / "best.pt")]
    why = oof_unavailable(layout, members)
    assert why == f"{layout.oof_path('m', 0, 1)} not found"
    with pytest.raises(UserError, match=r"infer\.tta: auto .*/oof\.npz not found.* infer\.allow_fallback: true"):
        resolve_tta("auto", "infer.tta", CONFIG_TTA, why, False, _never)  # type: ignore[arg-type]
    allowed = resolve_tta("auto", "pseudo.tta", CONFIG_TTA, why, True, _never)  # type: ignore[arg-type]
    assert allowed.tta == CONFIG_TTA and allowed.fallback == f"pseudo.tta auto -> config ({why})"


def test_none_and_config_need_no_oof_and_record_nothing(tmp_path: Path) -> None:
    why = oof_unavailable(Layout(tmp_path), [Member("m", -1, 1, tmp_path / "x.pt")])
    assert why == "--checkpoint members have no out-of-fold predictions"
    assert resolve_tta("none", "infer.tta", CONFIG_TTA, why, False, _never).tta == no_tta()  # type: ignore[arg-type]
    choice = resolve_tta("config", "infer.tta", CONFIG_TTA, why, False, _never)  # type: ignore[arg-type]
    assert choice.tta == CONFIG_TTA and choice.fallback is None


def test_oof_present_means_available(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    path = layout.oof_path("m", 0, 1)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"")
    assert oof_unavailable(layout, [Member("m", 0, 1, tmp_path / "best.pt")]) is None


def test_missing_timings_are_unknown_not_zero(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    params = Params(train=TrainParams(models=["cnn_default"]))
    write_json(layout.timing_path("demo"), {"seconds": 10.04})
    # one of the five folds recorded its training time: the round's total is unknown, not a partial sum
    write_json(layout.model_dir("cnn_default", 0, 1) / "metrics.json", {"train_seconds": 3.0})
    secs = stage_seconds(layout, params)
    assert secs == {
        "demo": 10.04,
        "masks": None,
        "folds": None,
        "train round 1 (all folds)": None,
        "train round 2 (all folds)": None,
        "pseudo": None,
        "infer": None,
    }
    assert [format_seconds(v) for v in (secs["demo"], secs["masks"])] == ["10.0", "unknown"]
    for f in range(1, 5):
        write_json(layout.model_dir("cnn_default", f, 1) / "metrics.json", {"train_seconds": 1.5})
    assert stage_seconds(layout, params)["train round 1 (all folds)"] == 9.0
