"""The foundation through real DVC, in a copy of the repository: demo -> masks -> folds, no-op re-runs, another
competition via params.yaml and via ``dvc exp run -S``.

Targets are ``folds`` (which pulls in ``demo`` and ``masks``), so that later stages in dvc.yaml (training) never run
here; every stage is still parsed, so a dvc.yaml that DVC cannot load fails this test.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import REPO, read_png, reference_masks, someone_elses_competition

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent  # the virtualenv that runs the tests also has dvc
FOUNDATION = ("demo", "masks", "folds")


def run(cwd: Path, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "DVC_NO_ANALYTICS": "1"}
    env.update(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    env.pop("PYTHONPATH", None)  # the copy's own pipeline/ must be the one imported (cwd comes first with -m)
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def repo_files() -> list[str]:
    """Tracked files plus untracked-but-not-ignored ones, without tests/ (what a fresh clone would hold)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    return sorted({f for f in listed if f and not f.startswith("tests/") and (REPO / f).is_file()})


def set_params(root: Path, **sections: dict[str, object]) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    for section, values in sections.items():
        params[section] = {**params[section], **values}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def pngs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.png"))


def check_masks_match(root: Path, json_path: Path) -> None:
    ref = reference_masks(json_path)
    assert pngs(root / "work" / "masks") == sorted(f"{i}.png" for i in ref)
    for image_id, want in ref.items():
        np.testing.assert_array_equal(read_png(root / "work" / "masks" / f"{image_id}.png"), want)


def test_dvc_repro_foundation(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    for rel in repo_files():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, root / rel)
    run(root, "git", "init", "-q")
    set_params(root, demo={"n_train": 40, "n_test": 10}, folds={"k": 2}, masks={"workers": 2})
    here = run(root, "python", "-c", "import pipeline, stages; print(pipeline.__file__, stages.__file__)").stdout
    assert here.split() == [str(root / "pipeline" / "__init__.py"), str(root / "stages" / "__init__.py")]

    for stage in FOUNDATION:
        assert "usage: python -m stages." in run(root, "python", "-m", f"stages.{stage}", "--help").stdout

    first = run(root, "dvc", "repro", "folds")
    for stage in FOUNDATION:
        assert f"Running stage '{stage}'" in first.stdout, first.stdout
    assert len(pngs(root / "work" / "masks")) == 40
    assert len(pngs(root / "data" / "competition" / "images")) == 50
    with open(root / "work" / "folds.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 40 and {r["fold"] for r in rows} == {"0", "1"}
    assert (root / "dvc.lock").is_file()

    status = run(root, "dvc", "status", "--with-deps", "folds")
    assert "Data and pipelines are up to date." in status.stdout, status.stdout
    again = run(root, "dvc", "repro", "folds")
    assert "Running stage" not in again.stdout, again.stdout
    for stage in FOUNDATION:
        assert f"Stage '{stage}' didn't change, skipping" in again.stdout, again.stdout
    assert "Data and pipelines are up to date." in again.stdout

    # Another competition, outside the repository, chosen by editing params.yaml: masks and folds re-run.
    other = someone_elses_competition(tmp_path / "elsewhere" / "comp", n_images=6, seed=1)
    set_params(root, data={"root": str(other.parent)})
    switched = run(root, "dvc", "repro", "folds")
    # masks no longer reads the demo's output, so demo drops out of folds' upstream: it neither runs nor is checked
    assert "stage 'demo'" not in switched.stdout.lower(), switched.stdout
    assert "Running stage 'masks'" in switched.stdout and "Running stage 'folds'" in switched.stdout
    check_masks_match(root, other)
    assert "Data and pipelines are up to date." in run(root, "dvc", "status", "--with-deps", "folds").stdout

    # And through an experiment, after committing (dvc exp run needs a commit to base the experiment on).
    third = someone_elses_competition(tmp_path / "third" / "comp", n_images=4, seed=2)
    run(root, "git", "add", "-A")
    run(root, "git", "commit", "-qm", "tiny foundation")
    exp = run(root, "dvc", "exp", "run", "folds", "-S", f"data.root={third.parent}")
    assert "Running stage 'masks'" in exp.stdout and "Ran experiment(s):" in exp.stdout, exp.stdout
    check_masks_match(root, third)
    assert yaml.safe_load((root / "params.yaml").read_text())["data"]["root"] == str(third.parent)
    assert "folds" in yaml.safe_load((root / "dvc.lock").read_text())["stages"]
