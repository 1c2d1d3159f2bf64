"""Repeats: the ablation over several training seeds, as mean ± sd, with each gain called distinguishable or not.

One seed's figures move by about 0.01 per fold, more than several gains a competitor would act on. So
``python -m pipeline.ablation --seeds 3`` runs the whole loop once per seed and scores every ablation row each time:

1. for each seed ``s`` in 0, 1, ... (``--first-seed`` moves the start): ``dvc exp run -S train.seed=s`` (real DVC: only
   the stages that read ``train.seed`` re-run, so demo, masks, the plan and the folds are shared by every seed),
   then the rows of :func:`pipeline.ablation.run_ablation` on that run, kept in ``metrics/ablation/seed<s>.json``
   with a key of everything else they depend on (:func:`run_key`): a re-run skips the seeds it has, so a killed
   repeat resumes at the seed it stopped in, and ``--seeds 5`` after ``--seeds 3`` runs two more;
2. the table: every figure as mean ± sd over the seeds (sample sd, ``ddof=1``) and each row's gain over the row
   above as the mean ± sd of the per-seed differences (paired by seed). A gain whose mean is smaller than two of
   its sds is **indistinguishable** from zero.

The workspace is left at the last seed it ran (``params.yaml`` says which); ``dvc exp show`` lists every seed's
run.

Worked example of the verdict: gains of +0.010, +0.014, +0.012 over three seeds have mean 0.012 and sd 0.002, so
the gain is 6 sd from zero: distinguishable. Gains of +0.004, -0.002, +0.004 have mean 0.002 and sd 0.0035: within
two sd of zero, indistinguishable.

>>> mean_sd([0.010, 0.014, 0.012])
(0.012, 0.002)
>>> verdict([0.010, 0.014, 0.012]), verdict([0.004, -0.002, 0.004])
('distinguishable', 'indistinguishable')
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import statistics
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.closure import closure_digest
from pipeline.config import Params, load_params, read_yaml
from pipeline.errors import UserError
from pipeline.io import read_json, write_json
from pipeline.paths import Layout

FIGURES = ("lb_mIoU", "lb_mBIoU", "oof_mIoU", "oof_cross_fitted")


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``; 0.0 for one value), rounded to 12 digits."""
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return round(mean, 12), round(sd, 12)


def verdict(gains: Sequence[float]) -> str:
    """``distinguishable`` when the mean gain is at least two sample sds from zero, else ``indistinguishable``;
    ``one seed`` when there is nothing to take an sd of."""
    if len(gains) < 2:
        return "one seed"
    mean, sd = mean_sd(gains)
    return "distinguishable" if abs(mean) >= 2 * sd and mean != 0 else "indistinguishable"


SHARED_STAGES = ("demo", "masks", "plan", "folds")  # they read no train.seed: every seed shares their outputs


def run_key(params_path: str, layout: Layout, models: Sequence[str]) -> str:
    """What a seed's rows depend on besides the seed: the params (``train.seed`` left out), the code the ablation
    runs (its import closure: training, inference, scoring), the model configs, and the md5s ``dvc.lock`` records
    for the outputs every seed shares (data, masks, plan, folds). A kept seed with the same key is not re-run."""
    raw = read_yaml(params_path) or {}
    raw.get("train", {}).pop("seed", None)
    lock_path = layout.dvc_lock
    lock = (read_yaml(lock_path) or {}).get("stages", {}) if lock_path.is_file() else {}
    shared = {st: [o.get("md5") for o in lock.get(st, {}).get("outs", [])] for st in SHARED_STAGES}
    configs = {m: hashlib.sha256(layout.model_config(m).read_bytes()).hexdigest() for m in models}
    text = json.dumps({"params": raw, "shared": shared, "configs": configs}, sort_keys=True, default=str)
    return hashlib.sha256((text + closure_digest("pipeline.ablation")).encode()).hexdigest()


def dvc_exp_run(seed: int, root: Path) -> None:
    """Reproduce the pipeline with ``train.seed=seed`` through DVC, in the workspace (its output streams through)."""
    cmd = ["dvc", "exp", "run", "-S", f"train.seed={seed}"]
    print(f"--- repeats: seed {seed}: {shlex.join(cmd)}", flush=True)
    done = subprocess.run(cmd, cwd=root, check=False)
    if done.returncode:
        raise UserError(
            f"`{shlex.join(cmd)}` failed (exit {done.returncode}) for seed {seed}; fix the error above and re-run: "
            "seeds already scored are kept (metrics/ablation/)"
        )


def seed_path(layout: Layout, seed: int) -> Path:
    return layout.ablation_seed(seed)


