"""Stage `pseudo` (`pseudo_r2`): the round-1 (round-2) ensemble labels the test images (confident pixels only) for
the next training round."""

from __future__ import annotations

import argparse

from pipeline.config import DEFAULT_PARAMS, load_params
from pipeline.errors import run_cli
from pipeline.io import write_json
from pipeline.paths import Layout
from pipeline.rounds import pseudo_round_runs, skip_pseudo_round


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m stages.pseudo", description=__doc__)
    ap.add_argument("--params", default=DEFAULT_PARAMS, help="params file (sections: data, train, pseudo, infer)")
    ap.add_argument("--round", type=int, default=1, help="the round whose models make the labels")
    args = ap.parse_args(argv)
    layout = Layout()
    params = load_params(args.params)
    if pseudo_round_runs(params, args.round):
        from pipeline.pseudo import make_pseudo_labels  # torch, timm, SMP: seconds to import

        summary = make_pseudo_labels(params, layout, args.round)
    else:  # before torch is imported: a switched-off round takes 0.3 s
        summary = skip_pseudo_round(params, layout, args.round)
    write_json(layout.pseudo_metrics(args.round), summary)
    return 0


if __name__ == "__main__":
    run_cli(main)
