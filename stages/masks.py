"""Stage `masks`: COCO train annotations -> one PNG class mask per image, classes.json, index and summary."""

from __future__ import annotations

import argparse
import time

from pipeline.config import DEFAULT_PARAMS, load_params
from pipeline.data.masks import build_masks, summary_table
from pipeline.errors import run_cli
from pipeline.io import write_json
from pipeline.paths import Layout


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m stages.masks", description=__doc__)
    ap.add_argument("--params", default=DEFAULT_PARAMS, help="params file (sections: data, masks)")
    args = ap.parse_args(argv)
    t0 = time.time()
    params = load_params(args.params)
    summary = build_masks(params.data, params.masks, Layout())
    print(f"{summary['images']} images, {summary['annotations']} annotations")
    print(summary_table(summary))
    write_json(Layout().timing_path("masks"), {"seconds": round(time.time() - t0, 1)})
    return 0


if __name__ == "__main__":
    run_cli(main)
