"""bench/zoo.py's budget arithmetic: what a run spent as the plan's budget counts it, and the fixed default's epochs
at a budget (worked examples on metrics.json files laid out as the pipeline writes them)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from helpers import load_bench

bench = load_bench("zoo.py", "bench_zoo")


def put(root: Path, round_: int, fold: int, **metrics: float) -> None:
    path = root / "work" / f"r{round_}" / "models" / "auto" / f"fold{fold}" / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics))


def test_budget_minutes_add_the_plan_stage_and_each_stage_whole(tmp_path: Path) -> None:
    put(tmp_path, 1, 0, epochs=5, train_seconds=80.0, stage_seconds=95.0)
    put(tmp_path, 2, 0, epochs=2, train_seconds=41.0, stage_seconds=55.0)
    plan = {"enabled": True, "budget": {"plan_seconds": 30.0, "predicted_minutes": 2.93}}
    (tmp_path / "work" / "plan.yaml").write_text(yaml.safe_dump(plan))
    assert bench.budget_minutes(tmp_path) == (30 + 95 + 55) / 60  # 3.0
    assert bench.train_minutes(tmp_path) == (80 + 41) / 60
    assert bench.predicted_minutes(tmp_path) == 2.93
    assert bench.minutes_cell({"budget_minutes": 3.0, "predicted_minutes": 2.93}) == "3.0 (plan said 2.9)"


def test_a_disabled_plan_stage_is_not_counted_and_a_missing_stage_time_is_unknown(tmp_path: Path) -> None:
    put(tmp_path, 1, 0, epochs=7, train_seconds=100.0, stage_seconds=112.0)
    (tmp_path / "work" / "plan.yaml").write_text(yaml.safe_dump({"enabled": False}))
    assert bench.budget_minutes(tmp_path) == 112 / 60 and bench.predicted_minutes(tmp_path) is None
    put(tmp_path, 1, 1, epochs=7, train_seconds=100.0)  # a branch that does not record stage_seconds
    assert bench.budget_minutes(tmp_path) is None
    assert bench.minutes_cell({"train_minutes": 200 / 60, "budget_minutes": None}) == "3.3 (epochs only)"


def test_fixed_at_budget_pays_overheads_and_later_rounds_first(tmp_path: Path) -> None:
    # two folds: round 1 7 epochs at 16 s (112 s) + 12 s overhead each; round 2 2 epochs (32 s) + 12 s overhead each.
    for fold in (0, 1):
        put(tmp_path, 1, fold, epochs=7, train_seconds=112.0, stage_seconds=124.0)
        put(tmp_path, 2, fold, epochs=2, train_seconds=32.0, stage_seconds=44.0)
    # 6 min = 360 s: overheads 4 x 12 = 48, round 2 2 x 32 = 64 -> 248 s for round 1 = 2 folds x 16 s x 7.75 -> 7
    assert bench.epochs_at_budget(tmp_path, 6.0) == 7
    assert bench.epochs_at_budget(tmp_path, 12.5) == 19  # (750 - 48 - 64) / 32 = 19.9
    assert bench.epochs_at_budget(tmp_path, 1.0) == 1  # the budget does not even pay the overheads: one epoch
    assert bench.first_round_epochs(tmp_path) == 7


def test_fixed_at_budget_without_stage_times_fills_the_budget_with_epochs(tmp_path: Path) -> None:
    put(tmp_path, 1, 0, epochs=4, train_seconds=60.0)  # 15 s an epoch, nothing known of the overheads
    assert bench.epochs_at_budget(tmp_path, 3.0) == 12


def test_set_parses_yaml_values_and_refuses_what_the_variants_own() -> None:
    import argparse

    import pytest

    ap = argparse.ArgumentParser()
    assert bench.parse_set(ap, "infer.threshold=fit") == ("infer.threshold", "fit")
    assert bench.parse_set(ap, "train.epochs=12") == ("train.epochs", 12)
    assert bench.parse_set(ap, "pseudo.share=null") == ("pseudo.share", None)
    for bad in ("threshold=fit", "infer.threshold", "a.b.c=1", "plan.enabled=true"):
        with pytest.raises(SystemExit):
            bench.parse_set(ap, bad)


def row(variant: str, miou: float, **extra: object) -> dict[str, object]:
    return {"competition": "c", "variant": variant, "mIoU": miou, "mBIoU": miou - 0.1, "min_IoU": 0.0,
            "train_minutes": 2.0, "budget_minutes": 3.0, "predicted_minutes": 2.9, "plan": "p", **extra}  # fmt: skip


def test_seeds_aggregate_as_mean_sd_and_a_paired_gain() -> None:
    per_seed = [
        [row("fixed", 0.10), row("fixed@budget", 0.20, epochs=11), row("planned", 0.25)],
        [row("fixed", 0.12), row("fixed@budget", 0.22, epochs=12), row("planned", 0.26)],
        [row("fixed", 0.14), row("fixed@budget", 0.24, epochs=11), row("planned", 0.30)],
    ]
    rows = {r["variant"]: r for r in bench.aggregate("c", per_seed)}
    assert rows["fixed"]["mIoU"] == (0.12, 0.02)  # mean of 0.10, 0.12, 0.14; sample sd 0.02
    mean, sd, said = rows["planned"]["gain"]  # gains 0.05, 0.04, 0.06 -> 0.05 ± 0.01: 5 sd from 0
    assert (round(mean, 9), round(sd, 9), said) == (0.05, 0.01, "distinguishable")
    text = bench.table(list(rows.values()))
    assert "| c | fixed@budget (11-12 ep) (3 seeds) | 0.2200 ± 0.0200 |" in text
    assert "- c: planned - fixed@budget LB mIoU +0.0500 ± 0.0100 over 3 seeds (paired): distinguishable" in text


def test_a_seed_that_failed_makes_its_variant_an_error_row() -> None:
    per_seed = [[row("planned", 0.3)], [{"competition": "c", "variant": "planned", "error": "timed out after 25 min"}]]
    (only,) = bench.aggregate("c", per_seed)
    assert only["error"] == "1 of 2 seeds failed: timed out after 25 min" and "mIoU" not in only
    assert bench.table([only]).splitlines()[-1].startswith("| c | planned (2 seeds) | - | - | - |")


def test_one_seed_keeps_the_single_run_format() -> None:
    text = bench.table([row("fixed@budget", 0.2, epochs=11)])
    assert text.splitlines()[-1] == "| c | fixed@budget (11 ep) | 0.2000 | 0.1000 | 0.0000 | 3.0 (plan said 2.9) | p |"
