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
import dataclasses
import re
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import REPO

from pipeline import closure
from pipeline.closure import OWN_PACKAGES
from pipeline.config import InferParams, Params
from pipeline.paths import Layout


def _substitute(obj: Any, values: dict[str, Any]) -> Any:
    """``obj`` with ``${name}`` of a stage's own ``vars`` replaced (``${item.x}`` and params stay templates)."""
    if isinstance(obj, str):
        return re.sub(r"\$\{(\w+)\}", lambda m: str(values[m[1]]) if m[1] in values else m[0], obj)
    if isinstance(obj, list):
        return [_substitute(v, values) for v in obj]
    if isinstance(obj, dict):
        return {_substitute(k, values): _substitute(v, values) for k, v in obj.items()}
    return obj


def load_stages() -> dict[str, dict[str, Any]]:
    """dvc.yaml's stages, YAML anchors merged (``<<:``) and each stage's own ``vars`` (the round) substituted."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    out = {}
    for name, stage in stages.items():
        values = {k: v for entry in stage.get("vars", []) for k, v in entry.items()}
        out[name] = _substitute({k: v for k, v in stage.items() if k != "vars"}, values)
    return out


def test_later_rounds_are_one_template_each() -> None:
    """Rounds are an axis: pseudo_r2 is pseudo and train_r3 is train_r2 with another round (a YAML merge of one
    anchor, nothing else); the resolved stages differ only in the round numbers."""
    raw = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    text = (REPO / "dvc.yaml").read_text()
    for base, later, anchor in (("pseudo", "pseudo_r2", "pseudo_round"), ("train_r2", "train_r3", "train_later")):
        assert f"  {base}: &{anchor}\n" in text and f"  {later}:\n    <<: *{anchor}\n    vars:\n" in text
        assert {k: v for k, v in raw[later].items() if k != "vars"} == {
            k: v for k, v in raw[base].items() if k != "vars"
        }
    lay = Layout()
    for round_ in (1, 2):
        st = STAGES["pseudo" if round_ == 1 else f"pseudo_r{round_}"]
        assert st["cmd"] == f"python -m stages.pseudo --round {round_}"
        assert out_paths(st) == {lay.pseudo_dir(round_, "x").parent.as_posix(), lay.pseudo_metrics(round_).as_posix()}
        assert lay.round_dir(round_).joinpath("models").as_posix() in st["deps"]
    for round_ in (2, 3):
        st = STAGES[f"train_r{round_}"]
        assert st["cmd"].endswith(f"--round {round_}")
        prev = lay.round_dir(round_ - 1)
        assert {(prev / "pseudo").as_posix(), (prev / "models/${item.model}/fold${item.fold}").as_posix()} <= set(
            st["deps"]
        )
        assert next(iter(st["outs"][0])) == (lay.round_dir(round_) / "models/${item.model}/fold${item.fold}").as_posix()


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
    "infer": lambda lay: [
        Path(InferParams().output),
        lay.ledger,
        lay.reports_dir / "overlays",
        lay.infer_json,
        lay.leaderboard_json,
    ],
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
    # infer reads the competition folder (test.json, images, the optional sample submission) and the held-back
    # truth; report reads the local leaderboard infer writes
    assert {"${data.root}", "${data.truth_dir}"} <= set(stage_body(STAGES["infer"])["deps"])
    assert Layout().leaderboard_json.as_posix() in stage_body(STAGES["report"])["deps"]
    # the ledger gains a row per run: DVC must not delete it before the stage runs
    ledger = next(
        o for o in stage_body(STAGES["infer"])["outs"] if isinstance(o, dict) and Layout().ledger.as_posix() in o
    )
    assert ledger[Layout().ledger.as_posix()] == {"cache": False, "persist": True}


# --------------------------------------------------------------------------------------------------------------
# Honest params: each stage's `params:` are the params.yaml keys its code reads
#
# Read statically over the stage's import closure, from the functions its entry module can reach (a name resolves
# through the module's own definitions and imports; ``obj.method`` reaches every method of that name in the closure;
# reaching a class reaches all its methods, since Python calls some implicitly). Within those functions a variable
# holds a params section when it is annotated with the section's class (``p: InferParams``), or assigned from one
# (``p = params.infer``, ``getattr(params, "pseudo")``, ``dataclasses.replace(p, ...)``, ``load_params(...)``); each
# ``<section>.<key>`` attribute read on it is a read of that key. Everything comes from ``pipeline.config.Params``,
# so a key or section added there (or read by new code) is checked without editing this test.

ROOT = "<params>"  # the kind of a whole Params object
_HINTS = typing.get_type_hints(Params)
SECTION_OF_CLASS = {tp.__name__: name for name, tp in _HINTS.items() if dataclasses.is_dataclass(tp)}
SECTION_KEYS = {
    name: {f.name for f in dataclasses.fields(tp)} for name, tp in _HINTS.items() if dataclasses.is_dataclass(tp)
}
TOP_KEYS = {name for name, tp in _HINTS.items() if not dataclasses.is_dataclass(tp)}  # top-level keys, no section


def _property_reads() -> dict[str, dict[str, set[str]]]:
    """Section -> {property: the section's keys it reads}: ``data.train_json_path`` reads ``data.root`` and
    ``data.train_json`` (the properties of the params classes in ``pipeline/config.py``, read from their ``self.x``)."""
    tree = ast.parse((REPO / "pipeline" / "config.py").read_text())
    out: dict[str, dict[str, set[str]]] = {}
    for cls in tree.body:
        if not isinstance(cls, ast.ClassDef) or cls.name not in SECTION_OF_CLASS:
            continue
        section = SECTION_OF_CLASS[cls.name]
        for fn in cls.body:
            if isinstance(fn, ast.FunctionDef) and any(
                isinstance(d, ast.Name) and d.id == "property" for d in fn.decorator_list
            ):
                out.setdefault(section, {})[fn.name] = {
                    f"{section}.{a.attr}"
                    for a in ast.walk(fn)
                    if isinstance(a, ast.Attribute)
                    and isinstance(a.value, ast.Name)
                    and a.value.id == "self"
                    and a.attr in SECTION_KEYS[section]
                }
    return out


PROPERTY_READS = _property_reads()


@dataclasses.dataclass
class _Module:
    name: str
    tree: ast.Module
    defs: dict[str, ast.AST]  # top-level functions and classes
    imports: dict[str, tuple[str, str | None]]  # local name -> (module, attribute or None for the module itself)


def _parse_closure(entry: str) -> dict[str, _Module]:
    modules = {}
    for rel in import_closure(entry):
        path = REPO / rel
        name = closure.module_name(path, REPO)
        tree = ast.parse(path.read_text(), filename=str(path))
        defs = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
        imports: dict[str, tuple[str, str | None]] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    imports[a.asname or a.name.split(".")[0]] = (a.name if a.asname else a.name.split(".")[0], None)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for a in node.names:
                    sub = f"{node.module}.{a.name}"
                    local = a.asname or a.name
                    imports[local] = (sub, None) if closure.module_file(sub, REPO) else (node.module, a.name)
        modules[name] = _Module(name, tree, defs, imports)
    return modules


def _reachable(entry: str, modules: dict[str, _Module]) -> list[tuple[_Module, ast.AST]]:
    """The function and class nodes that running ``entry`` can reach, with their modules."""
    methods: dict[str, list[tuple[_Module, ast.AST]]] = {}
    for m in modules.values():
        for node in m.defs.values():
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        methods.setdefault(item.name, []).append((m, node))

    def lookup(m: _Module, name: str) -> list[tuple[_Module, ast.AST]]:
        if name in m.defs:
            return [(m, m.defs[name])]
        target = m.imports.get(name)
        if target and target[1] is not None and target[0] in modules:
            return lookup(modules[target[0]], target[1])
        return []

    start = modules[entry]
    body = ast.Module(body=[n for n in start.tree.body if n not in start.defs.values()], type_ignores=[])
    todo, seen, found = [(start, body)], set(), []
    while todo:
        m, node = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        found.append((m, node))
        for sub in ast.walk(node):
            if isinstance(sub, ast.Name):
                todo.extend(lookup(m, sub.id))
            elif isinstance(sub, ast.Attribute):
                base = sub.value
                if isinstance(base, ast.Name) and m.imports.get(base.id, ("", ""))[1] is None:
                    mod = m.imports.get(base.id, ("", ""))[0]
                    if mod in modules:
                        todo.extend(lookup(modules[mod], sub.attr))
                todo.extend(methods.get(sub.attr, []))
    return found


def _annotation_kind(ann: ast.AST | None) -> str | None:
    """ROOT, a section name, or None for an annotation such as ``InferParams | None`` (or its string form)."""
    for sub in ast.walk(ann) if ann is not None else ():
        if isinstance(sub, ast.Constant) and isinstance(sub.value, str) and sub.value.isidentifier() is False:
            try:  # a quoted annotation ("InferParams | None"); other strings (Literal values) are not types
                kind = _annotation_kind(ast.parse(sub.value, mode="eval"))
            except SyntaxError:
                kind = None
            if kind is not None:
                return kind
        if isinstance(sub, ast.Constant) and sub.value in ("Params", *SECTION_OF_CLASS):
            return ROOT if sub.value == "Params" else SECTION_OF_CLASS[sub.value]
        name = sub.id if isinstance(sub, ast.Name) else sub.attr if isinstance(sub, ast.Attribute) else None
        if name == "Params":
            return ROOT
        if name in SECTION_OF_CLASS:
            return SECTION_OF_CLASS[name]
    return None


def _getattr_name(node: ast.AST) -> tuple[ast.AST, str] | None:
    """``getattr(x, "name", ...)`` -> (x, "name")."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr":
        if len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str):
            return node.args[0], node.args[1].value
    return None


