"""Kill anywhere, lose nothing (issue 19): SIGKILL of the train, pseudo and infer stages, then a re-run to the end.

Each stage runs as ``python -m stages.<name>`` in its own copy of the tiny project, under a hook that only watches:
it logs every file the stage opens for writing under the project, and can hold the stage (asleep) right after it
opened the k-th one, so the parent kills it with a file just opened (a checkpoint's temp file, a PNG of a pseudo set
still being filled, the submission). Kills come at write-opens drawn at random from an uninterrupted run's count, and
once at a random moment after the first write. After every kill each visible file must load (nothing half-written)
and a pseudo-label set is there whole or not at all; after the re-run the outputs equal the uninterrupted run's
(training on one CPU thread in fp32 is deterministic: metrics, curves, OOF and weights are compared as numbers;
pseudo-labels and the submission byte for byte) and no killed run's temp file is left.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from helpers import kill_9, started
from PIL import Image

from pipeline.io import load_torch, read_json

if TYPE_CHECKING:
    from e2e.conftest import Project

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SIGKILL")]

# Runs a stage with builtins.open / io.open watched: each write-open of a file under the project is logged as
# "<seconds> <path>"; the ``nth`` one whose path contains ``part`` (argv[1] is "part|nth"; nth 0: none) is logged as
# "HELD <path>" and the stage then sleeps until killed. The hook changes no value and no file.
WATCHED = r"""
import builtins, io, os, runpy, sys, time
(part, nth), log, module = sys.argv[1].rsplit("|", 1), sys.argv[2], sys.argv[3]
root, count, real_open, t0 = os.getcwd() + os.sep, [0], builtins.open, time.monotonic()
def watched(file, mode="r", *args, **kwargs):
    f = real_open(file, mode, *args, **kwargs)
    if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+"):
        path = os.path.abspath(file)
        if path.startswith(root):
            count[0] += part in path
            with real_open(log, "a") as out:
                out.write(f"{time.monotonic() - t0:.3f} {path}\n")
            if part in path and count[0] == int(nth):
                with real_open(log, "a") as out:
                    out.write(f"HELD {path}\n")
                time.sleep(600)
    return f
builtins.open = io.open = watched
sys.argv = [module, *sys.argv[4:]]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""

INPUTS = ("params.yaml", "configs", "work/masks", "work/classes.json", "work/folds.csv", "work/train_index.csv")
OUTPUT_DIRS = ("work", "metrics", "submissions", "reports")


def copy_project(p: Project, dest: Path, models: bool) -> Path:
    """The tiny project's inputs (and its trained round-1 fold models) in ``dest``; data paths stay absolute."""
    for rel in (*INPUTS, "work/mask_summary.json", *([f"work/r1/models/{p.model}"] if models else [])):
        src, dst = p.root / rel, dest / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".*"))
        else:
            shutil.copy2(src, dst)
    return dest


class Run:
    def __init__(self, proc: subprocess.Popen[bytes], log: Path, how: str, seconds: float) -> None:
        self.proc, self.log, self.how, self.seconds = proc, log, how, seconds

    def writes(self) -> list[tuple[float, str]]:
        rows = [ln.split(" ", 1) for ln in self.log.read_text().splitlines() if not ln.startswith("HELD")]
        return [(float(t), path) for t, path in rows]


def run_stage(
    p: Project,
    cwd: Path,
    args: Sequence[str],
    log: Path,
    hold: tuple[str, int] = ("", 0),
    kill_after: float | None = None,
) -> Run:
    """Run ``python -m <args>`` in ``cwd`` under the watch; kill it when held at the ``hold[1]``-th write-open of a
    path containing ``hold[0]``, or ``kill_after`` seconds after its start. ``how`` is "finished", "held" or
    "timed"."""
    log.write_text("")
    err = log.with_suffix(".err")
    t0 = time.monotonic()
    argv = [sys.executable, "-c", WATCHED, f"{hold[0]}|{hold[1]}", str(log), *args]
    with open(err, "wb") as stderr, started(argv, cwd, p.env(), stdout=subprocess.DEVNULL, stderr=stderr) as proc:
        while proc.poll() is None:
            if "HELD " in log.read_text():
                how = "held"
                break
            if kill_after is not None and time.monotonic() - t0 >= kill_after:
                how = "timed"
                break
            assert time.monotonic() - t0 < 300, f"{args} ran for 5 minutes"
            time.sleep(0.005)
        else:
            assert proc.returncode == 0, err.read_text()
            return Run(proc, log, "finished", time.monotonic() - t0)
        assert kill_9(proc) == -signal.SIGKILL
    return Run(proc, log, how, time.monotonic() - t0)


