"""The infer stage's memory at N and 4N images: out-of-fold (OOF) choices and test inference stay flat (issue 18).

For each size it makes a project in a temp folder through the real stage code (``bench/project.py``): the embedded
demo with N train and N test canvases (64x84), its masks (``build_masks``) and 2 folds (``build_folds``), and one
``cnn_default`` checkpoint per fold with random weights, in the format training writes (``config``, ``classes``,
``model``). Then, in a fresh
process, it calls :func:`pipeline.infer.run_ensemble`, the infer stage's library function, with TTA chosen on OOF
(``infer.tta: auto`` over hflip), a temperature fitted on OOF (``infer.calibrate``), cross-fitted scores, the
test pass, the submission and its validation. ``plan_ensemble`` predicts every OOF image again from the checkpoints;
the ``oof.npz`` files training would write are only checked to exist, so empty ones stand in for them.

The child resets the kernel's peak-RSS mark just before ``run_ensemble`` (after imports), so the peak is the stage's
own. It also reports the OOF probabilities that were spilled to disk (``pipeline.store``): what an in-RAM store
would have added to the peak. Flat memory: the 4N peak within 1.1x of the N peak.

    python bench/bench_oof.py [--images 400]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a plain script from anywhere

from project import FOLDS, MODEL, make_project, project_params  # noqa: E402  (bench/ is first on sys.path)
from rss import reset_peak_rss, rss_mib  # noqa: E402

from pipeline.paths import Layout  # noqa: E402


def child(root: Path) -> dict[str, Any]:
    """Run the infer stage's function on the project at ``root`` in this (fresh) process; report."""
    from pipeline.infer import run_ensemble
    from pipeline.store import spilled_bytes

    params, layout = project_params(root), Layout(root)
    torch.set_num_threads(2)
    reset_peak_rss()  # from here the peak is the stage's: imports no longer count
    before = rss_mib()
    t0 = time.perf_counter()
    report = run_ensemble(params, layout, write_leaderboard=False)
    return {
        "train": sum(1 for _ in layout.masks_dir.iterdir()),
        "test": report["test_images"],
        "seconds": time.perf_counter() - t0,
        "before_mib": before,
        "peak_mib": rss_mib("VmHWM"),
        "spilled_mib": spilled_bytes() / 2**20,
        "tta": report["per_model"][MODEL]["tta"],
        "oof_mIoU": report["oof_mIoU"],
    }


def run(n: int, tmp: Path) -> dict[str, Any]:
    root = tmp / f"n{n}"
    make_project(root, n)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(root)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"run with {n} images failed:\n{proc.stdout[-2000:]}{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=400, help="N: the runs have N and 4N train (and test) images")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child)))
        return
    with tempfile.TemporaryDirectory(dir=REPO) as tmp:  # on the project's disk, as the spill files are
        rows = [run(n, Path(tmp)) for n in (args.images, 4 * args.images)]
    print(
        f"infer stage (run_ensemble): {MODEL} x {len(FOLDS)} folds (random weights), TTA auto over hflip, "
        "calibrate, 64x84 demo images; each run in a fresh process; RSS in MiB"
    )
    print(f"{'train':>6}{'test':>6}{'seconds':>9}{'before':>8}{'peak':>8}{'peak-before':>13}{'OOF spilled':>13}")
    for r in rows:
        print(
            f"{r['train']:>6}{r['test']:>6}{r['seconds']:>9.1f}{r['before_mib']:>8.0f}{r['peak_mib']:>8.0f}"
            f"{r['peak_mib'] - r['before_mib']:>13.0f}{r['spilled_mib']:>13.0f}"
        )
    one, four = rows
    ratio = four["peak_mib"] / one["peak_mib"]
    print(
        f"peak at 4x images / peak at 1x: {ratio:.3f} (flat: <= 1.1); spilled to disk at 4x: "
        f"{four['spilled_mib']:.0f} MiB, which an in-RAM store would have added to the peak"
    )


if __name__ == "__main__":
    main()
