"""``python -m pipeline.data.zoo NAME --out DIR --truth DIR``: write one zoo competition and its held-back truth."""

from __future__ import annotations

import argparse

from pipeline.data.zoo.registry import ZOO, get
from pipeline.errors import run_cli


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.data.zoo", description=__doc__)
    ap.add_argument("name", help="; ".join(f"{c.name}: {c.summary}" for c in ZOO.values()))
    ap.add_argument("--out", required=True, help="competition folder to write (train.json, test.json, images/, ...)")
    ap.add_argument("--truth", required=True, help="folder for the held-back test truth masks and classes.json")
    ap.add_argument("--n-train", type=int, help="train images (default: the competition's own)")
    ap.add_argument("--n-test", type=int, help="test images (default: the competition's own)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    comp = get(args.name)
    n_train = comp.n_train if args.n_train is None else args.n_train
    n_test = comp.n_test if args.n_test is None else args.n_test
    counts = comp.generate(args.out, args.truth, n_train=n_train, n_test=n_test, seed=args.seed)
    print(", ".join(f"{k}={v}" for k, v in counts.items() if not isinstance(v, dict)))
    print("train pixel share: " + ", ".join(f"{k} {v:.2%}" for k, v in counts["train_pixel_share"].items()))
    return 0


if __name__ == "__main__":
    run_cli(main)
