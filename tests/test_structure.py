"""The package's modules import one way: no import cycle, function-level imports included."""
from __future__ import annotations

import ast
from pathlib import Path

import cifarlab

PACKAGE = Path(cifarlab.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str, modules: set[str]) -> set[str]:
    """Every cifarlab module `path` imports anywhere (top level or inside functions)."""
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
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        # `from cifarlab.training import callbacks` imports the submodule; `import cifarlab.x.y` imports x.y.
        found |= {t for t in targets if t in modules}
    # A package's own __init__ being imported by its children is not a cycle worth untying.
    return {t for t in found if t != name and not name.startswith(t + ".")}


def import_graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(paths)
    return {name: _imports(path, name, modules) for name, path in paths.items()}


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


def test_the_cycle_finder_finds_a_cycle_through_a_function_level_import(tmp_path):
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from cifarlab.experiment import train\n")
    assert _imports(source, "cifarlab.x", {"cifarlab.experiment"}) == {"cifarlab.experiment"}


def test_lower_layers_never_import_higher_ones():
    """config/data/models/training know nothing of the run lifecycle, the analysis or the CLI."""
    graph = import_graph()
    higher = ("cifarlab.experiment", "cifarlab.analysis", "cifarlab.cli", "cifarlab.commands")
    lower = ("cifarlab.config", "cifarlab.data", "cifarlab.models", "cifarlab.training", "cifarlab.registry",
             "cifarlab.runtime", "cifarlab.atomic", "cifarlab.rundir")
    wrong = sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets
                   if a.startswith(lower) and b.startswith(higher))
    assert not wrong, wrong
