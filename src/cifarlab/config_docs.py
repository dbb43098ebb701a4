"""docs/config.md, generated from the config schema: every key with its type, range, default and description.

The descriptions live in config/sections.py and config/schema.py (`Field(description=...)`); this renders
pydantic's JSON schema of `Config` as one table per section. `python -m cifarlab.config_docs --write
docs/config.md` regenerates the page; tests/test_docs.py fails when the page is stale or a key has no description.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Iterator

from cifarlab.config import Config

HEADER = """# Configuration reference

<!-- Generated from the config schema (src/cifarlab/config/) by
     `python -m cifarlab.config_docs --write docs/config.md`; do not edit by hand. -->

A config is built in three layers: the defaults below < a recipe (YAML) < `key=value` overrides on the
command line (`cifarlab train smoke optim.lr=0.05 augment.cutout=null`). Values are YAML. An unknown key,
a wrong type or a value out of range is one line naming the key and what is allowed (exit code 2).
`cifarlab show RECIPE` prints a resolved config; `cifarlab show RECIPE --diff` only what differs from
these defaults. A section whose default is null (an augmentation, `train.lookahead`) is off until set,
e.g. `augment.cutout={size: 8}`.
"""


def config_reference() -> str:
    """The whole page, as markdown."""
    schema = Config.model_json_schema()
    lines = [HEADER]
    lines += _table("top level", schema, schema["$defs"])
    for key, prop in schema["properties"].items():
        section = _section_ref(prop)
        if section:
            lines += _section(key, schema["$defs"][section], schema["$defs"])
    return "\n".join(lines).rstrip() + "\n"


def _section(prefix: str, section: dict, defs: dict) -> list[str]:
    lines = [f"## `{prefix}`", "", section.get("description", "").strip()] if section.get("description") else \
        [f"## `{prefix}`"]
    lines += _table(prefix, section, defs)
    for key, prop in section["properties"].items():
        nested = _section_ref(prop)
        if nested:
            lines += _section(f"{prefix}.{key}", defs[nested], defs)
    return lines


def _table(prefix: str, section: dict, defs: dict) -> list[str]:
    rows = ["", "| key | type | default | description |", "|---|---|---|---|"]
    for key, prop in section["properties"].items():
        name = key if prefix == "top level" else f"{prefix}.{key}"
        nested = _section_ref(prop)
        kind = f"section (below{', or null' if _nullable(prop) else ''})" if nested else _kind(prop, defs)
        default = "" if nested and not _nullable(prop) else _value(prop.get("default"))
        description = " ".join(prop.get("description", "").split()).replace("|", "\\|").replace("<", "&lt;")
        rows.append(f"| `{name}` | {kind} | {default} | {description} |")
    return rows + [""]


def _section_ref(prop: dict) -> str | None:
    """The $defs name when `prop` is a nested section (or a nullable one), else None."""
    for option in _options(prop):
        if "$ref" in option:
            return option["$ref"].rsplit("/", 1)[-1]
    return None


def _nullable(prop: dict) -> bool:
    return any(option.get("type") == "null" for option in _options(prop))


def _options(prop: dict) -> Iterator[dict]:
    yield from prop.get("anyOf", [prop])


def _kind(prop: dict, defs: dict) -> str:
    """`int >= 1`, `sgd \\| adam`, `list of float`, `... or null`, from one property of the JSON schema."""
    kinds = [_one_kind(option) for option in _options(prop) if option.get("type") != "null"]
    text = " or ".join(kinds) or "any"
    return (text + " or null" if _nullable(prop) else text).replace("|", "\\|")


def _one_kind(option: dict) -> str:
    if "enum" in option or "const" in option:
        return " | ".join(str(value) for value in option.get("enum", [option.get("const")]))
    kind = {"integer": "int", "number": "float", "boolean": "bool", "string": "str", "object": "mapping"}.get(
        option.get("type"), option.get("type", "any"))
    if kind == "array":
        items = option.get("prefixItems") or [option.get("items", {})]
        inner = ", ".join(_one_kind(item) for item in items)
        return f"({inner})" if option.get("prefixItems") else f"list of {inner}"
    bounds = [f"{sign} {option[key]}" for key, sign in
              (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<"))
              if key in option]
    return f"{kind} {', '.join(bounds)}" if bounds else kind


def _value(value: Any) -> str:
    if value is None:
        return "null"
    if value == "":
        return '`""`'
    return f"`{json.dumps(value) if isinstance(value, (dict, list, bool)) else value}`"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Print (or --write) docs/config.md from the config schema.")
    parser.add_argument("--write", type=Path, metavar="PATH", help="write the page here instead of printing it")
    args = parser.parse_args(argv)
    if args.write:
        args.write.write_text(config_reference(), encoding="utf-8")
    else:
        print(config_reference(), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
