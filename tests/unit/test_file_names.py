"""One owner of every file name (nnU-Net's ``get_output_folder``): ``pipeline/paths.py`` writes each name the
pipeline writes or reads, once; no other module of ``pipeline/`` or ``stages/`` has a file-name literal. And one
ignore index: ``pipeline.labels.IGNORE_INDEX``, never a bare 255 that means "ignore".

A string literal is a file name when it is a whole name that ends in a file extension (``"metrics.json"``, the
``.csv`` of ``f"{key}.csv"``), when it starts with a project folder (``"work/..."``), or when it is a path component:
an operand of ``/`` or an argument of ``Path(...)``, ``joinpath``, ``with_name`` or ``os.path.join``. Not names:
docstrings; prose (a literal with a space: a help text or message that names a file for the reader); and a bare
extension (``".png"`` in a tuple of image suffixes), which is a format, not a file. ``pipeline/config.py`` reads its
defaults from ``paths.py`` and joins the competition's names with ``data.root`` (``data.train_json_path``, ...).
"""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

from helpers import REPO

from pipeline.labels import IGNORE_INDEX
from pipeline.losses import make_term
from pipeline.metrics import BoundaryIoU, ConfusionMatrix, confusion_matrix

HOME = "pipeline/paths.py"

# Module -> why its file names are not the pipeline's to own. Each must still be needed (test_every_allowance_...).
ALLOWED = {
    "pipeline/closure.py": "`__init__.py`: Python's own package file, which the import closure looks for",
    "pipeline/io.py": "the hidden `.<name>.old` beside a folder being swapped: the atomic-write protocol's, any folder",
    "pipeline/data/zoo/sources.py": "sample images inside scikit-learn and matplotlib: their names in their folders",
    "pipeline/importers/m2nist.py": "M2NIST's own combined.npy / segmented.npy: the dataset's input format, named once",
    "pipeline/models/pretrained.py": "torch hub's `checkpoints` cache folder: torch's layout, not ours",
}

_EXT = r"\.(json|csv|npz|npy|pt|pth|png|jpg|md|yaml|yml|txt|lock)"
WHOLE_NAME = re.compile(r"^[\w{}./-]*[\w}]" + _EXT + "$")  # a name, not a bare extension
NAME_PART = re.compile(r"^[\w./-]*" + _EXT + "$")  # a literal part of an f-string: "{stem}.png" -> ".png"
FOLDERS = ("work/", "metrics/", "reports/", "submissions/", "configs/", "data/", "profiles/")
PATH_CALLS = {"Path", "PurePath", "joinpath", "with_name", "join"}


