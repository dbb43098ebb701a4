"""The package's folders are layers: each module imports only from its own layer or the ones below it.

`LAYERS` is the one ordered list of the layers (lowest first); every module of src/cifarlab belongs to
exactly one (the longest matching prefix), with no exemption. Imports are read from the source: top
level, inside functions, and by string (`importlib.import_module("cifarlab.x")` with a constant).
"""
from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

import pytest

import cifarlab
from cifarlab.run import layout

PACKAGE = Path(cifarlab.__file__).parent
LAYERS = (  # lowest first: a module may import from its own layer and the ones before it
    ("foundation", ("cifarlab.errors", "cifarlab._version", "cifarlab.messages")),
    ("base", ("cifarlab.launch", "cifarlab.runtime", "cifarlab.atomic", "cifarlab.strict_yaml",
              "cifarlab.recipe_files", "cifarlab.config", "cifarlab.progress",
              "cifarlab.config_diff", "cifarlab.config_docs")),
    ("data and models", ("cifarlab.data", "cifarlab.models")),
    ("run directory", ("cifarlab.run",)),
    ("trainer", ("cifarlab.trainer",)),
    ("range test and use", ("cifarlab.lr_range", "cifarlab.use", "cifarlab.export")),
    ("analysis", ("cifarlab.analysis",)),
    ("lifecycle", ("cifarlab.experiment", "cifarlab.cluster")),
    ("sweeps", ("cifarlab.sweep",)),
    ("interface", ("cifarlab.cli", "cifarlab.commands", "cifarlab.__main__", "cifarlab")),
)
FACADE = "cifarlab"  # the package itself: matches only itself, never as the prefix of every module


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _string_import(node: ast.Call) -> str | None:
    """The module of `importlib.import_module("x")` / `import_module("x")` / `__import__("x")`, when constant."""
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    if name in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant) \
            and isinstance(node.args[0].value, str):
        return node.args[0].value
    return None


def _imports(path: Path, name: str, modules: set[str]) -> set[str]:
    """Every cifarlab module `path` imports anywhere (top level, inside functions, by a constant string).
    `from pkg import sub` counts as importing the submodule `pkg.sub`, `from pkg import name` as `pkg`."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        elif isinstance(node, ast.Call) and (target := _string_import(node)):
            targets = [target]
        else:
            continue
        found |= {t for t in targets if t in modules}
    return found - {name}


def import_graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(paths)
    return {name: _imports(path, name, modules) for name, path in paths.items()}


def layer_of(module: str) -> int:
    """Index in LAYERS of the longest prefix that matches `module` (a KeyError when none does)."""
    matches = [(len(prefix), index) for index, (_, prefixes) in enumerate(LAYERS) for prefix in prefixes
               if module == prefix or (prefix != FACADE and module.startswith(prefix + "."))]
    if not matches:
        raise KeyError(module)
    return max(matches)[1]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search with colours)."""
    colour, stack = {}, []

    def visit(node):
        colour[node] = "grey"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if colour.get(nxt) == "grey":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in colour and (cycle := visit(nxt)):
                return cycle
        colour[node] = "black"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in colour and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_every_module_belongs_to_a_layer():
    unplaced = []
    for module in import_graph():
        try:
            layer_of(module)
        except KeyError:
            unplaced.append(module)
    assert not unplaced, f"modules in no layer of LAYERS: {unplaced}"


def test_no_module_imports_from_a_higher_layer():
    graph = import_graph()
    upward = sorted(f"{a} ({LAYERS[layer_of(a)][0]}) -> {b} ({LAYERS[layer_of(b)][0]})"
                    for a, targets in graph.items() for b in targets if layer_of(b) > layer_of(a))
    assert not upward, upward


def test_the_package_facade_is_imported_by_no_module_below_the_interface():
    """`cifarlab/__init__.py` (the public API) is for users and for the CLI, which is a thin shell over it."""
    top = len(LAYERS) - 1
    importers = sorted(a for a, targets in import_graph().items() if "cifarlab" in targets and layer_of(a) < top)
    assert not importers, importers


