"""The project files a module runs when imported (its import closure), and a digest of their contents.

Found by reading ``import`` statements with ``ast``, never by importing anything: imports inside functions, relative
imports and literal ``importlib.import_module`` calls count; imports under ``if TYPE_CHECKING:`` do not (they never
run). Only the project's own packages (:data:`OWN_PACKAGES`) are followed. Two users:

- ``tests/unit/test_dvc_deps.py`` checks that each ``dvc.yaml`` stage lists exactly its closure as deps;
- ``pipeline.train`` hashes the training stage's closure into the resume fingerprint, so a finished model whose code
  changed is retrained instead of resumed (:func:`closure_digest`).
"""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

OWN_PACKAGES = ("pipeline", "stages")  # [tool.setuptools.packages.find] include in pyproject.toml
# The folder that holds the packages (the repository root, or site-packages once installed).
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def module_file(name: str, root: Path = PROJECT_ROOT) -> Path | None:
    """The file of dotted module ``name`` below ``root`` (``a/b.py`` or ``a/b/__init__.py``), or ``None``."""
    base = root.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def module_name(path: Path, root: Path = PROJECT_ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


class Imports(ast.NodeVisitor):
    """Collects the dotted names one module imports (``names``), resolving relative imports against ``module``."""

    def __init__(self, module: str, is_package: bool, root: Path = PROJECT_ROOT) -> None:
        self.module, self.is_package, self.root = module, is_package, root
        self.names: set[str] = set()

    def visit_If(self, node: ast.If) -> None:  # noqa: N802 - ast.NodeVisitor's naming
        test = node.test
        if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
            isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
        ):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:  # noqa: N802
        self.names.update(alias.name for alias in node.names)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:  # noqa: N802
        if node.level:
            package = self.module.split(".") if self.is_package else self.module.split(".")[:-1]
            package = package[: len(package) - (node.level - 1)]
            base = ".".join(package + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        self.names.add(base)
        # `from pipeline.data import coco` imports the submodule pipeline.data.coco
        self.names.update(
            f"{base}.{alias.name}" for alias in node.names if module_file(f"{base}.{alias.name}", self.root)
        )

    def visit_Call(self, node: ast.Call) -> None:  # noqa: N802
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        if name == "import_module" and node.args and isinstance(node.args[0], ast.Constant):
            if isinstance(node.args[0].value, str):
                self.names.add(node.args[0].value)
        self.generic_visit(node)


def is_trivial(path: Path) -> bool:
    """An ``__init__.py`` with nothing but a docstring: importing it runs nothing, so it is no part of a closure."""
    body = ast.parse(path.read_text(encoding="utf-8")).body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    return not body


def import_closure(entry: str, root: Path = PROJECT_ROOT) -> tuple[set[str], list[str]]:
    """The files that running module ``entry`` executes, and the project modules it imports that have no file.

    Returns:
        (``root``-relative POSIX paths of the project files, sorted dotted names of the missing modules)
    """
    todo, seen, missing = [entry], set(), []
    files: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        # Importing a.b.c runs a/__init__.py and a/b/__init__.py first.
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        path = module_file(name, root)
        if path is None:
            missing.append(name)
            continue
        if not (path.name == "__init__.py" and is_trivial(path)):
            files.add(path.relative_to(root).as_posix())
        visitor = Imports(module_name(path, root), path.name == "__init__.py", root)
        visitor.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        todo.extend(n for n in visitor.names if n.split(".")[0] in OWN_PACKAGES)
    return files, sorted(missing)


def closure_digest(entry: str, root: Path = PROJECT_ROOT) -> str:
    """SHA-256 over the relative path and the bytes of every file in ``entry``'s import closure.

    Paths are relative to ``root``, so the same code in another checkout gives the same digest; a changed byte in
    any module (a comment too: telling a real change from a cosmetic one is not worth the risk) gives another.
    """
    files, _ = import_closure(entry, root)
    h = hashlib.sha256()
    for rel in sorted(files):
        data = (root / rel).read_bytes()
        h.update(f"{rel}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()