def run_repeats(
    params_path: str, layout: Layout, seeds: int, extra_models: Sequence[str] = (), first: int = 0
) -> dict[str, Any]:
    """Run and score seeds ``first`` .. ``first + seeds - 1`` (see the module docstring); return the aggregate.

    A seed whose rows are kept under the same :func:`run_key` is not reproduced again; the seed the workspace is at
    goes first (its run is usually the ``dvc repro`` just made, so DVC has nothing to re-run)."""
    from pipeline.ablation import run_ablation  # the ablation imports this module for its CLI

    if seeds < 1 or first < 0:
        raise UserError(f"--seeds {seeds} --first-seed {first}: give 1 or more seeds, from 0 or more")
    params = load_params(params_path)
    models = list(dict.fromkeys([*(params.infer.models or params.train.models), *extra_models]))
    wanted = list(range(first, first + seeds))
    order = sorted(wanted, key=lambda s: s != params.train.seed)
    per_seed: dict[int, list[dict[str, Any]]] = {}
    for seed in order:
        path, key = seed_path(layout, seed), run_key(params_path, layout, models)
        kept = read_json(path) if path.is_file() else {}
        if kept.get("run_key") == key and kept.get("extra_models") == list(extra_models):
            print(f"--- repeats: seed {seed}: rows kept from {path} (same params, code, configs and shared data)")
            per_seed[seed] = kept["rows"]
            continue
        dvc_exp_run(seed, layout.root)
        params = load_params(params_path)
        if params.train.seed != seed:
            raise UserError(f"{params_path}: train.seed is {params.train.seed} after the run of seed {seed}")
        rows = run_ablation(params, layout, extra_models)
        record = {"seed": seed, "run_key": run_key(params_path, layout, models), "extra_models": list(extra_models)}
        write_json(path, {**record, "fold_val": fold_scores(params, layout), "rows": rows})
        per_seed[seed] = rows
    return aggregate({s: per_seed[s] for s in wanted})


def fold_scores(params: Params, layout: Layout) -> dict[str, float]:
    """Every trained fold's own validation score (its ``metrics.json``), keyed ``r<round>/<model>/fold<k>``."""
    out = {}
    for round_ in range(1, 2 + params.pseudo.rounds):
        for model in params.train.models:
            for f in params.train.folds:
                path = layout.fold_files(model, f, round_).metrics
                if path.is_file():
                    m = read_json(path)
                    out[f"r{round_}/{model}/fold{f}"] = float(m.get("val_score", m.get("val_mIoU", float("nan"))))
    return out


def aggregate(per_seed: dict[int, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per row: each figure's per-seed values and mean ± sd, and the gain over the row above, paired by seed."""
    seeds = sorted(per_seed)
    keys = [r["row"] for r in per_seed[seeds[0]]]
    for s in seeds:
        if [r["row"] for r in per_seed[s]] != keys:
            raise UserError(f"seed {s} has rows {[r['row'] for r in per_seed[s]]}, seed {seeds[0]} has {keys}")
    rows = []
    for i, key in enumerate(keys):
        runs = [per_seed[s][i] for s in seeds]
        what = merged_label([r["what"] for r in runs])
        row: dict[str, Any] = {"row": key, "what": what, "metric": runs[0].get("metric")}
        for fig in FIGURES:
            values = [r.get(fig) for r in runs]
            if all(v is not None for v in values):
                m, sd = mean_sd(values)
                row[fig] = {"values": values, "mean": m, "sd": sd}
        if i:
            gains = [per_seed[s][i]["lb_mIoU"] - per_seed[s][i - 1]["lb_mIoU"] for s in seeds]
            m, sd = mean_sd(gains)
            row["gain"] = {"values": gains, "mean": m, "sd": sd, "verdict": verdict(gains)}
        row["tta"] = sorted({r["tta"] for r in runs})
        rows.append(row)
    return {"seeds": seeds, "rows": rows}


def merged_label(labels: Sequence[str]) -> str:
    """One label for a row whose parenthesis differs by seed (the best single fold is chosen per seed):
    ``best (fold 2, val 0.91), no TTA`` and ``best (fold 0, val 0.90), no TTA`` give
    ``best (per seed: fold 2, val 0.91; fold 0, val 0.90), no TTA``."""
    if len(set(labels)) == 1:
        return labels[0]
    parts = [re.match(r"^(.*?) \((.*?)\)(.*)$", lbl) for lbl in labels]
    if not all(parts) or len({(m[1], m[3]) for m in parts if m}) != 1:
        return " / ".join(labels)
    first = parts[0]
    assert first is not None
    return f"{first[1]} (per seed: {'; '.join(m[2] for m in parts if m)}){first[3]}"


def _pm(fig: dict[str, Any] | None) -> str:
    return "" if fig is None else f"{fig['mean']:.4f} ± {fig['sd']:.4f}"


def repeats_markdown(agg: dict[str, Any]) -> str:
    """The table: mean ± sd over the seeds, the paired gain and its verdict, the TTA sets the seeds chose."""
    n = len(agg["seeds"])
    lines = [
        f"Seeds {', '.join(map(str, agg['seeds']))} (train.seed; mean ± sample sd over {n}). A gain is the mean ± sd "
        "of the per-seed differences with the row above; smaller than two sd: indistinguishable.",
        "",
        "| step | local LB mIoU | gain | verdict | LB mBIoU | OOF mIoU | OOF cross-fitted | TTA chosen |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in agg["rows"]:
        g = r.get("gain")
        gain = "" if g is None else f"{g['mean']:+.4f} ± {g['sd']:.4f}"
        lines.append(
            f"| {r['what']} | {_pm(r.get('lb_mIoU'))} | {gain} | {'' if g is None else g['verdict']} "
            f"| {_pm(r.get('lb_mBIoU'))} | {_pm(r.get('oof_mIoU'))} | {_pm(r.get('oof_cross_fitted'))} "
            f"| {' / '.join(r['tta'])} |"
        )
    return "\n".join(lines) + "\n"
