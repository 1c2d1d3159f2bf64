"""bench/bench_gpu.py runs end to end on the CPU (``--device cpu --tiny``), as its smoke check where no GPU is: the
zoo competition made, masks and folds through the stages, every figure measured through the stage code, and the
table written with its machine line. The figures that matter come from a GPU (``bench/gpu.sh``)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from helpers import REPO, load_bench

pytestmark = pytest.mark.slow


def test_gpu_bench_runs_on_the_cpu_and_writes_its_table(tmp_path: Path) -> None:
    out = tmp_path / "gpu.md"
    models = ["cnn_default", "upernet_convnext"]
    argv = ["--device", "cpu", "--tiny", "--size", "64", "--images", "12", "--batch", "2", "--workers", "0"]
    argv += ["--steps", "1", "--no-compile", "--models", ",".join(models), "--out", str(out)]
    load_bench("bench_gpu.py", "bench_gpu").main(argv)

    lines = out.read_text().splitlines()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    assert "on CPU" in lines[0] and f"commit {commit.stdout.strip() or 'unknown'}" in lines[0]
    rows = [ln.split("|")[1:-1] for ln in lines if ln.startswith("| ") and not ln.startswith("| model")]
    assert [r[0].strip() for r in rows] == models
    for r in rows:  # train, loader and inference rates measured; compile skipped; no GPU memory on the CPU
        cells = [c.strip() for c in r[1:]]
        assert float(cells[0]) > 0 and cells[1] == "-" and float(cells[2]) > 0 and float(cells[3]) > 0
        assert cells[4:] == ["-", "-"]
