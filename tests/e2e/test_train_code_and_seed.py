"""A finished run retrains when its training code changed and resumes when it did not; ``train.seed`` repeats a run
with another seed (same seed: identical out-of-fold predictions; another: other weights). Real training, tiny data."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import torch
import yaml
from helpers import REPO

from pipeline.train import train_fold

if TYPE_CHECKING:
    from e2e.conftest import Project  # tests/ is on sys.path (tests/conftest.py); annotations only

pytestmark = pytest.mark.slow


def train(p: Project, name: str, code_root: Path = REPO, **train_params: Any) -> str:
    """One epoch of fold 0; returns what training printed."""
    params = dataclasses.replace(p.params.train, epochs=1, **train_params)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        train_fold(p.cfg, name, 0, p.layout, p.data, params, progress=False, code_root=code_root)
    return out.getvalue()


def test_changed_training_code_retrains_a_finished_run_and_unchanged_code_resumes(
    project: Project, tmp_path: Path
) -> None:
    p, name = project, "tiny_code"
    code = tmp_path / "code"  # a copy of the project's code, edited below (the checkout itself is never touched)
    for package in ("pipeline", "stages"):
        shutil.copytree(REPO / package, code / package, ignore=shutil.ignore_patterns("__pycache__"))
    last = p.layout.checkpoint(name, 0, which="last")

    first = train(p, name, code)
    assert "resuming" not in first and "epoch 1/1" in first
    stamp = last.stat().st_mtime_ns
    # the same code at another path (the checkout): the finished run is resumed, nothing is trained
    again = train(p, name, REPO)
    assert "resuming tiny_code fold 0 round 1 after epoch 1" in again and "epoch 1/1:" not in again
    assert last.stat().st_mtime_ns == stamp

    # a module outside the training closure changes: still resumed
    rle = code / "pipeline" / "rle.py"
    rle.write_text(rle.read_text() + "# an edit training never imports\n")
    assert "resuming" in train(p, name, code) and last.stat().st_mtime_ns == stamp

    # one line of the loss module changes: the finished run is trained afresh
    losses = code / "pipeline" / "losses.py"
    losses.write_text(losses.read_text().replace("import torch\n", "import torch  # edited\n", 1))
    retrained = train(p, name, code)
    assert "belongs to another config, data or training code; starting afresh" in retrained
    assert "epoch 1/1:" in retrained and last.stat().st_mtime_ns != stamp
    # and run again with the edited code: resumed, nothing retrains twice
    stamp = last.stat().st_mtime_ns
    assert "resuming" in train(p, name, code) and last.stat().st_mtime_ns == stamp


def oof_arrays(p: Project, name: str) -> dict[str, bytes]:
    with np.load(p.layout.oof_path(name, 0)) as oof:
        return {k: oof[k].tobytes() for k in oof.files}


def weights(p: Project, name: str) -> dict[str, torch.Tensor]:
    return torch.load(p.layout.checkpoint(name, 0), map_location="cpu", weights_only=True)["model"]


def test_train_seed_same_seed_same_predictions_another_seed_other_weights(project: Project) -> None:
    p = project
    train(p, "tiny_seed_a", seed=0)
    train(p, "tiny_seed_b", seed=0)
    train(p, "tiny_seed_c", seed=1)
    a, b, c = (oof_arrays(p, n) for n in ("tiny_seed_a", "tiny_seed_b", "tiny_seed_c"))
    assert a.keys() == b.keys() == c.keys() and len(a) > 0
    assert a == b, "one seed, one CPU thread: the out-of-fold probabilities must be identical, byte for byte"
    wa, wb, wc = (weights(p, n) for n in ("tiny_seed_a", "tiny_seed_b", "tiny_seed_c"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any(not torch.equal(wa[k], wc[k]) for k in wa), "train.seed 1 trained the same weights as seed 0"
    assert a != c
    # the effective seed is recipe.seed + train.seed, and it is what the saved config (and so the fingerprint) says
    assert p.cfg.recipe.seed == 0
    for name, seed in (("tiny_seed_a", 0), ("tiny_seed_c", 1)):
        saved = yaml.safe_load((p.layout.model_dir(name, 0) / "config.yaml").read_text())
        assert saved["recipe"]["seed"] == seed
        ck = torch.load(p.layout.checkpoint(name, 0, which="last"), map_location="cpu", weights_only=True)
        assert ck["config"]["recipe"]["seed"] == seed
    # seed 0 checkpoint, run with seed 1: not resumed
    assert "starting afresh" in train(p, "tiny_seed_a", seed=1)


TWO_THREADS = """
import sys
from pathlib import Path
from pipeline.config import load_model_config, load_params
from pipeline.paths import Layout
from pipeline.train import train_fold
import dataclasses
root, name = Path(sys.argv[1]), sys.argv[2]
params = load_params(root / "params.yaml")
layout = Layout(root)
train = dataclasses.replace(params.train, epochs=1, threads=2)
train_fold(load_model_config(layout.model_config("tiny")), name, 0, layout, params.data, train, progress=False)
"""


def test_two_threads_two_processes_train_the_same_model(project: Project) -> None:
    """Determinism across runs, as two fresh clones would train: separate processes, two torch threads each."""
    p = project
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for name in ("tiny_proc_a", "tiny_proc_b"):
        run = subprocess.run(
            [sys.executable, "-c", TWO_THREADS, str(p.root), name], env=env, capture_output=True, text=True, timeout=300
        )
        assert run.returncode == 0, run.stderr[-2000:]
    a, b = (oof_arrays(p, n) for n in ("tiny_proc_a", "tiny_proc_b"))
    assert len(a) > 0 and a == b, "two processes, two threads: the out-of-fold probabilities must be identical"
    wa, wb = (weights(p, n) for n in ("tiny_proc_a", "tiny_proc_b"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
