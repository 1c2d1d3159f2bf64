"""Stage `report`: reports/summary.md (OOF by model and round, ensemble, leaderboard, timings, predictions)."""

from __future__ import annotations

import argparse

from pipeline.config import DEFAULT_PARAMS, load_params
from pipeline.errors import run_cli
from pipeline.paths import Layout
from pipeline.report import write_summary
from pipeline.submission.format import submission_format


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m stages.report", description=__doc__)
    ap.add_argument("--params", default=DEFAULT_PARAMS, help="params file (sections: data, train, pseudo)")
    args = ap.parse_args(argv)
    params = load_params(args.params)
    submission_format(params.infer.submission, args.params)  # a bad infer.submission fails now, naming this params file
    print(write_summary(params, Layout()))
    return 0


if __name__ == "__main__":
    run_cli(main)