def _kind(node: ast.AST, env: dict[str, str]) -> str | None:
    """Whether ``node`` evaluates to the whole params (ROOT), one section (its name), or neither (None)."""
    if isinstance(node, ast.Name):
        return env.get(node.id)
    pair = _getattr_name(node)
    if pair or isinstance(node, ast.Attribute):
        base, attr = pair if pair else (node.value, node.attr)  # type: ignore[union-attr]
        return attr if _kind(base, env) == ROOT and attr in SECTION_KEYS else None
    if isinstance(node, ast.Call):
        func = node.func
        fname = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        if fname == "load_params":
            return ROOT
        if fname == "replace" and node.args:
            return _kind(node.args[0], env)
    if isinstance(node, ast.IfExp):
        return _kind(node.body, env) or _kind(node.orelse, env)
    if isinstance(node, ast.BoolOp):
        return next((k for k in (_kind(v, env) for v in node.values) if k), None)
    return None


def _reads(node: ast.AST) -> set[str]:
    """The params keys one function (with its nested functions) reads: ``section.key``, a top-level key, or a whole
    section (``to_dict(params.demo)``) as its bare name."""
    env: dict[str, str] = {}
    for sub in ast.walk(node):
        if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            args = sub.args
            for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]:
                if (k := _annotation_kind(a.annotation)) is not None:
                    env[a.arg] = k
    for _ in range(3):  # assignments in any order: a few passes reach the fixed point
        for sub in ast.walk(node):
            if isinstance(sub, ast.Assign):
                if (k := _kind(sub.value, env)) is not None:
                    env.update({t.id: k for t in sub.targets if isinstance(t, ast.Name)})
            elif isinstance(sub, ast.AnnAssign) and isinstance(sub.target, ast.Name):
                k = _annotation_kind(sub.annotation) or (_kind(sub.value, env) if sub.value else None)
                if k is not None:
                    env[sub.target.id] = k
    reads: set[str] = set()
    for sub in ast.walk(node):
        pair = _getattr_name(sub) or ((sub.value, sub.attr) if isinstance(sub, ast.Attribute) else None)
        if pair:
            kind = _kind(pair[0], env)
            if kind == ROOT and pair[1] in TOP_KEYS:
                reads.add(pair[1])
            elif kind in SECTION_KEYS and pair[1] in SECTION_KEYS[kind]:
                reads.add(f"{kind}.{pair[1]}")
            elif kind in PROPERTY_READS and pair[1] in PROPERTY_READS[kind]:  # a property reads the keys it joins
                reads |= PROPERTY_READS[kind][pair[1]]
        if isinstance(sub, ast.Call) and sub.args:
            func = sub.func
            fname = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if fname in ("to_dict", "asdict", "astuple", "vars"):  # every key of what it is given
                kind = _kind(sub.args[0], env)
                reads |= set(SECTION_KEYS) | TOP_KEYS if kind == ROOT else {kind} if kind else set()
    return reads


