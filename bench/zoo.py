"""The zoo table: today's fixed default against the planned default on every zoo competition, at the same budget.

For each competition of :mod:`pipeline.data.zoo` (generated into ``--work``, default sizes or ``--small``), the real
stages run through ``dvc repro infer`` in a fresh copy of this project whose ``params.yaml`` points ``data.root`` at
the competition (and ``infer.submission`` at its format). The pipeline never sees the test truth (``data.truth_dir``
points at nothing); the harness scores the written submission afterwards with the local leaderboard
(:func:`pipeline.leaderboard.score_submission`). Variants:

- ``fixed``: ``cnn_default`` as it is (its own 7 epochs; ``--small``: ``--small-epochs``, 1 by default);
- ``fixed@budget``: the same with ``train.epochs`` scaled so that it spends ``--budget-minutes`` as the plan's
  budget counts them (from what ``fixed`` measured: round 1's epoch cost, each stage's start-up and out-of-fold pass,
  the later rounds: :func:`epochs_at_budget`), when a budget is given;
- ``planned``: ``plan.enabled: true`` and ``plan.budget_minutes`` (the plan stage): ``--budget-minutes``, else 30, or
  1 with ``--small`` (a smoke run: at 30 a small competition trains ``plan.max_epochs``); on a branch whose
  params.yaml has no ``plan`` section this prints "plan: not available on this branch" and repeats nothing.

``--seeds 3`` runs every variant with training seeds 0, 1, 2 (``train.seed``; ``--first-seed`` moves the start) and
reports each score as mean ± sd, and planned - fixed@budget paired by seed with :func:`pipeline.repeats.verdict`.
``--variants planned`` runs only the planned default (to compare a plan change with fixed rows already recorded:
the fixed variants do not run the plan's code). ``--set infer.threshold=fit`` (repeatable) changes params.yaml in every
variant: an idea measured on the whole zoo with one command.

Prints a table and writes it to the head of ``bench/RESULTS.md`` (``--out``; its other ``## `` sections are kept):
competition, variant, local-leaderboard mIoU, mBIoU, minimum class IoU, budget minutes (the plan stage and every
training stage of every fold and round, each from its process's start: what ``plan.budget_minutes`` bounds; the
plan's prediction beside them), and the plan's choices.

    python bench/zoo.py [--competitions objects,silhouette] [--small] [--budget-minutes 30] [--folds 5] [--set K=V]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.config import from_dict  # noqa: E402
from pipeline.data.zoo.registry import ZOO, Competition  # noqa: E402
from pipeline.leaderboard import score_submission  # noqa: E402
from pipeline.paths import Layout  # noqa: E402
from pipeline.plan.summary import plan_summary  # noqa: E402
from pipeline.repeats import mean_sd, verdict  # noqa: E402
from pipeline.submission.format import SubmissionFormat  # noqa: E402

NO_PLAN = "plan: not available on this branch"


def repo_files() -> list[str]:
    """Tracked and untracked-but-not-ignored files, without tests/ (what a fresh clone would hold)."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    return sorted({f for f in out if f and not f.startswith(("tests/", "bench/zoo_work/")) and (REPO / f).is_file()})


def copy_project(dest: Path) -> Path:
    """A fresh copy of the project (no dvc.lock, no outputs) in ``dest``, as a git repository for DVC."""
    shutil.rmtree(dest, ignore_errors=True)
    for f in repo_files():
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, dest / f)
    (dest / "dvc.lock").unlink(missing_ok=True)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    return dest


def has_plan(params: dict[str, Any]) -> bool:
    return isinstance(params.get("plan"), dict) and "enabled" in params["plan"]


SMALL_BUDGET_MINUTES = 1.0  # the planned default's budget in --small mode without --budget-minutes (a smoke run)


def set_params(root: Path, comp: Path, spec: Competition, small: bool, folds: int, **changes: Any) -> dict[str, Any]:
    """Point the copy's params.yaml at the competition; ``changes`` are dotted keys (``train.epochs=12``)."""
    path = root / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params["data"]["root"] = str(comp)
    # the pipeline never sees the zoo's test truth: an empty folder of its own (the infer stage's dep must exist)
    (root / "no_truth").mkdir(exist_ok=True)
    (root / "no_truth" / "README").write_text("no truth: the bench scores the submission itself\n")
    params["data"]["truth_dir"] = str(root / "no_truth")
    params["infer"]["submission"] = dict(spec.submission)
    params["masks"].update(spec.masks)  # the competition's own (attributes: multilabel); --set can still change them
    params["train"]["folds"] = list(range(folds))
    if small:
        params["pseudo"]["rounds"] = 0
        params["infer"]["tta_select_images"] = min(params["infer"]["tta_select_images"], 64)
    for key, value in changes.items():
        section, name = key.split(".")
        params.setdefault(section, {})[name] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return params


