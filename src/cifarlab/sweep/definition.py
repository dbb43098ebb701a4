"""A sweep's definition: the recipe and overrides, what varies, how trials are scored, where it all lives.

Everything is checked here, before any trial runs: the recipe and overrides, every key and edge value of
the space, and that trials select on a validation split (a sweep that selects on the test split reports a
test accuracy it was tuned on; it needs `allow_test_selection`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import optuna

from cifarlab.config import Config, apply_override, parse_override, read_with_overrides, validate
from cifarlab.errors import UserError
from cifarlab.messages import say
from cifarlab.run.layout import check_run_name
from cifarlab.run.metrics import lower_is_better
from cifarlab.sweep.claim import KEEP_SECONDS
from cifarlab.sweep.pruning import make_pruner, pruner_name
from cifarlab.sweep.space import apply_params, parse_grid, read_space_file
from cifarlab.sweep.storage import check_url, default_url
from cifarlab.trainer.sizing import AUTO, size_to_data

SWEEPS_DIR = "sweeps"


@dataclass
class Sweep:
    recipe: str
    overrides: list[str]
    base_raw: dict  # the recipe with its overrides, before validation: each trial's params go on top
    space: dict[str, optuna.distributions.BaseDistribution]
    grid: Optional[dict[str, list[Any]]]
    trials: int
    seeds: int
    monitor: str
    name: str
    sweep_dir: Path
    storage_url: str
    pruner: Any = "median"  # a name (pruning.PRUNERS) or, from Python, an optuna pruner
    heartbeat_seconds: int = 10
    sampler_seed: Optional[int] = None
    keep_seconds: float = KEEP_SECONDS  # how long a stopped trial waits for its own worker (sweep/claim.py)
    extras: dict = field(default_factory=dict)

    @property
    def direction(self) -> str:
        return "minimize" if lower_is_better(self.monitor) else "maximize"

    @property
    def base_config(self) -> Config:
        return validate(self.base_raw)

    @property
    def user_keys(self) -> frozenset[str]:
        """The dotted keys the command line's overrides set (a peak_epoch set there is the user's own)."""
        return frozenset(".".join(parse_override(text)[0]) for text in self.overrides)

    def trial_config(self, params: dict[str, Any]) -> Config:
        """The config of a trial with these parameters."""
        return validate(apply_params(self.base_raw, params, self.user_keys))

    def identity(self) -> str:
        """What two workers must agree on to share a study (the trial count may grow between runs): the
        overrides as the values they set (`optim.lr=0.1` and `optim.lr=1e-1` agree), the pruner too."""
        space = {key: optuna.distributions.distribution_to_json(d) for key, d in self.space.items()}
        return json.dumps({"recipe": self.recipe, "overrides": self.overrides_set(self.overrides), "space": space,
                           "seeds": self.seeds, "monitor": self.monitor, "grid": self.grid,
                           "pruner": pruner_name(self.pruner)}, sort_keys=True, default=str)

    def overrides_set(self, overrides) -> dict:
        """`key=value` overrides as the values the config took from them: `optim.lr=0.1`, `optim.lr=0.10`
        and `optim.lr=1.0e-1` set the same number, in any order (a later override of a key still wins)."""
        tree: dict = {}
        for text in overrides:
            keys, value = parse_override(text)
            apply_override(tree, keys, value)
        return _as_validated(tree, self.base_config.to_dict())


def _as_validated(tree, resolved):
    """Each leaf of `tree` replaced by the value at the same place in `resolved` (the validated config)."""
    if not isinstance(tree, dict):
        return resolved
    return {key: _as_validated(value, resolved[key]) if isinstance(resolved, dict) and key in resolved else value
            for key, value in tree.items()}


def identity_differences(known: str, sweep: "Sweep") -> list[str]:
    """The parts of a study's recorded identity that differ from `sweep`'s (empty when they agree). A study
    recorded before the pruner was part of it, with its overrides as text, is compared on what it holds."""
    try:
        old = json.loads(known)
    except ValueError:
        return ["definition"]
    new = json.loads(sweep.identity())
    if isinstance(old.get("overrides"), list):
        try:
            old["overrides"] = json.loads(json.dumps(sweep.overrides_set(old["overrides"]), default=str))
        except UserError:
            return ["overrides"]
    return [_named(key, old.get(key), new[key]) for key in new
            if (key in old or key != "pruner") and old.get(key) != new[key]]


def _named(part: str, old, new) -> str:
    """`part` of the identity, with the settings in it that differ where it holds any: `overrides (optim.momentum:
    0.5 here, not set in the study)`, so the user sees which word of the command to change back."""
    if part not in ("overrides", "space") or not isinstance(old, dict) or not isinstance(new, dict):
        return part
    before, after = _leaves(old), _leaves(new)
    keys = sorted(key for key in before.keys() | after.keys() if before.get(key, _UNSET) != after.get(key, _UNSET))
    if not keys:
        return part

    def shown(values: dict, key: str) -> str:
        return "not set" if key not in values else json.dumps(values[key], default=str)

    if part == "space":  # a distribution's JSON is long: the keys say enough
        said = ", ".join(keys[:3])
    else:
        said = "; ".join(f"{key}: {shown(after, key)} here, {shown(before, key)} in the study" for key in keys[:3])
    return f"{part} ({said}{'; ...' if len(keys) > 3 else ''})"


_UNSET = object()


def _leaves(tree: dict, prefix: str = "") -> dict:
    """A nested dict as `{"optim.lr": 0.1, ...}` (a space's entries are leaves: each is one distribution)."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(_leaves(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def define_sweep(recipe: str, overrides=(), space_file: Optional[str] = None, grid: Optional[list[str]] = None,
                 trials: Optional[int] = None, seeds: int = 1, name: Optional[str] = None,
                 sweep_dir: Optional[str] = None, storage: Optional[str] = None, pruner: str = "median",
                 heartbeat_seconds: int = 10, allow_test_selection: bool = False) -> Sweep:
    """A checked `Sweep` (UserError, nothing written, on any bad input)."""
    base_raw, note = read_with_overrides(recipe, overrides)  # a shortened onecycle run keeps its peak's fraction
    base = validate(base_raw)
    if note:
        say(note)
    from cifarlab.models.registry import import_user_modules

    import_user_modules(base.model.module)  # the recipe's own model, as `train` imports it (one line if it cannot)
    base = _decide_auto_values(base_raw, base)
    if (space_file is None) == (not grid):
        raise UserError("give a space file (SPACE.yaml) or --grid key=v1,v2 ..., exactly one of them")
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {seeds}")
    if heartbeat_seconds < 1:
        raise UserError(f"--heartbeat must be at least 1 second, got {heartbeat_seconds}")
    user_keys = frozenset(".".join(parse_override(text)[0]) for text in overrides)
    parsed_grid = parse_grid(grid, base_raw, user_keys) if grid else None
    space = read_space_file(space_file, base_raw, user_keys) if space_file else {
        key: optuna.distributions.CategoricalDistribution(values) for key, values in parsed_grid.items()}
    if seeds > 1 and "seed" in space:
        raise UserError("--seeds trains each configuration with seeds seed, seed+1, ...; do not sweep 'seed' too")
    trials = _trial_count(trials, parsed_grid)
    make_pruner(pruner, base.train.epochs)  # a bad name is refused here, before anything is written
    monitor = monitor_of(base)
    if monitor.startswith("test_") and not allow_test_selection:
        raise UserError(f"the trials would select on the test split ({monitor}); give a validation split, e.g. "
                        f"data.val_split=0.1, or pass --allow-test-selection to tune on the test split knowingly")
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise UserError(f"--name must name the study (e.g. --name lr-search), got {name!r}; leave it out for the "
                        f"default, RECIPE-SPACE or RECIPE-grid")  # "" fell back to the default without a word
    if name is not None and sweep_dir is None and (name in (".", "..") or any(c in name for c in "/\\\0")):
        raise UserError(f"--name {name!r} names the sweep's folder (sweeps/NAME) and must be one folder name, "
                        f"without '/', '\\' or '..'; or give the folder with --dir")
    name = name or f"{Path(recipe).stem}-{Path(space_file).stem if space_file else 'grid'}"
    folder = Path(sweep_dir) if sweep_dir else Path(SWEEPS_DIR) / check_run_name(name)
    if storage is not None:
        check_url(storage)
    return Sweep(recipe, list(overrides), base_raw, space, parsed_grid, trials, seeds, monitor, name, folder,
                 storage or default_url(folder), pruner, heartbeat_seconds)


