"""Flat views of a config: dotted keys and their values, what differs from the defaults, and what
differs between runs. For `show` and `show --diff` (`config_yaml`), the report's configuration section,
`compare`'s columns and TensorBoard's hparams."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import yaml

from cifarlab.config import Config

# Keys that say where and how a run reports, not what it trains: left out of run-to-run differences.
BOOKKEEPING = ("description", "output.")
MISSING = object()  # a key one config has and the other does not (a section that is null in one)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"optim": {"lr": 0.1}} -> {"optim.lr": 0.1}; lists and null stay values, an empty mapping too."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def differences(config: Mapping[str, Any], base: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{dotted key: (value in `config`, value in `base`)} for every leaf that differs; MISSING where a
    key exists on one side only (e.g. `augment.crop.padding` against `augment.crop: null`)."""
    ours, theirs = flatten(config), flatten(base)
    keys = list(ours) + [key for key in theirs if key not in ours]
    # A section `config` fills (`model.options.width`) where `base` has it empty or null is listed by its
    # filled keys only; the other way round (`augment.crop: null` against a filled default) it is a row.
    filled = {key.rpartition(".")[0] for key in ours}
    return {key: (ours.get(key, MISSING), theirs.get(key, MISSING)) for key in keys
            if ours.get(key, MISSING) != theirs.get(key, MISSING) and not (key not in ours and key in filled)}


def from_defaults(cfg: Config) -> dict[str, tuple[Any, Any]]:
    """What `cfg` changes from the defaults (`Config()`), as `differences`."""
    return differences(cfg.to_dict(), Config().to_dict())


def diff_yaml(cfg: Config) -> str:
    """The values of `cfg` that differ from the defaults as a nested YAML recipe: loading it gives `cfg`."""
    nested: dict[str, Any] = {}
    for key, (value, _) in from_defaults(cfg).items():
        if value is MISSING:
            continue
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return yaml.safe_dump(nested, sort_keys=False, allow_unicode=True) if nested else ""


def config_yaml(recipe: Config | str | None = None, overrides: Sequence[str] = (), diff: bool = False) -> str:
    """`cifarlab show`: the resolved config of a recipe (+ `key=value` overrides) as YAML; with `diff`, only
    what differs from the defaults (itself a recipe giving the same config)."""
    from cifarlab.config import load_config

    cfg = recipe if isinstance(recipe, Config) else load_config(recipe, list(overrides))
    if diff:
        return diff_yaml(cfg) or "# the defaults: nothing differs\n"
    return cfg.to_yaml()


def varying_keys(configs: Sequence[Mapping[str, Any]]) -> list[str]:
    """The dotted keys whose values are not the same in every config (bookkeeping keys left out)."""
    flats = [flatten(config) for config in configs]
    keys: list[str] = []
    for flat in flats:
        keys += [key for key in flat if key not in keys]
    return [key for key in keys if not key.startswith(BOOKKEEPING)
            and len({yaml.safe_dump(flat.get(key)) for flat in flats}) > 1]


def scalar(value: Any) -> Any:
    """A value as TensorBoard's hparams and table cells take it: numbers, strings and bools as they
    are; null, lists and mappings as short text."""
    if value is MISSING:
        return "—"
    if isinstance(value, (bool, int, float, str)):
        return value
    return "null" if value is None else yaml.safe_dump(value, default_flow_style=True).strip()