def run_variant(
    root: Path, comp: Path, truth: Path, spec: Competition, small: bool, folds: int, timeout: float, **changes: Any
) -> dict[str, Any]:
    """Run ``dvc repro infer`` in ``root`` with ``changes``; score the submission. A failed run is a row too."""
    copy_project(root)
    set_params(root, comp, spec, small, folds, **changes)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    env.pop("PYTHONPATH", None)  # the copy's own pipeline/ is the one imported
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    t0 = time.time()
    try:
        proc = subprocess.run(
            ["dvc", "repro", "infer"], cwd=root, env=env, capture_output=True, text=True, timeout=timeout
        )
        log = proc.stdout + proc.stderr
        failed = None if proc.returncode == 0 else _last_error(log)
    except subprocess.TimeoutExpired as e:
        log = str(e.stdout or "") + str(e.stderr or "")
        failed = f"timed out after {timeout / 60:.0f} min"
    (root / "bench_zoo.log").write_text(log, encoding="utf-8")
    row: dict[str, Any] = {
        "wall_minutes": (time.time() - t0) / 60,
        "train_minutes": train_minutes(root),
        "budget_minutes": budget_minutes(root),
        "predicted_minutes": predicted_minutes(root),
    }
    row["plan"] = plan_choices(root)
    if failed:
        return {**row, "error": failed}
    fmt = from_dict(SubmissionFormat, spec.submission, f"zoo {spec.name}: submission")
    scores = score_submission(root / "submissions" / "submission.csv", truth, comp / "test.json", fmt)
    ious = [v["IoU"] for k, v in scores["per_class"].items() if k != "background" and not math.isnan(v["IoU"])]
    return {**row, "mIoU": scores["mIoU"], "mBIoU": scores["mBIoU"], "min_IoU": min(ious) if ious else float("nan")}


