"""Stage `folds`: multi-label stratified (optionally group-aware) k folds, saved to work/folds.csv."""

from __future__ import annotations

import argparse
import time

from pipeline.config import DEFAULT_PARAMS, load_params
from pipeline.data.folds import build_folds
from pipeline.errors import run_cli
from pipeline.io import write_json
from pipeline.paths import Layout


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m stages.folds", description=__doc__)
    ap.add_argument("--params", default=DEFAULT_PARAMS, help="params file (sections: folds)")
    args = ap.parse_args(argv)
    t0 = time.time()
    _, table = build_folds(load_params(args.params).folds, Layout())
    print(table)
    write_json(Layout().timing_path("folds"), {"seconds": round(time.time() - t0, 1)})
    return 0


if __name__ == "__main__":
    run_cli(main)
