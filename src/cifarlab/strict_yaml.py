"""YAML as cifarlab reads it (recipes, config.yaml, `key=value` overrides): yaml.safe_load, plus a refusal
of duplicate keys (PyYAML silently keeps the last, dropping a whole section) and of alias expansion past a
small bound (a few hundred bytes of aliases can otherwise expand until memory runs out)."""
from __future__ import annotations

import re
from typing import Any

import yaml

MAX_YAML_NODES = 10_000  # nodes after expanding aliases: a "billion laughs" of 300 bytes is refused


class YAMLRefused(ValueError):
    """Valid YAML that cifarlab will not load: duplicate keys, alias expansion past MAX_YAML_NODES."""


class _StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses duplicate keys and bounds what aliases expand to, before constructing."""

    def compose_document(self):
        node = super().compose_document()
        _check_expansion(node)
        return node

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` then own keys: overrides, allowed
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                except TypeError:  # unhashable: the base class names it
                    continue
                if duplicate:
                    raise YAMLRefused(f"duplicate key {key!r} at line {key_node.start_mark.line + 1}")
                seen.add(key)
        return super().construct_mapping(node, deep)


# YAML 1.2 reads `5e-2` as a float; PyYAML (YAML 1.1) wants a dot (`5.0e-2`) and gave the string "5e-2". The
# config's float fields coerced it, but a grid, a space's choices and free-form options kept the string: `--grid
# optim.lr=5e-2,0.05` trained the same lr twice, and a sweep run again with `5e-2` for `0.05` was another sweep.
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def _check_expansion(root: yaml.Node) -> None:
    """Count nodes as if every alias were copied out; refuse cycles and more than MAX_YAML_NODES."""
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    open_nodes: set[int] = set()
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            children = _children(node)
            sizes[key] = 1 + sum(sizes[id(child)] for child in children)
            open_nodes.discard(key)
            if sizes[key] > MAX_YAML_NODES:
                raise YAMLRefused(f"aliases expand to more than {MAX_YAML_NODES} values "
                                  f"(line {node.start_mark.line + 1}); write the values out")
            continue
        if key in sizes:
            continue
        if key in open_nodes:
            raise YAMLRefused(f"an alias refers to itself (line {node.start_mark.line + 1})")
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in sizes)


def _children(node: yaml.Node) -> list:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def yaml_error(err: yaml.YAMLError) -> str:
    """PyYAML's multi-line message as one line: the problem and where."""
    problem, mark = getattr(err, "problem", None), getattr(err, "problem_mark", None)
    if problem and mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(err).split())


def load_yaml(text: str) -> Any:
    """yaml.safe_load with duplicate keys and alias bombs refused (YAMLRefused)."""
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