def visible_files(cwd: Path) -> list[Path]:
    out = []
    for d in OUTPUT_DIRS:
        for path in sorted((cwd / d).rglob("*")):
            rel = path.relative_to(cwd)
            if path.is_file() and not any(part.startswith(".") for part in rel.parts):
                out.append(path)
    return out


def hidden_leftovers(cwd: Path) -> list[str]:
    return sorted(str(path.relative_to(cwd)) for d in OUTPUT_DIRS for path in (cwd / d).rglob(".*"))


def check_loads(path: Path) -> None:
    """Raise unless ``path`` is a whole file of its kind."""
    kind = path.suffix
    if kind == ".pt":
        load_torch(path)  # a truncated or empty checkpoint is a UserError
    elif kind == ".json":
        read_json(path)
    elif kind == ".csv":
        pd.read_csv(path)  # an empty file raises; a header alone is a whole (empty) table
    elif kind == ".png":
        with Image.open(path) as im:
            im.load()
    elif kind == ".npz":
        with np.load(path) as z:
            for k in z.files:
                z[k]
    elif kind == ".yaml":
        assert yaml.safe_load(path.read_text()) is not None, path
    else:
        assert path.stat().st_size > 0, f"{path} is empty"


def check_nothing_half_written(cwd: Path) -> None:
    for path in visible_files(cwd):
        try:
            check_loads(path)
        except Exception as e:  # noqa: BLE001 - any failure to load is the finding
            pytest.fail(f"{path.relative_to(cwd)} is half-written after a kill: {type(e).__name__}: {e}")
    for index in sorted((cwd / "work").glob("r1/pseudo/*/index.csv")):  # a set is whole or absent
        d = index.parent
        assert (d / "summary.json").is_file(), f"{d} has an index but no summary"
        for mask in pd.read_csv(index)["mask"]:
            assert (d / mask).is_file(), f"{d}: index lists {mask}, which is missing"


def kill_then_finish(
    p: Project, ref: Path, run: Path, args: Sequence[str], tmp: Path, plan: Callable[[list[tuple[float, str]]], list]
) -> list[str]:
    """The uninterrupted run in ``ref``; in ``run``: the kills that ``plan`` draws from the reference's writes (each
    ``{"hold": (part, nth)}`` or ``{"kill_after": seconds}``), each followed by the checks, then a run to the end.
    Returns how each killed run ended ("held", "timed", or "finished" when the kill point never came)."""
    reference = run_stage(p, ref, args, tmp / "ref.log")
    hows = []
    for i, kill in enumerate(plan(reference.writes())):
        r = run_stage(p, run, args, tmp / f"kill{i}.log", **kill)
        hows.append(r.how)
        check_nothing_half_written(run)
    run_stage(p, run, args, tmp / "final.log")
    check_nothing_half_written(run)
    assert hidden_leftovers(run) == [], "a killed run's temp files outlived the re-run"
    assert hidden_leftovers(ref) == []
    return hows


def first(writes: list[tuple[float, str]], part: str, after: float = -1.0) -> float:
    """Seconds (from the run's start) of the first write-open of a path containing ``part`` after ``after``."""
    return next(t for t, path in writes if part in path and t > after)


def file_bytes(root: Path, pattern: str) -> dict[str, bytes]:
    return {str(f.relative_to(root)): f.read_bytes() for f in sorted(root.glob(pattern)) if f.is_file()}


def without(d: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k not in keys}


def test_train_killed_anywhere_resumes_to_the_uninterrupted_result(project: Project, tmp_path: Path) -> None:
    p = project
    ref, run = (copy_project(p, tmp_path / n, models=False) for n in ("ref", "run"))
    args = ["stages.train", "--model", p.model, "--fold", "0", "--round", "1"]
    rng = np.random.default_rng(3)

    def plan(writes: list[tuple[float, str]]) -> list[dict[str, Any]]:
        epoch1 = first(writes, "/.last.pt.")  # epoch 1's checkpoint is being written
        epoch2 = first(writes, "/metrics/curves/", after=epoch1)  # epoch 2's row: its training is done
        return [
            {"hold": (str(rng.choice(["/.best.pt.", "/.last.pt."])), 1)},  # inside epoch 1's checkpoint writes
            {"kill_after": float(rng.uniform(epoch1, epoch2))},  # a fresh run, killed training epoch 2
            {"hold": ("/.last.pt.", 1)},  # the resumed run, inside epoch 2's checkpoint write
            {"hold": (str(rng.choice([".oof.npz.", ".per_class.", ".confusion.", ".examples.", ".metrics."])), 1)},
        ]

    hows = kill_then_finish(p, ref, run, args, tmp_path, plan)
    assert hows.count("held") >= 2, hows

    a, b = (d / "work/r1/models" / p.model / "fold0" for d in (ref, run))
    ma, mb = read_json(a / "metrics.json"), read_json(b / "metrics.json")
    assert without(mb, "train_seconds", "stage_seconds") == without(ma, "train_seconds", "stage_seconds")  # timings
    ca, cb = (pd.read_csv(d / f"metrics/curves/r1/{p.model}-fold0.csv") for d in (ref, run))
    timing = ["seconds", "train_img_s"]
    pd.testing.assert_frame_equal(cb.drop(columns=timing), ca.drop(columns=timing), check_exact=True)
    for name in ("best.pt", "last.pt"):
        ka, kb = (torch.load(d / name, weights_only=True) for d in (a, b))
        assert kb["epoch"] == ka["epoch"] and kb["step"] == ka["step"] and kb["best_epoch"] == ka["best_epoch"]
        for part in ("model", "ema"):
            assert kb[part].keys() == ka[part].keys()
            for k in ka[part]:
                assert torch.equal(kb[part][k], ka[part][k]), f"{name} {part}.{k} differs after the kills"
    with np.load(a / "oof.npz") as za, np.load(b / "oof.npz") as zb:
        assert za.files == zb.files and all(np.array_equal(za[k], zb[k]) for k in za.files)
    assert sorted(f.name for f in b.iterdir()) == sorted(f.name for f in a.iterdir())