def test_the_checker_sees_function_level_string_and_facade_imports(tmp_path):
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    modules = {"cifarlab", "cifarlab.experiment", "cifarlab.models", "cifarlab.models.convnet"}
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from cifarlab.experiment import train\n")
    assert _imports(source, "cifarlab.x", modules) == {"cifarlab.experiment"}
    source.write_text("import importlib\ndef f():\n    importlib.import_module('cifarlab.models')\n")
    assert _imports(source, "cifarlab.x", modules) == {"cifarlab.models"}
    source.write_text("from cifarlab import __version__\nfrom cifarlab.models import convnet\n")
    assert _imports(source, "cifarlab.x", modules) == {"cifarlab", "cifarlab.models.convnet"}
    assert layer_of("cifarlab.use.predict") < layer_of("cifarlab.analysis.plots")
    assert layer_of("cifarlab") == len(LAYERS) - 1
    with pytest.raises(KeyError):  # a new module outside every layer is caught, not taken by the facade
        layer_of("cifarlab.newpackage.thing")


def test_the_architecture_page_shows_the_layers_as_the_test_holds_them():
    """docs/architecture.md's layer table: the LAYERS of this file, highest first, every prefix listed."""
    page = (PACKAGE.parents[1] / "docs" / "architecture.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| ([a-z][a-z ]+) \| (`[^|]+`) \|", page, re.M)
    shown = [(name, sorted(re.findall(r"`([\w.]+)`", modules))) for name, modules in rows]
    held = [(name, sorted(prefix.removeprefix("cifarlab.") for prefix in prefixes))
            for name, prefixes in reversed(LAYERS)]
    assert shown == held, "docs/architecture.md's layer table differs from LAYERS in tests/test_structure.py"


# ------------------------------------------------------------------ run-directory names

def _run_dir_names() -> dict[str, str]:
    """Every file and folder name of the run directory that run/layout.py defines."""
    return {key: value for key, value in vars(layout).items() if key.isupper() and isinstance(value, str)}


@functools.lru_cache(maxsize=None)
def _strings(path: Path) -> list[str]:
    """The string constants of a module (f-string parts included), docstrings left out."""
    tree = ast.parse(path.read_text())
    docstrings = {id(body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and (body := node.body) and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)}
    return [node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def _spells(text: str, name: str) -> bool:
    """`text` spells out the run-directory name `name`: a file name anywhere in it; a folder name as the
    whole string or as a path segment (`plots/x.png`), not as an English word in a message."""
    if "." in name.strip("."):
        return re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", text) is not None
    return text == name or re.search(rf"(?:^|/){re.escape(name)}/|/{re.escape(name)}$", text) is not None


@pytest.mark.parametrize("name", sorted(set(_run_dir_names().values())))
def test_each_run_dir_name_is_spelled_out_in_one_module_of_src(name):
    spelled_in = sorted(str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py")
                        if any(_spells(text, name) for text in _strings(path)))
    assert spelled_in == ["run/layout.py"], f"{name!r} is spelled out in {spelled_in}"


def test_the_required_run_dir_names_are_in_the_layout():
    assert {"config.yaml", "metrics.csv", "summary.json", "last.pt", "best.pt", "report.md"} <= set(
        _run_dir_names().values())


def test_analysis_never_builds_a_training_state():
    """analysis/ works on a loaded model, a dataset and the run's records, never on a TrainState."""
    graph = import_graph()
    for path in (PACKAGE / "analysis").rglob("*.py"):
        module = _module_name(path)
        names = {node.id for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Name)}
        names |= {alias.name for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.ImportFrom)
                  for alias in node.names}
        assert not names & {"TrainState", "build_state", "range_test_state"}, module
        assert not graph[module] & {"cifarlab.trainer.state", "cifarlab.trainer.loop"}, module


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for target in graph[todo.pop()] - seen:
            seen.add(target)
            todo.append(target)
    return seen


@pytest.mark.parametrize("package", ["cifarlab.use", "cifarlab.analysis"])
def test_use_and_analysis_reach_nothing_of_the_trainer(package):
    """Loading, evaluating, predicting and analysing a model never import the trainer, not even through
    another module: what they share with it (inference kernels, data preparation) lives below both, in
    models/inference.py and data/prepare.py."""
    graph = import_graph()
    for module in sorted(m for m in graph if m == package or m.startswith(package + ".")):
        reached = sorted(m for m in _reachable(graph, module) if m.startswith("cifarlab.trainer"))
        assert not reached, f"{module} imports {reached}"
