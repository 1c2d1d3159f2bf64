"""Stage `folds`: multi-label stratified (optionally group-aware) k folds, saved to work/folds.csv."""

from __future__ import annotations

import argparse

from pipeline.config import load_params
from pipeline.data.folds import build_folds
from pipeline.errors import run_cli
from pipeline.paths import Layout


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m stages.folds", description=__doc__)
    ap.add_argument("--params", default="params.yaml", help="params file (sections: folds)")
    args = ap.parse_args(argv)
    _, table = build_folds(load_params(args.params).folds, Layout())
    print(table)
    return 0


if __name__ == "__main__":
    run_cli(main)
