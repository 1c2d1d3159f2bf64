"""Folds in parallel, one per device, through DVC itself (issue 18 item 6).

``python -m pipeline.parallel_folds --devices 0,1`` reproduces the pipeline as ``dvc repro`` would, except that the
items of each training stage (``train@<model>-<fold>``, then ``train_r2@...``, ``train_r3@...``) run side by side, one
worker per device. DVC cannot schedule stages concurrently (treeverse/dvc#755); its documented way is to launch
``dvc repro`` several times by hand, its read/write locks keeping two runs off the same outputs
(https://dvc.org/doc/command-reference/repro#parallel-stage-execution). This module does exactly that and no more:

1. before each training stage, ``dvc repro <its direct dependencies>`` (folds and the plan; then pseudo, ...), one
   process, so no two workers race for an upstream stage;
2. worker ``d`` runs ``dvc --wait-for-lock repro --single-item <item>`` for its share of the items (item ``i`` goes to
   worker ``i % N``, in ``dvc.yaml``'s order), with ``CUDA_VISIBLE_DEVICES`` set to its device (``cpu``: none), so
   every stage sees one device as ``cuda:0`` and nothing in the stage code changes;
3. a last ``dvc repro`` runs what is left (inference, the report) and writes nothing twice: every trained item is
   already in ``dvc.lock``, as after a plain ``dvc repro``.

A worker's output goes to ``work/parallel/<stage>.<worker>.log``, each item between ``start <item> <unix s>`` and
``end <item> <unix s>`` lines; the first failure stops the run after its
round, names the item and the log, and leaves every checkpoint in place (a rerun resumes). nnU-Net's advice is the
reason for the shape: independent folds on separate GPUs scale better than one fold over several. One large model's
fold can instead use every GPU with DistributedDataParallel: ``torchrun --nproc_per_node N -m stages.train ...``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline.errors import UserError, run_cli
from pipeline.paths import Layout

TRAIN_CMD = "python -m stages.train"  # the command of every training stage in dvc.yaml


@dataclasses.dataclass(frozen=True)
class Group:
    """One training stage of ``dvc.yaml``: its expanded items and the stages they depend on directly."""

    name: str  # e.g. train, train_r2
    items: tuple[str, ...]  # e.g. train@cnn_default-0, in dvc.yaml's order
    upstream: tuple[str, ...]  # stages (not in the group) an item depends on directly


def parse_devices(spec: str) -> list[str]:
    """``0,1`` (CUDA indices) or ``cpu,cpu`` (CPU processes) -> the workers' ``CUDA_VISIBLE_DEVICES`` values."""
    devices = [d.strip() for d in spec.split(",") if d.strip()]
    bad = [d for d in devices if d != "cpu" and not d.isdigit()]
    if not devices or bad:
        raise UserError(f"--devices {spec!r}: give CUDA indices or cpu, comma-separated (e.g. 0,1 or cpu,cpu)")
    return ["" if d == "cpu" else d for d in devices]


def training_groups(root: Path) -> list[Group]:
    """The training stages of the DVC project at ``root``, in the order they run, from DVC's own graph."""
    import networkx as nx
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        repo = Repo(str(root))
    except DvcException as e:
        raise UserError(f"{root}: not a DVC project ({e}); run this from the repository (or pass --root)") from None
    with repo:
        graph = repo.index.graph  # an edge runs from a stage to a stage it depends on
        stages = list(repo.index.stages)
        train = [s for s in stages if (s.cmd or "").startswith(TRAIN_CMD)]
        groups: dict[str, list] = {}
        for s in train:
            groups.setdefault(s.name.split("@")[0], []).append(s)
        ordered = sorted(groups.values(), key=lambda g: len(nx.descendants(graph, g[0])))
        out = []
        for members in ordered:
            names = {s.name for s in members}
            up = {d.name for s in members for d in graph.successors(s) if d.name not in names}
            out.append(Group(members[0].name.split("@")[0], tuple(s.name for s in members), tuple(sorted(up))))
        return out


def dvc(root: Path, *args: str) -> int:
    """Run ``dvc --wait-for-lock <args>`` in ``root``, its output to this terminal; its exit status."""
    return subprocess.run([sys.executable, "-m", "dvc", "--wait-for-lock", *args], cwd=root, check=False).returncode


def run_group(root: Path, group: Group, devices: Sequence[str], layout: Layout) -> None:
    """Every item of ``group``, worker ``d`` on ``devices[d]``; raises UserError naming the first failed item."""
    if group.upstream and dvc(root, "repro", *group.upstream) != 0:
        raise UserError(f"dvc repro {' '.join(group.upstream)} failed (above); fix it, then run this again")
    procs = []
    for w, device in enumerate(devices):
        share = group.items[w :: len(devices)]
        if not share:
            continue
        log = layout.parallel_log(group.name, w)
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("")
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": device}
        # one shell per worker: its items one after another, stopping at the first failure; each between two lines
        # "start|end <item> <unix seconds>" in the log
        q, py = shlex.quote(str(log)), shlex.quote(sys.executable)
        script = " && ".join(
            f"echo start {shlex.quote(item)} $(date +%s.%N) >> {q} && "
            f"{py} -m dvc --wait-for-lock repro --single-item {shlex.quote(item)} >> {q} 2>&1 && "
            f"echo end {shlex.quote(item)} $(date +%s.%N) >> {q}"
            for item in share
        )
        print(f"{group.name}: worker {w} ({'cpu' if not device else f'cuda {device}'}): {', '.join(share)} -> {log}")
        procs.append((w, share, log, subprocess.Popen(["bash", "-c", script], cwd=root, env=env)))
    failed = [(w, share, log) for w, share, log, p in procs if p.wait() != 0]
    if failed:
        w, share, log = failed[0]
        raise UserError(
            f"{group.name}: worker {w} failed on one of {', '.join(share)}; see {log} (checkpoints are kept: run this "
            "again to resume)"
        )


def run_parallel(root: Path, devices: Sequence[str]) -> None:
    """The whole pipeline at ``root`` with each training stage's items spread over ``devices``."""
    layout = Layout(root)
    groups = training_groups(root)
    if not groups:
        raise UserError(f"{layout.dvc_yaml}: no stage runs {TRAIN_CMD!r}; nothing to spread over devices")
    for group in groups:
        run_group(root, group, devices, layout)
    if dvc(root, "repro") != 0:
        raise UserError("the last dvc repro failed (above)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.parallel_folds", description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--devices",
        default=None,
        help="one worker per entry: CUDA indices (0,1,...) or cpu (cpu,cpu: two CPU processes); default: every GPU",
    )
    ap.add_argument("--root", type=Path, default=Layout().root, help="the DVC project (default: here)")
    args = ap.parse_args(argv)
    spec = args.devices
    if spec is None:
        import torch

        n = torch.cuda.device_count()
        if n == 0:
            raise UserError("no GPU here: pass --devices cpu,cpu for CPU processes (each with train.threads threads)")
        spec = ",".join(str(i) for i in range(n))
    run_parallel(args.root.resolve(), parse_devices(spec))
    return 0


if __name__ == "__main__":
    run_cli(main)