def _last_error(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    hits = [ln for ln in lines if ln.startswith(("error", "ERROR", "Error")) or "Error:" in ln]
    return (hits[0] if hits else lines[-1] if lines else "failed")[:160]


def fold_metrics(root: Path) -> list[tuple[int, dict[str, Any]]]:
    """(round, metrics.json) of every trained fold of every model config."""
    return [
        (int(p.relative_to(root / "work").parts[0].removeprefix("r")), json.loads(p.read_text()))
        for p in sorted(root.glob("work/r*/models/*/*/metrics.json"))
    ]


def train_minutes(root: Path) -> float:
    """The epochs' training time (training, validation, checkpoints) of every fold and round (0 when none)."""
    return sum(m.get("train_seconds", 0.0) for _, m in fold_metrics(root)) / 60


def read_plan(root: Path) -> dict[str, Any] | None:
    """The copy's work/plan.yaml (``{}`` when empty), ``None`` when the plan stage did not run."""
    path = Layout(root).plan_yaml
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else None


def budget_minutes(root: Path) -> float | None:
    """What the budget counts: the plan stage's whole time (when it planned) and every training stage's whole time,
    imports and the out-of-fold pass included (``stage_seconds``, :mod:`pipeline.clock`); ``None`` when a training
    stage did not record it (a branch without it)."""
    runs = fold_metrics(root)
    if not runs or any("stage_seconds" not in m for _, m in runs):
        return None
    plan = read_plan(root) or {}
    plan_seconds = (plan.get("budget") or {}).get("plan_seconds", 0.0) if plan.get("enabled") else 0.0
    return (plan_seconds + sum(m["stage_seconds"] for _, m in runs)) / 60


def predicted_minutes(root: Path) -> float | None:
    """The plan's prediction of :func:`budget_minutes` (work/plan.yaml), ``None`` without a plan."""
    plan = read_plan(root) or {}
    return (plan.get("budget") or {}).get("predicted_minutes") if plan.get("enabled") else None


def epochs_at_budget(root: Path, minutes: float) -> int:
    """Round-1 epochs (``train.epochs``) with which the run in ``root`` would have spent ``minutes`` as the budget
    counts it: its stages' overheads (start-up, imports, the out-of-fold pass: ``stage_seconds - train_seconds``) and
    the later rounds (their own ``pseudo.epochs``) as measured, round 1's epochs at their measured cost. Without
    ``stage_seconds`` the overheads count 0 (the epochs' time alone fills the budget). At least 1."""
    runs = fold_metrics(root)
    first = [m for r, m in runs if r == 1]
    epochs = sum(m["epochs"] for m in first)
    if not epochs:
        return 1
    per_epoch = sum(m["train_seconds"] for m in first) / epochs  # one epoch of one fold
    overhead = sum(m.get("stage_seconds", m["train_seconds"]) - m["train_seconds"] for _, m in runs)
    later = sum(m["train_seconds"] for r, m in runs if r > 1)
    return max(1, int((minutes * 60 - overhead - later) / (per_epoch * len(first))))


def epochs_trained(root: Path) -> int:
    return sum(m.get("epochs", 0) for _, m in fold_metrics(root))


def first_round_epochs(root: Path) -> int:
    """Round 1's epochs of one fold (the largest: every fold trains ``train.epochs``)."""
    return max((m.get("epochs", 0) for r, m in fold_metrics(root) if r == 1), default=0)


def plan_choices(root: Path) -> str:
    """The plan's key choices on one line (:func:`pipeline.plan.summary.plan_summary`); '' when it did not run."""
    plan = read_plan(root)
    return "" if plan is None else plan_summary(plan)


def bench_competition(spec: Competition, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Generate one competition and run its variants once per training seed; return the table rows (with several
    seeds, one row per variant as mean ± sd, :func:`aggregate`)."""
    work = Path(args.work).resolve() / spec.name
    comp, truth = work / "competition", work / "truth"
    n_train, n_test = spec.small if args.small else (spec.n_train, spec.n_test)
    if not (comp / "test.json").is_file() or not (truth / "competition.json").is_file() or args.regenerate:
        print(f"[{spec.name}] generating {n_train} train / {n_test} test images", flush=True)
        spec.generate(comp, truth, n_train=n_train, n_test=n_test, seed=args.seed)
    if args.seeds == 1:
        return seed_rows(spec, args, work, "", {})
    per_seed = [
        seed_rows(spec, args, work, f"-s{seed}", {"train.seed": seed})
        for seed in range(args.first_seed, args.first_seed + args.seeds)
    ]
    return aggregate(spec.name, per_seed)


def seed_rows(
    spec: Competition, args: argparse.Namespace, work: Path, suffix: str, seed: dict[str, Any]
) -> list[dict[str, Any]]:
    """The variants with one training seed (``seed``: ``{}`` or ``{"train.seed": s}``), each in
    ``work/<variant><suffix>``."""
    comp, truth, at = work / "competition", work / "truth", f" (seed {seed['train.seed']})" if seed else ""
    common = {"spec": spec, "small": args.small, "folds": args.folds, "timeout": args.timeout_minutes * 60}
    rows = []
    extra: dict[str, Any] = {**args.set, **seed, "plan.enabled": False}  # today's fixed default: cnn_default as it is
    if args.small:
        extra["train.epochs"] = args.small_epochs
    fixed: dict[str, Any] = {"error": "not run"}
    if "fixed" in args.variants:
        print(f"[{spec.name}] fixed default{at}", flush=True)
        fixed = run_variant(work / f"fixed{suffix}", comp, truth, **common, **extra)
        rows.append({"competition": spec.name, "variant": "fixed", **fixed})
    if args.budget_minutes and "error" not in fixed and epochs_trained(work / f"fixed{suffix}"):
        epochs = epochs_at_budget(work / f"fixed{suffix}", args.budget_minutes)
        if epochs == first_round_epochs(work / f"fixed{suffix}"):  # the budget buys what `fixed` trained
            print(f"[{spec.name}] fixed default at the budget: {epochs} epochs, as run{at}", flush=True)
            scaled = fixed
        else:
            print(f"[{spec.name}] fixed default at the budget: {epochs} epochs{at}", flush=True)
            changes = {**extra, "train.epochs": epochs}
            scaled = run_variant(work / f"fixed_budget{suffix}", comp, truth, **common, **changes)
        rows.append({"competition": spec.name, "variant": "fixed@budget", "epochs": epochs, **scaled})
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    if "planned" not in args.variants:
        return rows
    if not has_plan(base):
        print(f"[{spec.name}] {NO_PLAN}", flush=True)
        rows.append({"competition": spec.name, "variant": "planned", "error": NO_PLAN})
    else:
        print(f"[{spec.name}] planned default{at}", flush=True)
        budget = args.budget_minutes or (SMALL_BUDGET_MINUTES if args.small else 30.0)
        plan = {**args.set, **seed, "plan.enabled": True, "plan.budget_minutes": float(budget)}
        planned = run_variant(work / f"planned{suffix}", comp, truth, **common, **plan)
        rows.append({"competition": spec.name, "variant": "planned", **planned})
    return rows


SCORES = ("mIoU", "mBIoU", "min_IoU")


def aggregate(competition: str, per_seed: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per variant over the seeds: each score as (mean, sd) (sample sd, :func:`pipeline.repeats.mean_sd`),
    minutes as their mean, the plan's choices of the first seed; a variant that failed on some seed is an error row.
    The planned row also holds ``gain``: planned minus fixed@budget, paired by seed, as (mean, sd) and the verdict of
    :func:`pipeline.repeats.verdict` (distinguishable when the mean is two sds from zero)."""
    rows = []
    by_variant: dict[str, list[dict[str, Any]]] = {}
    for seed_rows_ in per_seed:
        for r in seed_rows_:
            by_variant.setdefault(r["variant"], []).append(r)
    for variant, runs in by_variant.items():
        row: dict[str, Any] = {"competition": competition, "variant": variant, "seeds": len(runs)}
        failed = [r["error"] for r in runs if "mIoU" not in r]
        for key in ("train_minutes", "budget_minutes", "predicted_minutes"):
            values = [r.get(key) for r in runs]
            row[key] = None if any(v is None for v in values) else statistics.fmean(values)  # type: ignore[arg-type]
        row["plan"] = runs[0].get("plan", "")
        if "epochs" in runs[0]:
            row["epochs"] = [r["epochs"] for r in runs]
        if failed:
            rows.append({**row, "error": f"{len(failed)} of {len(runs)} seeds failed: {failed[0]}"})
            continue
        rows.append({**row, **{k: mean_sd([r[k] for r in runs]) for k in SCORES}})
    planned, fixed = by_variant.get("planned", []), by_variant.get("fixed@budget", [])
    if planned and len(planned) == len(fixed) and all("mIoU" in r for r in planned + fixed):
        gains = [p["mIoU"] - f["mIoU"] for p, f in zip(planned, fixed)]
        rows[[r["variant"] for r in rows].index("planned")]["gain"] = (*mean_sd(gains), verdict(gains))
    return rows


def minutes_cell(r: dict[str, Any]) -> str:
    """Budget minutes as counted (plan stage + training stages), the plan's prediction beside them; the epochs'
    time alone where a branch records no stage time."""
    if r.get("budget_minutes") is None:
        return "-" if r.get("train_minutes") is None else f"{r['train_minutes']:.1f} (epochs only)"
    pred = r.get("predicted_minutes")
    return f"{r['budget_minutes']:.1f}" + (f" (plan said {pred:.1f})" if pred is not None else "")


def variant_label(r: dict[str, Any]) -> str:
    """``fixed@budget (11 ep)``, over seeds ``fixed@budget (11-12 ep)``, ``planned (3 seeds)``."""
    label = r["variant"]
    if "epochs" in r:
        eps = r["epochs"] if isinstance(r["epochs"], list) else [r["epochs"]]
        label += f" ({min(eps)} ep)" if min(eps) == max(eps) else f" ({min(eps)}-{max(eps)} ep)"
    return label + (f" ({r['seeds']} seeds)" if r.get("seeds", 1) > 1 else "")


def score_cell(value: float | tuple[float, float]) -> str:
    """One run's score, or (mean, sd) over seeds as ``0.5123 ± 0.0101``."""
    return f"{value[0]:.4f} ± {value[1]:.4f}" if isinstance(value, tuple) else f"{value:.4f}"


def table(rows: list[dict[str, Any]]) -> str:
    head = "| competition | variant | LB mIoU | mBIoU | min class IoU | budget min | plan's choices |"
    lines = [head, "|---|---|---|---|---|---|---|"]
    for r in rows:
        name = f"| {r['competition']} | {variant_label(r)} |"
        if "error" in r and "mIoU" not in r:
            lines.append(f"{name} - | - | - | {minutes_cell(r)} | {r['error']} |")
            continue
        cells = " | ".join(score_cell(r[k]) for k in SCORES)
        lines.append(f"{name} {cells} | {minutes_cell(r)} | {r['plan'] or '-'} |")
    gains = [r for r in rows if "gain" in r]
    if gains:
        lines.append("")
        for r in gains:
            mean, sd, said = r["gain"]
            lines.append(
                f"- {r['competition']}: planned - fixed@budget LB mIoU {mean:+.4f} ± {sd:.4f} over {r['seeds']} "
                f"seeds (paired): {said}"
            )
    return "\n".join(lines)


def parse_set(ap: argparse.ArgumentParser, text: str) -> tuple[str, Any]:
    """``section.key=value`` -> (``section.key``, the YAML value); a malformed one is the parser's error."""
    key, sep, value = text.partition("=")
    if not sep or key.count(".") != 1 or not all(key.split(".")):
        ap.error(f"--set {text!r}: write SECTION.KEY=VALUE (e.g. infer.threshold=fit)")
    if key in ("plan.enabled", "plan.budget_minutes"):
        ap.error(f"--set {key}: the variants set it themselves (use --variants and --budget-minutes)")
    return key, yaml.safe_load(value)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--competitions", default=",".join(ZOO), help=f"comma-separated, from {', '.join(ZOO)}")
    ap.add_argument("--small", action="store_true", help="small competitions, no pseudo round, --small-epochs")
    ap.add_argument("--small-epochs", type=int, default=1, help="epochs of the fixed default in --small mode")
    ap.add_argument("--budget-minutes", type=float, default=None, help="training budget of every variant")
    ap.add_argument("--folds", type=int, default=5, help="folds to train (the first N of folds.k)")
    ap.add_argument("--seed", type=int, default=0, help="the competitions' generation seed")
    ap.add_argument("--seeds", type=int, default=1, help="training seeds per variant (train.seed): mean ± sd")
    ap.add_argument("--first-seed", type=int, default=0, help="the first training seed of --seeds")
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "segpipe_zoo"), help="competitions, copies")
    ap.add_argument("--regenerate", action="store_true", help="generate the competitions again")
    ap.add_argument("--timeout-minutes", type=float, default=120.0, help="per pipeline run")
    ap.add_argument("--out", default=str(REPO / "bench" / "RESULTS.md"))
    ap.add_argument(
        "--variants",
        default="fixed,planned",
        help="comma-separated, from fixed (with fixed@budget when --budget-minutes is given) and planned",
    )
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="a params.yaml change for every variant (a YAML value; repeatable), e.g. infer.threshold=fit",
    )
    args = ap.parse_args(argv)
    if args.seeds < 1:
        ap.error(f"--seeds: at least 1 (got {args.seeds})")
    args.set = dict(parse_set(ap, s) for s in args.set)
    if args.seeds > 1 and "train.seed" in args.set:
        ap.error("--set train.seed: --seeds sets it (use --first-seed)")
    args.variants = {v.strip() for v in args.variants.split(",") if v.strip()}
    if not args.variants or args.variants - {"fixed", "planned"}:
        ap.error(f"--variants: choose from fixed, planned (got {sorted(args.variants)})")
    names = [n.strip() for n in args.competitions.split(",") if n.strip()]
    unknown = [n for n in names if n not in ZOO]
    if unknown:
        ap.error(f"unknown competition(s) {', '.join(unknown)} (choose from {', '.join(ZOO)})")
    rows = [row for name in names for row in bench_competition(ZOO[name], args)]
    text = table(rows)
    print(text)
    mode = "small" if args.small else "default sizes"
    budget = f"{args.budget_minutes:g} min" if args.budget_minutes else "none (each variant's own epochs)"
    header = (
        f"# Zoo results\n\n`python bench/zoo.py {' '.join(argv if argv is not None else sys.argv[1:])}` "
        f"({mode}, {args.folds} fold(s), budget {budget}, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs).\n"
        "LB: the local leaderboard on the held-back test truth (the pipeline never saw it); min class IoU over the "
        "foreground classes in the test truth; budget min: what the budget counts, the plan stage and every training "
        "stage (all folds and rounds) from each process's start, imports included.\n\n"
    )
    write_zoo_section(Path(args.out), header + text + "\n")
    return 0


def write_zoo_section(path: Path, section: str) -> None:
    """Replace the zoo section (the file's head, up to its first ``## `` heading) and keep the other sections."""
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    cut = old.find("\n## ")
    rest = old[cut + 1 :] if cut >= 0 else ""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(section + ("\n" + rest if rest else ""), encoding="utf-8")
    tmp.replace(path)


if __name__ == "__main__":
    raise SystemExit(main())