def test_pseudo_killed_anywhere_reruns_to_the_same_labels(trained: Project, tmp_path: Path) -> None:
    p = trained
    ref, run = (copy_project(p, tmp_path / n, models=True) for n in ("ref", "run"))
    rng = np.random.default_rng(5)

    def plan(writes: list[tuple[float, str]]) -> list[dict[str, Any]]:
        return [
            {"hold": ("/pseudo/.fold0.", int(rng.integers(1, 15)))},  # set 0 half filled (12 PNGs, index, summary)
            {"kill_after": float(rng.uniform(0.5, 1.0)) * writes[-1][0]},  # loading, predicting or writing
            {"hold": ("/pseudo/.fold1.", int(rng.integers(1, 15)))},  # set 0 swapped in, set 1 half filled
            {"hold": ("/metrics/.pseudo_r1.json.", 1)},  # both sets in place, the stage's metrics not yet
        ]

    hows = kill_then_finish(p, ref, run, ["stages.pseudo", "--round", "1"], tmp_path, plan)
    assert hows.count("held") == 3, hows

    assert file_bytes(run, "work/r1/pseudo/**/*") == file_bytes(ref, "work/r1/pseudo/**/*")  # PNGs, index, summary
    assert len(file_bytes(ref, "work/r1/pseudo/*/*.png")) == 2 * 12  # two leak-free sets of the 12 test images
    sa, sb = (read_json(d / "metrics/pseudo_r1.json") for d in (ref, run))
    assert without(sb, "seconds") == without(sa, "seconds")


def test_infer_killed_anywhere_reruns_to_the_same_submission(trained: Project, tmp_path: Path) -> None:
    p = trained
    ref, run = (copy_project(p, tmp_path / n, models=True) for n in ("ref", "run"))
    rng = np.random.default_rng(7)

    def plan(writes: list[tuple[float, str]]) -> list[dict[str, Any]]:
        return [
            {"hold": ("/reports/overlays/.", int(rng.integers(1, 3)))},  # predicting, overlays being written
            {"kill_after": float(rng.uniform(0.5, 1.0)) * writes[-1][0]},  # choosing TTA on OOF, predicting, writing
            {"hold": ("/submissions/.submission.csv.", 1)},  # the validated submission being written
            {"hold": (str(rng.choice(["/.leaderboard.json.", "/.ledger.csv.", "/.infer.json."])), 1)},
        ]

    hows = kill_then_finish(p, ref, run, ["stages.infer"], tmp_path, plan)
    assert hows.count("held") == 3, hows

    assert (run / "submissions/submission.csv").read_bytes() == (ref / "submissions/submission.csv").read_bytes()
    assert file_bytes(run, "reports/overlays/*") == file_bytes(ref, "reports/overlays/*")
    assert read_json(run / "metrics/leaderboard.json") == read_json(ref / "metrics/leaderboard.json")
    ia, ib = (read_json(d / "metrics/infer.json") for d in (ref, run))
    assert without(ib, "seconds") == without(ia, "seconds")
    # the ledger: whole rows only, and one of them: a kill after its append (and before infer.json) leaves the row,
    # which the re-run's row (the same submission, the same sha256) replaces
    la, lb = (pd.read_csv(d / "submissions/ledger.csv", dtype=str, keep_default_na=False) for d in (ref, run))
    assert len(la) == 1 and len(lb) == 1 and list(lb.columns) == list(la.columns)
    assert without(lb.iloc[0].to_dict(), "time") == without(la.iloc[0].to_dict(), "time")