def param_reads(entry: str) -> set[str]:
    """The params keys that running module ``entry`` can read."""
    modules = _parse_closure(entry)
    reads: set[str] = set()
    for _, node in _reachable(entry, modules):
        reads |= _reads(node)
    return reads


def declared_params(stage: dict[str, Any]) -> list[str]:
    items = stage_body(stage).get("params", []) or []
    assert all(isinstance(i, str) for i in items), "params from another file: this check reads params.yaml keys only"
    return items


def _covered(read: str, declared: set[str]) -> bool:
    return read in declared or ("." in read and read.split(".")[0] in declared)


# Keys the code of a stage can read but that stage never does, each with the reason (checked to be needed).
NOT_READ_BY = {
    "train": (
        {
            "pseudo.rounds",
            "pseudo.source",
            "pseudo.epochs",
            "pseudo.lr_scale",
            "pseudo.init_from_previous",
            "pseudo.share",
            "pseudo.pretrain_epochs",
            "pseudo.soft",
        },
        "round 1: train_round returns train_fold's result before reading any pseudo key, and training_round_runs is "
        "true for round 1 without reading pseudo.rounds",
    ),
}


def stage_reads(name: str) -> set[str]:
    reads: set[str] = set()
    for entry in entry_modules(STAGES[name]):
        reads |= param_reads(entry)
    return reads - NOT_READ_BY.get(name, (set(), ""))[0]


