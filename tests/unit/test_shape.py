"""The shape guard: no function of the library runs past a screen (:data:`MAX_LINES`), apart from a short,
reasoned allow-list that may only shrink. Ruff caps complexity, arguments and statements (pyproject.toml)."""

from __future__ import annotations

import ast
from pathlib import Path

from helpers import REPO

MAX_LINES = 80  # from the ``def`` line to the last line of the body, docstring included

# Qualified name -> why it is still longer. Fix one and its entry must go (test_every_allowance_is_needed).
ALLOWED = {
    "pipeline.data.coco.load_coco": "the COCO validator: one check per malformation, each with its own message",
    "pipeline.importers.__main__.main": "the importers' argparse: one sub-parser per importer, every option helped",
    "pipeline.importers.rle_csv.import_rle_csv": "match the CSV's ids to image files, then write: one pass each",
    "pipeline.report.write_summary": "the report's markdown, written section by section in reading order",
}


def function_lengths(root: Path = REPO / "pipeline") -> dict[str, int]:
    """Qualified name (``pipeline.mod.Class.method``) -> lines, for every function and method below ``root``."""
    out: dict[str, int] = {}
    for path in sorted(root.rglob("*.py")):
        module = ".".join(path.relative_to(root.parent).with_suffix("").parts)

        def visit(node: ast.AST, prefix: str) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    name = f"{prefix}.{child.name}"
                    if not isinstance(child, ast.ClassDef):
                        out[name] = child.end_lineno - child.lineno + 1  # type: ignore[operator]
                    visit(child, name)

        visit(ast.parse(path.read_text(), filename=str(path)), module)
    return out


LENGTHS = function_lengths()


def test_no_function_runs_past_a_screen() -> None:
    long = {name: n for name, n in LENGTHS.items() if n > MAX_LINES and name not in ALLOWED}
    listing = ", ".join(f"{name} ({n} lines)" for name, n in sorted(long.items(), key=lambda kv: -kv[1]))
    assert not long, f"functions over {MAX_LINES} lines: {listing}; split them into named steps"


def test_every_allowance_is_needed() -> None:
    gone = sorted(name for name in ALLOWED if name not in LENGTHS)
    short = sorted(name for name in ALLOWED if name in LENGTHS and LENGTHS[name] <= MAX_LINES)
    assert not gone, f"ALLOWED names functions that no longer exist: {gone}"
    assert not short, f"ALLOWED names functions that now fit in {MAX_LINES} lines: {short}; drop them"


def test_the_training_loop_fits_on_a_screen() -> None:
    assert not [name for name in ALLOWED if ".train" in name]
    assert LENGTHS["pipeline.train.train_fold"] <= MAX_LINES
    # the walk reaches subpackages and methods
    assert {"pipeline.training.epoch.train_one_epoch", "pipeline.training.checkpoint.Checkpoints.resume"} <= set(
        LENGTHS
    )
