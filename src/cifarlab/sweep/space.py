"""What a sweep varies: a space file (config key -> Optuna distribution) or a `--grid` of values.

    optim.lr: {low: 1.0e-4, high: 0.3, log: true}     # FloatDistribution
    train.batch_size: {low: 64, high: 512, step: 64}  # IntDistribution (both ends integers)
    optim.name: {choices: [sgd, adam]}                # CategoricalDistribution

Every key and every value a trial could get is checked against the recipe's config before any trial
runs: an unknown key, an empty range or a value the config refuses is one line naming the key.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import optuna
import yaml

from cifarlab.config import TrainConfig, apply_override, keep_epoch_fractions, validate
from cifarlab.errors import UserError
from cifarlab.strict_yaml import YAMLRefused, load_yaml

RANGE_KEYS = {"low", "high", "log", "step"}
CHOICE_TYPES = (type(None), bool, int, float, str)  # what Optuna's CategoricalDistribution stores
MAX_SPACE_BYTES = 1 << 20


def read_space_file(path: str | Path, base_raw: dict,
                    user_keys=frozenset()) -> dict[str, optuna.distributions.BaseDistribution]:
    """The space file at `path` as {config key: distribution}, checked against `base_raw` (the recipe
    with its overrides, before validation; `user_keys` the keys those overrides set)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"space file {str(path)!r} does not exist; give a YAML file mapping config keys "
                        f"to {{low, high[, log, step]}} or {{choices: [...]}}")
    text = path.read_bytes()[:MAX_SPACE_BYTES + 1]
    if len(text) > MAX_SPACE_BYTES:
        raise UserError(f"space file {str(path)!r} is larger than 1 MiB; a space file is a short YAML file")
    try:
        raw = load_yaml(text.decode("utf-8-sig"))
    except (YAMLRefused, yaml.YAMLError, UnicodeDecodeError) as err:
        raise UserError(f"space file {str(path)!r} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(raw, dict) or not raw:
        raise UserError(f"space file {str(path)!r} must map config keys to distributions, e.g. "
                        f"'optim.lr: {{low: 1.0e-4, high: 0.3, log: true}}'")
    space = {str(key): _distribution(str(key), spec) for key, spec in raw.items()}
    check_against_config(space, base_raw, user_keys)
    return space


def parse_grid(items: list[str], base_raw: dict, user_keys=frozenset()) -> dict[str, list[Any]]:
    """`--grid seed=0,1,2 optim.lr=0.05,0.1` as {key: [values]} (each value read as YAML), checked."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or not key or not values.strip():
            raise UserError(f"--grid item {item!r} must look like key=value1,value2, e.g. optim.lr=0.05,0.1")
        try:
            parsed = [load_yaml(value) if value.strip() else None for value in values.split(",")]
        except (YAMLRefused, yaml.YAMLError) as err:
            raise UserError(f"--grid item {item!r}: {str(err).splitlines()[0]}") from None
        if key in grid:
            raise UserError(f"--grid names {key!r} twice; give its values once, comma-separated")
        grid[key] = _distinct(key, [_choice(key, value) for value in parsed])
    if not grid:
        raise UserError("--grid needs at least one key=value1,value2 item")
    check_against_config({key: optuna.distributions.CategoricalDistribution(values) for key, values in grid.items()},
                         base_raw, user_keys)
    return grid


def _distinct(key: str, values: list) -> list:
    """`values` of one key, each once: a value given twice (`0.1,0.10`) trains the same configuration twice."""
    seen = []
    for value in values:
        if any(type(value) is type(other) and value == other for other in seen):
            raise UserError(f"space key {key!r} lists {value!r} twice; give each value once")
        seen.append(value)
    return values


def _distribution(key: str, spec: Any) -> optuna.distributions.BaseDistribution:
    if not isinstance(spec, dict):
        raise UserError(f"space key {key!r} must map to {{low, high[, log, step]}} or {{choices: [...]}}, got {spec!r}")
    if "choices" in spec:
        choices = spec["choices"]
        if set(spec) != {"choices"} or not isinstance(choices, list) or not choices:
            raise UserError(f"space key {key!r}: choices must be a non-empty list and come alone, got {spec!r}")
        return optuna.distributions.CategoricalDistribution(_distinct(key, [_choice(key, value) for value in choices]))
    unknown = set(spec) - RANGE_KEYS
    if unknown or not {"low", "high"} <= set(spec):
        raise UserError(f"space key {key!r} needs low and high (allowed: low, high, log, step; or choices), got "
                        f"{', '.join(sorted(map(str, spec)))}")
    low, high, log, step = spec["low"], spec["high"], spec.get("log", False), spec.get("step")
    for name, value in (("low", low), ("high", high), ("step", step)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value)):
            raise UserError(f"space key {key!r}: {name} must be a finite number, got {value!r}")
    if not isinstance(log, bool):
        raise UserError(f"space key {key!r}: log must be true or false, got {log!r}")
    if not low < high:
        raise UserError(f"space key {key!r}: the range is empty (low {low} must be below high {high})")
    if log and (low <= 0 or step is not None):
        raise UserError(f"space key {key!r}: a log range needs low > 0 and no step, got low {low}, step {step}")
    if step is not None and step <= 0:
        raise UserError(f"space key {key!r}: step must be above 0, got {step}")
    if step is not None and high > low and step > high - low:  # Optuna then samples low alone, silently
        raise UserError(f"space key {key!r}: step {step} is larger than the range {low}..{high}, so only {low} "
                        f"would be tried; give a step of at most {high - low}")
    if isinstance(low, int) and isinstance(high, int) and (step is None or isinstance(step, int)):
        return optuna.distributions.IntDistribution(low, high, log=log, step=step or 1)
    return optuna.distributions.FloatDistribution(float(low), float(high), log=log, step=step)


def _choice(key: str, value: Any) -> Any:
    if not isinstance(value, CHOICE_TYPES):
        raise UserError(f"space key {key!r}: a choice must be null, true/false, a number or a string, got {value!r}")
    return value


def edge_values(distribution: optuna.distributions.BaseDistribution) -> list[Any]:
    """The values that bound what a trial can get: both ends of a range, every choice."""
    if isinstance(distribution, optuna.distributions.CategoricalDistribution):
        return list(distribution.choices)
    high = distribution.high  # Optuna trims high to the last step on the grid
    return [distribution.low, high]


def check_against_config(space: dict[str, optuna.distributions.BaseDistribution], base_raw: dict,
                         user_keys=frozenset()) -> None:
    """Each key with each edge value, alone on the base config, must be a config the recipe accepts (a
    trial's train.epochs moving a onecycle peak as `train` moves it)."""
    for key, distribution in space.items():
        for value in edge_values(distribution):
            try:
                validate(apply_params(base_raw, {key: value}, user_keys))
            except UserError as err:
                raise UserError(f"space key {key!r} with value {value!r}: {err}") from None


def apply_params(base_raw: dict, params: dict[str, Any], user_keys=frozenset()) -> dict:
    """The base config (raw) with a trial's parameters set at their dotted keys. A trial's `train.epochs`
    moves a onecycle recipe's `schedule.peak_epoch` (and `fast`'s lookahead start and whitening-bias epochs) to the
    same fraction of the run, as `cifarlab train RECIPE train.epochs=N` does; a setting the user set (an override in
    `user_keys`, or swept) stays as given."""
    raw = copy.deepcopy(base_raw)
    for key, value in params.items():
        apply_override(raw, key.split("."), value)
    base_epochs = (base_raw.get("train") or {}).get("epochs", TrainConfig.model_fields["epochs"].default)
    keep_epoch_fractions(raw, base_epochs, set(params) | set(user_keys))
    return raw


def suggest(trial: optuna.Trial, space: dict[str, optuna.distributions.BaseDistribution]) -> dict[str, Any]:
    """The trial's value for every key of the space (fixed ones when the trial was enqueued or retried)."""
    return {key: _suggest_one(trial, key, distribution) for key, distribution in space.items()}


def _suggest_one(trial: optuna.Trial, key: str, distribution: optuna.distributions.BaseDistribution) -> Any:
    if isinstance(distribution, optuna.distributions.CategoricalDistribution):
        return trial.suggest_categorical(key, distribution.choices)
    if isinstance(distribution, optuna.distributions.IntDistribution):
        return trial.suggest_int(key, distribution.low, distribution.high, step=distribution.step, log=distribution.log)
    return trial.suggest_float(key, distribution.low, distribution.high, step=distribution.step, log=distribution.log)
