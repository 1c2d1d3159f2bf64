"""Honest DVC deps: each stage's ``.py`` deps are exactly the project modules its command imports (transitively).

A stage whose command is ``python -m stages.X`` (or ``python -m pipeline.X``, or ``python path/to/x.py``) runs that
module; its import closure, restricted to the project's own packages, is found by reading ``import`` statements
with ``ast`` (including imports inside functions, relative imports and literal ``importlib.import_module`` calls;
imports under ``if TYPE_CHECKING:`` are skipped because they never run). A missing dep means editing that module
never re-runs the stage; an extra one means it re-runs for nothing. Output paths must agree with ``Layout``. The
closure is :func:`pipeline.closure.import_closure`, the same one training hashes into its resume fingerprint.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import REPO

from pipeline import closure
from pipeline.closure import OWN_PACKAGES
from pipeline.paths import Layout


def load_stages() -> dict[str, dict[str, Any]]:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def stage_body(stage: dict[str, Any]) -> dict[str, Any]:
    """The cmd/deps/outs part of a stage (a ``foreach`` stage keeps them under ``do``)."""
    return stage.get("do", stage)


def commands(stage: dict[str, Any]) -> list[str]:
    cmd = stage_body(stage)["cmd"]
    return cmd if isinstance(cmd, list) else [cmd]


_MODULE_CMD = re.compile(r"\bpython[\d.]*\s+-m\s+([A-Za-z_][\w.]*)")
_SCRIPT_CMD = re.compile(r"\bpython[\d.]*\s+([\w./-]+\.py)\b")


def entry_modules(stage: dict[str, Any]) -> list[str]:
    """Dotted names of the project modules the stage's command(s) run."""
    found = []
    for cmd in commands(stage):
        for name in _MODULE_CMD.findall(cmd):
            found.append(name)
        for script in _SCRIPT_CMD.findall(cmd):
            found.append(script.removesuffix(".py").replace("/", "."))
    return [m for m in found if m.split(".")[0] in OWN_PACKAGES]


def import_closure(entry: str) -> set[str]:
    """Repo-relative paths of the project files that running module ``entry`` executes."""
    files, missing = closure.import_closure(entry, REPO)
    assert not missing, f"{entry} imports project modules that have no file: {missing}"
    return files


STAGES = load_stages()
PYTHON_STAGES = [name for name, stage in STAGES.items() if entry_modules(stage)]


def test_the_foundation_stages_are_checked() -> None:
    assert {"demo", "masks", "folds"} <= set(PYTHON_STAGES)


@pytest.mark.parametrize("name", PYTHON_STAGES)
def test_py_deps_equal_the_import_closure(name: str) -> None:
    stage = STAGES[name]
    files: set[str] = set()
    for entry in entry_modules(stage):
        files |= import_closure(entry)
    deps = {d for d in stage_body(stage).get("deps", []) if isinstance(d, str) and d.endswith(".py")}
    missing, extra = sorted(files - deps), sorted(deps - files)
    fixes = [f"add to deps {missing} (imported: editing them must re-run the stage)"] if missing else []
    fixes += [f"remove from deps {extra} (not imported)"] if extra else []
    assert not fixes, f"dvc.yaml stage {name!r}: " + "; ".join(fixes)


def test_the_closure_follows_what_it_should() -> None:
    # The checker itself: transitive, through function-level imports, __init__ chains and relative imports.
    assert import_closure("stages.masks") >= {"pipeline/data/coco.py", "pipeline/io.py", "pipeline/errors.py"}
    assert "pipeline/__init__.py" not in import_closure("stages.masks")  # empty: running it changes nothing
    tree = ast.parse(
        "def f():\n    from . import coco\n    from ..io import x\n    import importlib\n"
        "    importlib.import_module('pipeline.paths')\nif TYPE_CHECKING:\n    import pipeline.config\n"
    )
    visitor = closure.Imports("pipeline.data.masks", is_package=False, root=REPO)
    visitor.visit(tree)
    assert {"pipeline.data.coco", "pipeline.io", "pipeline.paths"} <= visitor.names
    assert "pipeline.config" not in visitor.names


def out_paths(stage: dict[str, Any]) -> set[str]:
    body = stage_body(stage)
    paths = set()
    for key in ("outs", "metrics", "plots"):
        for item in body.get(key, []) or []:
            paths.add(next(iter(item)) if isinstance(item, dict) else item)
    return {Path(p).as_posix() for p in paths}


# Stage -> the Layout paths it must declare (outs, metrics and plots together), and nothing else.
LAYOUT_OUTS = {
    "masks": lambda lay: [lay.masks_dir, lay.classes_json, lay.train_index, lay.mask_summary, lay.timing_path("masks")],
    "folds": lambda lay: [lay.folds_csv, lay.timing_path("folds")],
}


@pytest.mark.parametrize("name", sorted(LAYOUT_OUTS))
def test_outputs_agree_with_layout(name: str) -> None:
    expected = {Path(p).as_posix() for p in LAYOUT_OUTS[name](Layout())}
    assert out_paths(STAGES[name]) == expected


def test_layout_paths_are_the_documented_ones() -> None:
    lay = Layout()
    assert [p.as_posix() for p in (lay.masks_dir, lay.classes_json, lay.train_index, lay.folds_csv)] == [
        "work/masks",
        "work/classes.json",
        "work/train_index.csv",
        "work/folds.csv",
    ]
    assert lay.mask_path(7).as_posix() == "work/masks/7.png"


def test_stages_read_upstream_outputs_as_deps() -> None:
    # folds reads what masks writes; DVC only orders the stages if folds lists them as deps.
    deps = set(stage_body(STAGES["folds"])["deps"])
    assert {Layout().train_index.as_posix(), Layout().classes_json.as_posix()} <= deps
