"""Stage `infer`: TTA + ensemble inference of the test set -> submissions/submission.csv (+ local leaderboard)."""

from __future__ import annotations

import argparse

from pipeline.config import DEFAULT_PARAMS, load_params
from pipeline.errors import run_cli
from pipeline.infer import run_ensemble
from pipeline.io import write_json
from pipeline.paths import Layout
from pipeline.submission.format import submission_format


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m stages.infer", description=__doc__)
    ap.add_argument("--params", default=DEFAULT_PARAMS, help="params file (sections: data, train, pseudo, infer)")
    args = ap.parse_args(argv)
    layout = Layout()
    params = load_params(args.params)
    submission_format(params.infer.submission, args.params)  # a bad infer.submission fails now, naming this params file
    write_json(layout.infer_json, run_ensemble(params, layout))
    return 0


if __name__ == "__main__":
    run_cli(main)