def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def _components(tree: ast.AST) -> set[int]:
    """The nodes that are path components: operands of ``/`` and arguments of the path-building calls."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            out |= {id(node.left), id(node.right)}
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if name in PATH_CALLS:
                out |= {id(a) for a in node.args}
    return out


def file_name_literals(source: str) -> list[tuple[int, str]]:
    """(line, literal) of every string literal in ``source`` that is a file name (see the module docstring)."""
    tree = ast.parse(source)
    skip, components = _docstrings(tree), _components(tree)
    f_strings = [node for node in ast.walk(tree) if isinstance(node, ast.JoinedStr)]
    f_parts = {id(v) for node in f_strings for v in node.values}
    skip |= {id(v) for node in f_strings if id(node) in components for v in node.values}  # listed whole, below
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr) and id(node) in components:
            found.append((node.lineno, ast.unparse(node)))
        if not isinstance(node, ast.Constant) or not isinstance(node.value, str) or id(node) in skip:
            continue
        v = node.value
        if id(node) in f_parts:
            hit = bool(NAME_PART.match(v))
        else:
            hit = bool(WHOLE_NAME.match(v)) or (v.startswith(FOLDERS) and " " not in v) or id(node) in components
        if hit:
            found.append((node.lineno, repr(v)))
    return sorted(found)


def modules() -> list[str]:
    return sorted(p.relative_to(REPO).as_posix() for d in ("pipeline", "stages") for p in (REPO / d).rglob("*.py"))


FOUND = {m: file_name_literals((REPO / m).read_text()) for m in modules()}


def test_no_module_but_paths_writes_a_file_name() -> None:
    bad = [f"{m}:{line}: {lit}" for m, hits in FOUND.items() if m != HOME and m not in ALLOWED for line, lit in hits]
    assert not bad, (
        "file names outside pipeline/paths.py (add a Layout property or method, or a DataParams join, and use it): "
        + "; ".join(bad)
    )


def test_every_allowance_is_needed() -> None:
    assert FOUND[HOME], "the scan finds nothing in paths.py: it no longer recognises file names"
    needless = sorted(m for m in ALLOWED if not FOUND.get(m))
    assert not needless, f"ALLOWED modules without a file-name literal (drop them): {needless}"


def test_the_scan_tells_names_from_prose() -> None:
    source = '''
"""Writes metrics.json."""
def f(out, layout, key, suffix):
    """Also reports/summary.md."""
    a = out / "metrics.json"
    b = layout.root / f"{key}.csv"
    c = Path("work")
    d = "submissions/x"
    e = write(f"{key}.png")
    g = raise_error(f"{out}: see metrics.json for why")
    h = suffix in (".png", ".jpg")
    i = out / suffix
    return "best.pt"
'''
    assert [lit for _, lit in file_name_literals(source)] == [
        "'metrics.json'",
        "f'{key}.csv'",
        "'work'",
        "'submissions/x'",
        "'.png'",
        "'best.pt'",
    ]


# --------------------------------------------------------------------------------------------------------------
# One ignore index

IGNORE_HOME = "pipeline/labels.py"
# Module -> why a 255 there compared or assigned like an ignore index is something else.
IGNORE_ALLOWED = {
    "pipeline/importers/folders.py": "0/255 binary input masks: 255 is their foreground value, which becomes class 1",
}
IGNORE_LIKE = re.compile(
    r"ignore_index\s*(:\s*\w+\s*)?=\s*255\b"  # a default or keyword argument
    r"|[!=]=\s*255\b|\bIGNORE\w*\s*=\s*255\b|fill_mask=255|\[255\]"  # a comparison, a constant, an index
)


def _code_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of the module's lines outside docstrings, comments cut off."""
    text = path.read_text()
    tree = ast.parse(text)
    doc_lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and id(node) in _docstrings(tree):
            doc_lines |= set(range(node.lineno, node.end_lineno + 1))  # type: ignore[operator]
    return [(i, line.split("#")[0]) for i, line in enumerate(text.splitlines(), 1) if i not in doc_lines]


IGNORE_HITS = {
    m: [f"{m}:{i}: {line.strip()}" for i, line in _code_lines(REPO / m) if IGNORE_LIKE.search(line)] for m in modules()
}


def test_no_module_but_labels_spells_the_ignore_index() -> None:
    bad = [hit for m, hits in IGNORE_HITS.items() if m != IGNORE_HOME and m not in IGNORE_ALLOWED for hit in hits]
    assert not bad, "a literal 255 used as the ignore index (use pipeline.labels.IGNORE_INDEX): " + "; ".join(bad)
    assert IGNORE_HITS[IGNORE_HOME], "the scan no longer finds the constant's own definition"
    assert not [m for m in IGNORE_ALLOWED if not IGNORE_HITS.get(m)], "an IGNORE_ALLOWED module no longer needs it"


def test_losses_and_metrics_ignore_the_one_index() -> None:
    assert IGNORE_INDEX == 255  # what every mask on disk already holds
    for f in (ConfusionMatrix, BoundaryIoU, confusion_matrix):
        assert inspect.signature(f).parameters["ignore_index"].default == IGNORE_INDEX
    from pipeline.config import LossTerm

    assert make_term(LossTerm("ce"), None).ignore_index == IGNORE_INDEX
