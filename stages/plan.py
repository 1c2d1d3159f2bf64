"""Stage `plan`: the data's fingerprint and a measured training step -> work/plan.yaml (every choice and why)."""

from __future__ import annotations

import argparse

from pipeline.clock import process_seconds
from pipeline.config import DEFAULT_PARAMS, load_params, read_yaml
from pipeline.errors import run_cli
from pipeline.paths import Layout
from pipeline.plan.stage import make_plan


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m stages.plan", description=__doc__)
    ap.add_argument("--params", default=DEFAULT_PARAMS, help="params file (sections: data, folds, train, pseudo, plan)")
    args = ap.parse_args(argv)
    layout = Layout()
    plan = make_plan(load_params(args.params), layout, read_yaml(args.params) or {}, started=process_seconds() or 0.0)
    for name, entry in plan["models"].items():
        print(f"{name}:")
        for key in entry["keys"]:
            print(f"  {key}")
    if plan["enabled"]:
        f = plan["folds"]
        print(f"folds: {f['trained']} of {f['of']}: {f['why']}")
        b = plan["budget"]
        print(f"predicted {b['predicted_minutes']:.1f} min of {b['minutes']:g} (probe {b['probe_seconds']:.0f} s)")
    print(f"wrote {layout.plan_yaml}")
    return 0


if __name__ == "__main__":
    run_cli(main)
