"""The built-in recipes as files: where they lie and their one-line descriptions.

Apart from `config/` so that `cifarlab recipes` lists them without building the config schema (pydantic
models: about 0.3 s of the command's start-up); `cifarlab.config` re-exports both."""
from __future__ import annotations

from importlib import resources
from pathlib import Path

from cifarlab.strict_yaml import load_yaml


def recipes_dir() -> Path:
    return Path(str(resources.files("cifarlab") / "recipes"))


def list_recipes() -> dict[str, str]:
    """Recipe name -> one-line description, for `cifarlab recipes`."""
    found = {}
    for path in sorted(recipes_dir().glob("*.yaml")):
        raw = load_yaml(path.read_text(encoding="utf-8")) or {}
        found[path.stem] = str(raw.get("description", "")).strip().splitlines()[0] if raw.get("description") else ""
    return found