def param_fixes(name: str, reads: set[str], declared_list: list[str]) -> list[str]:
    """What to change in the stage's ``params:`` (empty when they match what the code reads)."""
    declared = set(declared_list)
    valid = set(SECTION_KEYS) | TOP_KEYS | {f"{s}.{k}" for s, keys in SECTION_KEYS.items() for k in keys}
    unknown = sorted(declared - valid)
    missing = sorted(r for r in reads if not _covered(r, declared))
    extra = sorted(d for d in declared - set(unknown) if not any(r == d or r.startswith(f"{d}.") for r in reads))
    fixes = [f"remove {unknown} from params (no such key in pipeline.config.Params)"] if unknown else []
    fixes += [f"add to params {missing} (the stage's code reads them)"] if missing else []
    fixes += [f"remove from params {extra} (the stage's code never reads them)"] if extra else []
    return fixes


@pytest.mark.parametrize("name", PYTHON_STAGES)
def test_params_equal_the_keys_the_code_reads(name: str) -> None:
    fixes = param_fixes(name, stage_reads(name), declared_params(STAGES[name]))
    assert not fixes, f"dvc.yaml stage {name!r}: " + "; ".join(fixes)


def test_every_exemption_is_needed() -> None:
    for name, (keys, _why) in NOT_READ_BY.items():
        reads: set[str] = set()
        for entry in entry_modules(STAGES[name]):
            reads |= param_reads(entry)
        assert keys <= reads, f"NOT_READ_BY[{name!r}]: {sorted(keys - reads)} are not read anyway; drop them"
        assert not keys & {k for k in declared_params(STAGES[name]) if "." in k}, "an exempt key is declared"


def test_the_param_check_catches_a_missing_and_a_needless_key() -> None:
    # The real train and report stages: drop one key they read, add one they never read.
    declared = declared_params(STAGES["train"])
    assert "train.epochs" in declared
    fixes = param_fixes("train", stage_reads("train"), [d for d in declared if d != "train.epochs"] + ["folds.k"])
    assert fixes == [
        "add to params ['train.epochs'] (the stage's code reads them)",
        "remove from params ['folds.k'] (the stage's code never reads them)",
    ]
    assert param_fixes("report", stage_reads("report"), [*declared_params(STAGES["report"]), "train.nope"]) == [
        "remove ['train.nope'] from params (no such key in pipeline.config.Params)"
    ]
    # a whole section covers its keys
    assert param_fixes("demo", {"demo.n_train", "demo.seed"}, ["demo"]) == []


def test_the_reader_follows_sections_through_names_and_calls() -> None:
    tree = ast.parse(
        "def f(params: Params, data: DataParams, q: 'InferParams | None' = None):\n"
        "    p = params.infer\n"
        "    p = dataclasses.replace(p, tta='none')\n"
        "    ps = getattr(params, 'pseudo', None)\n"
        "    x = (p.tta, ps.rounds, data.root, params.train.folds, q.space, getattr(ps, 'epochs', 0))\n"
        "    fresh = load_params('x.yaml')\n"
        "    y = fresh.masks.workers + len(to_dict(fresh.demo))\n"
        "    p.not_a_key, params.train.upper()\n"
        "    other.infer.tta\n"
    )
    assert _reads(tree) == {
        "infer.tta",
        "pseudo.rounds",
        "data.root",
        "train.folds",
        "infer.space",
        "pseudo.epochs",
        "masks.workers",
        "demo",
    }
    # a property of a section reads the keys it is made of
    assert _reads(ast.parse("def f(data: DataParams):\n    return data.test_json_path, data.on_error.upper()\n")) == {
        "data.root",
        "data.test_json",
        "data.on_error",
    }
    assert PROPERTY_READS["data"]["images_path"] == {"data.root", "data.images_dir"}
    # reached: what main calls, through imports; not reached: a function nothing calls
    assert "data.truth_dir" in param_reads("stages.infer")  # run_ensemble's local leaderboard
    assert "data.truth_dir" not in param_reads("stages.pseudo")  # only pipeline.leaderboard.main reads it there
