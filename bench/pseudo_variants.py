"""Pseudo-label variants on one fold of a finished run (#17 item 5): round 2 trained again per variant and seed.

From a run whose round 1 and pseudo stage are done (``dvc repro`` or ``dvc exp run``), each variant trains round 2
of ``--fold`` through the pipeline's own ``train_round`` (the run's params and plan, the round-1 weights and the
fold's leak-free pseudo set), in its own folder under ``--work`` whose ``work/`` links the run's round 1, masks,
folds and plan. Prints one line per run (fold val metric, best epoch, seconds) and per variant the mean ± sd over
the seeds, and the paired difference from the first variant.

Variants: ``mixed`` (the default: pseudo-labelled images as many as they are), ``share=S`` (``pseudo.share``),
``pretrain=N`` (``pseudo.pretrain_epochs``), ``soft`` (``pseudo.soft``: the pseudo stage runs again in the variant's
folder, on the run's round-1 models, to keep the teacher's probabilities; its labels are the run's).

    python bench/pseudo_variants.py /tmp/run-obj4 --epochs 10 --seeds 0 1 --variants mixed share=0.5 pretrain=5
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.config import Params, load_params  # noqa: E402
from pipeline.paths import Layout  # noqa: E402
from pipeline.plan.apply import planned_config  # noqa: E402
from pipeline.pseudo import make_pseudo_labels  # noqa: E402
from pipeline.train import train_round  # noqa: E402

LINKED = ("masks", "folds.csv", "classes.json", "plan.yaml", "train_index.csv", "mask_summary.json", "r1")


def variant_params(params: Params, variant: str, epochs: int, seed: int) -> Params:
    """``params`` with the variant's pseudo keys, ``epochs`` round-2 epochs and training seed ``seed``."""
    ps = dataclasses.replace(params.pseudo, epochs=epochs)
    if variant.startswith("share="):
        ps = dataclasses.replace(ps, share=float(variant.split("=")[1]))
    elif variant.startswith("pretrain="):
        ps = dataclasses.replace(ps, pretrain_epochs=int(variant.split("=")[1]))
    elif variant == "soft":
        ps = dataclasses.replace(ps, soft=True)
    elif variant != "mixed":
        raise SystemExit(f"unknown variant {variant!r}: mixed, share=S, pretrain=N or soft")
    return dataclasses.replace(params, pseudo=ps, train=dataclasses.replace(params.train, seed=seed))


def run_folder(run: Path, work: Path, name: str, own_pseudo: bool = False) -> Layout:
    """A fresh project folder ``work/name`` whose work/ links the run's round 1 and data (round 2 its own; with
    ``own_pseudo`` round 1's pseudo-label sets too: everything else of round 1 is linked entry by entry)."""
    root = work / name
    shutil.rmtree(root, ignore_errors=True)
    (root / "work").mkdir(parents=True)
    for item in LINKED:
        if item == "r1" and own_pseudo:
            (root / "work" / "r1").mkdir()
            for entry in (run / "work" / "r1").iterdir():
                if entry.name != "pseudo":
                    (root / "work" / "r1" / entry.name).symlink_to(entry.resolve())
        elif (run / "work" / item).exists():
            (root / "work" / item).symlink_to((run / "work" / item).resolve())
    (root / "configs").symlink_to(REPO / "configs")
    return Layout(root)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="a finished run's project folder (params.yaml, work/r1, work/r1/pseudo)")
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--model", default="auto")
    ap.add_argument("--epochs", type=int, default=10, help="round-2 epochs of every variant")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--variants", nargs="+", default=["mixed", "share=0.5", "pretrain=5"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("/tmp/segpipe-pseudo"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    base = load_params(args.run / "params.yaml")
    scores: dict[str, list[float]] = {}
    for variant in args.variants:
        for seed in args.seeds:
            params = variant_params(base, variant, args.epochs, seed)
            layout = run_folder(args.run, args.work, f"{variant.replace('=', '')}-s{seed}", params.pseudo.soft)
            cfg = planned_config(args.model, layout, params)
            t0 = time.time()
            if params.pseudo.soft:
                make_pseudo_labels(params, layout)  # the run's labels again, with the teacher's probabilities
            m = train_round(cfg, args.model, args.fold, layout, params, round_=2)
            assert m is not None
            scores.setdefault(variant, []).append(m["val_mIoU"])
            print(
                f"{variant} seed {seed}: fold {args.fold} round-2 val mIoU {m['val_mIoU']:.4f} (best epoch "
                f"{m['best_epoch']}), {time.time() - t0:.0f} s",
                flush=True,
            )
    first = args.variants[0]
    for variant, s in scores.items():
        sd = statistics.stdev(s) if len(s) > 1 else float("nan")
        line = f"{variant}: {statistics.mean(s):.4f} ± {sd:.4f} over seeds {args.seeds}"
        if variant != first:
            d = [a - b for a, b in zip(s, scores[first])]
            dsd = statistics.stdev(d) if len(d) > 1 else float("nan")
            line += f"; minus {first}, paired: {statistics.mean(d):+.4f} ± {dsd:.4f}"
        print(line)


if __name__ == "__main__":
    main()
