"""kill -9 of the masks stage at random moments: the re-run's outputs are bit-identical to an uninterrupted run's,
no worker outlives the killed process, no temp folder or file is left, and a killed run never leaves a set of
outputs that the folds stage would take for a good one."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO, alive, children, kill_9, started, write_competition

from pipeline.data.folds import check_masks_outputs
from pipeline.errors import UserError
from pipeline.paths import Layout

N_IMAGES = 300


def big_competition(root: Path) -> None:
    """300 images of 32x40, one or two polygons each, three categories."""
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i in range(N_IMAGES):
        images.append({"id": i + 1, "file_name": f"d{i % 7}/im{i}.png", "height": 32, "width": 40})
        for _ in range(int(rng.integers(1, 3))):
            x0, y0 = rng.uniform(-3, 30, 2)
            poly = [x0, y0, x0 + rng.uniform(3, 12), y0, x0 + rng.uniform(3, 12), y0 + rng.uniform(3, 12)]
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 1,
                    "category_id": int(rng.integers(1, 4)),
                    "segmentation": [[round(float(v), 2) for v in poly]],
                    "iscrowd": 0,
                }
            )
    cats = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "c"}]
    write_competition(root, images, anns, cats)


def start(cwd: Path) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
    """The masks stage, running in ``cwd`` until the block ends (then whatever is left of it is killed)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "stages.masks"]
    return started(args, cwd, env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen[bytes]) -> None:
    assert proc.wait(timeout=300) == 0, proc.stderr.read().decode() if proc.stderr else ""


def outputs(cwd: Path) -> dict[str, bytes]:
    """Every file the masks stage writes under work/, by relative path (the timing file is not under work/)."""
    work = cwd / "work"
    files = [p for p in sorted(work.rglob("*")) if p.is_file()]
    # a killed run's hidden temp files are not outputs (the next run removes them: checked by leftovers())
    return {p.relative_to(work).as_posix(): p.read_bytes() for p in files if not p.relative_to(work).parts[0][0] == "."}


def leftovers(cwd: Path) -> list[str]:
    return sorted(p.name for p in (cwd / "work").iterdir() if p.name.startswith("."))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill_9_at_random_moments_then_rerun_gives_the_uninterrupted_outputs(tmp_path: Path) -> None:
    comp = tmp_path / "comp"
    big_competition(comp)
    params = f"data:\n  root: {comp}\nmasks:\n  workers: 2\n"
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    for d in (ref_dir, run_dir):
        d.mkdir()
        (d / "params.yaml").write_text(params)

    t0 = time.monotonic()
    with start(ref_dir) as proc:
        finish(proc)
    duration = time.monotonic() - t0
    reference = outputs(ref_dir)
    assert len([k for k in reference if k.startswith("masks/")]) == N_IMAGES

    rng = np.random.default_rng(19)
    kills = 0
    for fraction in rng.uniform(0.35, 1.0, 5):
        with start(run_dir) as proc:
            deadline = time.monotonic() + fraction * duration
            workers: set[int] = set()
            while time.monotonic() < deadline and proc.poll() is None:
                workers |= set(children(proc.pid))  # gathered until the kill (they exist only mid-run)
                time.sleep(0.02)
            if proc.poll() is not None:  # finished before the kill: a complete run, which must be the reference
                assert outputs(run_dir) == reference
                continue
            workers |= set(children(proc.pid))
            if kill_9(proc, timeout=30) != -signal.SIGKILL:  # it ended in between: a complete run, as above
                assert outputs(run_dir) == reference
                continue
            kills += 1
            end = time.monotonic() + 10
            while any(alive(w) for w in workers) and time.monotonic() < end:
                time.sleep(0.05)
            assert not [w for w in workers if alive(w)], "masks workers outlived the killed stage"
        # What a kill leaves is either refused by the folds stage, or (no summary yet, or the whole set) usable.
        layout = Layout(run_dir)
        try:
            check_masks_outputs(layout)
        except UserError as e:
            assert "re-run the masks stage" in str(e)
        else:
            if layout.mask_summary.is_file():
                assert outputs(run_dir) == reference
    assert kills >= 3, f"only {kills} runs were killed mid-way (runs of {duration:.1f} s)"

    with start(run_dir) as proc:
        finish(proc)
    assert outputs(run_dir) == reference  # bit-identical
    assert leftovers(run_dir) == []  # no .masks.*.tmp, no .train_index.csv.*.tmp
    check_masks_outputs(Layout(run_dir))