def _trial_count(trials: Optional[int], grid: Optional[dict]) -> int:
    if grid is not None:
        size = 1
        for values in grid.values():
            size *= len(values)
        trials = size if trials is None else trials
        if trials > size:
            raise UserError(f"--trials {trials} is more than the {size} points of the grid")
    if trials is None:
        raise UserError("--trials N is needed with a space file (how many configurations to try)")
    if isinstance(trials, bool) or trials < 1:
        raise UserError(f"--trials must be at least 1, got {trials}")
    return trials


SIZED = ("train.batch_size", "train.epochs", "data.val_split")  # what `auto` sizes to the data (sizing.py)


def _value(cfg: Config, key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def _decide_auto_values(base_raw: dict, base: Config) -> Config:
    """A recipe's `auto` batch size, epochs and validation split (the folder recipe), decided once for the
    whole sweep from the data and written into `base_raw`: every trial trains the same number of epochs
    on the same split (a swept key still overrides), the pruner knows the epochs, and the monitor is
    known before any trial runs."""
    autos = [key for key in SIZED if _value(base, key) == AUTO]
    if not autos:
        return base
    sized, _ = size_to_data(base)
    for key in autos:
        apply_override(base_raw, key.split("."), _value(sized, key))
    decided = ", ".join(f"{key}={_value(sized, key)}" for key in autos)
    say(f"sweep: auto values decided once for every trial from the data: {decided}")
    return validate(base_raw)


def monitor_of(cfg: Config) -> str:
    """What selects best.pt in a run of `cfg`, hence what scores a trial."""
    return cfg.checkpoint.selecting_metric(has_validation=cfg.data.val_split is not None)
