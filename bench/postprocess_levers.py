"""What each post-processing lever adds on out-of-fold predictions, cross-fitted, over repeats (#17 item 1).

For each trained model folder given (a repeat: another seed of the same recipe), reads every fold's ``oof.npz``
(the training stage's OOF probabilities) and the masks, and fits with the real ``pipeline.postprocess`` search:
no post-processing (``none``), ``auto`` (component and total areas) and ``shapes`` (+ keep-largest-component and
hole filling), as ``infer.postprocess`` names them; on a binary task also ``threshold``, the class-probability
threshold of ``infer.threshold: fit`` (:func:`pipeline.threshold.fit`, from each image's counts) against the argmax.
Each is scored cross-fitted: with two folds or more, fold k with the rules fitted without it; with one fold, its
images split in two halves by position, each scored with the rules fitted on the other. Prints one line per repeat
and the gains as mean ± sd over the repeats.

    python bench/postprocess_levers.py /tmp/segpipe-recipe/silhouette base-s0 base-s1 base-s2
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline import postprocess as pp  # noqa: E402
from pipeline import threshold as thr  # noqa: E402
from pipeline.io import read_mask  # noqa: E402
from pipeline.oof import cross_fit  # noqa: E402
from pipeline.paths import Layout  # noqa: E402

MODES = ("none", "auto", "shapes")  # infer.postprocess


def oof(
    layout: Layout, model: str, round_: int
) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """Every fold's OOF argmax maps, their masks, each image's fold (or half, with one fold), and on a binary task
    each image's threshold counts (:func:`pipeline.threshold.image_counts`; else empty)."""
    preds, truths, groups, counts = [], [], [], []
    folds = sorted(
        int(d.name[4:])
        for d in (layout.round_dir(round_) / "models" / model).glob("fold*")
        if (d / "oof.npz").is_file()
    )
    for f in folds:
        with np.load(layout.oof_path(model, f, round_)) as z:
            for i in sorted(z.files, key=int):
                probs = z[i].astype(np.float32)
                preds.append(probs.argmax(0).astype(np.uint8))
                truths.append(read_mask(layout.mask_path(int(i))))
                groups.append(f)
                if probs.shape[0] == 2:
                    counts.append(thr.image_counts(probs, truths[-1], thr.THRESHOLDS))
    g = np.asarray(groups)
    return preds, truths, (np.arange(len(g)) % 2 if len(folds) == 1 else g), counts


def score_threshold(
    preds: list[np.ndarray], truths: list[np.ndarray], groups: np.ndarray, counts: list, metric: str
) -> tuple[float, float, float | None]:
    """The fitted threshold's metric cross-fitted over ``groups`` and in-sample, and the threshold fitted on every
    image (``None``: the argmax kept)."""
    argmax = np.stack([np.bincount(2 * t[t != 255].astype(np.int64) + p[t != 255], minlength=4).reshape(2, 2)
                       for p, t in zip(preds, truths)])  # fmt: skip

    def choose(k: int | None) -> float | None:
        keep = np.ones(len(preds), bool) if k is None else groups != k
        return thr.fit([c for c, w in zip(counts, keep) if w], thr.THRESHOLDS, metric, lambda: argmax[keep])[0]

    def matrices(t: float | None) -> np.ndarray:
        return argmax if t is None else thr.matrices(counts, thr.THRESHOLDS.index(t))

    cf = cross_fit(groups, choose, matrices, metric)
    return float(cf.cross_fitted), cf.in_sample, cf.choice


def score(
    preds: list[np.ndarray], truths: list[np.ndarray], groups: np.ndarray, c: int, mode: str, metric: str
) -> tuple[float, float, dict[int, pp.Rule]]:
    """One mode's metric cross-fitted over ``groups`` and in-sample, and the rules it fits on every image."""
    grid = pp.Grid.for_pixels(int(np.median([p.size for p in preds])), shapes=mode == "shapes")
    stack = pp.Stack([pp.image_stats(p, t, c, grid.areas) for p, t in zip(preds, truths)], grid)
    holes: dict[tuple, np.ndarray] = {}

    def hole_of(removal: dict[int, pp.Rule]) -> np.ndarray:
        key = tuple(sorted(removal.items()))
        if key not in holes:
            holes[key] = np.stack([pp.hole_stats(pp.apply(p, removal), t, c) for p, t in zip(preds, truths)])
        return holes[key]

    def choose(k: int | None) -> dict[int, pp.Rule]:
        if mode == "none":
            return {}
        where = None if k is None else groups != k
        rules = pp.fit(stack, grid, metric, where)[0]
        return pp.fit_fill(stack, rules, hole_of(rules), metric, where)[0] if grid.fill else rules

    def matrices(rules: dict[int, pp.Rule]) -> np.ndarray:
        removal = {k: r._replace(fill=False) for k, r in rules.items() if r.removes}
        fills = any(r.fill for r in rules.values())
        return stack.matrices_for(rules, holes=hole_of(removal) if fills else None)

    cf = cross_fit(groups, choose, matrices, metric)
    return float(cf.cross_fitted), cf.in_sample, cf.choice


def levers(layout: Layout, model: str, round_: int, metric: str) -> dict[str, Any]:
    """Each mode's cross-fitted metric (``mode``), in-sample (``mode_in_sample``) and rules (``mode_rules``)."""
    preds, truths, groups, counts = oof(layout, model, round_)
    c = int(max(max(int(t[t != 255].max(initial=0)) for t in truths), max(int(p.max()) for p in preds))) + 1
    out: dict[str, Any] = {}
    for mode in MODES:
        out[mode], out[f"{mode}_in_sample"], out[f"{mode}_rules"] = score(preds, truths, groups, c, mode, metric)
    if counts:
        out["threshold"], out["threshold_in_sample"], out["threshold_value"] = score_threshold(
            preds, truths, groups, counts, metric
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", type=Path, help="the run's root (its work/ holds the masks and the models)")
    ap.add_argument("models", nargs="+", help="model folders under work/r<round>/models: one per repeat")
    ap.add_argument("--round", type=int, default=1)
    ap.add_argument("--metric", default="miou")
    args = ap.parse_args()
    layout = Layout(args.root)
    rows = []
    for m in args.models:
        r = levers(layout, m, args.round, args.metric)
        rows.append(r)
        print(
            f"{m}: {args.metric} cross-fitted none {r['none']:.4f}, auto {r['auto']:.4f}, shapes {r['shapes']:.4f} "
            f"(in-sample {r['none_in_sample']:.4f} / {r['auto_in_sample']:.4f} / {r['shapes_in_sample']:.4f}); "
            f"shapes' rules {pp.describe(r['shapes_rules'], [])}"
        )
        if "threshold" in r:
            print(
                f"{m}: threshold {r['threshold_value'] or 'argmax'}: {args.metric} cross-fitted {r['threshold']:.4f} "
                f"(in-sample {r['threshold_in_sample']:.4f}) against the argmax's {r['none']:.4f}"
            )
    pairs = [("none", "auto"), ("auto", "shapes"), ("none", "shapes")] + [("none", "threshold")] * ("threshold" in r)
    for a, b in pairs:
        gains = [r[b] - r[a] for r in rows]
        sd = statistics.stdev(gains) if len(gains) > 1 else float("nan")
        print(f"{b} - {a}: {statistics.mean(gains):+.4f} ± {sd:.4f} over {len(gains)} repeat(s)")


if __name__ == "__main__":
    main()
