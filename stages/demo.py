"""Stage `demo`: generate the embedded M2NIST-style competition (COCO folder + held-back test truth)."""

from __future__ import annotations

import argparse
import time

from pipeline.config import DEFAULT_PARAMS, load_params
from pipeline.data.demo import generate_demo
from pipeline.errors import run_cli
from pipeline.io import write_json
from pipeline.paths import Layout


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m stages.demo", description=__doc__)
    ap.add_argument("--params", default=DEFAULT_PARAMS, help="params file (sections: demo)")
    ap.add_argument("--out", default=str(Layout().competition_dir), help="competition folder to write")
    ap.add_argument("--truth", default=str(Layout().truth_dir), help="folder for the held-back test truth masks")
    args = ap.parse_args(argv)
    t0 = time.time()
    counts = generate_demo(load_params(args.params).demo, args.out, args.truth)
    print(", ".join(f"{k}={v}" for k, v in counts.items()))
    write_json(Layout().timing_path("demo"), {"seconds": round(time.time() - t0, 1)})
    return 0


if __name__ == "__main__":
    run_cli(main)
